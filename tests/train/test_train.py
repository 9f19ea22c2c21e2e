"""`hope-mega train` in real processes: parallel layouts agree, CMS periods hold, kill -9 resumes exactly."""

import shutil
import subprocess
import time

import pytest
import torch

from hope_mega import checkpoint
from hope_mega.parallel.owner_dp import saved_optimizer_state

from train_launch import env, kill_tree, metrics, run_probe, run_train, train_command


# Every test runs with CMS AdamW under ZeRO-2, with M3 on its whole-matrix engine, and with CMS
# AdamW on a model whose Titans memories are MLPs (spec §2b). M3's eps is near this model's
# gradient entries: with 1e-8 the first steps divide by |g| itself and 1e-7 differences in
# reduction order grow into different runs. f=2 makes the slow momentum act within the 9 steps for
# every level (the period-3 level's 2nd update is at step 6).
M3 = ("train.optimizer=m3", "m3.lr=1e-4", "m3.eps=1e-4", "m3.f=2")
MLP_MEMORY = ("model.memory=mlp",)
VARIANTS = {"adamw": (), "m3": M3, "mlp-memory": MLP_MEMORY}


def rel(a, b):
    return abs(a - b) / max(abs(a), 1e-12)


def loss_tolerance(variant, step: int) -> float:
    """How far the losses of one run at two data-parallel sizes may differ at `step`.

    DP averages two partial sums where one process sums four: fp32 rounding differs only. With
    MLP memories the gradient norm spikes at step 7 (~1 -> 6.4) and every step after it
    multiplies that rounding by ~40 (on one CI machine 1.7e-7 at step 7, 5.4e-7 at 8, 2.2e-5 at
    9), so past the spike the runs are held to 1e-3 only."""
    return 1e-3 if variant == MLP_MEMORY and step > 7 else 1e-5


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    return VARIANTS[request.param]


@pytest.fixture(scope="module")
def single(tiny_data, tmp_path_factory, variant):
    """The reference: one process, 9 steps, a checkpoint after every step."""
    save = tmp_path_factory.mktemp("single")
    run_train(1, tiny_data, save, "train.save_every=1", *variant)
    return save


@pytest.fixture(scope="module")
def dp2(tiny_data, tmp_path_factory, variant):
    """Data parallel over 2 processes (ZeRO-2 for AdamW) at the same global batch, uninterrupted."""
    save = tmp_path_factory.mktemp("dp2")
    run_train(2, tiny_data, save, "train.save_every=1", *variant)
    return save


def model_states(ckpt):
    return torch.load(ckpt / "mp_rank_00_model_states.pt", weights_only=False)["module"]


def test_loss_falls_and_metrics_are_complete(single):
    m = metrics(single)
    assert sorted(m) == list(range(1, 10))
    for rec in m.values():
        assert {"step", "loss", "lr", "grad_norm", "tokens_per_s"} <= set(rec)
    assert m[9]["loss"] < m[1]["loss"] - 0.3


def test_data_parallel_zero2_matches_single_process(single, dp2, variant):
    a, b = metrics(single), metrics(dp2)
    for step in range(1, 10):
        assert a[step]["data_digest"] == b[step]["data_digest"], f"step {step}: different samples"
        assert rel(a[step]["loss"], b[step]["loss"]) <= loss_tolerance(variant, step), (step, a[step]["loss"], b[step]["loss"])


@pytest.mark.parametrize("sp", [False, True], ids=["tp2", "tp2-sp"])
def test_tensor_parallel_matches_single_process(single, tiny_data, tmp_path, sp, variant):
    if variant == M3 and not sp:
        # M3 sees the same sharded matrices with and without sequence parallelism (which moves
        # only activations); the tp2-sp run covers it, and AdamW covers TP without SP.
        pytest.skip("M3 under TP is covered by the tp2-sp run")
    if variant == MLP_MEMORY:
        # The gradient norm of this run spikes at step 7 (1.6 -> 6.4) and amplifies the layouts'
        # fp32 rounding a hundredfold (TP=2 grad norm off by 2e-3 there, 6e-2 a step later); at a
        # learning rate without the spike the loss no longer falls enough in 9 steps for the
        # reference run's own test. TP parity with MLP memories: tests/parallel/test_tensor_parallel.py.
        pytest.skip("chaotic at this learning rate; see tests/parallel for TP with MLP memories")
    run_train(2, tiny_data, tmp_path, "parallel.tp=2", f"parallel.sequence_parallel={str(sp).lower()}",
              "parallel.zero_stage=1", *variant)
    a, b = metrics(single), metrics(tmp_path)
    for step in range(1, 10):
        assert rel(a[step]["loss"], b[step]["loss"]) <= 1e-5, (step, a[step]["loss"], b[step]["loss"])
        assert rel(a[step]["grad_norm"], b[step]["grad_norm"]) <= 1e-4


