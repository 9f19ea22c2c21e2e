"""Train a Llama-style SentencePiece BPE tokenizer on raw corpora.

The corpus is streamed line by line into SentencePiece, which keeps a uniform random sample of
`sample_sentences` lines (reservoir sampling), so memory stays bounded however big the corpus is.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from hope_mega.data.readers import UnitReader, expand_inputs, plan_units
from hope_mega.data.tokenizer import CARD_FILE, MODEL_FILE, VOCAB_FILE, model_hash

# Fixed special ids: every tool downstream (prep, loader, trainer, HF export) relies on them.
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3

# Lines longer than this are cut at spaces before SentencePiece sees them (it drops longer ones).
MAX_SENTENCE_BYTES = 8192


class TokenizerTrainError(RuntimeError):
    """Training could not produce a tokenizer; the message says why in terms of the inputs and
    options, not SentencePiece's internals."""


def _explain(err: RuntimeError, stats: dict, paths: list[Path], vocab_size: int) -> str:
    where = f"{len(paths)} input file(s), {sum(p.stat().st_size for p in paths):,} bytes"
    if stats["lines"] == 0:
        return (f"no text to train on ({where}): {stats['documents']} documents read, {stats['skipped']} records "
                f"skipped, no non-blank line")
    too_high = re.search(r"Vocabulary size (?:is )?too high \((\d+)\)\. Please set it to a value <= (\d+)", str(err))
    if too_high:
        return (f"--vocab-size {vocab_size} is more than this text can fill ({where}, {stats['lines']} lines give "
                f"at most {too_high.group(2)} pieces); use a smaller --vocab-size or more text")
    detail = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return f"SentencePiece could not train on {where}: {detail}"


def llama_style_options(vocab_size: int, sample_sentences: int, seed: int) -> dict:
    """SentencePiece trainer options for a byte-fallback BPE like Llama's."""
    return dict(
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,  # no unknown characters: rare ones fall back to their UTF-8 bytes
        split_digits=True,  # numbers become digit sequences; helps arithmetic and counting
        split_by_unicode_script=True,
        split_by_whitespace=True,
        split_by_number=True,
        allow_whitespace_only_pieces=True,  # runs of spaces (code indentation) stay cheap
        remove_extra_whitespaces=False,  # keep text exactly: decode(encode(x)) == x
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        character_coverage=0.99995,
        max_sentence_length=MAX_SENTENCE_BYTES,
        input_sentence_size=sample_sentences,
        shuffle_input_sentence=True,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=PAD_ID,
        unk_piece="<unk>",
        bos_piece="<s>",
        eos_piece="</s>",
        pad_piece="<pad>",
        hard_vocab_limit=True,
        seed_sentencepiece_size=1_000_000,
        random_seed=seed,
    )


def corpus_lines(paths: list[Path], text_field: str, stats: dict) -> Iterator[str]:
    """Non-empty lines of every document, cut to MAX_SENTENCE_BYTES at a space where possible."""
    for unit in plan_units(paths, 64 << 20, text_field):
        reader = UnitReader(unit, text_field)
        for doc in reader.documents():
            stats["documents"] += 1
            for line in doc.split("\n"):
                if not line.strip():
                    continue
                while len(line.encode("utf-8")) > MAX_SENTENCE_BYTES:
                    cut = line.rfind(" ", 0, MAX_SENTENCE_BYTES // 4)
                    cut = cut if cut > 0 else MAX_SENTENCE_BYTES // 4
                    stats["lines"] += 1
                    yield line[:cut]
                    line = line[cut:]
                stats["lines"] += 1
                yield line
        stats["skipped"] += len(reader.skipped)


def _drop_output_path(model_file: Path) -> None:
    """SentencePiece stores the output path in the model; replace it with the bare name, so the
    same training on the same data gives the same bytes (and hash) wherever it is written."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    proto.trainer_spec.model_prefix = "tokenizer"
    model_file.write_bytes(proto.SerializeToString())


def train_tokenizer(
    inputs: list[str],
    output: str | Path,
    vocab_size: int = 32000,
    sample_sentences: int = 5_000_000,
    text_field: str = "text",
    seed: int = 0,
    num_threads: int | None = None,
) -> dict:
    """Train, write `output/tokenizer.model`, `.vocab` and the card; return the card.

    The files are made in a temporary folder and moved into `output` (card last) only once
    training succeeded: a failure raises TokenizerTrainError and leaves `output` as it was."""
    with tempfile.TemporaryDirectory(prefix="hope-mega-tokenizer-") as staging:
        card = _train_into(inputs, Path(staging), vocab_size, sample_sentences, text_field, seed, num_threads)
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, VOCAB_FILE, CARD_FILE):
            shutil.move(os.path.join(staging, name), output / name)
    return card


def _train_into(inputs, output: Path, vocab_size, sample_sentences, text_field, seed, num_threads) -> dict:
    import sentencepiece as spm

    paths = expand_inputs(inputs)
    options = llama_style_options(vocab_size, sample_sentences, seed)
    stats = {"documents": 0, "lines": 0, "skipped": 0}
    spm.set_random_generator_seed(seed)
    prefix = output / "tokenizer"
    t0 = time.time()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=corpus_lines(paths, text_field, stats),
            model_prefix=str(prefix),
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,
            **{k: v for k, v in options.items() if k != "random_seed"},
        )
    except RuntimeError as err:
        raise TokenizerTrainError(_explain(err, stats, paths, vocab_size)) from None
    _drop_output_path(output / MODEL_FILE)
    card = {
        "format": "hope-mega tokenizer card v1",
        "hash": model_hash(output / MODEL_FILE),
        "hash_algorithm": "sha256 of tokenizer.model",
        "vocab_size": vocab_size,
        "special_ids": {"unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID, "pad": PAD_ID},
        "model_file": MODEL_FILE,
        "vocab_file": VOCAB_FILE,
        "options": options,
        "text_field": text_field,
        "inputs": [{"path": str(p), "bytes": p.stat().st_size} for p in paths],
        "documents_read": stats["documents"],
        "records_skipped": stats["skipped"],
        "lines_seen": stats["lines"],
        "lines_sampled": min(stats["lines"], sample_sentences),
        "sentencepiece_version": spm.__version__,
        "train_seconds": round(time.time() - t0, 1),
    }
    (output / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return card
