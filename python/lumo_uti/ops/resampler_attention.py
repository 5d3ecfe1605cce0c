"""Resampler cross-attention: latent queries over concat(context, latents) keys.

``resampler_attention(q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask=None, *, scale=None)``
is ``softmax(q @ [k_ctx; k_lat]^T * scale, masked) @ [v_ctx; v_lat]`` without
building the concatenated keys/values: the kernels keep one softmax partial per
key block and merge them by log-sum-exp. GQA: query head ``h`` reads key/value
head ``h // (Hq // Hkv)``. Softmax and accumulation are fp32 for every input
dtype.

Backends: ``lumo_uti._C`` (CPU), ``lumo_uti._C_cuda`` (CUDA, head dim <= 256)
and ``reference.resampler_attention`` (any device; the fallback, or forced by
``LUMO_FORCE_REFERENCE=1``). The forward op ``lumo_uti::resampler_attention_fwd``
returns ``(out, lse)``; its autograd formula calls the backward op
``lumo_uti::resampler_attention_bwd``, which is deterministic on every backend
(no atomics: each gradient row is summed by one worker in a fixed order).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from . import _abi, _native
from .reference.resampler_attention import (
    resampler_attention_backward_reference,
    resampler_attention_reference,
)

__all__ = [
    "resampler_attention",
    "resampler_attention_backward_reference",
    "resampler_attention_reference",
]

_OP = "resampler_attention"
# The CUDA kernel keeps a head's row in registers, 8 values per lane.
_CUDA_MAX_HEAD_DIM = 256
# Forces one CPU instruction set (every one gives the same bits).
_ISA_ENV = "LUMO_RESAMPLER_ISA"


# ---------------------------------------------------------------------------
# Validation (front, op and fake share it).
# ---------------------------------------------------------------------------


def _check_args(q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, scale) -> None:
    names = ("q", "k_ctx", "v_ctx", "k_lat", "v_lat")
    tensors = (q, k_ctx, v_ctx, k_lat, v_lat)
    for n, t in zip(names, tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{_OP}: expected {n} as a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{_OP}: expected 4-D {n}, got shape {tuple(t.shape)}")
    if q.dtype not in _abi.DTYPE_CODES:
        raise TypeError(f"{_OP}: expected q of dtype {_abi.FLOAT_DTYPES_TEXT}, got {_abi.dtype_name(q.dtype)}")
    for n, t in zip(names[1:], tensors[1:]):
        if t.dtype != q.dtype:
            raise TypeError(f"{_OP}: expected {n} of dtype {_abi.dtype_name(q.dtype)} (the dtype of q), got {_abi.dtype_name(t.dtype)}")
        if t.device != q.device:
            raise ValueError(f"{_OP}: expected {n} on {q.device} (the device of q), got {t.device}")
    B, Hq, L, D = q.shape
    if D == 0:
        # No default scale (D ** -0.5) and nothing to attend with: an error on every backend.
        raise ValueError(f"{_OP}: expected head dim D >= 1, got q of shape {tuple(q.shape)}")
    if k_ctx.shape[0] != B or k_ctx.shape[3] != D:
        raise ValueError(
            f"{_OP}: expected k_ctx of shape [B={B}, Hkv, N, D={D}], got {tuple(k_ctx.shape)}"
        )
    Hkv, N = k_ctx.shape[1], k_ctx.shape[2]
    if Hkv < 1 or Hq % Hkv != 0:
        raise ValueError(f"{_OP}: expected Hq={Hq} to be a multiple of Hkv >= 1, got Hkv={Hkv}")
    if tuple(v_ctx.shape) != (B, Hkv, N, D):
        raise ValueError(f"{_OP}: expected v_ctx of shape {(B, Hkv, N, D)} (like k_ctx), got {tuple(v_ctx.shape)}")
    for n, t in (("k_lat", k_lat), ("v_lat", v_lat)):
        if tuple(t.shape) != (B, Hkv, L, D):
            raise ValueError(f"{_OP}: expected {n} of shape {(B, Hkv, L, D)} ([B, Hkv, L, D]), got {tuple(t.shape)}")
    if ctx_mask is not None:
        if not isinstance(ctx_mask, torch.Tensor):
            raise TypeError(f"{_OP}: expected ctx_mask as a torch.Tensor or None, got {type(ctx_mask).__name__}")
        if ctx_mask.dtype != torch.bool:
            raise TypeError(f"{_OP}: expected a bool ctx_mask, got {_abi.dtype_name(ctx_mask.dtype)}")
        if tuple(ctx_mask.shape) != (B, N):
            raise ValueError(f"{_OP}: expected ctx_mask of shape {(B, N)} ([B, N]), got {tuple(ctx_mask.shape)}")
        if ctx_mask.device != q.device:
            raise ValueError(f"{_OP}: expected ctx_mask on {q.device} (the device of q), got {ctx_mask.device}")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise ValueError(f"{_OP}: expected a finite float scale, got {scale!r}")


def _check_bwd_args(grad_out, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, out, lse, scale) -> None:
    """The forward's checks plus what the backward reads: grad_out and out
    ``[B, Hq, L, D]`` (out in the dtype of q), lse ``[B, Hq, L]`` fp32, on the device of q."""
    _check_args(q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, scale)
    B, Hq, L, D = q.shape
    for n, t, dtypes in (("grad_out", grad_out, _abi.DTYPE_CODES), ("out", out, (q.dtype,)),
                         ("lse", lse, (torch.float32,))):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{_OP}: expected {n} as a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in dtypes:
            names = [_abi.dtype_name(d) for d in dtypes]
            want = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
            raise TypeError(f"{_OP}: expected {n} of dtype {want}, got {_abi.dtype_name(t.dtype)}")
        if t.device != q.device:
            raise ValueError(f"{_OP}: expected {n} on {q.device} (the device of q), got {t.device}")
        shape = (B, Hq, L) if n == "lse" else (B, Hq, L, D)
        if tuple(t.shape) != shape:
            raise ValueError(f"{_OP}: expected {n} of shape {shape}, got {tuple(t.shape)}")


def resampler_attention(
    q: torch.Tensor,
    k_ctx: torch.Tensor,
    v_ctx: torch.Tensor,
    k_lat: torch.Tensor,
    v_lat: torch.Tensor,
    ctx_mask: Optional[torch.Tensor] = None,
    *,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Attention of latent queries over the context keys and the latent keys.

    Args:
        q: ``[B, Hq, L, D]`` latent queries (fp32, bf16 or fp16).
        k_ctx, v_ctx: ``[B, Hkv, N, D]`` context keys/values (``N`` may be 0).
        k_lat, v_lat: ``[B, Hkv, L, D]`` latent keys/values.
        ctx_mask: ``[B, N]`` bool, True where a context position is real; None = all real.
        scale: score scale, default ``D ** -0.5``.

    Returns:
        ``[B, Hq, L, D]`` in the dtype of ``q``; differentiable in q, k_*, v_*.

    NaN propagates as in the reference: a NaN query gives a NaN output row, a
    NaN in a real key or in any value (masked keys' values included: their
    probability 0 times NaN) gives NaN in the rows that read it.

    Raises:
        TypeError: a non-tensor, unsupported dtype, mixed dtypes, non-bool mask.
        ValueError: bad shapes, ``D == 0``, ``Hq`` not a multiple of ``Hkv``,
            mixed devices, bad scale.
    """
    if scale is None and isinstance(q, torch.Tensor) and q.dim() == 4 and q.shape[-1] > 0:
        scale = q.shape[-1] ** -0.5
    _check_args(q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, scale)
    out, _lse = _fwd_op(q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, float(scale))
    return out


