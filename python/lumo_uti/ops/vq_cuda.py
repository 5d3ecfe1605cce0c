"""CUDA calls of the VQ ops: workspaces from PyTorch's caching allocator, then ``_C_cuda``.

Inputs are validated and contiguous (``vq.py``); every call enqueues on the
current stream of the input's device.
"""

from __future__ import annotations

from types import ModuleType

import torch

from . import _native

_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _workspace(
    module: ModuleType, n: int, k: int, device: torch.device
) -> tuple[int, torch.Tensor, torch.Tensor]:
    splits = module.vq_search_splits(n, k, _native.queue(device)[1])
    part_val = torch.empty(splits * n, dtype=torch.float32, device=device)
    part_idx = torch.empty(splits * n, dtype=torch.int32, device=device)
    return splits, part_val, part_idx


def vq_search_cuda(
    module: ModuleType,
    x: torch.Tensor,
    cb: torch.Tensor,
    norms: torch.Tensor | None,
    mode: int,
    codes: torch.Tensor,
    best: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [N, D], ``cb`` [K, D] contiguous on one GPU -> (codes [N] int64, best [N] fp32)."""
    n, d = x.shape
    k = cb.shape[0]
    dev = x.device
    cn = norms.clone() if norms is not None else torch.empty(k, dtype=torch.float32, device=dev)
    splits, part_val, part_idx = _workspace(module, n, k, dev)
    # SAFETY: every tensor lives on dev and is used on its current stream.
    module.vq_search(
        _native.buffer(x),
        _DTYPE_CODE[x.dtype],
        n,
        d,
        _native.buffer(cb),
        _DTYPE_CODE[cb.dtype],
        k,
        mode,
        _native.buffer(cn),
        _native.buffer(codes),
        _native.buffer(best),
        _native.buffer(part_val),
        _native.buffer(part_idx),
        splits,
        *_native.queue(dev),
    )
    return codes, best


def rvq_encode_cuda(
    module: ModuleType, x: torch.Tensor, cbs: torch.Tensor, n_q: int
) -> torch.Tensor:
    """``x`` [N, D], ``cbs`` [Q, K, D] contiguous on one GPU -> codes [N, n_q] int64."""
    n, d = x.shape
    q_total, k, _ = cbs.shape
    dev = x.device
    codes = torch.empty(n, n_q, dtype=torch.int64, device=dev)
    residual = torch.empty(n, d, dtype=torch.float32, device=dev)
    cn = torch.empty(n_q, k, dtype=torch.float32, device=dev)
    splits, part_val, part_idx = _workspace(module, n, k, dev)
    # SAFETY: as above.
    module.rvq_encode(
        _native.buffer(x),
        _DTYPE_CODE[x.dtype],
        n,
        d,
        _native.buffer(cbs),
        q_total,
        k,
        n_q,
        _native.buffer(codes),
        _native.buffer(residual),
        _native.buffer(cn),
        _native.buffer(part_val),
        _native.buffer(part_idx),
        splits,
        *_native.queue(dev),
    )
    return codes


def rvq_decode_cuda(module: ModuleType, codes: torch.Tensor, cbs: torch.Tensor) -> torch.Tensor:
    """``codes`` [N, q] (checked in range), ``cbs`` [Q, K, D] -> [N, D] of the codebooks' dtype."""
    n, n_q = codes.shape
    q_total, k, d = cbs.shape
    dev = codes.device
    out = torch.empty(n, d, dtype=torch.float32, device=dev)
    # SAFETY: as above.
    module.rvq_decode(
        _native.buffer(codes),
        codes.element_size(),
        n,
        n_q,
        _native.buffer(cbs),
        _DTYPE_CODE[cbs.dtype],
        q_total,
        k,
        d,
        _native.buffer(out),
        *_native.queue(dev),
    )
    return out.to(cbs.dtype)
