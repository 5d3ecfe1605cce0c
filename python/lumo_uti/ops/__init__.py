"""Kernel front of lumo_uti: validated entry points over the native modules.

Public: the ops below, ``PackedCodebook`` (a codebook packed once for many
searches) and ``backends()``. Each op has a pure-PyTorch
reference (``lumo_uti.ops.reference``), a CPU kernel (``lumo_uti._C``) and a
CUDA kernel (``lumo_uti._C_cuda``); the native modules load lazily, and a
missing one makes the op fall back to the reference (``backends()`` says why).
Set ``LUMO_FORCE_REFERENCE=1`` to use the reference everywhere.
"""

from __future__ import annotations

from typing import Any

from . import _native
from .resampler_attention import resampler_attention
from .rowmask import rowmask_embedding_backward
from .rows_ce import rows_linear_cross_entropy
from .token_range import classify_ids
from .vq import PackedCodebook, rvq_decode, rvq_encode, vq_search

__all__ = [
    "PackedCodebook",
    "backends",
    "resampler_attention",
    "classify_ids",
    "rowmask_embedding_backward",
    "rows_linear_cross_entropy",
    "rvq_decode",
    "rvq_encode",
    "vq_search",
]


def backends() -> dict[str, Any]:
    """What the ops will run on, and why a native backend is not used.

    Returns:
        ``{"cpu": bool, "cuda": bool, "cpu_reason": str | None,
        "cuda_reason": str | None, "cuda_module_loaded": bool,
        "reference_forced": bool, "build_info": {"cpu": dict | None,
        "cuda": dict | None}}``. ``cpu``/``cuda`` are True when that native
        module loaded and can run; the reasons say why not (``"not built:
        ..."``, ``"import error: ..."``, ``"torch without CUDA ..."``, ``"no
        CUDA device ..."``). ``cuda_module_loaded`` is True when
        ``lumo_uti._C_cuda`` imported even if no device can run it.
    """
    cpu = _native.cpu() is not None
    cuda = _native.cuda() is not None
    return {
        "cpu": cpu,
        "cuda": cuda,
        "cpu_reason": _native.cpu_reason(),
        "cuda_reason": _native.cuda_reason(),
        "cuda_module_loaded": _native.cuda_module_loaded(),
        "reference_forced": _native.reference_forced(),
        "build_info": _native.build_info(),
    }