# ---------------------------------------------------------------------------
# Backends.
# ---------------------------------------------------------------------------


def _module(device: torch.device, D: int):
    """The native module for ``device``, or None: the CUDA kernel takes head dims up to 256."""
    module = _abi.module(device)
    if module is not None and not _abi.is_cpu(module) and D > _CUDA_MAX_HEAD_DIM:
        return None
    return module


def _fwd_impl(q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, scale):
    _check_args(q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, scale)
    B, Hq, L, D = q.shape
    Hkv, N = k_ctx.shape[1], k_ctx.shape[2]
    module = _module(q.device, D)
    if module is None:
        out, lse = resampler_attention_reference(q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, scale)
        return out.contiguous(), lse.contiguous()
    q, k_ctx, v_ctx, k_lat, v_lat = (t.contiguous() for t in (q, k_ctx, v_ctx, k_lat, v_lat))
    mask = None if ctx_mask is None else ctx_mask.contiguous()
    out = torch.empty_like(q)
    lse = torch.empty((B, Hq, L), dtype=torch.float32, device=q.device)
    if B * L == 0:
        return out, lse
    buf = _native.buffer
    args = dict(q=buf(q), k_ctx=buf(k_ctx), v_ctx=buf(v_ctx), k_lat=buf(k_lat), v_lat=buf(v_lat),
                ctx_mask=buf(mask), out=buf(out), lse=buf(lse), B=B, Hq=Hq, Hkv=Hkv, L=L, N=N, D=D,
                scale=scale, dtype=_abi.dtype_code(q.dtype))
    # SAFETY: every tensor above is contiguous, lives in this frame until the
    # call returns (CPU) or is used on its device's current stream (CUDA), and
    # has the sizes given.
    if _abi.is_cpu(module):
        module.resampler_attn_forward(**args, num_threads=_abi.threads(), isa=_abi.isa(_ISA_ENV))
    else:
        module.resampler_attn_forward(**args, **_abi.queue(q.device))
    return out, lse


