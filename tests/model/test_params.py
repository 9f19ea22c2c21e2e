from pathlib import Path

import pytest

from hope_mega.cli import main
from hope_mega.config import load_config
from hope_mega.params import flops_per_token, parameter_counts

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(
    "name, target",
    [
        ("hope-760m", 760e6),
        ("transformer-760m", 760e6),
        ("hope-attention-760m", 760e6),
        ("hope-1.3b", 1.3e9),
        ("transformer-1.3b", 1.3e9),
        ("hope-mlp-tiny", 2.5e6),
        ("hope-mlp-760m", 760e6),
        ("hope-mlp-1.3b", 1.3e9),
    ],
)
def test_named_configs_are_their_size(name, target, capsys):
    assert main(["params", "--config", str(CONFIGS / f"{name}.yaml")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    key, value = last.split(": ")
    assert key == "total_params"
    assert abs(int(value) / target - 1) <= 0.03, f"{name}: {int(value):,} params"


def test_param_count_matches_the_built_model():
    import torch

    from hope_mega.model.lm import HopeLM

    cfg = load_config(CONFIGS / "hope-tiny.yaml")
    model = HopeLM(cfg.model)
    assert parameter_counts(cfg.model)["total_params"] == sum(p.numel() for p in model.parameters())
    assert all(p.device == torch.device("cpu") for p in model.parameters())


def test_mlp_memory_params_and_flops():
    cfg = load_config(CONFIGS / "hope-mlp-760m.yaml")
    m = cfg.model
    D, h = m.head_dim, m.memory_expansion * m.head_dim
    linear = load_config(CONFIGS / "hope-mlp-760m.yaml", ["model.memory=linear"]).model
    # The learned initial weights: W_1 and W_2 of six memories per head and layer, instead of S.
    extra = m.n_layers * m.n_heads * 6 * (2 * D * h - D * D)
    assert parameter_counts(m)["total_params"] - parameter_counts(linear)["total_params"] == extra
    # Per head and token, forward, as titans_mlp/chunk.py computes it (see params.py), x 3 for
    # forward + backward, per layer.
    C = m.chunk_size
    per_head = 108 * D * h + 4 * C * D + 4 * C * h
    assert flops_per_token(m, 4096)["titans.recurrence"] == pytest.approx(3 * m.n_layers * m.n_heads * per_head)


def test_flops_count_the_recurrence():
    cfg = load_config(CONFIGS / "hope-760m.yaml")
    flops = flops_per_token(cfg.model, 4096)
    n_matmul = parameter_counts(cfg.model)["total_params"] - cfg.model.vocab_size * cfg.model.d_model
    # The recurrence is a sizeable extra over 6 N (embedding lookups are not matmuls) ...
    assert flops["titans.recurrence"] > 0.1 * 6 * n_matmul
    # ... and the per-head count matches a direct tally for d_h = 128, C = 64, six memories.
    D, C, H = 128, 64, 12
    per_head = 3 * 2 * D * D + 6 * 2 * D * D + 2 * 2 * 6 * D * D + 2 * D * D + 4 * D * D / C + 3 * 2 * C * D + C * 6 * D
    assert flops["titans.recurrence"] == pytest.approx(3 * 24 * H * per_head)


def test_boundary_state_estimate_matches_the_fused_paths_layout(capsys):
    """The estimate's boundary states are the fused op's own buffer: n_slots x H x 6 x D x D fp32,
    where every packed document has its own chunk grid and final state."""
    import torch

    from hope_mega.memory_estimate import boundary_state_bytes_per_sequence
    from hope_mega.ops.titans_linear.fused import _layout

    cfg = load_config(CONFIGS / "hope-760m.yaml")
    T, C, H, D = cfg.train.seq_len, cfg.model.chunk_size, cfg.model.n_heads, cfg.model.head_dim
    for doc_len in (None, 512, 100, C):
        L = doc_len or T
        docs = [L] * (T // L) + ([T % L] if T % L else [])
        cu = torch.tensor([0] + [sum(docs[: i + 1]) for i in range(len(docs))])
        n_slots = _layout(1, T, C, cu if doc_len else None, "cpu")[3]
        expected = n_slots * H * 6 * D * D * 4
        assert boundary_state_bytes_per_sequence(cfg, doc_len) == pytest.approx(expected, rel=0.02), doc_len
    tp2 = load_config(CONFIGS / "hope-760m.yaml", ["parallel.tp=2"])
    assert boundary_state_bytes_per_sequence(tp2) * 2 == boundary_state_bytes_per_sequence(cfg)
    assert main(["params", "--config", str(CONFIGS / "hope-760m.yaml")]) == 0
    assert "memory.titans_boundary_states: " in capsys.readouterr().out
    assert main(["params", "--config", str(CONFIGS / "transformer-760m.yaml")]) == 0
    assert "titans_boundary_states" not in capsys.readouterr().out