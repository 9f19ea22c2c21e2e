"""Throughput of `hope-mega prep` against raw SentencePiece encoding of the same documents.

    python bench/prep_throughput.py --input /data/corpus/*.txt [--tokenizer DIR] [--workers 2]

Raw: a pool of `--workers` processes, each holding every document in memory before the clock
starts, encodes ~2 MB slices of the documents (one thread per process, batches of 256 documents,
as prep does); the rate is all tokens over the time from the first slice's start to the last
slice's end. Prep: the full `hope-mega prep` command with the same worker count (reading files,
splitting, encoding, train/val routing, packing, zstd MDS shards, index merge, card), timed as
a subprocess from start to exit. Both count one EOS per document, so the token totals match.
Printed: both rates and prep/raw. Without --tokenizer, a 32K tokenizer is trained first.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SLICE_BYTES = 2 << 20
BATCH = 256

_docs: list[str] = []
_sp = None


def _load_documents(inputs: list[str]) -> list[str]:
    from hope_mega.data.readers import UnitReader, expand_inputs, plan_units

    docs = []
    for unit in plan_units(expand_inputs(inputs), 1 << 40, "text"):
        docs.extend(UnitReader(unit).documents())
    return docs


def _init_raw_worker(inputs: list[str], model: str) -> None:
    global _docs, _sp
    import sentencepiece as spm

    _docs = _load_documents(inputs)
    _sp = spm.SentencePieceProcessor(model_file=model)


def _encode_slice(bounds: tuple[int, int]) -> tuple[int, float, float]:
    start, stop = bounds
    t0 = time.time()
    tokens = 0
    for i in range(start, stop, BATCH):
        for ids in _sp.encode(_docs[i:min(i + BATCH, stop)], out_type=int, num_threads=1):
            tokens += len(ids) + 1  # + EOS, as prep writes
    return tokens, t0, time.time()


def raw_rate(inputs: list[str], model: str, workers: int) -> tuple[int, float]:
    docs = _load_documents(inputs)
    slices, start, size = [], 0, 0
    for i, d in enumerate(docs):
        size += len(d)
        if size >= SLICE_BYTES:
            slices.append((start, i + 1))
            start, size = i + 1, 0
    if start < len(docs):
        slices.append((start, len(docs)))
    with mp.get_context("spawn").Pool(workers, _init_raw_worker, (inputs, model)) as pool:
        pool.map(time.sleep, [0.5] * workers, chunksize=1)  # every worker has loaded its copy
        results = pool.map(_encode_slice, slices, chunksize=1)
    tokens = sum(r[0] for r in results)
    wall = max(r[2] for r in results) - min(r[1] for r in results)
    return tokens, wall


def prep_rate(inputs: list[str], tokenizer: str, workers: int, seq_len: int, out: Path) -> tuple[int, float]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "hope_mega.cli", "prep", "--tokenizer", tokenizer,
           "--input", *inputs, "--output", str(out), "--workers", str(workers),
           "--seq-len", str(seq_len), "--split-val", "0.001", "--quiet"]
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    card = json.loads((out / "dataset_card.json").read_text())
    return card["tokens_written"], wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", required=True)
    parser.add_argument("--tokenizer", help="tokenizer folder; default: train a 32K one first")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=1, help="alternating raw/prep rounds")
    parser.add_argument("--workdir", help="scratch folder (default: a temp dir, removed)")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="prep-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer = args.tokenizer
        if tokenizer is None:
            from hope_mega.data.tokenizer_train import train_tokenizer

            t0 = time.time()
            tokenizer = str(work / "tokenizer")
            train_tokenizer(args.input, tokenizer, vocab_size=32000, sample_sentences=2_000_000)
            print(f"trained a 32K tokenizer in {time.time() - t0:.1f} s")
        model = str(Path(tokenizer) / "tokenizer.model")
        size = sum(os.path.getsize(p) for p in _expand(args.input))
        print(f"input: {size / 1e6:.1f} MB in {len(_expand(args.input))} files; "
              f"{args.workers} workers; cpu_count={os.cpu_count()}")
        ratios = []
        for round_ in range(args.repeat):
            raw_tokens, raw_wall = raw_rate(args.input, model, args.workers)
            prep_tokens, prep_wall = prep_rate(args.input, tokenizer, args.workers, args.seq_len,
                                               work / "out")
            if raw_tokens != prep_tokens:
                print(f"warning: token totals differ (raw {raw_tokens}, prep {prep_tokens})")
            raw_r, prep_r = raw_tokens / raw_wall, prep_tokens / prep_wall
            ratios.append(prep_r / raw_r)
            print(f"round {round_ + 1}: raw encode {raw_r / 1e6:.3f} M tok/s ({raw_wall:.1f} s), "
                  f"hope-mega prep {prep_r / 1e6:.3f} M tok/s ({prep_wall:.1f} s), "
                  f"{prep_tokens / 1e6:.1f} M tokens, prep/raw = {ratios[-1]:.3f}")
        print(f"prep/raw ratio: median {statistics.median(ratios):.3f} over {len(ratios)} round(s)")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _expand(inputs: list[str]) -> list[Path]:
    from hope_mega.data.readers import expand_inputs

    return expand_inputs(inputs)


if __name__ == "__main__":
    sys.exit(main())
