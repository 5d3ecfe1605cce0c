"""Pure-PyTorch reference of the resampler cross-attention: the spec and the oracle.

Concatenated keys, masked softmax in fp32; the backward in closed form.
"""

from __future__ import annotations

from typing import Optional

import torch


def _expand_kv(x: torch.Tensor, group: int) -> torch.Tensor:
    """[B, Hkv, T, D] -> [B, Hkv * group, T, D] (query head h reads kv head h // group)."""
    return x.repeat_interleave(group, dim=1) if group > 1 else x


def _ref_probs(q, k_ctx, k_lat, ctx_mask, scale):
    """fp32 probabilities [B, Hq, L, N + L] and lse [B, Hq, L]."""
    group = q.shape[1] // k_ctx.shape[1]
    k = _expand_kv(torch.cat([k_ctx, k_lat], dim=2).float(), group)
    scores = torch.matmul(q.float(), k.transpose(-1, -2)) * scale
    if ctx_mask is not None:
        B, L = ctx_mask.shape[0], k_lat.shape[2]
        keep = torch.cat([ctx_mask, ctx_mask.new_ones(B, L)], dim=1)
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return torch.exp(scores - lse[..., None]), lse


def resampler_attention_reference(
    q: torch.Tensor,
    k_ctx: torch.Tensor,
    v_ctx: torch.Tensor,
    k_lat: torch.Tensor,
    v_lat: torch.Tensor,
    ctx_mask: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The op as plain PyTorch (validated inputs). Returns ``(out [B, Hq, L, D], lse [B, Hq, L] fp32)``.

    Differentiable with autograd, so the tests use it as the oracle for the gradients too.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    group = q.shape[1] // k_ctx.shape[1]
    p, lse = _ref_probs(q, k_ctx, k_lat, ctx_mask, scale)
    v = _expand_kv(torch.cat([v_ctx, v_lat], dim=2).float(), group)
    return torch.matmul(p, v).to(q.dtype), lse


def resampler_attention_backward_reference(grad_out, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, out, lse, scale):
    """Closed-form backward in fp32: ``(dq, dk_ctx, dv_ctx, dk_lat, dv_lat)`` in the input dtype."""
    B, Hq, L, D = q.shape
    Hkv, N = k_ctx.shape[1], k_ctx.shape[2]
    group = Hq // Hkv
    k = _expand_kv(torch.cat([k_ctx, k_lat], dim=2).float(), group)
    v = _expand_kv(torch.cat([v_ctx, v_lat], dim=2).float(), group)
    scores = torch.matmul(q.float(), k.transpose(-1, -2)) * scale
    p = torch.exp(scores - lse[..., None].float())
    if ctx_mask is not None:
        keep = torch.cat([ctx_mask, ctx_mask.new_ones(B, L)], dim=1)
        p = p.masked_fill(~keep[:, None, None, :], 0.0)
    do = grad_out.float()
    delta = (do * out.float()).sum(-1, keepdim=True)  # [B, Hq, L, 1]
    ds = p * (torch.matmul(do, v.transpose(-1, -2)) - delta)
    dq = torch.matmul(ds, k) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q.float()) * scale  # [B, Hq, T, D]
    dv = torch.matmul(p.transpose(-1, -2), do)
    # Sum the query heads of each kv group.
    dk = dk.view(B, Hkv, group, N + L, D).sum(2)
    dv = dv.view(B, Hkv, group, N + L, D).sum(2)
    dt = q.dtype
    return (dq.to(dt), dk[:, :, :N].to(dt), dv[:, :, :N].to(dt), dk[:, :, N:].to(dt), dv[:, :, N:].to(dt))
