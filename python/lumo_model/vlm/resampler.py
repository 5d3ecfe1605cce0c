"""Perceiver resampler: a fixed number of learned latents attend to vision tokens.

Each layer lets the latents attend to ``concat(context, latents)`` (keys and
values of both, queries from the latents only), then applies an MLP; both
with residuals. Two flavours share the layout and differ in their pieces:

- ``"idefics2"``: RMSNorm (computed in fp32), SwiGLU MLP
  (``down(silu(gate(x)) * up(x))``), GQA (``kv_heads <= heads``).
- ``"flamingo"``: LayerNorm, GELU MLP (``Linear -> GELU -> Linear``).

The attention runs on ``lumo_uti.ops.resampler_attention`` (fused: no
concatenated keys/values, fp32 softmax, deterministic backward), or on the
plain reference (``attn_impl="reference"``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lumo_uti.ops.resampler_attention import resampler_attention, resampler_attention_reference

__all__ = ["FLAVOURS", "PerceiverAttention", "PerceiverLayer", "PerceiverResampler", "RMSNorm"]

FLAVOURS = ("idefics2", "flamingo")
ATTN_IMPLS = ("fused", "reference")


class RMSNorm(nn.Module):
    """Idefics2-style RMSNorm: ``w * x / sqrt(mean(x^2) + eps)`` with the statistics in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _norm(flavour: str, dim: int, eps: float) -> nn.Module:
    return RMSNorm(dim, eps) if flavour == "idefics2" else nn.LayerNorm(dim, eps=eps)


class PerceiverAttention(nn.Module):
    """Latent queries over ``concat(context, latents)``; GQA with ``kv_heads`` key/value heads."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, attn_impl: str = "fused"):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.attn_impl = attn_impl
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, dim, bias=False)

    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, heads, self.head_dim).transpose(1, 2)  # [B, H, T, d]

    def forward(self, latents: torch.Tensor, context: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """latents: [B, L, dim] (normed); context: [B, N, dim] (normed); mask: [B, N] bool or None."""
        B, L, _ = latents.shape
        q = self._split(self.q_proj(latents), self.heads)
        # Projecting context and latents separately equals projecting their
        # concatenation (same weights), and the fused op never concatenates.
        k_ctx = self._split(self.k_proj(context), self.kv_heads)
        v_ctx = self._split(self.v_proj(context), self.kv_heads)
        k_lat = self._split(self.k_proj(latents), self.kv_heads)
        v_lat = self._split(self.v_proj(latents), self.kv_heads)
        if self.attn_impl == "reference":
            out, _ = resampler_attention_reference(q, k_ctx, v_ctx, k_lat, v_lat, mask)
        else:
            out = resampler_attention(q, k_ctx, v_ctx, k_lat, v_lat, mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, L, self.heads * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class GeluMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class PerceiverLayer(nn.Module):
    """One resampler layer: pre-norm cross-attention and pre-norm MLP, both residual."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, mlp_hidden: int,
                 flavour: str, eps: float, attn_impl: str):
        super().__init__()
        self.latents_norm = _norm(flavour, dim, eps)
        self.context_norm = _norm(flavour, dim, eps)
        self.attn = PerceiverAttention(dim, heads, kv_heads, head_dim, attn_impl)
        self.mlp_norm = _norm(flavour, dim, eps)
        self.mlp = SwiGLU(dim, mlp_hidden) if flavour == "idefics2" else GeluMLP(dim, mlp_hidden)

    def forward(self, latents: torch.Tensor, context: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        latents = latents + self.attn(self.latents_norm(latents), self.context_norm(context), mask)
        return latents + self.mlp(self.mlp_norm(latents))


class PerceiverResampler(nn.Module):
    """``[B, N, dim]`` context (+ ``[B, N]`` mask) -> ``[B, num_latents, dim]``.

    Args:
        dim: width of the context tokens and of the latents.
        num_latents: output tokens per image (64).
        depth: number of layers.
        heads, kv_heads: query and key/value heads (``heads % kv_heads == 0``).
        head_dim: per-head width (default ``dim // heads``).
        flavour: ``"idefics2"`` or ``"flamingo"``.
        mlp_ratio: MLP hidden width = ``mlp_ratio * dim``.
        attn_impl: ``"fused"`` (the lumo op) or ``"reference"``.
    """

    def __init__(self, dim: int, *, num_latents: int = 64, depth: int = 3, heads: int = 16,
                 kv_heads: Optional[int] = None, head_dim: Optional[int] = None,
                 flavour: str = "idefics2", mlp_ratio: float = 4.0, eps: float = 1e-6,
                 attn_impl: str = "fused"):
        super().__init__()
        kv_heads = heads if kv_heads is None else kv_heads
        head_dim = dim // heads if head_dim is None else head_dim
        if flavour not in FLAVOURS:
            raise ValueError(f"PerceiverResampler: expected flavour in {FLAVOURS}, got {flavour!r}")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"PerceiverResampler: expected attn_impl in {ATTN_IMPLS}, got {attn_impl!r}")
        for name, v in (("dim", dim), ("num_latents", num_latents), ("depth", depth), ("heads", heads),
                        ("kv_heads", kv_heads), ("head_dim", head_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"PerceiverResampler: expected {name} a positive int, got {v!r}")
        if heads % kv_heads:
            raise ValueError(f"PerceiverResampler: expected heads={heads} a multiple of kv_heads, got {kv_heads}")
        self.dim, self.num_latents, self.flavour = dim, num_latents, flavour
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        hidden = int(mlp_ratio * dim)
        self.layers = nn.ModuleList(
            PerceiverLayer(dim, heads, kv_heads, head_dim, hidden, flavour, eps, attn_impl) for _ in range(depth)
        )
        self.norm = _norm(flavour, dim, eps)

    def set_attn_impl(self, impl: str) -> None:
        """Switch every layer between ``"fused"`` and ``"reference"`` attention."""
        if impl not in ATTN_IMPLS:
            raise ValueError(f"PerceiverResampler: expected attn_impl in {ATTN_IMPLS}, got {impl!r}")
        for layer in self.layers:
            layer.attn.attn_impl = impl

    def forward(self, context: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """context: [B, N, dim]; mask: [B, N] bool (True = real token) or None. Returns [B, L, dim]."""
        if context.dim() != 3 or context.shape[-1] != self.dim:
            raise ValueError(f"PerceiverResampler: expected context [B, N, {self.dim}], got {tuple(context.shape)}")
        if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != tuple(context.shape[:2])):
            raise ValueError(
                f"PerceiverResampler: expected a bool mask of shape {tuple(context.shape[:2])}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        latents = self.latents.to(context.dtype).unsqueeze(0).expand(context.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(latents, context, mask)
        return self.norm(latents)
