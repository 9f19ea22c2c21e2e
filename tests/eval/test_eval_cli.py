"""`hope-mega eval` and lm-evaluation-harness, offline, on a converted TP=2 training checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from eval_checkpoints import EOS

from hope_mega.cli import main
from hope_mega.eval import harness
from hope_mega.eval.models import load_model
from hope_mega.eval.scoring import score
from hope_mega.eval.synthetic import make_parity

MAX_LENGTH = 64  # held-out documents are ~600 tokens: both sides read them in 10 rolling windows


@pytest.fixture(scope="module")
def hf_dir(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf")
    assert main(["convert", "--checkpoint", str(checkpoints["tp2"]), "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def lm_eval_results(hf_dir, checkpoints, tmp_path_factory):
    """One real `lm_eval` run (both local tasks), offline, as the README documents it."""
    work = tmp_path_factory.mktemp("lm_eval")
    tasks = harness.write_tasks(work / "tasks", checkpoints["data"] / "held_out.jsonl", harness.SAMPLE_MC)
    lm_eval = str(Path(sys.executable).with_name("lm_eval"))
    cmd = harness.lm_eval_command(hf_dir, work / "tasks", tasks, work / "out", max_length=MAX_LENGTH, lm_eval=lm_eval)
    env = {**os.environ, **harness.offline_env(), "HF_HOME": str(work / "hf_home"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (results,) = list((work / "out").rglob("results_*.json"))
    return json.loads(results.read_text())


def hope_eval(tmp_path, *args) -> dict:
    out = tmp_path / "results.json"
    assert main(["eval", *args, "--output", str(out)]) == 0
    return json.loads(out.read_text())


def test_rolling_perplexity_agrees_with_lm_eval(hf_dir, checkpoints, lm_eval_results, tmp_path):
    held_out = str(checkpoints["data"] / "held_out.jsonl")
    ours = {}
    # The exported folder (HF tokenizer, copied model code) and the checkpoint itself (sentencepiece,
    # native HopeLM from the joined TP shards) must give the same numbers.
    for name, model in (("hf", hf_dir), ("checkpoint", checkpoints["tp2"])):
        res = hope_eval(tmp_path / name, "--model", str(model), "--tasks", "ppl", "--text", held_out,
                        "--max-length", str(MAX_LENGTH))["tasks"]["ppl"]
        assert res["prefix_id"] == EOS and res["files"][held_out]["documents"] == 3
        ours[name] = res
    theirs = lm_eval_results["results"]["hope_local_ppl"]
    assert lm_eval_results["n-samples"]["hope_local_ppl"]["effective"] == 3
    bpb = {"lm_eval": theirs["bits_per_byte,none"], **{k: v["bits_per_byte"] for k, v in ours.items()}}
    print("bits per byte:", bpb, "| perplexity:", ours["hf"]["perplexity"])
    assert ours["hf"]["tokens"] == ours["checkpoint"]["tokens"] > 10 * MAX_LENGTH
    # Same tokens, same windows, same prefix: only float summation order differs.
    for name in ("hf", "checkpoint"):
        assert abs(bpb[name] - bpb["lm_eval"]) <= 1e-5 * bpb["lm_eval"], name
    assert abs(theirs["byte_perplexity,none"] - 2 ** ours["hf"]["bits_per_byte"]) <= 1e-4 * theirs["byte_perplexity,none"]
    # A tiny model two steps into training: far from good, far better than uniform over 515 ids.
    assert 2.0 < ours["hf"]["perplexity"] < 515


def test_multiple_choice_matches_an_independent_scoring(hf_dir, lm_eval_results):
    """lm-eval's acc / acc_norm recomputed from the HF model: the continuation " choice" after
    "Question: q\\nAnswer:", log-likelihood summed (acc) or divided by the choice's length in characters (acc_norm)."""
    model = load_model(hf_dir)
    docs = [json.loads(line) for line in harness.SAMPLE_MC.read_text().splitlines()]
    acc = acc_norm = 0
    for doc in docs:
        context = f"Question: {doc['question']}\nAnswer:"
        scores = []
        for choice in doc["choices"]:
            ctx = model.encode(context)
            whole = model.encode(context + " " + choice)
            assert whole[: len(ctx)] == ctx
            ids = torch.tensor([whole])
            with torch.no_grad():
                logp = torch.log_softmax(model.logits_fn(ids)[0, :-1].float(), -1)
            cont = torch.tensor(whole[len(ctx):])
            ll = logp[len(ctx) - 1 :].gather(1, cont.unsqueeze(1)).sum().item()
            scores.append((ll, ll / len(choice)))
        acc += max(range(len(scores)), key=lambda i: scores[i][0]) == doc["answer"]
        acc_norm += max(range(len(scores)), key=lambda i: scores[i][1]) == doc["answer"]
    theirs = lm_eval_results["results"]["hope_local_mc"]
    print(f"multiple choice: lm-eval acc {theirs['acc,none']}, acc_norm {theirs['acc_norm,none']}")
    assert theirs["acc,none"] == acc / len(docs) and theirs["acc_norm,none"] == acc_norm / len(docs)


def test_synthetic_tasks_through_the_command(hf_dir, tmp_path):
    res = hope_eval(tmp_path, "--model", str(hf_dir), "--tasks", "mqar,passkey,parity,modarith", "--examples", "8",
                    "--mqar-seq-len", "64", "--mqar-pairs", "8", "--passkey-lengths", "64,128",
                    "--parity-lengths", "16", "--modarith-lengths", "9", "--seed", "3")["tasks"]
    assert sorted(res) == ["modarith", "mqar", "parity", "passkey"]
    assert sorted(res["passkey"]) == ["128", "64"]
    assert res["passkey"]["128"]["seq_len"] == 128 and res["passkey"]["128"]["answers"] == 8 * 5
    assert res["parity"]["16"]["chance"] == 0.5 and res["modarith"]["9"]["chance"] == 0.2
    # The command's number is the scorer's on the same seeded examples, ids above the special ids.
    model = load_model(hf_dir)
    assert model.first_free_id == 4  # unk 0, bos 1, eos 2, pad 3 in the test tokenizer
    direct = score(model.logits_fn, make_parity(8, 16, 515, seed=3 + 16, first_id=4))
    assert direct["accuracy"] == res["parity"]["16"]["accuracy"]


def test_bad_inputs_are_one_line_errors(hf_dir, tmp_path, capsys):
    cases = [
        (["--model", str(hf_dir), "--tasks", "ppl,hellaswag"], "--tasks: unknown ['hellaswag'] (known: ppl, mqar, passkey, parity, modarith)"),
        (["--model", str(hf_dir), "--tasks", "ppl"], "--tasks ppl needs --text FILE [FILE ...]"),
        (["--model", str(tmp_path / "nope"), "--tasks", "parity"], f"--model {tmp_path / 'nope'}: no such file or folder"),
        (["--model", str(tmp_path), "--tasks", "parity"], f"{tmp_path} is not a checkpoint: it has no trainer_state.json and no step_* folders"),
        (["--model", str(hf_dir), "--tasks", "modarith", "--modarith-lengths", "8"], "modarith: seq_len 8 must be odd and >= 3"),
    ]
    for args, message in cases:
        assert main(["eval", *args]) == 2
        # Loading a model may log to stderr first; the error is the last line, without a traceback.
        err = capsys.readouterr().err.strip()
        last = err.splitlines()[-1]
        assert last.startswith("hope-mega eval: error: ") and message in last and "Traceback" not in err, err
