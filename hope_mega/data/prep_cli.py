"""`hope-mega prep`: tokenize raw corpora into packed, sharded MDS training data."""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prep",
        help="tokenize .txt/.jsonl[.gz|.zst]/.parquet into packed MDS shards (resumable)",
        description="Tokenize corpora into rows of seq_len+1 tokens stored as MDS shards. "
        "Rerunning the same command after a crash finishes the job.",
    )
    parser.add_argument("--tokenizer", required=True, metavar="DIR",
                        help="folder made by `hope-mega tokenizer train`")
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH_OR_GLOB",
                        help="input files, globs or folders")
    parser.add_argument("--output", required=True, metavar="OUT",
                        help="dataset folder, or an object-store URL (s3://bucket/path, gs://...; needs the "
                             "hope-mega[s3] / [gcs] extra)")
    parser.add_argument("--staging", default="", metavar="DIR",
                        help="for a URL --output: local folder the dataset is built in before its upload "
                             "(default: under the temp folder)")
    parser.add_argument("--seq-len", type=int, default=4096,
                        help="training context; each stored row holds seq_len+1 tokens")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="encoding processes (default: all cores)")
    parser.add_argument("--text-field", default="text", help="JSON field / parquet column")
    parser.add_argument("--split-val", type=float, default=0.001, metavar="FRACTION",
                        help="share of documents routed to the val split, by text hash")
    parser.add_argument("--chunk-mb", type=float, default=16.0,
                        help="work unit size for uncompressed files (default 16)")
    parser.add_argument("--shard-mb", type=float, default=64.0,
                        help="uncompressed MDS shard size (default 64)")
    parser.add_argument("--compression", choices=["none", "zstd"], default="none",
                        help="shard compression: none (default; training reads the shards in place) or "
                             "zstd (smaller uploads to object storage)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hope_mega.data.prep import PrepConfig, PrepError, run_prep
    from hope_mega.data.readers import InputError
    from hope_mega.data.remote import RemoteError
    from hope_mega.data.tokenizer import TokenizerError

    cfg = PrepConfig(
        tokenizer=args.tokenizer, inputs=args.input, output=args.output, seq_len=args.seq_len,
        workers=args.workers, text_field=args.text_field, split_val=args.split_val,
        chunk_mb=args.chunk_mb, shard_mb=args.shard_mb, compression=args.compression, quiet=args.quiet,
        staging=args.staging,
    )
    try:
        card = run_prep(cfg)
    except (PrepError, InputError, TokenizerError, RemoteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.output}: {card['tokens_written']} tokens, train {card['splits']['train']['rows']} "
          f"rows, val {card['splits']['val']['rows']} rows, {card['documents_skipped']} documents "
          f"skipped (see {card['skip_log']} in {args.output})")
    return 0
