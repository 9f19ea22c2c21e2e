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
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "lm_eval_tasks"
PLACEHOLDER = "__DATA_FILE__"
TASK_FILES = {"hope_local_ppl": "hope_local_ppl.yaml", "hope_local_mc": "hope_local_mc.yaml"}
SAMPLE_MC = TEMPLATES / "sample_mc.jsonl"


def write_tasks(output_dir: str | Path, ppl_data: str | Path | None = None, mc_data: str | Path | None = None) -> list[str]:
    """Write the task YAMLs for the given data files into output_dir; returns the task names."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for name, data in (("hope_local_ppl", ppl_data), ("hope_local_mc", mc_data)):
        if data is None:
            continue
        data = Path(data).resolve()
        if not data.is_file():
            raise FileNotFoundError(f"{name}: no data file {data}")
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
    names = write_tasks(args.output, args.ppl, args.mc or SAMPLE_MC)
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
