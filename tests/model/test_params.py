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
