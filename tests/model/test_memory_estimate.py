"""`hope-mega params`' memory estimate: every shipped config fits an 80 GB GPU by it, and it moves
the way the step's memory does."""

from pathlib import Path

import pytest

from hope_mega.config import load_config
from hope_mega.memory_estimate import GIB, H100_BYTES, HEADROOM_BYTES, boundary_state_bytes_per_sequence, estimate
from hope_mega.params import describe

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
BUDGET = H100_BYTES - HEADROOM_BYTES


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_fits_an_80gb_gpu(path):
    cfg = load_config(path)
    for doc_len in (None, cfg.model.chunk_size):  # one document per row, and the shortest that matter
        total = estimate(cfg, gpus=8, doc_len=doc_len)["total"]
        assert total <= BUDGET, f"{path.name} (documents of {doc_len}): {total / GIB:.1f} GiB per GPU"


def test_hope_760m_at_micro_batch_4_without_checkpointing_does_not_fit():
    # The configuration this project once shipped: ~120 GB of activations at 4 x 4096.
    cfg = load_config(CONFIGS[0].with_name("hope-760m.yaml"),
                      ["train.micro_batch=4", "parallel.activation_checkpointing=false"])
    est = estimate(cfg, gpus=8)
    assert est["total"] > BUDGET and est["activations"] + est["titans_boundary_states"] > 70 * GIB
    checkpointed = estimate(load_config(CONFIGS[0].with_name("hope-760m.yaml"),
                                        ["train.micro_batch=4", "parallel.activation_checkpointing=true"]), gpus=8)
    assert checkpointed["total"] < 20 * GIB and checkpointed["weights"] == est["weights"]


H100_SMS = 132


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_gpu_configs_give_the_fused_kernel_most_of_the_sms(path):
    # The fused Titans kernels launch one program per (sequence, head of this TP rank), each
    # walking its chunks serially, and at d_h 128, C 64 one program fills an SM's shared memory
    # (ops/titans_linear/fused.py): a grid much smaller than the SM count leaves the GPU idle
    # through the recurrence. Rows are the fewest sequences (packed documents only add programs).
    cfg = load_config(path)
    if cfg.model.mixer != "titans" or cfg.model.memory != "linear" or cfg.train.seq_len < 1024:
        pytest.skip("not a GPU config of the fused kernel")
    programs = cfg.train.micro_batch * cfg.model.n_heads // cfg.parallel.tp
    assert programs >= 0.7 * H100_SMS, f"{path.name}: {programs} programs for {H100_SMS} SMs"


def test_estimate_moves_with_batch_zero_stage_and_documents():
    path = CONFIGS[0].with_name("hope-760m.yaml")
    one, two = (estimate(load_config(path, [f"train.micro_batch={b}"]), gpus=8) for b in (1, 2))
    assert two["activations"] == pytest.approx(2 * one["activations"])
    z1, z2 = (estimate(load_config(path, [f"parallel.zero_stage={z}"]), gpus=8) for z in (1, 2))
    assert z2["gradients"] < z1["gradients"] and z2["optimizer"] == z1["optimizer"]
    z1_16 = estimate(load_config(path, ["parallel.zero_stage=1"]), gpus=16)
    assert z1_16["optimizer"] == pytest.approx(z1["optimizer"] / 2)
    cfg = load_config(path)
    T, C = cfg.train.seq_len, cfg.model.chunk_size
    # Each document starts its own chunk grid and keeps its own final state.
    ratio = boundary_state_bytes_per_sequence(cfg, doc_len=C) / boundary_state_bytes_per_sequence(cfg)
    assert ratio == pytest.approx((T / C) * 2 / (T / C + 1))


def test_params_prints_the_estimate():
    text = describe(load_config(CONFIGS[0].with_name("hope-760m.yaml")), gpus=8)
    lines = text.splitlines()
    assert lines[-1].startswith("total_params: ")
    assert any(line.startswith("# memory per GPU (estimate) on 8 GPUs: tp=1, dp=8, ZeRO-1") for line in lines)
    for key in ("weights", "gradients", "optimizer", "activations", "lm_head_logits", "total"):
        assert any(line.startswith(f"memory.{key}: ") and line.endswith(" GiB") for line in lines), key
    assert "memory.fits_80gb: true" in text


def test_params_refuses_a_gpu_count_or_document_length_that_cannot_be(capsys):
    from hope_mega.cli import main

    assert main(["params", "--config", str(CONFIGS[0].with_name("hope-1.3b.yaml")), "--gpus", "3"]) == 2
    assert "--gpus: 3 is not a positive multiple of parallel.tp=2" in capsys.readouterr().err
    assert main(["params", "--config", str(CONFIGS[0].with_name("hope-tiny.yaml")), "--doc-len", "0"]) == 2
    assert "--doc-len: must be >= 1, got 0" in capsys.readouterr().err
