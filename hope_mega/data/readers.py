"""Corpus readers: find input files, cut them into work units, and yield their documents.

Formats, by file name: `.txt` (documents separated by one or more blank lines), `.jsonl`,
`.jsonl.gz`, `.jsonl.zst` (one JSON object per line, text in a named field) and `.parquet` (text
in a named string column, as FineWeb-Edu ships it).

Large uncompressed files are cut into byte ranges that end on a document boundary, and parquet
files into runs of row groups, so many processes can share one big file and a crash loses at most
one unit. Compressed JSONL cannot be entered in the middle and is always one unit.

A record that cannot become a document (undecodable bytes, bad JSON, a missing or non-string
field, empty text) is skipped and reported with its line. A fault that would silently drop the
rest of a file (a truncated .gz/.zst, a parquet file without the column) raises `InputError`.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

FORMATS = {
    ".jsonl.gz": "jsonl.gz",
    ".jsonl.zst": "jsonl.zst",
    ".jsonl": "jsonl",
    ".parquet": "parquet",
    ".txt": "text",
}
SPLITTABLE = ("text", "jsonl")

# A document separator in .txt: a newline followed by one or more blank (whitespace-only) lines.
_BLANK_LINES = re.compile(rb"\n(?:[ \t\r\f\v]*\n)+")
_NON_SPACE = re.compile(rb"\S")


class InputError(RuntimeError):
    """An input file cannot be read in full; the message names the file."""


def file_format(path: str | Path) -> str | None:
    name = str(path).lower()
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    return None


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files named by paths, globs or folders (searched recursively), sorted and de-duplicated."""
    found: dict[str, Path] = {}
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            raise InputError(f"no input files match {pattern!r}")
        for match in matches:
            p = Path(match)
            if p.is_dir():
                inside = sorted(q for q in p.rglob("*") if q.is_file() and file_format(q))
                if not inside:
                    raise InputError(f"folder {match!r} holds no {'/'.join(FORMATS)} files")
                for q in inside:
                    found[str(q.resolve())] = q.resolve()
            elif file_format(p) is None:
                raise InputError(
                    f"{match}: unknown input format; expected a name ending in "
                    + ", ".join(FORMATS)
                )
            else:
                found[str(p.resolve())] = p.resolve()
    return [found[k] for k in sorted(found)]


@dataclass(frozen=True)
class WorkUnit:
    """A piece of one input file: a byte range, a run of parquet row groups, or the whole file."""

    path: str
    fmt: str
    start: int  # byte offset, or first row group
    stop: int  # byte offset, or row group after the last; -1 means to the end
    weight: int  # bytes it covers, to schedule big units first
    first_row: int = 0  # parquet: index of the first row, so skips name absolute rows
    file_size: int = 0
    mtime_ns: int = 0

    def key(self, text_field: str) -> str:
        """Identifies the unit's result: same file content, range and field give the same key."""
        ident = json.dumps([asdict(self), text_field], sort_keys=True)
        return hashlib.sha256(ident.encode()).hexdigest()[:24]

    def describe(self) -> str:
        if self.fmt == "parquet":
            return f"{self.path} (row groups {self.start}..{self.stop - 1})"
        if self.stop < 0:
            return self.path
        return f"{self.path} (bytes {self.start}..{self.stop})"


def _next_txt_boundary(f, pos: int, size: int) -> int:
    """First document start at or after `pos`: the end of the next run of blank lines."""
    f.seek(pos)
    buf = b""
    while True:
        block = f.read(1 << 20)
        buf += block
        at_eof = not block
        m = _BLANK_LINES.search(buf)
        # The run of blank lines is only known to be complete once real text follows it.
        if m and _NON_SPACE.search(buf, m.end()):
            return pos + m.end()
        if at_eof:
            return size


def _next_line_boundary(f, pos: int, size: int) -> int:
    f.seek(pos)
    skipped = 0
    while True:
        block = f.read(1 << 20)
        if not block:
            return size
        i = block.find(b"\n")
        if i >= 0:
            return pos + skipped + i + 1
        skipped += len(block)


