"""The dataset card: what a prepared dataset holds and which tokenizer made it.

`hope-mega prep` writes `OUT/dataset_card.json` last, so its presence marks a finished dataset.
The trainer's preflight reads it to refuse data made with another tokenizer or sequence length.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hope_mega.data.remote import is_remote as _is_remote

CARD_FILE = "dataset_card.json"
FORMAT = "hope-mega mds v1"


class DatasetCardError(FileNotFoundError):
    """A dataset path has no readable card."""


def read_dataset_card(path: str | os.PathLike) -> dict[str, Any]:
    """Read the card of the prepared dataset at `path` (a folder, or a remote URI streaming knows).

    The card holds at least: `tokenizer_hash`, `seq_len`, `row_len`, `eos_id`, `pad_id`,
    `vocab_size`, `tokens_written` and per-split counts under `splits`.
    """
    path = str(path)
    if path.startswith("file://"):
        path = path[len("file://"):]
    if _is_remote(path):
        from hope_mega.data.remote import RemoteError, download_file, require_client

        try:
            require_client(path)
        except RemoteError as err:
            raise DatasetCardError(str(err)) from None
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, CARD_FILE)
            try:
                download_file(f"{path.rstrip('/')}/{CARD_FILE}", local, 60)
            except RemoteError as err:
                raise DatasetCardError(
                    f"no dataset card at {path.rstrip('/')}/{CARD_FILE} ({err}); is this an "
                    f"output of `hope-mega prep` that finished?"
                ) from None
            text = Path(local).read_text()
    else:
        card = Path(path) / CARD_FILE
        if not card.is_file():
            raise DatasetCardError(
                f"no dataset card at {card}; is {path} an output of `hope-mega prep` that "
                f"finished? (prep writes the card last)"
            )
        text = card.read_text()
    try:
        data = json.loads(text)
    except ValueError as err:
        raise DatasetCardError(f"dataset card of {path} is not valid JSON ({err})") from err
    if data.get("format") != FORMAT:
        raise DatasetCardError(f"dataset card of {path} has format {data.get('format')!r}, "
                               f"expected {FORMAT!r}")
    return data


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so a reader (or a rerun after a crash) never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
