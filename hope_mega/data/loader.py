"""The training data loader: rows of prepared datasets, streamed, rank-aware and resumable.

Each iteration step yields a `torch.LongTensor` of shape `[micro_batch, seq_len + 1]`: the
trainer uses `batch[:, :-1]` as inputs and `batch[:, 1:]` as labels, so every one of the
`seq_len` positions has a target. Rows come straight from the MDS shards written by
`hope-mega prep`; only the last row of a split may end in pad tokens (`card["pad_id"]`).

Order: mosaicml-streaming lays out one global sample order per epoch from the seed and a fixed
number of canonical nodes; data-parallel rank r takes every dp_size-th sample of it, in micro
batches. The k-th global batch (`global_batch` samples: micro batches of all ranks and all
gradient-accumulation steps) is therefore the same set of rows whatever dp_size is, and the
resume state is just (epoch, samples consumed by all ranks), which does not mention dp_size.
Tensor/sequence-parallel ranks that share a data-parallel rank get identical batches
(streaming's `replication`); ranks are assumed to be numbered with TP innermost, as Megatron does.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from typing import Any, Iterator

import numpy as np

from hope_mega.data.dataset_card import DatasetCardError, _is_remote, read_dataset_card

__all__ = ["build_train_loader", "read_dataset_card", "TokenLoader", "read_rows", "DatasetCardError"]

STATE_VERSION = 1
# Fixed so the sample order never depends on how many nodes run the job (streaming's elastic
# determinism needs canonical nodes to be a multiple or divisor of the physical nodes; 1 always is).
DEFAULT_CANONICAL_NODES = 1


class LoaderError(ValueError):
    """The loader was asked for something inconsistent; the message names the argument."""


def _split_location(path: str, split: str, card: dict | None = None) -> tuple[str | None, str]:
    """(remote, local) for streaming: local folders are read in place, remote ones cached in a
    folder named from the URL and the dataset's card, so a dataset replaced under the same URL is
    fetched again instead of read stale from the cache."""
    if path.startswith("file://"):
        path = path[len("file://"):]
    if _is_remote(path):
        root = os.environ.get("HOPE_MEGA_DATA_CACHE",
                              os.path.join(tempfile.gettempdir(), "hope-mega-data-cache"))
        card = card if card is not None else read_dataset_card(path)
        identity = json.dumps([path.rstrip("/"), card.get("fingerprint"), card.get("input_identity"),
                               card.get("tokens_written")], sort_keys=True)
        digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        return f"{path.rstrip('/')}/{split}", os.path.join(root, digest, split)
    local = os.path.join(path, split)
    if not os.path.isfile(os.path.join(local, "index.json")):
        raise LoaderError(f"{path} has no '{split}' split (no {local}/index.json); the card says "
                          f"it holds 0 rows or prep did not finish")
    decompress_missing_shards(local)
    return None, os.path.abspath(local)


def decompress_missing_shards(split_dir: str) -> int:
    """Write the raw file of every compressed shard in a local split that lacks one; return how many.

    Streaming would do it on first read, through one fixed temporary name per shard, and the
    local leaders of two nodes reading a dataset on a shared filesystem race on that name
    (mosaicml/streaming#863: FileNotFoundError on the rename). Here each process writes under its
    own name and renames over the target: concurrent writers write the same bytes, and a reader
    sees no file or a whole one. `hope-mega prep` writes uncompressed shards by default, so this
    only serves `--compression zstd` datasets read from a folder.
    """
    index_path = os.path.join(split_dir, "index.json")
    with open(index_path) as f:
        shards = json.load(f)["shards"]
    written = 0
    for shard in shards:
        zip_info, raw_info = shard.get("zip_data"), shard["raw_data"]
        raw = os.path.join(split_dir, raw_info["basename"])
        if not zip_info or os.path.isfile(raw):
            continue
        from hope_mega.data._streaming import import_streaming

        compressed = os.path.join(split_dir, zip_info["basename"])
        try:
            with open(compressed, "rb") as f:
                blob = f.read()
        except OSError as err:
            raise LoaderError(f"{index_path} lists {zip_info['basename']}, which cannot be read: {err}") from None
        try:
            data = import_streaming().base.compression.decompress(shard["compression"], blob)
        except Exception as err:  # the codecs raise their own error types
            raise LoaderError(f"{compressed} does not decompress ({err}): a damaged or cut-short shard") from None
        if len(data) != raw_info["bytes"]:
            raise LoaderError(f"{compressed} decompresses to {len(data)} bytes; {index_path} says "
                              f"{raw_info['bytes']} (a damaged or cut-short shard)")
        tmp = f"{raw}.{socket.gethostname()}-{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, raw)
        written += 1
    return written


def _data_parallel_replication(dp_rank: int, dp_size: int) -> int | None:
    """How many consecutive global ranks share one data-parallel rank (streaming's replication)."""
    if not 0 <= dp_rank < dp_size:
        raise LoaderError(f"dp_rank={dp_rank} is outside 0..dp_size-1 (dp_size={dp_size})")
    if "WORLD_SIZE" not in os.environ:
        if dp_size != 1:
            raise LoaderError(
                f"dp_size={dp_size} but WORLD_SIZE is not set: launch with torchrun/srun or set "
                f"RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE"
            )
        return None
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ.get("RANK", 0))
    if world % dp_size:
        raise LoaderError(f"WORLD_SIZE={world} is not a multiple of dp_size={dp_size}")
    replication = world // dp_size
    if rank // replication != dp_rank:
        raise LoaderError(
            f"RANK={rank} with {replication} ranks per data-parallel group should be dp_rank "
            f"{rank // replication}, got dp_rank={dp_rank}; the loader assumes tensor/sequence-"
            f"parallel ranks are numbered innermost"
        )
    return replication if replication > 1 else None


def _check_cards(paths: list[str], seq_len: int) -> list[dict]:
    cards = [read_dataset_card(p) for p in paths]
    for path, card in zip(paths, cards):
        if card["seq_len"] != seq_len:
            raise LoaderError(f"{path} was prepared with seq_len={card['seq_len']}, but the "
                              f"loader was asked for seq_len={seq_len}")
        if card["tokenizer_hash"] != cards[0]["tokenizer_hash"]:
            raise LoaderError(
                f"{path} was tokenized with tokenizer {card['tokenizer_hash'][:16]}, but "
                f"{paths[0]} with {cards[0]['tokenizer_hash'][:16]}; datasets cannot be mixed"
            )
    return cards


def _token_row_dataset_class():
    """StreamingDataset subclass built lazily: importing streaming costs seconds."""
    from hope_mega.data._streaming import import_streaming

    streaming = import_streaming()

    class TokenRowDataset(streaming.StreamingDataset):
        """Yields each stored row as an int64 tensor of `row_len` token ids."""

        def __init__(self, *, row_len: int, **kwargs: Any):
            self.row_len = row_len
            super().__init__(**kwargs)

        def __getitem__(self, index: int):
            import torch

            row = super().__getitem__(index)["tokens"]
            if row.shape != (self.row_len,):
                raise LoaderError(f"sample {index} has shape {row.shape}, expected "
                                  f"({self.row_len},): the shards do not match the card")
            return torch.from_numpy(row.astype(np.int64))

    return TokenRowDataset, streaming


class TokenLoader:
    """Iterates one epoch per `iter()`; `state_dict()` is valid between any two micro batches."""

    def __init__(self, dataset, dataloader, *, paths, weights, seq_len, micro_batch,
                 global_batch, dp_size, seed, split, num_canonical_nodes, cards):
        self.dataset = dataset
        self.dataloader = dataloader
        self.paths, self.weights, self.split = list(paths), weights, split
        self.seq_len, self.micro_batch, self.global_batch = seq_len, micro_batch, global_batch
        self.dp_size, self.seed = dp_size, seed
        self.num_canonical_nodes = num_canonical_nodes
        self.cards = cards
        self.epoch = 0
        self.sample_in_epoch = 0  # rows consumed by all data-parallel ranks together

    @property
    def accumulation_steps(self) -> int:
        return self.global_batch // (self.micro_batch * self.dp_size)

    def __len__(self) -> int:
        """Micro batches this rank yields in one full epoch."""
        return len(self.dataloader)

    def __iter__(self) -> Iterator:
        # Hand streaming our own position every time, so an interrupted loop, a resumed run and
        # a fresh run all continue from exactly (epoch, sample_in_epoch).
        self.dataset.next_epoch = self.epoch
        self.dataset.load_state_dict(self._streaming_state())
        step = self.micro_batch * self.dp_size
        for batch in self.dataloader:
            self.sample_in_epoch += step
            yield batch
        self.epoch += 1
        self.sample_in_epoch = 0

    def _streaming_state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "sample_in_epoch": self.sample_in_epoch,
            "num_canonical_nodes": self.num_canonical_nodes,
            "shuffle_seed": self.seed,
            "initial_physical_nodes": None,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "sample_in_epoch": self.sample_in_epoch,
            "seed": self.seed,
            "global_batch": self.global_batch,
            "num_canonical_nodes": self.num_canonical_nodes,
            "paths": self.paths,
            "weights": self.weights,
            "split": self.split,
            "seq_len": self.seq_len,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise LoaderError(f"loader state has version {state.get('version')!r}, "
                              f"expected {STATE_VERSION}")
        for key in ("seed", "global_batch", "num_canonical_nodes", "paths", "weights", "split",
                    "seq_len"):
            if state[key] != getattr(self, key):
                raise LoaderError(f"loader state was saved with {key}={state[key]!r}, this loader "
                                  f"has {key}={getattr(self, key)!r}; resuming would change the "
                                  f"data order")
        step = self.micro_batch * self.dp_size
        if state["sample_in_epoch"] % step:
            raise LoaderError(
                f"loader state is at sample {state['sample_in_epoch']}, which is not a multiple "
                f"of micro_batch*dp_size={step}; resume with a different dp_size only from a "
                f"state saved at an optimizer step boundary"
            )
        self.epoch = state["epoch"]
        self.sample_in_epoch = state["sample_in_epoch"]


def build_train_loader(
    paths: list[str],
    weights: list[float] | None,
    seq_len: int,
    micro_batch: int,
    global_batch: int,
    dp_rank: int,
    dp_size: int,
    seed: int,
    num_workers: int = 0,
    split: str = "train",
    *,
    num_canonical_nodes: int = DEFAULT_CANONICAL_NODES,
) -> TokenLoader:
    """A loader over prepared datasets (local folders or remote URIs), mixed by `weights`.

    Yields `torch.LongTensor [micro_batch, seq_len + 1]`. `global_batch` must be a multiple of
    `micro_batch * dp_size`; the quotient is the number of gradient-accumulation steps.
    Call on every rank: construction contains collective barriers.
    """
    if isinstance(paths, str):
        paths = [paths]
    paths = [str(p) for p in paths]
    if not paths:
        raise LoaderError("paths is empty: pass at least one prepared dataset")
    if weights is not None:
        if len(weights) != len(paths):
            raise LoaderError(f"{len(weights)} weights for {len(paths)} paths")
        if any(w <= 0 for w in weights):
            raise LoaderError(f"weights must be positive, got {weights}")
        weights = [float(w) for w in weights]
    if micro_batch < 1 or global_batch % (micro_batch * dp_size):
        raise LoaderError(f"global_batch={global_batch} is not a multiple of micro_batch*dp_size"
                          f"={micro_batch}*{dp_size}")
    replication = _data_parallel_replication(dp_rank, dp_size)
    cards = _check_cards(paths, seq_len)

    import torch

    TokenRowDataset, streaming = _token_row_dataset_class()
    streaming.base.util.clean_stale_shared_memory()  # a barrier: every rank must call it
    streams = []
    for i, path in enumerate(paths):
        remote, local = _split_location(path, split, cards[i])
        proportion = None if weights is None else weights[i] / sum(weights)
        streams.append(streaming.Stream(remote=remote, local=local, proportion=proportion))
    dataset = TokenRowDataset(
        row_len=seq_len + 1,
        streams=streams,
        batch_size=micro_batch,
        shuffle=True,
        shuffle_seed=seed,
        num_canonical_nodes=num_canonical_nodes,
        replication=replication,
    )
    # Its own generator: every new iterator (each epoch, and the first after a resume) draws its
    # workers' base seed from it, and drawing from the global RNG instead would leave a resumed
    # run's RNG one draw off an uninterrupted run's. The rows themselves come from streaming's seed.
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=micro_batch, num_workers=num_workers, drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    return TokenLoader(
        dataset, dataloader, paths=paths, weights=weights, seq_len=seq_len,
        micro_batch=micro_batch, global_batch=global_batch, dp_size=dp_size, seed=seed,
        split=split, num_canonical_nodes=num_canonical_nodes, cards=cards,
    )


def read_rows(path: str, split: str = "train") -> np.ndarray:
    """All rows of one split in stored order, as a [rows, row_len] uint16 array (for checks and
    inspection; reads the whole split into memory)."""
    from hope_mega.data._streaming import import_streaming

    streaming = import_streaming()
    remote, local = _split_location(str(path), split)
    dataset = streaming.StreamingDataset(remote=remote, local=local, batch_size=1, shuffle=False)
    rows = [dataset[i]["tokens"] for i in range(dataset.num_samples)]
    return np.stack(rows) if rows else np.zeros((0, 0), np.uint16)