def plan_units(paths: list[Path], chunk_bytes: int, text_field: str) -> list[WorkUnit]:
    """Cut files into work units, in file order. Parquet schemas are checked here, up front."""
    units: list[WorkUnit] = []
    for path in paths:
        st = path.stat()
        fmt = file_format(path)
        ident = dict(path=str(path), fmt=fmt, file_size=st.st_size, mtime_ns=st.st_mtime_ns)
        if fmt == "parquet":
            units.extend(_plan_parquet(path, chunk_bytes, text_field, ident))
        elif fmt in SPLITTABLE:
            find = _next_txt_boundary if fmt == "text" else _next_line_boundary
            with open(path, "rb") as f:
                start = 0
                while start < st.st_size:
                    stop = st.st_size
                    if st.st_size - start > chunk_bytes * 3 // 2:
                        stop = find(f, start + chunk_bytes, st.st_size)
                    units.append(WorkUnit(start=start, stop=stop, weight=stop - start, **ident))
                    start = stop
        else:
            units.append(WorkUnit(start=0, stop=-1, weight=st.st_size, **ident))
    return units


def _plan_parquet(path: Path, chunk_bytes: int, text_field: str, ident: dict) -> list[WorkUnit]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise InputError(f"{path}: not a readable parquet file ({err})") from err
    schema = pf.schema_arrow
    if text_field not in schema.names:
        raise InputError(
            f"{path}: parquet file has no column {text_field!r} (columns: "
            f"{', '.join(schema.names)}); choose one with --text-field"
        )
    col_type = schema.field(text_field).type
    if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)):
        raise InputError(f"{path}: column {text_field!r} has type {col_type}, not string")
    meta = pf.metadata
    units = []
    group_start, row, first_row, acc = 0, 0, 0, 0
    for g in range(meta.num_row_groups):
        acc += meta.row_group(g).total_byte_size
        row += meta.row_group(g).num_rows
        if acc >= chunk_bytes or g == meta.num_row_groups - 1:
            units.append(
                WorkUnit(start=group_start, stop=g + 1, weight=acc, first_row=first_row, **ident)
            )
            group_start, first_row, acc = g + 1, row, 0
    return units


