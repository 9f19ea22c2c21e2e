"""`hope-mega eval`: perplexity on text files and the synthetic tasks, to a JSON file and a table.

Each synthetic task runs at several sequence lengths (passkey: growing contexts; parity and
modular arithmetic: growing inputs, which is where length generalization shows) with a fixed
seed per length, so two models evaluated with the same arguments see the same examples.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from .models import EvalError

TASKS = ("ppl", "mqar", "passkey", "parity", "modarith")


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="perplexity and synthetic tasks on an HF folder or a checkpoint")
    p.add_argument("--model", required=True, help="Hugging Face folder, step_* checkpoint or train.save_dir")
    p.add_argument("--tasks", default="ppl", help=f"comma-separated, from {','.join(TASKS)}")
    p.add_argument("--text", nargs="+", default=[], help="held-out text: .txt files (one document each) or .jsonl")
    p.add_argument("--output", help="results JSON (default: print only)")
    p.add_argument("--tokenizer", help="tokenizer folder for a checkpoint (default: its data.tokenizer)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="Hugging Face models only")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: a GPU when there is one")
    p.add_argument("--max-length", type=int, default=2048, help="perplexity window (lm-eval's max_length)")
    p.add_argument("--prefix-id", type=int, help="token scored documents start from (default: EOS)")
    p.add_argument("--examples", type=int, default=64, help="examples per synthetic task and length")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mqar-seq-len", type=_ints, default=[128, 256], help="MQAR sequence lengths")
    p.add_argument("--mqar-pairs", type=int, default=16, help="key-value pairs per MQAR example")
    p.add_argument("--passkey-lengths", type=_ints, default=[256, 512, 1024, 2048])
    p.add_argument("--passkey-digits", type=int, default=5)
    p.add_argument("--parity-lengths", type=_ints, default=[16, 32, 64, 128])
    p.add_argument("--modarith-lengths", type=_ints, default=[7, 15, 31, 63])
    p.add_argument("--modulus", type=int, default=5)
    p.set_defaults(func=_run)


def _synthetic_runs(args) -> list[tuple[str, int, dict]]:
    """(task, seq_len, generator kwargs) for every requested synthetic evaluation."""
    runs = []
    for length in args.mqar_seq_len:
        runs.append(("mqar", length, {"num_pairs": args.mqar_pairs}))
    for length in args.passkey_lengths:
        runs.append(("passkey", length, {"digits": args.passkey_digits}))
    for length in args.parity_lengths:
        runs.append(("parity", length, {}))
    for length in args.modarith_lengths:
        runs.append(("modarith", length, {"modulus": args.modulus}))
    return runs


def evaluate(args) -> dict:
    from .models import load_model
    from .perplexity import perplexity, read_documents
    from .scoring import score
    from .synthetic import GENERATORS

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise EvalError(f"--tasks: unknown {unknown} (known: {', '.join(TASKS)})")
    if "ppl" in tasks:
        if not args.text:
            raise EvalError("--tasks ppl needs --text FILE [FILE ...]")
        missing = [f for f in args.text if not Path(f).is_file()]
        if missing:
            raise EvalError(f"--text: no such file {missing[0]}")
    model = load_model(args.model, args.tokenizer, args.dtype, args.device)
    results: dict = {"model": model.name, "tasks": {}}
    if "ppl" in tasks:
        if model.encode is None:
            raise EvalError(f"--model {args.model}: no tokenizer to encode --text with")
        prefix = args.prefix_id if args.prefix_id is not None else model.eos_id
        if prefix is None:
            raise EvalError(f"--model {args.model}: no EOS id known; pass --prefix-id")
        per_file = {}
        for f in args.text:
            try:
                docs = read_documents(f)
            except (ValueError, UnicodeDecodeError) as err:
                raise EvalError(f"--text {f}: {err}") from None
            per_file[f] = perplexity(model.logits_fn, model.encode, docs, prefix, args.max_length)
        total = _combine(per_file.values())
        results["tasks"]["ppl"] = {"prefix_id": prefix, "max_length": args.max_length, "files": per_file, **total}
    first = model.first_free_id
    for task, length, kwargs in _synthetic_runs(args):
        if task not in tasks:
            continue
        start = time.perf_counter()
        try:
            batch = GENERATORS[task](args.examples, length, model.vocab_size, seed=args.seed + length,
                                     first_id=first, **kwargs)
        except ValueError as err:
            raise EvalError(str(err)) from None
        res = score(model.logits_fn, batch, args.batch_size)
        res["seconds"] = round(time.perf_counter() - start, 2)
        results["tasks"].setdefault(task, {})[str(length)] = {**res, **kwargs}
    return results


def _combine(parts) -> dict:
    parts = list(parts)
    nll = sum(p["nll"] for p in parts)
    tokens = sum(p["tokens"] for p in parts)
    n_bytes = sum(p["bytes"] for p in parts)
    return {
        "tokens": tokens,
        "bytes": n_bytes,
        "nll": nll,
        "perplexity": math.exp(nll / tokens) if tokens else float("nan"),
        "bits_per_byte": nll / math.log(2) / n_bytes if n_bytes else float("nan"),
    }


def format_table(results: dict) -> str:
    rows = [("task", "setting", "metric", "value")]
    for task, res in results["tasks"].items():
        if task == "ppl":
            for f, r in res["files"].items():
                rows.append(("ppl", Path(f).name, "perplexity", f"{r['perplexity']:.4f}"))
                rows.append(("ppl", Path(f).name, "bits_per_byte", f"{r['bits_per_byte']:.4f}"))
            continue
        for length, r in res.items():
            rows.append((task, f"len {length}", "accuracy", f"{r['accuracy']:.4f} (chance {r['chance']:.4f})"))
            rows.append((task, f"len {length}", "exact_match", f"{r['exact_match']:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    results = evaluate(args)
    print(format_table(results))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {out}")
    return 0
