import copy

import torch

from hope_mega.optim.cms_adamw import CMSAdamW, cosine_lr, param_groups


def grads(seed, shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_period_one_is_adamw():
    p_ref = torch.nn.Parameter(torch.randn(4, 3))
    p = torch.nn.Parameter(p_ref.detach().clone())
    ref = torch.optim.AdamW([p_ref], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ours = CMSAdamW([p], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for step in range(5):
        p_ref.grad, p.grad = grads(step, (4, 3)), grads(step, (4, 3))
        ref.step()
        ours.step()
    assert torch.allclose(p, p_ref, rtol=0, atol=1e-6)


def test_period_three_updates_every_third_step_with_the_sum():
    p = torch.nn.Parameter(torch.randn(5))
    twin = torch.nn.Parameter(p.detach().clone())
    opt = CMSAdamW([{"params": [p], "period": 3}], lr=1e-2, weight_decay=0.0)
    # The twin takes one ordinary AdamW step with the summed gradient at each period's end.
    ref = CMSAdamW([twin], lr=1e-2, weight_decay=0.0)
    total = torch.zeros(5)
    for step in range(1, 7):
        before = p.detach().clone()
        p.grad = grads(step, (5,))
        total += p.grad
        opt.step()
        if step % 3:
            assert torch.equal(p, before), f"changed at step {step}"
            assert torch.equal(opt.state[p]["grad_acc"], total)
        else:
            twin.grad = total.clone()
            ref.step()
            total.zero_()
            assert torch.allclose(p, twin, rtol=0, atol=1e-7)
            assert opt.state[p]["step"] == step // 3  # bias correction counts the level's own updates


def test_skipped_step_changes_nothing():
    p = torch.nn.Parameter(torch.randn(3))
    opt = CMSAdamW([{"params": [p], "period": 2}], lr=1e-2)
    p.grad = grads(0, (3,))
    opt.step()
    before = (p.detach().clone(), copy.deepcopy(opt.state_dict()))
    p.grad = torch.full((3,), float("nan"))
    with opt.skipping_steps():
        opt.step()  # ZeRO calls step() once per group: every call inside the engine step skips
        opt.step()
    assert torch.equal(p, before[0])
    assert str(opt.state_dict()) == str(before[1])
    p.grad = grads(1, (3,))
    opt.step()  # outside the skip, steps count again
    assert opt.param_groups[0]["steps_seen"] == 2


def test_groups_split_by_period_and_decay():
    from hope_mega.config import CMSLevel, ModelConfig
    from hope_mega.model.lm import HopeLM

    model = HopeLM(ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, cms_levels=[CMSLevel(8, 1), CMSLevel(8, 4)]))
    groups = {(g["period"], g["weight_decay"] > 0): g["params"] for g in param_groups(model, 0.1)}
    assert set(groups) == {(1, True), (1, False), (4, True), (4, False)}
    level = model.blocks[0].cms.levels[1]
    assert {id(p) for p in groups[(4, True)]} == {id(level.gate_up.weight), id(level.down.weight)}
    assert {id(p) for p in groups[(4, False)]} == {id(level.norm.weight)}
    assert any(p is model.blocks[0].mixer.s0 for p in groups[(1, False)])


def test_cosine_schedule():
    assert cosine_lr(0, 1.0, 10, 100, 0.1) == 0.1
    assert cosine_lr(9, 1.0, 10, 100, 0.1) == 1.0
    assert abs(cosine_lr(55, 1.0, 10, 100, 0.1) - 0.55) < 1e-12
    assert cosine_lr(100, 1.0, 10, 100, 0.1) == 0.1


def test_a_copied_or_pickled_model_keeps_its_cms_periods(tmp_path):
    """copy.deepcopy and pickle rebuild Parameters without their Python attributes; the CMS levels
    tag theirs again, so an optimizer built on the copy groups them by the same periods."""
    from pathlib import Path

    from hope_mega.config import load_config
    from hope_mega.model.lm import HopeLM

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "hope-tiny.yaml",
                      ["model.n_layers=1", "model.vocab_size=64"])
    model = HopeLM(cfg.model, eos_id=2)

    def periods(m):
        return [(g["period"], g["weight_decay"], len(g["params"])) for g in param_groups(m, 0.1)]

    assert {p for p, _, _ in periods(model)} == {1, 4}
    torch.save(model, tmp_path / "model.pt")
    for copied in (copy.deepcopy(model), torch.load(tmp_path / "model.pt", weights_only=False)):
        assert periods(copied) == periods(model)
        assert [getattr(p, "cms_period", 1) for p in copied.parameters()] == \
               [getattr(p, "cms_period", 1) for p in model.parameters()]
