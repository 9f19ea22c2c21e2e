import pytest

from hope_mega.cli import main
from hope_mega.config import ConfigError, load_config


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_overrides_apply_with_yaml_types(tmp_path):
    path = write(tmp_path, "model:\n  d_model: 64\n  n_heads: 2\n")
    cfg = load_config(path, ["model.n_layers=3", "train.lr=1e-3", "parallel.tp=2", "parallel.sequence_parallel=true",
                             "model.cms_levels=[{hidden: 32, period: 3}]"])
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.train.lr) == (64, 3, 1e-3)
    assert cfg.parallel.sequence_parallel is True
    assert cfg.model.cms_levels[0].period == 3 and cfg.model.head_dim == 32


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("model:\n  d_modle: 64\n", [], "model.d_modle: unknown key"),
        ("model:\n  d_model: sixty\n", [], "model.d_model: expected an integer, got 'sixty'"),
        ("model:\n  d_model: 100\n  n_heads: 3\n", [], "model.d_model: 100 is not divisible by model.n_heads=3"),
        ("model:\n  chunk_size: 0\n", [], "model.chunk_size: must be > 0, got 0"),
        ("model:\n  n_heads: 4\n", ["parallel.tp=3"], "model.n_heads: 4 is not divisible by parallel.tp=3"),
        ("train:\n  global_batch: 10\n  micro_batch: 4\n", [], "train.global_batch: 10 is not divisible by train.micro_batch=4"),
        ("model:\n  cms_levels: [{hidden: 8, period: 0}]\n", [], "model.cms_levels[0]: hidden and period must be > 0"),
        ("model: {}\n", ["train.bogus=1"], "train.bogus: unknown key"),
        ("model: {}\n", ["model.d_model"], "expected key=value"),
    ],
)
def test_bad_config_is_one_line_naming_file_and_key(tmp_path, text, overrides, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    assert str(err.value).startswith(str(path) + ": ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_cli_reports_config_error_without_traceback(tmp_path, capsys):
    path = write(tmp_path, "model:\n  n_heads: 5\n")
    assert main(["params", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"hope-mega params: error: {path}: model.d_model: 256 is not divisible by model.n_heads=5"


def test_memory_kind_and_expansion_are_validated():
    assert load_config(None, ["model.memory=mlp", "model.memory_expansion=3"]).model.memory_expansion == 3
    with pytest.raises(ConfigError, match="model.memory: 'matrix' is not one of 'linear', 'mlp'"):
        load_config(None, ["model.memory=matrix"])
    with pytest.raises(ConfigError, match="model.memory_expansion: must be > 0, got 0"):
        load_config(None, ["model.memory=mlp", "model.memory_expansion=0"])
