"""Datasets on object stores (s3://, gs://): which client library a URL needs, one-file download,
and the upload of a finished local dataset, all through mosaicml-streaming's storage clients.

The clients are an optional extra (`pip install 'hope-mega[s3]'` / `'hope-mega[gcs]'`); a URL whose
client is missing is refused before any work with a one-line message naming the extra. S3's
endpoint comes from `S3_ENDPOINT_URL` (any S3-compatible server), credentials from the usual
AWS variables or files; GCS from Application Default Credentials or `GCS_KEY` / `GCS_SECRET`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

# scheme -> (module that must import, the extra that installs it)
CLIENTS = {"s3": ("boto3", "s3"), "gs": ("google.cloud.storage", "gcs")}


class RemoteError(RuntimeError):
    """An object-store URL cannot be used; the message names the URL and what to do."""


def is_remote(path: str | os.PathLike) -> bool:
    path = str(path)
    return "://" in path and not path.startswith("file://")


def scheme(url: str) -> str:
    return url.split("://", 1)[0]


def require_client(url: str) -> None:
    """Refuse a URL whose storage client is not installed, or a scheme streaming cannot read."""
    kind = scheme(url)
    if kind not in CLIENTS:
        raise RemoteError(f"{url}: unsupported object store {kind}:// (supported: "
                          f"{', '.join(k + '://' for k in CLIENTS)}, or a local folder)")
    module, extra = CLIENTS[kind]
    try:
        importlib.import_module(module)
    except ImportError:
        raise RemoteError(f"{url}: {kind}:// needs the '{extra}' extra (pip install 'hope-mega[{extra}]'), "
                          f"which provides {module.split('.')[0]}") from None


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def download_file(url: str, local: str | os.PathLike, timeout: float = 60.0) -> None:
    """Fetch one object to `local` (overwritten). Raises RemoteError naming the URL."""
    from hope_mega.data._streaming import import_streaming

    require_client(url)
    import_streaming()
    from streaming.base.storage import CloudDownloader

    local = str(local)
    if os.path.exists(local):
        os.remove(local)  # streaming's downloaders keep an existing file
    try:
        CloudDownloader.direct_download(url, local, timeout)
    except Exception as err:  # each store raises its own error types
        raise RemoteError(f"cannot read {url}: {err}") from None


def upload_folder(local_dir: str | os.PathLike, url: str, files: list[str], last: str | None = None) -> None:
    """Upload `files` (paths relative to `local_dir`) under `url`, then `last`: a reader that
    waits for `last` (the dataset card) never sees a dataset with shards missing."""
    from hope_mega.data._streaming import import_streaming

    require_client(url)
    import_streaming()
    from streaming.base.storage import CloudUploader

    try:
        uploader = CloudUploader.get(out=(str(local_dir), url.rstrip("/")), keep_local=True, exist_ok=True)
        for name in [*files, *([last] if last else [])]:
            uploader.upload_file(name)
    except Exception as err:
        raise RemoteError(f"cannot write to {url}: {err}") from None


def relative_files(root: str | os.PathLike) -> list[str]:
    """Every file under `root`, as sorted relative paths."""
    root = Path(root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
