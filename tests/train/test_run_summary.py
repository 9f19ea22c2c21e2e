"""The trainer's start-of-run summary: the numbers a wrong launch would show first."""

from hope_mega.config import load_config
from hope_mega.params import parameter_counts
from hope_mega.run_summary import describe_run, model_state_bytes

from train_launch import CONFIG


def test_model_state_bytes_follow_zero_stage_tp_and_dtype():
    P = 1_000_000
    assert model_state_bytes(P, tp=1, dp=1, zero_stage=0, bf16=False) == 16 * P
    assert model_state_bytes(P, tp=1, dp=4, zero_stage=1, bf16=False) == 8 * P + 2 * P
    assert model_state_bytes(P, tp=2, dp=4, zero_stage=2, bf16=True) == (2 + 0.5 + 3) * P / 2


def test_summary_names_model_layout_tokens_data_start_and_memory():
    cfg = load_config(str(CONFIG), ["data.paths=[data/x]", "train.save_dir=run", "train.steps=100",
                                    "train.micro_batch=1", "train.global_batch=4"])
    total = parameter_counts(cfg.model)["total_params"]
    card = {"splits": {"train": {"rows": 200}, "val": {"rows": 7}}}
    lines = describe_run(cfg, 2, card, 50, 6400, False, "run/step_00000050").splitlines()
    assert lines[0] == f"model: hope-test (titans), {total:,} parameters, 2 layers x d_model 32, 2 heads, vocab 512"
    assert lines[1] == ("layout: 2 process(es) = tp 1 x dp 2, ZeRO-2, fp32; micro_batch 1 x 2 rank(s) x 2 "
                        "accumulation = global_batch 4")
    assert lines[2] == "tokens: 128 a step (4 x seq_len 32), 12,800 over 100 steps"
    assert lines[3] == "data: data/x: 200 train rows (the remaining 50 steps read 1.00 epochs), 7 val rows"
    assert lines[4] == "start: step 50 (6,400 tokens), resumed from run/step_00000050"
    assert lines[5].startswith(f"memory: model states ~{(4 + 2 + 4) * total / 2**30:.2f} GiB a rank")
