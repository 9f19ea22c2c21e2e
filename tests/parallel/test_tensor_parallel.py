"""TP=2 (with and without sequence parallelism) on megatron-core equals the single-device model.

Two real processes over gloo run every case (tp_rank.py); the TP=1 reference is the plain
`TorchLayers` HopeLM in this process, from the same canonical initial weights.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ports import free_port

from hope_mega.config import CMSLevel, Config, ConfigError, ModelConfig, load_config, validate
from hope_mega.model.lm import HopeLM

RANK_SCRIPT = Path(__file__).with_name("tp_rank.py")
REPO = Path(__file__).resolve().parents[2]
TP = 2
VOCAB, EOS = 61, 0  # odd vocabulary: TP=2 pads it, so the padding is exercised
B, T, STEPS, LR = 2, 32, 3, 1e-2
LAUNCH_TIMEOUT_S = 240

# name: (mixer, sequence parallel, activation checkpointing, Titans memory)
CASES = {
    f"{mixer}-{'sp' if sp else 'tp'}": (mixer, sp, False, "linear")
    for mixer in ("titans", "attention")
    for sp in (False, True)
}
CASES["titans-sp-recompute"] = ("titans", True, True, "linear")
CASES["titans-mlp-sp"] = ("titans", True, False, "mlp")


def model_config(mixer: str, memory: str = "linear") -> ModelConfig:
    return ModelConfig(
        mixer=mixer, vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, chunk_size=8, memory=memory,
        cms_levels=[CMSLevel(hidden=48, period=1), CMSLevel(hidden=32, period=2)],
    )  # fmt: skip


def packed_batches(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """STEPS batches of packed rows: EOS at fixed and random places, documents of varied length."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(STEPS):
        ids = torch.randint(1, VOCAB, (B, T + 1), generator=gen)
        ids[ids < 6] = EOS  # ~8% EOS at random places
        ids[0, 5] = ids[1, 20] = EOS
        out.append((ids[:, :-1].clone(), ids[:, 1:].clone()))
    return out


