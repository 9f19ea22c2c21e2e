"""Corpus → tokenized, packed MDS shards, in two resumable phases.

Phase 1 (encode): input files are cut into work units (see `readers`); a pool of worker processes
encodes each unit's documents, appends EOS after each, routes each document to `train` or `val`
by a hash of its text, and writes the unit's token streams to the work folder. A unit's result is
written atomically and its JSON summary last, so a killed run keeps every finished unit and a
rerun encodes only what is missing. Units are scheduled biggest first, so the pool stays balanced.

Phase 2 (pack): per split, the units' token streams are concatenated in unit order (input files
sorted by path, then by position) and cut into rows of `seq_len + 1` tokens. Only the very last
row is padded with the tokenizer's pad id. The rows are divided into one contiguous range per
worker; each worker writes its range as MDS shards into `SPLIT/part-NNN/`, and the part indexes
are merged into `SPLIT/index.json`. Phase 2 is cheap next to encoding and is redone whole on a
rerun, which makes its output identical to an uninterrupted run's.

The dataset card is written last; then the work folder is removed.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import time
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hope_mega.data.dataset_card import CARD_FILE, FORMAT, write_json_atomic
from hope_mega.progress import format_duration
from hope_mega.data.readers import InputError, UnitReader, WorkUnit, expand_inputs, plan_units
from hope_mega.data.remote import (
    RemoteError, download_file, is_remote, join, relative_files, require_client, upload_folder,
)

SPLITS = ("train", "val")
WORK_DIR = ".prep"
LOCK_FILE = ".prep.lock"
SKIP_LOG = "skipped.log"
TOKEN_COLUMN = "tokens"
TOKEN_ENCODING = "ndarray:uint16"
ENCODE_BATCH = 256  # documents per SentencePiece call: amortizes the call, keeps memory small


class PrepError(RuntimeError):
    """Prep cannot start or finish; the message says why and what to do."""


@dataclass
class PrepConfig:
    tokenizer: str
    inputs: list[str]
    output: str
    seq_len: int = 4096
    workers: int = 1
    text_field: str = "text"
    split_val: float = 0.001
    chunk_mb: float = 16.0  # work unit size: smaller balances better, bigger has fewer files
    shard_mb: float = 64.0  # uncompressed MDS shard size
    # Shard compression: "none" (read in place) or "zstd" (for object stores; see data_prep/README.md)
    compression: str = "none"
    quiet: bool = False
    # Where an object-store output is built before its upload (default: under the temp folder,
    # named from the URL, so a rerun after a crash resumes there)
    staging: str = ""

    def fingerprint(self, tokenizer_hash: str) -> dict[str, Any]:
        """Everything that changes the tokens or their layout. Worker count is not part of it:
        it only decides how rows are spread over part folders."""
        return {
            "format": FORMAT,
            "tokenizer_hash": tokenizer_hash,
            "seq_len": self.seq_len,
            "text_field": self.text_field,
            "split_val": self.split_val,
            "chunk_bytes": self.chunk_bytes,
            "shard_bytes": int(self.shard_mb * (1 << 20)),
            "compression": self.compression,
        }

    @property
    def chunk_bytes(self) -> int:
        return max(1, int(self.chunk_mb * (1 << 20)))


def is_validation_document(text: str, split_val: float) -> bool:
    """Deterministic train/val routing by a hash of the text: the same text always lands on the
    same side, so duplicated documents cannot leak from train into val."""
    if split_val <= 0:
        return False
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < split_val * 2.0**64


# ---------------------------------------------------------------------------- phase 1: encode

_worker_tokenizer = None


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when the coordinating process dies (e.g. kill -9), so no
    orphan keeps writing while the user's rerun starts."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _init_encode_worker(tokenizer_dir: str, parent_pid: int) -> None:
    global _worker_tokenizer
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)
    from hope_mega.data.tokenizer import load_tokenizer

    _worker_tokenizer = load_tokenizer(tokenizer_dir)


def _unit_paths(work: Path, key: str) -> dict[str, Path]:
    units = work / "units"
    return {
        "summary": units / f"{key}.json",
        "train": units / f"{key}.train.u16",
        "val": units / f"{key}.val.u16",
    }


def _encode_unit(task: tuple[WorkUnit, str, str, str, float]) -> tuple[str, dict | str]:
    """Encode one unit; return (key, summary) or (key, error message). Runs in a worker."""
    unit, key, work, text_field, split_val = task
    tok = _worker_tokenizer
    eos = tok.eos_id
    reader = UnitReader(unit, text_field)
    streams: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    docs = {"train": 0, "val": 0}
    batch: list[str] = []

    def flush() -> None:
        routed: dict[str, list[list[int]]] = {"train": [], "val": []}
        for text, ids in zip(batch, tok.encode_batch(batch)):
            ids.append(eos)
            routed["val" if is_validation_document(text, split_val) else "train"].append(ids)
        for split, lists in routed.items():
            if lists:
                n = sum(map(len, lists))
                streams[split].append(
                    np.fromiter(itertools.chain.from_iterable(lists), dtype=np.uint16, count=n)
                )
                docs[split] += len(lists)
        batch.clear()

    try:
        for text in reader.documents():
            batch.append(text)
            if len(batch) >= ENCODE_BATCH:
                flush()
        if batch:
            flush()
    except InputError as err:
        return key, str(err)

    paths = _unit_paths(Path(work), key)
    tokens = {}
    for split in SPLITS:
        arr = np.concatenate(streams[split]) if streams[split] else np.zeros(0, np.uint16)
        tokens[split] = int(arr.size)
        tmp = paths[split].with_name(f".{paths[split].name}.{os.getpid()}.tmp")
        arr.tofile(tmp)
        os.replace(tmp, paths[split])
    summary = {
        "unit": asdict(unit),
        "documents": docs,
        "tokens": tokens,
        "skipped": reader.skipped,
        "newlines": reader.newlines,
        "lines_are_relative": reader.lines_are_relative,
    }
    write_json_atomic(paths["summary"], summary)
    return key, summary


# ---------------------------------------------------------------------------- phase 2: pack


@dataclass
class PartTask:
    split: str
    part: int
    part_dir: str
    row_start: int
    row_stop: int
    row_len: int
    pad_id: int
    shard_bytes: int
    compression: str
    # (token file, first global token offset, token count) of every unit in stream order
    pieces: list[tuple[str, int, int]] = field(default_factory=list)
    total_tokens: int = 0


def _tokens_in_range(task: PartTask, start: int, stop: int):
    """Yield the arrays holding global stream tokens [start, stop), in order."""
    for path, offset, count in task.pieces:
        lo, hi = max(start, offset), min(stop, offset + count)
        if lo >= hi:
            continue
        data = np.memmap(path, dtype=np.uint16, mode="r", shape=(count,))
        yield np.array(data[lo - offset : hi - offset])


def _write_part(task: PartTask) -> int:
    """Write rows [row_start, row_stop) of one split as MDS shards; return the padding written."""
    from hope_mega.data._streaming import import_streaming

    streaming = import_streaming()
    row_len = task.row_len
    start, stop = task.row_start * row_len, min(task.row_stop * row_len, task.total_tokens)
    carry = np.zeros(0, np.uint16)
    padding = 0
    with streaming.MDSWriter(
        out=task.part_dir,
        columns={TOKEN_COLUMN: TOKEN_ENCODING},
        compression=None if task.compression == "none" else task.compression,
        size_limit=task.shard_bytes,
    ) as writer:
        for piece in _tokens_in_range(task, start, stop):
            buf = np.concatenate([carry, piece]) if carry.size else piece
            full = buf.size // row_len * row_len
            for row in buf[:full].reshape(-1, row_len):
                writer.write({TOKEN_COLUMN: row})
            carry = buf[full:]
        if carry.size:  # only the split's very last row is short
            padding = row_len - carry.size
            row = np.concatenate([carry, np.full(padding, task.pad_id, np.uint16)])
            writer.write({TOKEN_COLUMN: row})
    return padding


def _merge_part_indexes(split_dir: Path, part_dirs: list[Path]) -> int:
    """One index.json over all parts, shards named relative to the split folder; returns the
    number of samples. Each part's own index stays for inspection."""
    shards = []
    for part_dir in part_dirs:
        index = json.loads((part_dir / "index.json").read_text())
        for shard in index["shards"]:
            for key in ("raw_data", "zip_data", "raw_meta", "zip_meta"):
                if shard.get(key):
                    shard[key]["basename"] = f"{part_dir.name}/{shard[key]['basename']}"
            shards.append(shard)
    write_json_atomic(split_dir / "index.json", {"version": 2, "shards": shards})
    return sum(s["samples"] for s in shards)


