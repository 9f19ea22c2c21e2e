"""HopeLM: embedding -> N Hope layers -> RMSNorm -> LM head.

Hope, Hope-Attention and Transformer++ are configurations of this one class (config.model.mixer
and config.model.cms_levels).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..config import ModelConfig
from .block import HopeBlock
from .documents import Documents
from .layers import TorchLayers


class HopeLM(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        layers=None,
        eos_id: int | None = None,
        titans_impl: str = "auto",
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        layers = layers or TorchLayers()
        self.cfg = cfg
        self.layers = layers
        self.eos_id = eos_id  # None: rows are single sequences; else memories reset after each EOS
        self.activation_checkpointing = activation_checkpointing
        self.embed = layers.embedding(cfg.vocab_size, cfg.d_model, cfg.init_std)
        self.blocks = nn.ModuleList(HopeBlock(cfg, layers, titans_impl) for _ in range(cfg.n_layers))
        self.final_norm = layers.norm(cfg.d_model, cfg.norm_eps)
        if cfg.tie_embeddings:
            if layers.tp_size != 1:
                raise ValueError("model.tie_embeddings is only supported with parallel.tp=1")
            self.head = None
        else:
            self.head = layers.lm_head(cfg.d_model, cfg.vocab_size, cfg.init_std)

    def documents(self, input_ids: torch.Tensor) -> Documents:
        """Where the documents of `input_ids` start; give it the host copy of a device batch and
        pass the result (`.to(device)`) to `forward`, so the step never waits for the device."""
        return Documents.from_tokens(input_ids, self.eos_id)

    def hidden_states(self, input_ids: torch.Tensor, docs: Documents | None = None) -> torch.Tensor:
        """input_ids [B, T] -> final normed hidden states [T, B, d] (sequence-sharded under SP)."""
        if docs is None:
            docs = self.documents(input_ids)
        x = self.embed(input_ids.t())
        for block in self.blocks:
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, docs, use_reentrant=False)
            else:
                x = block(x, docs)
        return self.final_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return hidden @ self.embed.weight.t()
        return self.head(hidden)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                docs: Documents | None = None) -> torch.Tensor:
        """Without labels: logits [B, T, V] (the local vocabulary slice under TP).
        With labels [B, T]: the per-token loss [B, T]. `docs`: `documents(input_ids)`, computed
        ahead (by default here, which on a GPU batch reads the EOS positions back to the host)."""
        logits = self.logits(self.hidden_states(input_ids, docs))
        if labels is None:
            return logits.transpose(0, 1)
        return self.layers.cross_entropy(logits, labels.t()).t()
