"""One Hope layer (spec §1): x + Mixer(RMSNorm(x)), then the CMS levels, each pre-norm + residual."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ModelConfig
from .attention import AttentionMixer
from .cms import CMS
from .documents import Documents
from .gated_deltanet import GatedDeltaNetMixer
from .titans import TitansMixer


class HopeBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, layers, titans_impl: str = "auto"):
        super().__init__()
        self.mixer_norm = layers.norm(cfg.d_model, cfg.norm_eps)
        if cfg.mixer == "titans":
            self.mixer = TitansMixer(cfg, layers, cfg.n_layers, impl=titans_impl)
        elif cfg.mixer == "gdn":
            self.mixer = GatedDeltaNetMixer(cfg, layers, cfg.n_layers)
        else:
            self.mixer = AttentionMixer(cfg, layers, cfg.n_layers)
        self.cms = CMS(cfg, layers, cfg.n_layers)

    def forward(self, x: torch.Tensor, docs: Documents) -> torch.Tensor:
        x = x + self.mixer(self.mixer_norm(x), docs)
        return self.cms(x)
