"""MLP projector and the Connector (resampler + projector) of the Track A VLM.

``Connector(vision_dim, text_dim)`` maps vision features ``[B, N, vision_dim]``
(+ ``[B, N]`` mask) to ``[B, num_latents, text_dim]`` text embeddings:
an optional linear input projection to the resampler width, the Perceiver
resampler, then a two-layer GELU MLP to the text width. The resampler runs
before the projector (unlike Idefics2, which projects first) so that its cost
follows the vision width rather than the larger text width.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .resampler import PerceiverResampler

__all__ = ["Connector", "MLPProjector"]


class MLPProjector(nn.Module):
    """``[*, in_dim] -> [*, out_dim]``: Linear -> GELU -> Linear (with biases)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: Optional[int] = None):
        super().__init__()
        hidden = out_dim if hidden is None else hidden
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Connector(nn.Module):
    """Vision features -> ``num_latents`` text-width tokens per image.

    Args:
        vision_dim: width of the vision features.
        text_dim: hidden size of the text model.
        resampler_dim: resampler width (default ``vision_dim``; a different
            value adds a linear input projection).
        num_latents, depth, heads, kv_heads, head_dim, flavour, mlp_ratio,
        attn_impl: see ``PerceiverResampler``.
        projector_hidden: projector hidden width (default ``text_dim``).
    """

    def __init__(self, vision_dim: int, text_dim: int, *, resampler_dim: Optional[int] = None,
                 num_latents: int = 64, depth: int = 3, heads: int = 16, kv_heads: Optional[int] = 4,
                 head_dim: Optional[int] = None, flavour: str = "idefics2", mlp_ratio: float = 4.0,
                 projector_hidden: Optional[int] = None, attn_impl: str = "fused"):
        super().__init__()
        resampler_dim = vision_dim if resampler_dim is None else resampler_dim
        self.config: dict[str, Any] = dict(
            vision_dim=vision_dim, text_dim=text_dim, resampler_dim=resampler_dim,
            num_latents=num_latents, depth=depth, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
            flavour=flavour, mlp_ratio=mlp_ratio, projector_hidden=projector_hidden,
        )
        self.in_proj = nn.Identity() if resampler_dim == vision_dim else nn.Linear(vision_dim, resampler_dim)
        self.resampler = PerceiverResampler(
            resampler_dim, num_latents=num_latents, depth=depth, heads=heads, kv_heads=kv_heads,
            head_dim=head_dim, flavour=flavour, mlp_ratio=mlp_ratio, attn_impl=attn_impl,
        )
        self.projector = MLPProjector(resampler_dim, text_dim, projector_hidden)

    @property
    def num_latents(self) -> int:
        return self.resampler.num_latents

    @classmethod
    def from_config(cls, config: dict[str, Any], **overrides: Any) -> "Connector":
        """Rebuild from ``connector.config`` (as saved in a checkpoint's JSON)."""
        return cls(**{**config, **overrides})

    def forward(self, features: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """features: [B, N, vision_dim]; mask: [B, N] bool or None. Returns [B, num_latents, text_dim]."""
        return self.projector(self.resampler(self.in_proj(features), mask))