# ---------------------------------------------------------------------------- coordination


class _Log:
    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.t0 = time.time()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[prep {time.time() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _check_output(out: Path, fingerprint: dict, inputs_ident: list) -> dict | None:
    """Refuse an output made with other options; return its card if it is already finished."""
    card_path, fp_path = out / CARD_FILE, out / WORK_DIR / "fingerprint.json"
    previous = None
    if card_path.is_file():
        card = json.loads(card_path.read_text())
        previous = card.get("fingerprint")
    elif fp_path.is_file():
        card = None
        previous = json.loads(fp_path.read_text())
    else:
        others = [p.name for p in out.iterdir() if p.name not in (LOCK_FILE, WORK_DIR)]
        if others:
            raise PrepError(
                f"{out} is not empty and was not made by `hope-mega prep` (found "
                f"{', '.join(sorted(others)[:5])}); choose a new --output"
            )
        return None
    if previous != fingerprint:
        diffs = [
            f"{k}: {previous.get(k)!r} there, {fingerprint.get(k)!r} now"
            for k in sorted(set(previous) | set(fingerprint))
            if previous.get(k) != fingerprint.get(k)
        ]
        raise PrepError(
            f"{out} was prepared with other options ({'; '.join(diffs)}). Rerun with the same "
            f"tokenizer and options to resume it, or choose a new --output."
        )
    if card is not None and card.get("input_identity") != inputs_ident:
        raise PrepError(
            f"{out} already holds a finished dataset made from other input files; choose a new "
            f"--output to prepare these"
        )
    return card


def _input_identity(paths: list[Path]) -> list:
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


def _absolute_skips(units: list[WorkUnit], summaries: dict[str, dict], keys: list[str]):
    """(path, line, reason) for every skipped record, with byte-range unit lines made absolute."""
    lines_before: dict[str, int] = {}
    for unit, key in zip(units, keys):
        s = summaries[key]
        base = lines_before.get(unit.path, 0) if s["lines_are_relative"] else 0
        for line, reason in s["skipped"]:
            yield unit.path, base + line, reason
        if s["lines_are_relative"]:
            lines_before[unit.path] = lines_before.get(unit.path, 0) + s["newlines"]


def _reason_kind(reason: str) -> str:
    return reason.split(" (", 1)[0]


def run_prep(cfg: PrepConfig) -> dict:
    """Prepare (or finish preparing) the dataset; return its card. Raises PrepError/InputError."""
    from hope_mega.data.tokenizer import load_tokenizer

    log = _Log(cfg.quiet)
    if is_remote(cfg.output):
        require_client(cfg.output)  # before any work: a missing extra costs the user nothing
    if cfg.seq_len < 1:
        raise PrepError(f"--seq-len {cfg.seq_len}: must be positive")
    if not 0 <= cfg.split_val < 1:
        raise PrepError(f"--split-val {cfg.split_val}: must be in [0, 1)")
    if cfg.workers < 1:
        raise PrepError(f"--workers {cfg.workers}: must be at least 1")
    tok = load_tokenizer(cfg.tokenizer)
    if tok.vocab_size > 65536:
        raise PrepError(f"tokenizer {cfg.tokenizer} has {tok.vocab_size} ids; uint16 shards "
                        f"hold at most 65536")
    if tok.pad_id < 0:
        raise PrepError(f"tokenizer {cfg.tokenizer} defines no pad id (needed for the last row)")

    if is_remote(cfg.output):
        return _run_to_remote(cfg, tok, log)
    out = Path(cfg.output)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / LOCK_FILE, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise PrepError(f"another `hope-mega prep` is writing to {out}; wait for it to finish")
    try:
        return _run_locked(cfg, tok, out, log, created)
    finally:
        lock.close()


def _run_to_remote(cfg: PrepConfig, tok, log: _Log) -> dict:
    """Prepare into a local staging folder, then upload it with the card last, so the card's
    presence at the URL still means a finished dataset."""
    url = cfg.output.rstrip("/")
    inputs = _input_identity(expand_inputs(cfg.inputs))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            download_file(join(url, CARD_FILE), Path(tmp) / CARD_FILE)
            existing = json.loads((Path(tmp) / CARD_FILE).read_text())
        except (RemoteError, ValueError):
            existing = None
    if existing is not None:
        if existing.get("fingerprint") != cfg.fingerprint(tok.hash) or existing.get("input_identity") != inputs:
            raise PrepError(f"{url} already holds a finished dataset made from other inputs or options; "
                            f"choose a new --output")
        log(f"{url} is already complete ({existing['tokens_written']} tokens); nothing to do")
        return existing
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    staging = Path(cfg.staging or os.path.join(tempfile.gettempdir(), "hope-mega-prep-staging", digest))
    log(f"building {url} in {staging}, uploaded when complete")
    card = run_prep(replace(cfg, output=str(staging)))
    files = [f for f in relative_files(staging) if f.split("/")[0] not in (LOCK_FILE, WORK_DIR, CARD_FILE)]
    t0 = time.time()
    upload_folder(staging, url, files, last=CARD_FILE)
    log(f"uploaded {len(files) + 1} files to {url} in {time.time() - t0:.1f}s")
    shutil.rmtree(staging, ignore_errors=True)
    return card


def _discard(out: Path, created: bool) -> None:
    """Remove what this prep wrote (all of `out` if it made the folder), so a refused dataset
    leaves nothing that looks like a start."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    shutil.rmtree(out / WORK_DIR, ignore_errors=True)
    for name in SPLITS + (SKIP_LOG,):
        path = out / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _nothing_to_train_on(paths: list[Path], units, keys, summaries, cfg: PrepConfig) -> str:
    """The one-line reason a prep produced no training rows, in the user's terms."""
    docs = {s: sum(summaries[k]["documents"][s] for k in keys) for s in SPLITS}
    skipped = list(_absolute_skips(units, summaries, keys))
    size = sum(p.stat().st_size for p in paths)
    where = f"{len(paths)} input file(s), {size:,} bytes"
    if docs["val"]:
        return (f"all {docs['val']} documents went to the val split ({where}, --split-val {cfg.split_val}); "
                f"give more text or a smaller --split-val")
    if skipped:
        path, line, reason = skipped[0]
        where_in = "row" if path.endswith(".parquet") else "line"
        return (f"no usable text in the inputs ({where}): all {len(skipped)} records were skipped, the first "
                f"at {path}:{where_in} {line}: {reason}")
    return f"no text in the inputs ({where}): every document is empty"


def _run_locked(cfg: PrepConfig, tok, out: Path, log: _Log, created: bool = False) -> dict:
    paths = expand_inputs(cfg.inputs)
    fingerprint = cfg.fingerprint(tok.hash)
    ident = _input_identity(paths)
    finished = _check_output(out, fingerprint, ident)
    if finished is not None:
        log(f"{out} is already complete ({finished['tokens_written']} tokens); nothing to do")
        return finished
    work = out / WORK_DIR
    (work / "units").mkdir(parents=True, exist_ok=True)
    write_json_atomic(work / "fingerprint.json", fingerprint)

    units = plan_units(paths, cfg.chunk_bytes, cfg.text_field)
    keys = [u.key(cfg.text_field) for u in units]
    summaries: dict[str, dict] = {}
    for key in keys:
        summary_path = _unit_paths(work, key)["summary"]
        if summary_path.is_file():
            summaries[key] = json.loads(summary_path.read_text())
    pending = sorted(
        (u for u, k in zip(units, keys) if k not in summaries), key=lambda u: -u.weight
    )
    log(f"{len(paths)} files, {len(units)} work units, {len(units) - len(pending)} already "
        f"done, {cfg.workers} workers")

    errors = _encode_pending(cfg, tok, work, pending, summaries, log)
    done_units = [(u, k) for u, k in zip(units, keys) if k in summaries]
    skip_counts = _write_skip_log(out, done_units, summaries)
    if errors:
        raise PrepError(
            f"{len(errors)} input file(s) could not be read in full; the other "
            f"{len(done_units)} work units are done and kept:\n  " + "\n  ".join(errors)
        )
    if not any(summaries[k]["tokens"]["train"] for k in keys):
        message = _nothing_to_train_on(paths, units, keys, summaries, cfg)
        _discard(out, created)
        raise PrepError(f"{out}: nothing written: {message}")

    splits = {}
    for split in SPLITS:
        splits[split] = _pack_split(cfg, tok, out, work, split, units, keys, summaries, log)

    docs_written = sum(s["documents"] for s in splits.values())
    docs_skipped = sum(skip_counts.values())
    per_file: dict[str, dict[str, int]] = {str(p): {"documents": 0, "skipped": 0} for p in paths}
    for unit, key in zip(units, keys):
        s = summaries[key]
        per_file[unit.path]["documents"] += sum(s["documents"].values())
        per_file[unit.path]["skipped"] += len(s["skipped"])
    card = {
        "format": FORMAT,
        "tokenizer_hash": tok.hash,
        "tokenizer_path": str(tok.model_path),
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "bos_id": tok.bos_id,
        "pad_id": tok.pad_id,
        "seq_len": cfg.seq_len,
        "row_len": cfg.seq_len + 1,
        "column": TOKEN_COLUMN,
        "encoding": TOKEN_ENCODING,
        "compression": cfg.compression,
        "text_field": cfg.text_field,
        "split_val": cfg.split_val,
        "documents_read": docs_written + docs_skipped,
        "documents_written": docs_written,
        "documents_skipped": docs_skipped,
        "skip_reasons": dict(sorted(skip_counts.items())),
        "skip_log": SKIP_LOG,
        "tokens_written": sum(s["tokens"] for s in splits.values()),
        "splits": splits,
        "inputs": [{"path": str(p), "bytes": p.stat().st_size, **per_file[str(p)]} for p in paths],
        "input_identity": ident,
        "fingerprint": fingerprint,
        "workers": cfg.workers,
    }
    write_json_atomic(out / CARD_FILE, card)
    shutil.rmtree(work, ignore_errors=True)
    log(f"done: {card['tokens_written']} tokens, {docs_written} documents, {docs_skipped} "
        f"skipped; card at {out / CARD_FILE}")
    return card


def _encode_pending(cfg, tok, work: Path, pending, summaries, log) -> list[str]:
    if not pending:
        return []
    errors: list[str] = []
    tasks = [(u, u.key(cfg.text_field), str(work), cfg.text_field, cfg.split_val) for u in pending]
    # spawn, not fork: the coordinator may hold threads (and torch) that a fork would copy.
    ctx = mp.get_context("spawn")
    t0, tokens, done = time.time(), 0, 0
    total_weight, done_weight = sum(t[0].weight for t in tasks), 0
    with ctx.Pool(cfg.workers, initializer=_init_encode_worker,
                  initargs=(str(tok.model_path), os.getpid())) as pool:
        results = pool.imap_unordered(_encode_unit, tasks, chunksize=1)
        # The MDS writer's import pulls in torch (~3 s); do it while the workers encode.
        from hope_mega.data._streaming import import_streaming

        import_streaming()
        by_key = {t[1]: t[0] for t in tasks}
        for key, result in results:
            done += 1
            if isinstance(result, str):
                errors.append(result)
                log(f"[{done}/{len(tasks)}] FAILED {result}")
                continue
            summaries[key] = result
            tokens += sum(result["tokens"].values())
            done_weight += by_key[key].weight
            elapsed = max(time.time() - t0, 1e-9)
            eta = elapsed * (total_weight - done_weight) / max(done_weight, 1)
            log(f"[{done}/{len(tasks)}] {by_key[key].describe()}: "
                f"{sum(result['documents'].values())} docs, {len(result['skipped'])} skipped, "
                f"{tokens / elapsed / 1e6:.2f} M tokens/s so far, {done_weight / max(total_weight, 1):.0%} of "
                f"the input, ETA {format_duration(eta)}")
    return errors


def _write_skip_log(out: Path, done_units, summaries) -> dict[str, int]:
    counts: dict[str, int] = {}
    units = [u for u, _ in done_units]
    keys = [k for _, k in done_units]
    tmp = out / f".{SKIP_LOG}.tmp"
    with open(tmp, "w") as f:
        for path, line, reason in _absolute_skips(units, summaries, keys):
            where = "row" if path.endswith(".parquet") else "line"
            f.write(f"{path}:{where} {line}: {reason}\n")
            counts[_reason_kind(reason)] = counts.get(_reason_kind(reason), 0) + 1
    os.replace(tmp, out / SKIP_LOG)
    return counts


def _pack_split(cfg, tok, out: Path, work: Path, split: str, units, keys, summaries, log) -> dict:
    row_len = cfg.seq_len + 1
    pieces, offset = [], 0
    for key in keys:
        count = summaries[key]["tokens"][split]
        if count:
            pieces.append((str(_unit_paths(work, key)[split]), offset, count))
        offset += count
    total = offset
    rows = -(-total // row_len)
    documents = sum(summaries[k]["documents"][split] for k in keys)
    split_dir = out / split
    shutil.rmtree(split_dir, ignore_errors=True)  # a killed earlier pack left it half written
    info = {"path": split, "documents": documents, "tokens": total, "rows": rows,
            "padding_tokens": 0, "parts": 0}
    if rows == 0:
        return info
    n_parts = min(cfg.workers, rows)
    tasks = [
        PartTask(split=split, part=p, part_dir=str(split_dir / f"part-{p:03d}"),
                 row_start=rows * p // n_parts, row_stop=rows * (p + 1) // n_parts,
                 row_len=row_len, pad_id=tok.pad_id, shard_bytes=int(cfg.shard_mb * (1 << 20)),
                 compression=cfg.compression, pieces=pieces, total_tokens=total)
        for p in range(n_parts)
    ]
    split_dir.mkdir(parents=True)
    if n_parts == 1:
        paddings = [_write_part(tasks[0])]
    else:
        # fork: the coordinator has already imported streaming, so workers start instantly.
        with mp.get_context("fork").Pool(n_parts, initializer=_die_with_parent) as pool:
            paddings = pool.map(_write_part, tasks, chunksize=1)
    samples = _merge_part_indexes(split_dir, [Path(t.part_dir) for t in tasks])
    if samples != rows:
        raise PrepError(f"internal: {split} index lists {samples} rows, expected {rows}")
    info.update(padding_tokens=int(sum(paddings)), parts=n_parts)
    log(f"{split}: {documents} documents, {total} tokens, {rows} rows of {row_len} in "
        f"{n_parts} part(s)")
    return info