def _bwd_impl(grad_out, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, out, lse, scale):
    _check_bwd_args(grad_out, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, out, lse, scale)
    B, Hq, L, D = q.shape
    Hkv, N = k_ctx.shape[1], k_ctx.shape[2]
    module = _module(q.device, D)
    if module is None:
        return resampler_attention_backward_reference(
            grad_out, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, out, lse, scale
        )
    ts = [t.contiguous() for t in (grad_out.to(q.dtype), q, k_ctx, v_ctx, k_lat, v_lat)]
    mask = None if ctx_mask is None else ctx_mask.contiguous()
    out, lse = out.contiguous(), lse.contiguous()
    if B * L == 0:  # no query attended to any key
        return tuple(torch.zeros_like(t) for t in ts[1:])
    grads = [torch.empty_like(t) for t in ts[1:]]
    buf = _native.buffer
    args = dict(zip(("dout", "q", "k_ctx", "v_ctx", "k_lat", "v_lat"), map(buf, ts)))
    args.update(zip(("dq", "dk_ctx", "dv_ctx", "dk_lat", "dv_lat"), map(buf, grads)))
    args.update(ctx_mask=buf(mask), out=buf(out), lse=buf(lse), B=B, Hq=Hq, Hkv=Hkv, L=L, N=N, D=D,
                scale=scale, dtype=_abi.dtype_code(q.dtype))
    # SAFETY: as in _fwd_impl; the gradients are fresh contiguous tensors.
    if _abi.is_cpu(module):
        module.resampler_attn_backward(**args, num_threads=_abi.threads(), isa=_abi.isa(_ISA_ENV))
    else:
        delta = torch.empty((B, Hq, L), dtype=torch.float32, device=q.device)  # workspace
        module.resampler_attn_backward(**args, delta=buf(delta), **_abi.queue(q.device))
    return tuple(grads)


@torch.library.custom_op("lumo_uti::resampler_attention_fwd", mutates_args=())
def _fwd_op(
    q: torch.Tensor,
    k_ctx: torch.Tensor,
    v_ctx: torch.Tensor,
    k_lat: torch.Tensor,
    v_lat: torch.Tensor,
    ctx_mask: Optional[torch.Tensor],
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _fwd_impl(q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, scale)


@_fwd_op.register_fake
def _fwd_fake(q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, scale):
    _check_args(q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, scale)
    B, Hq, L, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((B, Hq, L), dtype=torch.float32)


@torch.library.custom_op("lumo_uti::resampler_attention_bwd", mutates_args=())
def _bwd_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k_ctx: torch.Tensor,
    v_ctx: torch.Tensor,
    k_lat: torch.Tensor,
    v_lat: torch.Tensor,
    ctx_mask: Optional[torch.Tensor],
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd_impl(grad_out, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, out, lse, scale)


@_bwd_op.register_fake
def _bwd_fake(grad_out, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, out, lse, scale):
    _check_bwd_args(grad_out, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, out, lse, scale)
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k_ctx, v_ctx, k_lat, v_lat))


def _setup_context(ctx, inputs, output):
    q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, out, lse)
    ctx.scale = scale


def _backward(ctx, grad_out, grad_lse):
    # lse is an internal output (the public function drops it): its gradient is ignored.
    q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, out, lse = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dkc, dvc, dkl, dvl = _bwd_op(grad_out, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, out, lse, ctx.scale)
    return dq, dkc, dvc, dkl, dvl, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)
