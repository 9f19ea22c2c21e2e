"""Which device a command runs on, and the figures that depend on it."""

import json
import tempfile
from pathlib import Path

import pytest
import torch

from hope_mega.cli import main
from hope_mega.device import DeviceError, gpus_requested, pick_device, require_gpu_if_requested
from hope_mega.metrics import peak_tflops_of

TINY = str(Path(__file__).parents[2] / "configs" / "hope-tiny.yaml")


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0), ("NVIDIA H200 NVL", 835.0), ("NVIDIA GH200 480GB", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0), ("NVIDIA B200", 2250.0),
    ("NVIDIA RTX 6000 Ada Generation", None), ("NVIDIA L40S", None),
])
def test_device_peaks_match_whole_names_not_substrings(name, peak):
    assert peak_tflops_of(name) == peak


@pytest.mark.parametrize("env, asked", [
    ({}, None), ({"SLURM_GPUS_PER_NODE": "0"}, None), ({"CUDA_VISIBLE_DEVICES": ""}, None),
    ({"SLURM_GPUS_PER_NODE": "h100:4"}, "SLURM_GPUS_PER_NODE=h100:4"), ({"SLURM_GPUS_ON_NODE": "8"}, "SLURM_GPUS_ON_NODE=8"),
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, "CUDA_VISIBLE_DEVICES=0,1"),
])
def test_gpu_requests_are_read_from_the_launch(env, asked):
    assert gpus_requested(env) == asked
    # This machine has no GPU: a request is refused, its absence runs on the CPU.
    assert not torch.cuda.is_available()
    if asked:
        with pytest.raises(DeviceError, match="GPUs were requested"):
            require_gpu_if_requested(env)
    else:
        assert require_gpu_if_requested(env) is False


def test_commands_pick_the_gpu_when_there_is_one_and_refuse_a_missing_one(capsys):
    from hope_mega.eval.harness import lm_eval_command

    assert pick_device("auto") == torch.device("cpu")  # no GPU here
    with pytest.raises(DeviceError, match="--device cuda"):
        pick_device("cuda")
    assert main(["smoke", "--config", TINY, "--seq-len", "16", "--batch", "1"]) == 0
    assert "hope-tiny on cpu (fp32)" in capsys.readouterr().out
    assert main(["smoke", "--config", TINY, "--device", "cuda"]) == 2
    assert "--device cuda: torch" in capsys.readouterr().err
    with tempfile.TemporaryDirectory() as d:
        Path(d, "config.json").write_text(json.dumps({"eos_id": 2}))
        cmd = lm_eval_command(d, d, ["hope_local_ppl"])
        assert cmd[cmd.index("--device") + 1] == "cpu"
        with pytest.raises(DeviceError):
            lm_eval_command(d, d, ["hope_local_ppl"], device="cuda")
