"""The SP norm all-reduce sits in a tensor hook; DeepSpeed ZeRO-2 reads grads in post-accumulate
hooks. This pins the torch ordering that design relies on: the tensor hook sees each backward's
own contribution and its result is what gets accumulated and what the post-accumulate hook sees."""

import torch


def test_tensor_hook_runs_before_accumulation_and_post_accumulate_hooks():
    w = torch.nn.Parameter(torch.ones(3))
    seen_by_hook, seen_after = [], []

    def reduce_like(grad):  # stands in for the all-reduce over two ranks with equal partial grads
        seen_by_hook.append(grad.clone())
        return grad * 2

    w.register_hook(reduce_like)
    w.register_post_accumulate_grad_hook(lambda p: seen_after.append(p.grad.clone()))
    for scale in (1.0, 3.0):  # two micro-batches accumulating into .grad
        ((w * w).sum() * scale).backward()
    # each call sees only its micro-batch (2w * scale), never the accumulated sum
    assert [g.tolist() for g in seen_by_hook] == [[2.0] * 3, [6.0] * 3]
    assert [g.tolist() for g in seen_after] == [[4.0] * 3, [16.0] * 3]
    assert w.grad.tolist() == [16.0] * 3