def test_cms_level_with_period_3_changes_only_every_third_step(single):
    states = {s: model_states(single / checkpoint.tag_for(s)) for s in range(1, 10)}
    slow = [k for k, v in states[1].items() if ".cms.levels.1." in k and torch.is_tensor(v)]
    fast = [k for k, v in states[1].items() if ".cms.levels.0." in k and k.endswith("weight")]
    assert slow and fast
    for step in range(2, 10):
        changed = any(not torch.equal(states[step][k], states[step - 1][k]) for k in slow)
        assert changed == (step % 3 == 0), f"period-3 level changed={changed} at step {step}"
        assert all(not torch.equal(states[step][k], states[step - 1][k]) for k in fast)


def test_kill_9_and_restart_continues_exactly(dp2, tiny_data, tmp_path, variant):
    """Kill -9 a DP=2 run mid-way, cut its newest checkpoint short, restart the same command."""
    kill_after = 4 + int(time.time()) % 3  # a step in 4..6: mid-period for the period-3 level
    cmd = train_command(2, tiny_data, tmp_path, "train.save_every=1", *variant)
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while not (tmp_path / checkpoint.tag_for(kill_after + 1)).exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    kill_tree(proc.pid)
    proc.wait()
    # The newest checkpoint is cut short on disk: the restart must skip it and use the one before.
    newest = checkpoint.list_checkpoints(tmp_path)[0]
    victim = newest / "mp_rank_00_model_states.pt"
    victim.write_bytes(victim.read_bytes()[:100])
    resumed_from = int(checkpoint.list_checkpoints(tmp_path)[1].name.split("_")[1])

    out = run_train(2, tiny_data, tmp_path, "train.save_every=1", *variant)
    assert f"ignoring checkpoint {newest}: file mp_rank_00_model_states.pt has 100 bytes" in out.stdout
    assert f"resumed from {tmp_path / checkpoint.tag_for(resumed_from)} at step {resumed_from}" in out.stdout

    a, b = metrics(dp2), metrics(tmp_path)
    assert sorted(b) == list(range(1, 10))
    for step in range(1, 10):
        # Same process layout and reduction order as the uninterrupted run: bitwise equal.
        assert a[step]["loss"] == b[step]["loss"], (step, a[step]["loss"], b[step]["loss"])
        assert a[step]["data_digest"] == b[step]["data_digest"], f"step {step}: data skipped or repeated"
    final_a = model_states(dp2 / checkpoint.tag_for(9))
    final_b = model_states(tmp_path / checkpoint.tag_for(9))
    for key, value in final_a.items():
        if torch.is_tensor(value):
            assert torch.equal(value, final_b[key]), key
    if variant == M3:
        assert_same_m3_state(dp2 / checkpoint.tag_for(9), tmp_path / checkpoint.tag_for(9))
    # The RNG each rank carries on (dropout-free today, but anything random later would diverge).
    for rank in (0, 1):
        rng_a, rng_b = (torch.load(d / checkpoint.tag_for(9) / f"rank_{rank:05d}.pt", weights_only=False)["torch_rng"]
                        for d in (dp2, tmp_path))
        assert torch.equal(rng_a, rng_b), f"rank {rank}: the torch RNG after the resume differs"


def assert_same_m3_state(a, b):
    """Every M3 and AdamW state of every tensor (moments, slow momentum and its NS, period sums,
    counters) bitwise equal, whatever DP size wrote each checkpoint."""
    (steps_a, state_a), (steps_b, state_b) = saved_optimizer_state(a), saved_optimizer_state(b)
    assert steps_a == steps_b
    assert state_a.keys() == state_b.keys()
    kinds = set()
    for name, entry in state_a.items():
        assert entry.keys() == state_b[name].keys(), name
        kinds.add(frozenset(entry))
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(state_b[name][key])), (name, key)
    assert any("slow_orth" in k for k in kinds) and any("grad_acc" in k for k in kinds), kinds


