"""Continuum Memory System (spec §3): a chain of SwiGLU levels, each updated at its own period.

The period is an optimizer matter (hope_mega.optim.multi_period); the model only tags every
parameter of a level, its pre-norm included, with `cms_period`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import CMSLevel as CMSLevelConfig
from ..config import ModelConfig


class CMSLevel(nn.Module):
    """x + SwiGLU(RMSNorm(x))."""

    def __init__(self, cfg: ModelConfig, level: CMSLevelConfig, layers, n_layers: int):
        super().__init__()
        self.norm = layers.norm(cfg.d_model, cfg.norm_eps)
        self.gate_up = layers.column(cfg.d_model, 2 * level.hidden, cfg.init_std, sections=2)
        self.down = layers.row(level.hidden, cfg.d_model, cfg.init_std / math.sqrt(2 * n_layers))
        self.period = level.period
        self._tag_parameters()

    def _tag_parameters(self) -> None:
        for p in self.parameters():
            p.cms_period = self.period

    def __setstate__(self, state) -> None:
        # copy.deepcopy and pickle rebuild each Parameter without its Python attributes; an
        # optimizer built on the copy would otherwise update this level every step.
        super().__setstate__(state)
        self._tag_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(self.norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class CMS(nn.Module):
    def __init__(self, cfg: ModelConfig, layers, n_layers: int):
        super().__init__()
        self.levels = nn.ModuleList(CMSLevel(cfg, level, layers, n_layers) for level in cfg.cms_levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for level in self.levels:
            x = level(x)
        return x
