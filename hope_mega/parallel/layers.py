"""`MegatronLayers`: the model's layer provider on megatron-core's tensor-parallel layers.

Same interface as `hope_mega.model.layers.TorchLayers`; the model cannot tell them apart except
through `tp_size`/`tp_rank`, which it uses only to size its per-head parameters. Needs the groups
from `hope_mega.parallel.state.init_distributed`.

Layout facts the rest of the stack relies on:
- A column-parallel weight with k sections (q, k, v, ... of a fused projection) holds, on rank r,
  rank r's slice of every section, section after section. Megatron's `stride` argument is exactly
  this layout, so its initialisation splits a full master weight the same way.
- The vocabulary is padded to a multiple of `vocab_multiple * tp`; padded embedding rows are never
  looked up and padded logits are -inf, so they take no probability mass and get no gradient.
- Under sequence parallelism the residual stream between layers is [T/tp, B, d]; the embedding
  reduce-scatters into it, column-parallel layers all-gather out of it, row-parallel layers
  reduce-scatter back into it.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
from megatron.core import parallel_state
from megatron.core.model_parallel_config import ModelParallelConfig
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    vocab_parallel_cross_entropy,
)

from ..model.layers import RMSNorm, mark_split


def padded_vocab_size(vocab_size: int, tp: int, multiple: int = 1) -> int:
    step = multiple * tp
    return math.ceil(vocab_size / step) * step


class _Column(ColumnParallelLinear):
    """Output-partitioned linear returning the tensor alone (megatron returns (output, bias))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[0]


