"""`hope-mega tokenizer train`: train the project's SentencePiece tokenizer on raw corpora."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tokenizer", help="train a SentencePiece BPE tokenizer")
    actions = parser.add_subparsers(dest="tokenizer_command", required=True)
    train = actions.add_parser(
        "train",
        help="train a byte-fallback BPE (Llama-style) on .txt/.jsonl[.gz|.zst]/.parquet files",
    )
    train.add_argument("--input", nargs="+", required=True, metavar="PATH_OR_GLOB",
                       help="input files, globs or folders")
    train.add_argument("--output", required=True, metavar="DIR",
                       help="folder for tokenizer.model, tokenizer.vocab, tokenizer_card.json")
    train.add_argument("--vocab-size", type=int, default=32000)
    train.add_argument("--sample-sentences", type=int, default=5_000_000, metavar="N",
                       help="lines kept by reservoir sampling; bounds memory (~1 KB each)")
    train.add_argument("--text-field", default="text", help="JSON field / parquet column")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=None, help="default: all cores")
    train.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from hope_mega.data.readers import InputError
    from hope_mega.data.tokenizer_train import TokenizerTrainError, train_tokenizer

    if not 260 < args.vocab_size <= 65536:
        print(f"error: --vocab-size {args.vocab_size}: must be in 261..65536 (256 byte pieces "
              f"and 4 specials come first; prep stores ids as uint16)", file=sys.stderr)
        return 2
    try:
        card = train_tokenizer(args.input, args.output, vocab_size=args.vocab_size,
                               sample_sentences=args.sample_sentences, text_field=args.text_field,
                               seed=args.seed, num_threads=args.threads)
    except (InputError, TokenizerTrainError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except RuntimeError as err:  # SentencePiece reports bad option combinations this way
        print(f"error: SentencePiece training failed: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}/tokenizer.model: vocab {card['vocab_size']}, "
          f"{card['documents_read']} documents, {card['lines_sampled']} of {card['lines_seen']} "
          f"lines sampled, {card['train_seconds']} s, hash {card['hash'][:16]}")
    return 0