def test_cut_short_checkpoint_is_ignored_with_a_message(single, tmp_path):
    shutil.copytree(single / checkpoint.tag_for(8), tmp_path / checkpoint.tag_for(8))
    shutil.copytree(single / checkpoint.tag_for(9), tmp_path / checkpoint.tag_for(9))
    (tmp_path / checkpoint.tag_for(9) / checkpoint.TRAINER_STATE).unlink()
    messages = []
    assert checkpoint.latest_valid(tmp_path, log=messages.append) == tmp_path / checkpoint.tag_for(8)
    assert messages == [f"ignoring checkpoint {tmp_path / checkpoint.tag_for(9)}: missing file {checkpoint.TRAINER_STATE}"]
    (tmp_path / checkpoint.tag_for(8) / checkpoint.MANIFEST).unlink()
    messages.clear()
    assert checkpoint.latest_valid(tmp_path, log=messages.append) is None
    assert messages[1].endswith("no manifest.json (the save did not finish)")


def test_resume_with_another_data_parallel_size(dp2, tiny_data, tmp_path, variant):
    """A DP=2 checkpoint resumed by one process: the optimizer state (Adam moments, CMS
    accumulators mid-period; ZeRO-2's partitions re-cut, M3's tensors re-assigned to owners) goes
    to DP=1 and the data order goes on unchanged."""
    shutil.copytree(dp2 / checkpoint.tag_for(4), tmp_path / checkpoint.tag_for(4))
    out = run_train(1, tiny_data, tmp_path, *variant)
    assert f"resumed from {tmp_path / checkpoint.tag_for(4)} at step 4" in out.stdout
    a, b = metrics(dp2), metrics(tmp_path)
    assert sorted(b) == list(range(5, 10))
    # The resumed steps run at DP=1 against DP=2's: the same rounding as in the test above.
    for step in range(5, 10):
        assert a[step]["data_digest"] == b[step]["data_digest"], f"step {step}: different samples"
        assert rel(a[step]["loss"], b[step]["loss"]) <= loss_tolerance(variant, step), (step, a[step]["loss"], b[step]["loss"])
    if variant == M3:
        # What the DP=1 resume restored, written straight back: every M3 state and weight as saved.
        run_dir, out = tmp_path / "resume", tmp_path / "resaved"
        shutil.copytree(dp2 / checkpoint.tag_for(4), run_dir / checkpoint.tag_for(4))
        run_probe(1, f"resave={out}", tiny_data, run_dir, "train.steps=4", *variant)
        assert_same_m3_state(dp2 / checkpoint.tag_for(4), out / checkpoint.tag_for(4))
        saved, resaved = model_states(dp2 / checkpoint.tag_for(4)), model_states(out / checkpoint.tag_for(4))
        assert saved.keys() == resaved.keys()
        assert all(torch.equal(v, resaved[k]) for k, v in saved.items() if torch.is_tensor(v))


def test_start_from_converted_weights_at_another_tp_size(single, tiny_data, tmp_path, variant):
    """train.init_from: the step-9 weights of the TP=1 run, loaded by a fresh TP=2 run and a fresh
    TP=1 run: both start from the same model (same first loss), far below a fresh start."""
    if variant == M3:
        # init_from reads weights only and starts a fresh optimizer, so M3 adds nothing to what
        # AdamW's run checks (the matrix memories) and the MLP-memory run (their weights).
        pytest.skip("weights only: covered by the adamw and mlp-memory runs")
    source = single / checkpoint.tag_for(9)
    runs = {}
    for tp in (1, 2):
        save = tmp_path / f"tp{tp}"
        out = run_train(tp, tiny_data, save, f"parallel.tp={tp}", f"train.init_from={source}", "train.steps=1",
                        "parallel.zero_stage=1", *variant)
        assert f"initialised from {source}" in out.stdout
        runs[tp] = metrics(save)[1]["loss"]
    assert rel(runs[1], runs[2]) <= 1e-5
    assert runs[1] < metrics(single)[1]["loss"] - 0.3