class _Row(RowParallelLinear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[0]


class _LMHead(_Column):
    """Logits over this rank's (padded) vocabulary slice, padding columns at -inf."""

    def __init__(self, *args, vocab_size: int, **kwargs):
        super().__init__(*args, **kwargs)
        start = parallel_state.get_tensor_model_parallel_rank() * self.output_size_per_partition
        self.valid = max(0, min(self.output_size_per_partition, vocab_size - start))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        if self.valid == logits.shape[-1]:
            return logits
        pad = torch.arange(logits.shape[-1], device=logits.device) >= self.valid
        return logits.masked_fill(pad, float("-inf"))


class _Embedding(VocabParallelEmbedding):
    """Token ids [T, B] -> [T, B, d], or [T/tp, B, d] under sequence parallelism."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.reduce_scatter_embeddings:
            # Megatron's reduce-scatter path takes [B, T] ids and transposes to [T, B] itself.
            ids = ids.t()
        return super().forward(ids)


def allreduce_sequence_parallel_grad(grad: torch.Tensor) -> torch.Tensor:
    """Sum a replicated parameter's gradient over the TP group (each rank saw T/tp tokens)."""
    grad = grad.contiguous().clone()
    dist.all_reduce(grad, group=parallel_state.get_tensor_model_parallel_group())
    return grad


class MegatronLayers:
    """Tensor-parallel (and optionally sequence-parallel) layers from megatron-core.

    vocab_multiple: the vocabulary is padded to a multiple of vocab_multiple * tp (Megatron's
    `make_vocab_size_divisible_by`; 128 keeps GPU matmuls aligned).
    """

    def __init__(self, sequence_parallel: bool = False, vocab_multiple: int = 1):
        if not parallel_state.model_parallel_is_initialized():
            raise RuntimeError("MegatronLayers needs hope_mega.parallel.state.init_distributed(tp) first")
        self.tp_size = parallel_state.get_tensor_model_parallel_world_size()
        self.tp_rank = parallel_state.get_tensor_model_parallel_rank()
        if sequence_parallel and self.tp_size == 1:
            raise ValueError("parallel.sequence_parallel needs parallel.tp > 1 (it shards over the TP group)")
        self.sequence_parallel = sequence_parallel
        self.vocab_multiple = vocab_multiple
        # CPU initialisation draws each full weight from the default generator and keeps this
        # rank's slice, so with one seed on every rank the slices are those of a single full
        # weight, and no CUDA RNG tracker is needed. (Parameters the model creates at local size,
        # the Titans per-head ones, are not covered: equal seeds give every TP rank the same values.)
        self.config = ModelParallelConfig(
            tensor_model_parallel_size=self.tp_size,
            sequence_parallel=sequence_parallel,
            use_cpu_initialization=True,
            perform_initialization=True,
            params_dtype=torch.float32,
        )

    @staticmethod
    def _normal(std: float):
        return lambda w: nn.init.normal_(w, std=std)

    def column(self, in_features: int, out_features: int, std: float, sections: int = 1) -> nn.Module:
        if out_features % (sections * self.tp_size):
            raise ValueError(f"{out_features} outputs in {sections} sections do not split over tp={self.tp_size}")
        layer = _Column(
            in_features, out_features, config=self.config, init_method=self._normal(std),
            bias=False, gather_output=False, stride=sections,
        )  # fmt: skip
        mark_split(layer.weight, 0, sections)
        return layer

    def row(self, in_features: int, out_features: int, std: float) -> nn.Module:
        layer = _Row(
            in_features, out_features, config=self.config, init_method=self._normal(std),
            bias=False, input_is_parallel=True, skip_bias_add=False,
        )  # fmt: skip
        mark_split(layer.weight, 1)
        return layer

    def embedding(self, vocab_size: int, dim: int, std: float) -> nn.Module:
        layer = _Embedding(
            padded_vocab_size(vocab_size, self.tp_size, self.vocab_multiple), dim,
            init_method=self._normal(std), reduce_scatter_embeddings=self.sequence_parallel,
            config=self.config,
        )  # fmt: skip
        mark_split(layer.weight, 0)
        layer.weight.tp_full_size = vocab_size
        return layer

    def lm_head(self, dim: int, vocab_size: int, std: float) -> nn.Module:
        layer = _LMHead(
            dim, padded_vocab_size(vocab_size, self.tp_size, self.vocab_multiple), config=self.config,
            init_method=self._normal(std), bias=False, gather_output=False, vocab_size=vocab_size,
        )  # fmt: skip
        mark_split(layer.weight, 0)
        layer.weight.tp_full_size = vocab_size
        return layer

    def norm(self, dim: int, eps: float) -> nn.Module:
        norm = RMSNorm(dim, eps)
        if self.sequence_parallel:
            # Each rank normalises only its T/tp tokens, so its weight gradient is partial. The
            # sum is taken in a tensor hook, i.e. on each backward's own contribution before it is
            # accumulated into .grad: DeepSpeed ZeRO-2 consumes gradients in post-accumulate hooks
            # during backward (too early for an all-reduce before the optimizer step), and reducing
            # after accumulation would sum earlier micro-batches twice.
            norm.weight.sequence_parallel = True
            norm.weight.register_hook(allreduce_sequence_parallel_grad)
        return norm

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-token loss [T, B] from vocabulary-parallel logits [T, B, V_local].

        Megatron subtracts the max from fp32 logits in place: the logits are not usable after.
        """
        return vocab_parallel_cross_entropy(logits.float(), labels.contiguous())


def mark_tensor_parallel(model: nn.Module) -> None:
    """Give every TP-split parameter megatron's attributes (tensor_model_parallel, partition_dim,
    partition_stride), from the `tp_dim`/`tp_sections` the model and provider put on them.

    Call once after building the model and before handing it to DeepSpeed: its gradient-norm
    counts parameters without `tensor_model_parallel` once per TP group (they are replicas) and
    the split ones on every rank. The Titans mixer's per-head parameters are created by the model
    itself, so only this walk reaches them.
    """
    for p in model.parameters():
        if hasattr(p, "tp_dim"):
            p.tensor_model_parallel = True
            p.partition_dim = p.tp_dim
            p.partition_stride = getattr(p, "tp_sections", 1)
