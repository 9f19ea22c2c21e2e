"""A split too small for one forward of every data-parallel rank is refused at start-up, naming
the split and the sizes, instead of logging val_loss 0.0 or failing deep in the loader."""

import pytest

from hope_mega.config import load_config
from hope_mega.data.loader import read_dataset_card
from hope_mega.train import PreflightError, preflight

from train_launch import CONFIG


def _cfg(tiny_data, tmp_path, *overrides):
    return load_config(str(CONFIG), [f"data.paths=[{tiny_data / 'data'}]", f"train.save_dir={tmp_path}", *overrides])


def test_val_split_smaller_than_one_forward_is_refused(tiny_data, tmp_path):
    card = read_dataset_card(tiny_data / "data")
    val, train = card["splits"]["val"]["rows"], card["splits"]["train"]["rows"]
    assert 0 < val < train // 2
    micro = val // 2 + 1  # two ranks x micro > val rows, one rank x micro <= val rows
    cfg = _cfg(tiny_data, tmp_path, "train.eval_every=2", f"train.micro_batch={micro}",
               f"train.global_batch={2 * micro}")
    preflight(cfg, world_size=1)
    with pytest.raises(PreflightError) as err:
        preflight(cfg, world_size=2)
    assert str(err.value) == (
        f"train.eval_every: the val split of {tiny_data / 'data'} has {val} rows, fewer than train.micro_batch x "
        f"data-parallel ranks = {micro} x 2, so no batch could be evaluated; set train.eval_every=0 or prepare "
        f"with a larger --split-val")
    preflight(_cfg(tiny_data, tmp_path, "train.eval_every=0", f"train.micro_batch={micro}",
                   f"train.global_batch={2 * micro}"), world_size=2)


def test_train_split_smaller_than_one_forward_is_refused(tiny_data, tmp_path):
    train = read_dataset_card(tiny_data / "data")["splits"]["train"]["rows"]
    cfg = _cfg(tiny_data, tmp_path, f"train.micro_batch={train + 1}", f"train.global_batch={train + 1}")
    with pytest.raises(PreflightError) as err:
        preflight(cfg, world_size=1)
    assert str(err.value).startswith(f"data.paths[0]: the train split of {tiny_data / 'data'} has {train} rows, "
                                     f"fewer than train.micro_batch x data-parallel ranks = {train + 1} x 1")
