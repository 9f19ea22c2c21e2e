"""The launcher's preflight (slurm/preflight.py, the trainer's checks at the job's world size):
each misconfiguration the issue names fails at once with one clear line and exit code 2."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "train" / "tiny.yaml"

_spec = importlib.util.spec_from_file_location("slurm_preflight", REPO / "slurm" / "preflight.py")
preflight = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(preflight)


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory):
    """A tokenizer of the same size trained on other text: a different hash."""
    from hope_mega.cli import main
    from hope_mega.data.default_corpus import iter_chapters

    root = tmp_path_factory.mktemp("other_tok")
    with open(root / "corpus.jsonl", "w") as f:
        for i, doc in enumerate(iter_chapters()):
            if 150 <= i < 300:
                f.write(json.dumps(doc) + "\n")
    assert main(["tokenizer", "train", "--input", str(root / "corpus.jsonl"), "--output", str(root / "tok"),
                 "--vocab-size", "512"]) == 0
    return root / "tok"


def run(capsys, world, *overrides, gpus=1):
    code = preflight.main(["--world-size", str(world), "--gpus-per-node", str(gpus), str(TINY), *overrides])
    out, err = capsys.readouterr()
    return code, out, err


def base(tiny_data, save_dir):
    return [f"data.paths=[{tiny_data / 'data'}]", f"data.tokenizer={tiny_data / 'tok'}", f"train.save_dir={save_dir}"]


def test_ok_prints_what_the_launcher_needs(capsys, tiny_data, tmp_path):
    code, out, err = run(capsys, 2, *base(tiny_data, tmp_path / "save dir"), "train.steps=7")
    assert code == 0, err
    assert out.splitlines() == [f"PREFLIGHT_SAVE_DIR='{tmp_path / 'save dir'}'", "PREFLIGHT_STEPS=7"]


@pytest.mark.parametrize("world, overrides, message", [
    (3, ["parallel.tp=2"], "parallel.tp: world size 3 is not divisible by tp=2"),
    (3, [], "train.global_batch: 4 is not divisible by train.micro_batch x data-parallel size = 1 x 3"),
    (4, ["parallel.tp=2", "train.micro_batch=4"],
     "train.global_batch: 4 is not divisible by train.micro_batch x data-parallel size = 4 x 2"),
], ids=["tp", "batch", "batch-with-tp"])
def test_layout_errors(capsys, tiny_data, tmp_path, world, overrides, message):
    code, out, err = run(capsys, world, *base(tiny_data, tmp_path), *overrides)
    assert (code, out, err) == (2, "", f"preflight: error: {message}\n")


def test_missing_data_path(capsys, tiny_data, tmp_path):
    missing = tmp_path / "no-such-dataset"
    code, out, err = run(capsys, 2, *base(tiny_data, tmp_path / "save"), f"data.paths=[{missing}]")
    assert code == 2 and out == ""
    assert err.startswith("preflight: error: data.paths[0]: ") and str(missing) in err, err
    assert err.count("\n") == 1


def test_data_made_with_another_tokenizer(capsys, tiny_data, tmp_path, other_tokenizer):
    code, out, err = run(capsys, 2, *base(tiny_data, tmp_path / "save"), f"data.tokenizer={other_tokenizer}")
    assert code == 2 and out == ""
    assert err.startswith(f"preflight: error: data.tokenizer: {other_tokenizer} (hash "), err
    assert "is not the tokenizer the data was prepared with" in err and err.count("\n") == 1


def test_save_dir_not_writable(capsys, tiny_data, tmp_path):
    # A path under a regular file: refused for root too (a read-only mode bit is not).
    (tmp_path / "file").write_text("")
    save = tmp_path / "file" / "run"
    code, out, err = run(capsys, 2, *base(tiny_data, save))
    assert (code, out, err) == (2, "", f"preflight: error: train.save_dir: {save} is not writable (Not a directory)\n")


def test_nothing_to_launch(capsys, tiny_data, tmp_path):
    code, out, err = run(capsys, 0, *base(tiny_data, tmp_path), gpus=0)
    assert (code, out, err) == (2, "", "preflight: error: world size 0 with 0 processes per node: nothing to launch\n")


def test_config_error_is_one_line(capsys, tiny_data, tmp_path):
    code, out, err = run(capsys, 2, *base(tiny_data, tmp_path), "train.no_such_key=1")
    assert code == 2 and out == "" and err.startswith(f"preflight: error: {TINY}: ") and err.count("\n") == 1, err


def test_trainer_refuses_the_same_way_before_any_process_group(tiny_data, tmp_path):
    """The trainer runs the same checks itself (a launch without the sbatch scripts)."""
    proc = subprocess.run(
        [sys.executable, "-m", "hope_mega.train", "--config", str(TINY), *base(tiny_data, tmp_path),
         "parallel.tp=2"],
        capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "hope-mega train: error: parallel.tp: world size 1 is not divisible by tp=2"


def test_checkpoint_written_with_another_tp(capsys, tiny_data, tmp_path):
    """Resuming would fail only after every rank started; the launcher says so first."""
    ckpt = tmp_path / "save" / "step_00000005"
    ckpt.mkdir(parents=True)
    state = json.dumps({"step": 5, "config": {"parallel": {"tp": 2}}})
    (ckpt / "trainer_state.json").write_text(state)
    (ckpt / "manifest.json").write_text(json.dumps({"files": {"trainer_state.json": len(state)}}))
    code, out, err = run(capsys, 2, *base(tiny_data, tmp_path / "save"))
    message = (f"preflight: error: parallel.tp: {ckpt} was written with tp=2 and this run has tp=1; "
               f"resume with tp=2, use a new train.save_dir, or start from it with train.init_from={ckpt}\n")
    assert (code, out, err) == (2, "", message)
    # The same checkpoint cut short is not a resume point, so it does not stop the launch.
    (ckpt / "trainer_state.json").write_text(state[:-1])
    code, out, err = run(capsys, 2, *base(tiny_data, tmp_path / "save"))
    assert code == 0 and err == f"ignoring checkpoint {ckpt}: file trainer_state.json has {len(state) - 1} bytes, " \
                                f"the manifest says {len(state)}\n", err


@pytest.mark.parametrize("variable, value", [("SLURM_GPUS_PER_NODE", "h100:8"), ("SLURM_JOB_GPUS", "0,1"),
                                             ("CUDA_VISIBLE_DEVICES", "0")])
def test_gpus_requested_but_torch_sees_none_is_refused(capsys, monkeypatch, tiny_data, tmp_path, variable, value):
    """A CPU-only torch on a GPU allocation would train in fp32 on the CPU; this machine has no GPU,
    which is exactly the situation, so nothing is mocked."""
    import torch

    assert not torch.cuda.is_available()
    monkeypatch.setenv(variable, value)
    code, out, err = run(capsys, 2, *base(tiny_data, tmp_path))
    assert code == 2 and out == ""
    assert err.strip().startswith(f"preflight: error: GPUs were requested ({variable}={value}) but torch ")
    assert "sees none" in err and len(err.strip().splitlines()) == 1


def test_no_gpu_request_runs_on_the_cpu(capsys, monkeypatch, tiny_data, tmp_path):
    for variable in ("SLURM_GPUS_PER_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("SLURM_GPUS_PER_NODE", "0")
    code, out, err = run(capsys, 2, *base(tiny_data, tmp_path))
    assert code == 0, err
