"""What a resume, a data-parallel re-cut, a skipped step and bf16 do to the training state, compared
as state (every fp32 master weight, moment, CMS accumulator and counter), not as losses."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from hope_mega import checkpoint
from hope_mega.parallel.zero import saved_zero_state

from train_launch import metrics, run_probe, run_train

# Shapes whose ZeRO parameter groups do not divide by 2 or 4 ranks, so the partitions are padded.
PADDED = ("model.d_model=33", "model.n_heads=3")


def logical_state(ckpt: Path) -> tuple[list[dict], dict]:
    """The ZeRO state of a checkpoint, whole (independent of the DP size that wrote it), and its
    model weights."""
    saved = json.loads((ckpt / checkpoint.TRAINER_STATE).read_text())
    dp = saved["world_size"] // saved["config"]["parallel"]["tp"]
    module = torch.load(ckpt / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    return saved_zero_state(ckpt, dp, 0), module


def assert_same_state(a: Path, b: Path) -> int:
    """Every fp32 master, per-element state, scalar state and group setting bitwise equal; the model
    weights too. Returns how many tensors were compared."""
    (groups_a, module_a), (groups_b, module_b) = logical_state(a), logical_state(b)
    assert len(groups_a) == len(groups_b)
    compared = 0
    for g, (ga, gb) in enumerate(zip(groups_a, groups_b)):
        assert torch.equal(ga["fp32"], gb["fp32"]), f"group {g}: fp32 master weights differ"
        assert ga["state"].keys() == gb["state"].keys(), g
        for key, value in ga["state"].items():
            if torch.is_tensor(value) and value.numel() > 1:
                assert torch.equal(value, gb["state"][key]), f"group {g}: {key} differs"
                compared += 1
            else:
                assert value == gb["state"][key], (g, key, value, gb["state"][key])
        assert ga["settings"]["steps_seen"] == gb["settings"]["steps_seen"], g
        compared += 1
    assert module_a.keys() == module_b.keys()
    for key, value in module_a.items():
        if torch.is_tensor(value):
            assert torch.equal(value, module_b[key]), key
    return compared


def group_paddings(ckpt: Path, dp: int) -> list[list[int]]:
    files = [ckpt / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(dp)]
    return [torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"]["group_paddings"] for f in files]


@pytest.fixture(scope="module")
def padded_dp2(tiny_data, tmp_path_factory):
    """DP=2 ZeRO-2 on padded shapes, 4 steps: step 4 is mid-period for the period-3 CMS level."""
    save = tmp_path_factory.mktemp("padded_dp2")
    run_train(2, tiny_data, save, *PADDED, "train.steps=4", "train.save_every=4")
    return save / checkpoint.tag_for(4)


@pytest.mark.parametrize("hops", [(1, 2), (4,)], ids=["2to1to2", "2to4"])
def test_resume_with_another_dp_size_restores_every_state_bitwise(padded_dp2, tiny_data, tmp_path, hops):
    assert any(p for paddings in group_paddings(padded_dp2, 2) for p in paddings), "the shapes must pad under ZeRO"
    source = padded_dp2
    for i, dp in enumerate(hops):
        run_dir = tmp_path / f"run{i}"
        shutil.copytree(source, run_dir / source.name)
        out = tmp_path / f"resaved{i}"
        proc = run_probe(dp, f"resave={out}", tiny_data, run_dir, *PADDED, "train.steps=4")
        assert f"resumed from {run_dir / source.name} at step 4" in proc.stdout
        source = out / checkpoint.tag_for(4)
        assert json.loads((source / checkpoint.TRAINER_STATE).read_text())["world_size"] == dp
    compared = assert_same_state(padded_dp2, source)
    # fp32 masters of 4 groups (2 periods x decay or not) and their moments, accumulators of period 3
    assert compared >= 14, compared


def test_non_finite_step_under_zero2_moves_no_state(tiny_data, tmp_path):
    run_probe(2, "nan_at=3", tiny_data, tmp_path, *PADDED, "train.steps=4", "train.save_every=1")
    m = metrics(tmp_path)
    assert m[3]["loss"] != m[3]["loss"] and m[2]["loss"] == m[2]["loss"]  # step 3 was skipped (NaN logged)
    assert assert_same_state(tmp_path / checkpoint.tag_for(2), tmp_path / checkpoint.tag_for(3)) >= 14
    groups_3, _ = logical_state(tmp_path / checkpoint.tag_for(3))
    groups_4, _ = logical_state(tmp_path / checkpoint.tag_for(4))
    # The next finite step trains again: the period-1 groups move.
    assert any(not torch.equal(a["fp32"], b["fp32"]) for a, b in zip(groups_3, groups_4))


@pytest.mark.parametrize("zero_stage,tp", [(0, 2), (2, 1)], ids=["zero0-tp2", "zero2-dp2"])
def test_bf16_keeps_fp32_parameters_gradients_and_checkpoints(tiny_data, tmp_path, zero_stage, tp):
    """bf16 is autocast: every parameter (the recurrence's initial states, gates and decays
    included) and every checkpointed weight stays fp32, gradients are summed in fp32, and
    DeepSpeed steps our optimizer itself (at ZeRO-0 not its FP16_UnfusedOptimizer). ZeRO-2
    overlaps its reductions with the backward; TP runs with one CUDA connection."""
    proc = run_probe(2, "facts", tiny_data, tmp_path, "train.dtype=bf16", f"parallel.zero_stage={zero_stage}",
                     f"parallel.tp={tp}", "train.steps=3")
    facts = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("FACTS "))[6:])
    assert set(facts["param_dtypes"].values()) == {"torch.float32"}, facts["param_dtypes"]
    assert facts["communication_dtype"] == "torch.float32"
    assert facts["base_optimizer"] == "CMSAdamW" and "FP16" not in facts["optimizer"], facts
    assert facts["overlap_comm"] == facts["contiguous_gradients"] == (zero_stage == 2)
    assert facts["cuda_device_max_connections"] == ("1" if tp > 1 else None)
    module = torch.load(tmp_path / checkpoint.tag_for(3) / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert {str(v.dtype) for v in module.values() if torch.is_tensor(v)} == {"torch.float32"}
    m = metrics(tmp_path)
    assert all(m[s]["loss"] == m[s]["loss"] for s in (1, 2, 3)) and m[3]["loss"] < m[1]["loss"]
    # The process group has a backend per device type (cpu:gloo here, cpu:gloo,cuda:nccl with
    # GPUs), so host-side collectives have one under NCCL too; megatron's groups inherit the map.
    assert facts["default_device_types"] == ["cpu"]
    assert facts["group_device_types"] == {"dp": ["cpu"], "tp": ["cpu"]}


def test_gpu_process_group_maps_cpu_tensors_to_gloo():
    from torch.distributed.distributed_c10d import Backend, BackendConfig

    from hope_mega.parallel.state import default_backend

    assert BackendConfig(Backend(default_backend(cuda=True))).get_device_backend_map() == {"cpu": "gloo", "cuda": "nccl"}
    assert default_backend(cuda=False) == "cpu:gloo"


def test_replicated_parameters_stay_identical_over_tp2_dp2(tiny_data, tmp_path):
    """4 processes, TP=2 x DP=2 with sequence parallelism: the two TP ranks reduce their replicated
    (norm) parameters over different data-parallel groups; after the run the copies are bitwise
    equal, and the trainer checked them before every save."""
    run_train(4, tiny_data, tmp_path, "parallel.tp=2", "parallel.sequence_parallel=true", "train.steps=3",
              "train.global_batch=4", "train.save_every=3")
    final = tmp_path / checkpoint.tag_for(3)
    shards = [torch.load(final / f"mp_rank_{r:02d}_model_states.pt", weights_only=False)["module"] for r in (0, 1)]
    replicated = [k for k in shards[0] if k.endswith("norm.weight")]  # RMSNorm weights: replicated over TP
    assert replicated
    for key in replicated:
        assert torch.equal(shards[0][key], shards[1][key]), key
    initial = torch.load(final / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert any(not torch.equal(initial[k], torch.ones_like(initial[k])) for k in replicated)  # they did train