def launch(world: int, script: Path, args: list[str], timeout_s: float) -> list[str]:
    """Start `world` ranks with torchrun's environment; kill them all if any fails or hangs."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, str(script), *args], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + timeout_s
    logs = []
    try:
        for rank, p in enumerate(procs):
            try:
                out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"rank {rank} of {world} did not finish within {timeout_s:.0f} s (hung collective?)")
            logs.append(out)
            if p.returncode != 0:
                pytest.fail(f"rank {rank} of {world} exited with {p.returncode}:\n{out[-4000:]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return logs


def run_cases(tmp: Path, world: int, tp: int, names: list[str]):
    """Canonical weights and batches per case, the TP=1 results here, the TP=tp results from ranks."""
    cases, reference = {}, {}
    for i, (name, (mixer, sp, recompute, memory)) in enumerate(CASES.items()):
        if name not in names:
            continue
        cfg = model_config(mixer, memory)
        torch.manual_seed(100 + i)
        model = HopeLM(cfg, eos_id=EOS)
        # Nonzero initial states and norm weights, so their gradients and slicing are tested too.
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith(("s0", "out_norm", "norm.weight", "conv_weight")):
                    p.add_(0.1 * torch.randn_like(p))
        canonical = {k: v.clone() for k, v in model.state_dict().items()}
        batches = packed_batches(seed=7 + i)
        cases[name] = dict(model=cfg, sequence_parallel=sp, activation_checkpointing=recompute, eos_id=EOS,
                           state_dict=canonical, batches=batches, lr=LR)  # fmt: skip
        reference[name] = run_reference(model, batches)
    torch.save({"tp": tp, "cases": cases}, tmp / "cases.pt")
    launch(world, RANK_SCRIPT, [str(tmp / "cases.pt"), str(tmp)], LAUNCH_TIMEOUT_S)
    parallel = torch.load(tmp / "results.pt", weights_only=False)
    return cases, reference, parallel


@pytest.fixture(scope="module")
def reference_and_parallel(tmp_path_factory):
    return run_cases(tmp_path_factory.mktemp("tp2"), world=TP, tp=TP, names=list(CASES))


@pytest.fixture(scope="module")
def data_parallel_tp1(tmp_path_factory):
    """World 2 at TP=1 (two data-parallel replicas of the megatron-layer model)."""
    return run_cases(tmp_path_factory.mktemp("dp2"), world=2, tp=1, names=["titans-tp"])


def run_reference(model: HopeLM, batches) -> dict:
    inputs, labels = batches[0]
    loss = model(inputs, labels)
    loss.mean().backward()
    out = {"loss": loss.detach().clone(), "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1)
    model.zero_grad()
    step_losses = []
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


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b| (a tensor-wide scale, so near-zero entries don't dominate)."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("case", list(CASES))
def test_losses_match_single_device(reference_and_parallel, case):
    cases, ref, par = reference_and_parallel
    ids = cases[case]["batches"][0][0]
    assert (ids == EOS).sum() >= 4, "the batch must hold packed documents"
    loss, ref_loss = par["results"][case]["loss"], ref[case]["loss"]
    assert loss.shape == ref_loss.shape == (B, T)
    err = ((loss - ref_loss).abs() / ref_loss.abs()).max().item()
    print(f"{case}: per-token loss max rel err {err:.2e}")
    assert err <= 1e-5
    for other in par["ranks"][1:]:
        torch.testing.assert_close(other["losses"][case], loss, rtol=0, atol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_grads_match_single_device(reference_and_parallel, case):
    _, ref, par = reference_and_parallel
    grads, ref_grads = par["results"][case]["grads"], ref[case]["grads"]
    assert set(grads) == set(ref_grads)
    worst = max((rel_err(grads[n], ref_grads[n]), n) for n in ref_grads)
    for n in ref_grads:
        assert grads[n].shape == ref_grads[n].shape, n
        assert ref_grads[n].abs().max() > 0, f"{n}: zero reference gradient tests nothing"
    print(f"{case}: grad max rel err {worst[0]:.2e} ({worst[1]})")
    assert worst[0] <= 1e-4, worst


@pytest.mark.parametrize("case", list(CASES))
def test_adamw_steps_match_single_device(reference_and_parallel, case):
    _, ref, par = reference_and_parallel
    losses, ref_losses = par["results"][case]["step_losses"], ref[case]["step_losses"]
    assert len(losses) == STEPS + 1
    assert ref_losses[-1] < ref_losses[0] - 0.05, f"the steps must move the model: {ref_losses}"
    err = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses))
    print(f"{case}: losses over {STEPS} AdamW steps max rel err {err:.2e}")
    assert err <= 1e-5
    # (The weights themselves are not compared: Adam divides by sqrt(v), so entries whose gradient
    # is at fp32 rounding level (~1e-9 here) move by ~lr in directions set by that rounding.)


@pytest.mark.parametrize("case", list(CASES))
def test_shard_gather_roundtrip_and_megatron_attributes(reference_and_parallel, case):
    cases, _, par = reference_and_parallel
    res, canonical = par["results"][case], cases[case]["state_dict"]
    assert set(res["roundtrip"]) == set(canonical)
    for n, t in canonical.items():
        torch.testing.assert_close(res["roundtrip"][n], t, rtol=0, atol=0, msg=n)
    assert res["dst_matches"]
    assert res["unmarked"] == [] and res["untagged"] == []
    split = set(res["split_params"])
    heads = {"s0", "w_eta", "b_eta", "w_alpha", "b_alpha", "a_log", "out_norm", "conv_weight"}
    if case.startswith("titans"):
        assert {f"blocks.0.mixer.{h}" for h in heads} <= split
    assert {"embed.weight", "head.weight", "blocks.1.cms.levels.1.down.weight"} <= split
    norms = {n for n in canonical if n.endswith("norm.weight")}
    assert res["sp_norms"] == (sorted(norms) if CASES[case][1] else [])


def test_groups_tp2(reference_and_parallel):
    ranks = [r["groups"] for r in reference_and_parallel[2]["ranks"]]
    assert ranks == [
        dict(tp_rank=r, tp_size=2, dp_rank=0, dp_size=1, dp_ranks=[r], tp_ranks=[0, 1]) for r in range(2)
    ]


def test_tp1_megatron_layers_data_parallel(data_parallel_tp1):
    cases, ref, par = data_parallel_tp1
    ranks = [r["groups"] for r in par["ranks"]]
    assert ranks == [
        dict(tp_rank=0, tp_size=1, dp_rank=r, dp_size=2, dp_ranks=[0, 1], tp_ranks=[r]) for r in range(2)
    ]
    res, canonical = par["results"]["titans-tp"], cases["titans-tp"]["state_dict"]
    torch.testing.assert_close(res["loss"], ref["titans-tp"]["loss"], rtol=1e-5, atol=0)
    grads, ref_grads = res["grads"], ref["titans-tp"]["grads"]
    assert max(rel_err(grads[n], ref_grads[n]) for n in ref_grads) <= 1e-4
    assert all(torch.equal(res["roundtrip"][n], t) for n, t in canonical.items())


def test_tp_needs_heads_divisible():
    with pytest.raises(ConfigError, match="n_heads: 6 is not divisible by parallel.tp=4"):
        load_config(None, ["model.n_heads=6", "model.d_model=96", "parallel.tp=4"])
    cfg = Config(model=model_config("titans"))
    cfg.parallel.tp = 2
    validate(cfg)


def test_world_not_divisible_by_tp(monkeypatch):
    from hope_mega.parallel.state import ParallelSetupError, init_distributed

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ParallelSetupError, match="world size 3 is not divisible by parallel.tp=2"):
        init_distributed(tp=2)
    assert not torch.distributed.is_initialized()
