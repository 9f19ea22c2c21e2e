"""Ready-to-run lm-evaluation-harness task folders over local files, and the offline command line.

The YAMLs in `lm_eval_tasks/` point at `__DATA_FILE__`; `write_tasks` copies them with absolute
data paths into a folder for `lm_eval --include_path`. `lm_eval_command` is the command the README
documents: `--model hf` on an exported folder, with the model's EOS as the prefix token of rolling
perplexity (the token every training document follows; the harness would otherwise use BOS,
which hope-mega training never shows the model) and BOS not added to contexts.

    python -m hope_mega.eval.harness --output TASK_DIR --ppl held_out.jsonl --mc questions.jsonl
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "lm_eval_tasks"
PLACEHOLDER = "__DATA_FILE__"
TASK_FILES = {"hope_local_ppl": "hope_local_ppl.yaml", "hope_local_mc": "hope_local_mc.yaml"}
SAMPLE_MC = TEMPLATES / "sample_mc.jsonl"


class TaskDataError(ValueError):
    """A data file lm_eval would reject or misread; the message names the file and line."""


def _check_mc(record: dict) -> str | None:
    if "answer" not in record:
        other = [k for k in ("label", "gold", "target") if k in record]
        return 'no "answer" field' + (f' (found "{other[0]}": rename it to "answer")' if other else "")
    choices = record.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        return '"choices" must be a list of at least two strings'
    answer = record["answer"]
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        return f'"answer" must be the index of the right choice, an integer in 0..{len(choices) - 1}; got {answer!r}'
    if not isinstance(record.get("question"), str):
        return 'no "question" string'
    return None


def _check_ppl(record: dict) -> str | None:
    if not isinstance(record.get("text"), str) or not record["text"]:
        return 'no non-empty "text" string'
    return None


# What each template reads of a record (its doc_to_text / doc_to_choice / doc_to_target fields).
CHECKS = {"hope_local_mc": _check_mc, "hope_local_ppl": _check_ppl}


def check_data(task: str, path: str | Path) -> int:
    """Check every line of a task's JSONL file against what its template makes lm_eval read;
    return the number of records. Raises TaskDataError naming the file and line."""
    count = 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                raise TaskDataError(f"{path}:{number}: not JSON ({err})") from None
            problem = CHECKS[task](record) if isinstance(record, dict) else "not a JSON object"
            if problem:
                raise TaskDataError(f"{path}:{number}: {task}: {problem}")
            count += 1
    if not count:
        raise TaskDataError(f"{path}: {task}: no records")
    return count


def write_tasks(output_dir: str | Path, ppl_data: str | Path | None = None, mc_data: str | Path | None = None) -> list[str]:
    """Write the task YAMLs for the given data files into output_dir; returns the task names.
    Each data file is checked first (`check_data`): nothing is written for a file lm_eval would reject."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for name, data in (("hope_local_ppl", ppl_data), ("hope_local_mc", mc_data)):
        if data is None:
            continue
        data = Path(data).resolve()
        if not data.is_file():
            raise FileNotFoundError(f"{name}: no data file {data}")
        check_data(name, data)
        text = (TEMPLATES / TASK_FILES[name]).read_text().replace(PLACEHOLDER, json.dumps(str(data)))
        (output_dir / TASK_FILES[name]).write_text(text)
        names.append(name)
    return names


def offline_env() -> dict[str, str]:
    """Environment under which the harness reads only local files."""
    return {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def lm_eval_command(
    hf_dir: str | Path, tasks_dir: str | Path, tasks: list[str], output: str | Path | None = None,
    max_length: int = 2048, batch_size: int = 1, lm_eval: str = "lm_eval", device: str = "auto",
) -> list[str]:
    """The lm_eval command line; `device` auto runs on a GPU when this process sees one."""
    from ..device import pick_device

    config = json.loads((Path(hf_dir) / "config.json").read_text())
    model_args = [f"pretrained={Path(hf_dir).resolve()}", "trust_remote_code=True", "add_bos_token=False",
                  f"max_length={max_length}", "dtype=float32"]
    eos = config.get("eos_id", config.get("eos_token_id"))
    if eos is not None:
        model_args.append(f"prefix_token_id={eos}")
    cmd = [lm_eval, "--model", "hf", "--model_args", ",".join(model_args), "--include_path", str(tasks_dir),
           "--tasks", ",".join(tasks), "--batch_size", str(batch_size), "--device", str(pick_device(device))]
    if output is not None:
        cmd += ["--output_path", str(output)]
    return cmd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="write local lm-eval task YAMLs and print the offline command")
    p.add_argument("--output", required=True, help="folder for the task YAMLs")
    p.add_argument("--ppl", help="JSONL of {\"text\": ...} documents for hope_local_ppl")
    p.add_argument("--mc", help=f"JSONL of questions for hope_local_mc (default: {SAMPLE_MC.name})")
    p.add_argument("--model", default="HF_DIR", help="exported folder to put in the printed command")
    args = p.parse_args(argv)
    try:
        names = write_tasks(args.output, args.ppl, args.mc or SAMPLE_MC)
    except (TaskDataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    env = " ".join(f"{k}={v}" for k, v in offline_env().items())
    if Path(args.model, "config.json").is_file():
        cmd = lm_eval_command(args.model, args.output, names)
    else:
        cmd = ["lm_eval", "--model", "hf", "--model_args",
               f"pretrained={args.model},trust_remote_code=True,add_bos_token=False,prefix_token_id=EOS_ID",
               "--include_path", args.output, "--tasks", ",".join(names), "--batch_size", "1"]
    print(env, shlex.join(cmd))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