class UnitReader:
    """Yields the documents of one work unit and collects the records it had to skip.

    `skipped` holds (line, reason). For byte-range units the line counts from the unit's first
    line (1-based) and `newlines` tells the caller how many lines the unit spans, so absolute line
    numbers can be filled in once all earlier units are known. Parquet skips name the row.
    """

    def __init__(self, unit: WorkUnit, text_field: str = "text"):
        self.unit = unit
        self.text_field = text_field
        self.skipped: list[tuple[int, str]] = []
        self.newlines = 0
        self.lines_are_relative = unit.fmt in SPLITTABLE

    def documents(self) -> Iterator[str]:
        fmt = self.unit.fmt
        if fmt == "text":
            yield from self._text_documents(self._read_range())
        elif fmt == "jsonl":
            data = self._read_range()
            self.newlines = data.count(b"\n")
            lines = data.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            yield from self._jsonl_documents(iter(lines))
        elif fmt in ("jsonl.gz", "jsonl.zst"):
            yield from self._compressed_jsonl_documents()
        elif fmt == "parquet":
            yield from self._parquet_documents()
        else:
            raise InputError(f"{self.unit.path}: unknown format {fmt!r}")

    def _read_range(self) -> bytes:
        with open(self.unit.path, "rb") as f:
            f.seek(self.unit.start)
            want = self.unit.stop - self.unit.start
            data = f.read(want)
        if len(data) != want:
            raise InputError(f"{self.unit.path}: file shrank while being read (changed on disk?)")
        return data

    def _text_documents(self, data: bytes) -> Iterator[str]:
        self.newlines = data.count(b"\n")
        line, prev = 1, 0
        for m in _BLANK_LINES.finditer(data):
            doc = self._decode_text(data, prev, m.start(), line)
            if doc is not None:
                yield doc
            line += data.count(b"\n", prev, m.end())
            prev = m.end()
        doc = self._decode_text(data, prev, len(data), line)
        if doc is not None:
            yield doc

    def _decode_text(self, data: bytes, start: int, stop: int, line: int) -> str | None:
        raw = data[start:stop].strip()
        if not raw:
            return None  # extra blank lines, not a document
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            # Report the document's first non-blank line, not the blank lines before it.
            line += data.count(b"\n", start, data.find(raw[:1], start, stop))
            self.skipped.append((line, f"undecodable bytes (invalid UTF-8 at byte {err.start} of the document)"))
            return None

    def _jsonl_documents(self, lines: Iterator[bytes]) -> Iterator[str]:
        field = self.text_field
        for i, raw in enumerate(lines, start=1):
            if not raw.strip():
                self.skipped.append((i, "empty line"))
                continue
            try:
                record = json.loads(raw)
            except UnicodeDecodeError as err:
                self.skipped.append((i, f"undecodable bytes (invalid UTF-8 at byte {err.start})"))
                continue
            except ValueError as err:
                self.skipped.append((i, f"not JSON ({err})"))
                continue
            if not isinstance(record, dict) or field not in record:
                self.skipped.append((i, f"no field {field!r}"))
                continue
            text = record[field]
            if not isinstance(text, str):
                self.skipped.append((i, f"field {field!r} is {type(text).__name__}, not a string"))
                continue
            if not text.strip():
                self.skipped.append((i, "empty document"))
                continue
            yield text

    def _compressed_jsonl_documents(self) -> Iterator[str]:
        import zstandard

        path = self.unit.path
        lines_read = 0

        def counted(lines: Iterator[bytes]) -> Iterator[bytes]:
            nonlocal lines_read
            for raw in lines:
                lines_read += 1
                yield raw

        try:
            if self.unit.fmt == "jsonl.gz":
                with gzip.open(path, "rb") as stream:
                    yield from self._jsonl_documents(counted(l.rstrip(b"\n") for l in stream))
            else:
                yield from self._jsonl_documents(counted(_lines(_zstd_blocks(path))))
        except (EOFError, OSError, zstandard.ZstdError) as err:
            raise InputError(
                f"{path}: compressed data is truncated or corrupt after line {lines_read} ({err}). "
                f"The file's documents were not written. Replace the file, then rerun the same "
                f"command: finished work is kept."
            ) from err
        self.newlines = lines_read

    def _parquet_documents(self) -> Iterator[str]:
        import pyarrow.parquet as pq

        path, unit = self.unit.path, self.unit
        try:
            pf = pq.ParquetFile(path)
            row = unit.first_row
            groups = list(range(unit.start, unit.stop))
            for batch in pf.iter_batches(batch_size=2048, row_groups=groups, columns=[self.text_field]):
                for text in batch.column(0).to_pylist():
                    row += 1
                    if text is None:
                        self.skipped.append((row, "null text"))
                    elif not text.strip():
                        self.skipped.append((row, "empty document"))
                    else:
                        yield text
        except (OSError, ValueError) as err:  # pyarrow's errors derive from these
            raise InputError(f"{path}: parquet data is damaged ({err})") from err


def _zstd_blocks(path: str, block: int = 1 << 20) -> Iterator[bytes]:
    """Decompressed data of a (possibly multi-frame) .zst file.

    zstandard's stream reader ends quietly at a cut-off frame, which would drop the rest of the
    file without a word; feeding a decompression object by hand lets the cut be detected.
    """
    import zstandard

    with open(path, "rb") as f:
        dobj = zstandard.ZstdDecompressor().decompressobj()
        in_frame = False
        while True:
            data = f.read(block)
            if not data:
                break
            while data:
                in_frame = True
                out = dobj.decompress(data)
                if out:
                    yield out
                if dobj.eof:
                    data = dobj.unused_data
                    dobj = zstandard.ZstdDecompressor().decompressobj()
                    in_frame = False
                else:
                    data = b""
        if in_frame:
            raise zstandard.ZstdError("the last frame is cut off before its end")


def _lines(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """Split a stream of byte blocks into lines without their newline."""
    rest = b""
    for blk in blocks:
        parts = (rest + blk).split(b"\n")
        rest = parts.pop()
        yield from parts
    if rest:
        yield rest
