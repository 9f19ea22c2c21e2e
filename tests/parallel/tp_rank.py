"""One tensor-parallel rank for the parity tests, run as its own process (as torchrun would).

usage: tp_rank.py CASES_PT OUT_DIR   (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the env)

CASES_PT holds, per case, the model config, the canonical (TP=1) initial state dict and the
batches. For each case this rank builds the model on MegatronLayers, loads its shard of the
canonical weights, and records the per-token losses, the gradients gathered to canonical layout,
and the losses over a few AdamW steps. Rank 0 saves everything to OUT_DIR/results.pt.
"""

import sys

import torch


def run_case(case, tp_group):
    from hope_mega.model.lm import HopeLM
    from hope_mega.parallel import state
    from hope_mega.parallel.layers import MegatronLayers, mark_tensor_parallel
    from hope_mega.parallel.sharding import gather_grads, gather_state_dict, shard_state_dict

    layers = MegatronLayers(sequence_parallel=case["sequence_parallel"])
    model = HopeLM(case["model"], layers=layers, eos_id=case["eos_id"],
                   activation_checkpointing=case["activation_checkpointing"])
    mark_tensor_parallel(model)
    model.load_state_dict(shard_state_dict(case["state_dict"], model, state.tp_rank(), state.tp_size()))

    out = {}
    split = [n for n, p in model.named_parameters() if hasattr(p, "tp_dim")]
    unmarked = [n for n in split if not getattr(model.get_parameter(n), "tensor_model_parallel", False)]
    untagged = [n for n, p in model.named_parameters() if getattr(p, "tensor_model_parallel", False) and n not in split]
    out["split_params"], out["unmarked"], out["untagged"] = split, unmarked, untagged
    out["sp_norms"] = sorted(n for n, p in model.named_parameters() if getattr(p, "sequence_parallel", False))
    out["roundtrip"] = gather_state_dict(model, tp_group)
    on_dst = gather_state_dict(model, dst=0)  # the default group: megatron's TP group
    if state.tp_rank() == 0:
        out["dst_matches"] = all(torch.equal(on_dst[n], t) for n, t in out["roundtrip"].items())
    else:
        out["dst_matches"] = on_dst is None

    inputs, labels = case["batches"][0]
    loss = model(inputs, labels)
    out["loss"] = loss.detach().clone()
    loss.mean().backward()
    out["grads"] = gather_grads(model, tp_group)

    opt = torch.optim.AdamW(model.parameters(), lr=case["lr"], weight_decay=0.1)
    model.zero_grad()
    step_losses = []
    batches = case["batches"]
    for inputs, labels in batches:
        loss = model(inputs, labels).mean()
        step_losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        step_losses.append(model(*batches[0]).mean().item())  # the first batch again, after the steps
    out["step_losses"] = step_losses
    return out


def main() -> None:
    cases_path, out_dir = sys.argv[1], sys.argv[2]
    cases = torch.load(cases_path, weights_only=False)
    tp = cases["tp"]

    from hope_mega.parallel import state

    state.init_distributed(tp)
    try:
        results = {name: run_case(case, state.tp_group()) for name, case in cases["cases"].items()}
        groups = dict(
            tp_rank=state.tp_rank(), tp_size=state.tp_size(), dp_rank=state.dp_rank(), dp_size=state.dp_size(),
            dp_ranks=state.data_parallel_ranks(), tp_ranks=torch.distributed.get_process_group_ranks(state.tp_group()),
        )  # fmt: skip
        # Every rank computes the full per-token loss; keep the others' to check they agree.
        gathered = [None] * torch.distributed.get_world_size()
        mine = {"losses": {n: r["loss"] for n, r in results.items()}, "groups": groups}
        torch.distributed.all_gather_object(gathered, mine)
        if torch.distributed.get_rank() == 0:
            torch.save({"results": results, "ranks": gathered}, f"{out_dir}/results.pt")
    finally:
        state.destroy()


if __name__ == "__main__":
    main()
