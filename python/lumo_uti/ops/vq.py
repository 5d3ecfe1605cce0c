"""Vector quantisation: nearest-codebook search, residual VQ encode and decode.

``vq_search(x, codebook)`` finds each row's nearest code without building the
``[N, K]`` distance matrix; ``rvq_encode`` runs all residual stages in one
native call; ``rvq_decode`` sums the looked-up vectors. Backends:
``lumo_uti._C`` (CPU, AVX-512/AVX2/scalar picked at run time, or forced with
``LUMO_VQ_ISA=scalar|avx2|avx512``), ``lumo_uti._C_cuda`` (CUDA) and
``reference.vq`` (any device; the fallback, or forced by
``LUMO_FORCE_REFERENCE=1``). All of them follow one fp32 arithmetic contract
(``reference.vq`` docstring, docs/ops_vq.md), so their codes are identical.

Each op is a ``torch.library`` custom op (``lumo_uti::vq_search``,
``lumo_uti::rvq_encode``, ``lumo_uti::rvq_decode``) with a fake
implementation, so ``torch.compile`` traces through it. The ops and their
fakes check every tensor they read again (``torch.ops.lumo_uti.*`` is public);
value checks (finite inputs, code ranges) run inside the ops.

The ops keep no state between calls: the CPU kernel converts and packs the
codebook in every call. ``PackedCodebook`` holds a packed copy for callers
that search one codebook many times (same results, no per-call packing).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from . import _abi, _native
from .reference.vq import (
    rvq_decode_reference,
    rvq_encode_reference,
    sqnorm_seq,
    vq_search_reference,
)

__all__ = ["PackedCodebook", "rvq_decode", "rvq_encode", "vq_search"]

_CODE_DTYPES = frozenset({torch.int32, torch.int64})
# Forces one CPU instruction set (every one gives the same codes).
_ISA_ENV = "LUMO_VQ_ISA"
_METRICS = ("l2", "cosine")
# Norm modes of the native vq_search (csrc/ops/vq/cpu.h VqNorms).
_NORMS_COMPUTE, _NORMS_GIVEN, _NORMS_ZERO = 0, 1, 2


# ---------------------------------------------------------------------------
# Public functions.
# ---------------------------------------------------------------------------


def vq_search(
    x: torch.Tensor,
    codebook: torch.Tensor,
    *,
    metric: str = "l2",
    codebook_norms: torch.Tensor | None = None,
    normalized: bool = False,
    return_distance: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest code of every row.

    Args:
        x: ``[..., D]`` fp32/fp16/bf16, any layout.
        codebook: ``[K, D]`` of the same dtype and device, ``K >= 1``.
        metric: ``"l2"`` (smallest squared L2 distance) or ``"cosine"``
            (largest dot product of the l2-normalised row and code).
        codebook_norms: optional ``[K]`` squared norms of the codes (l2 only),
            e.g. cached across calls; used as given.
        normalized: cosine only: ``x`` and ``codebook`` are already
            l2-normalised, skip the normalisation.
        return_distance: also return the squared distance (l2) or the
            cosine similarity (cosine) to the chosen code.

    Returns:
        ``codes [...]`` int64 (ties go to the lowest index), and with
        ``return_distance`` also ``[...]`` fp32.

    Raises:
        TypeError: not tensors, or unsupported / mixed dtypes.
        ValueError: shape or device mismatch, ``K == 0``, unknown metric,
            non-finite values (the message names the row), or distances that
            overflow fp32 (a ranking score, or with ``return_distance`` the
            returned squared distance; never an inf in the result).
    """
    op = "vq_search"
    _check_float(op, "x", x)
    _check_float(op, "codebook", codebook)
    _check_same(op, "codebook", codebook, x)
    _check_search_options(op, codebook, metric, codebook_norms, normalized, x.device)
    _check_rows(op, x, codebook)
    x2 = _search_rows(x, codebook.shape[1], metric, normalized)
    cb = _search_codebook(codebook, metric, normalized)
    codes, best = _vq_search_op(x2, cb, codebook_norms, metric == "cosine")
    return _search_result(codes, best, x2, x.shape[:-1], metric, return_distance)


def rvq_encode(x: torch.Tensor, codebooks: torch.Tensor, *, n_q: int | None = None) -> torch.Tensor:
    """Residual VQ codes, all stages in one call.

    Args:
        x: ``[..., D]`` fp32/fp16/bf16.
        codebooks: ``[Q, K, D]`` of the same dtype and device.
        n_q: stages to run, ``1 <= n_q <= Q`` (default ``Q``).

    Returns:
        ``[..., n_q]`` int64: stage ``q`` codes the residual left by stages
        ``< q`` (squared L2, ties to the lowest index).

    Raises:
        TypeError / ValueError as ``vq_search``; ``n_q`` out of range.
    """
    op = "rvq_encode"
    _check_float(op, "x", x)
    _check_float(op, "codebooks", codebooks)
    _check_same(op, "codebooks", codebooks, x)
    _check_codebooks(op, codebooks)
    n_q = _check_rvq_rows(op, x, codebooks, n_q)
    lead = x.shape[:-1]
    codes = _rvq_encode_op(x.reshape(-1, codebooks.shape[2]), codebooks, n_q)
    return codes.reshape(*lead, n_q)


def _check_rvq_rows(op: str, x: torch.Tensor, codebooks: torch.Tensor, n_q: object) -> int:
    """x is [..., D] with the D of codebooks [Q, K, D]; returns n_q (default Q), checked."""
    q_total, _, d = codebooks.shape
    if x.dim() < 1 or x.shape[-1] != d:
        raise ValueError(
            f"{op}: expected x [..., {d}] (D of the codebooks {tuple(codebooks.shape)}), "
            f"got {tuple(x.shape)}"
        )
    if n_q is None:
        n_q = q_total
    if isinstance(n_q, bool) or not isinstance(n_q, int):
        raise TypeError(f"{op}: expected n_q as an int, got {type(n_q).__name__}")
    if not 1 <= n_q <= q_total:
        raise ValueError(f"{op}: expected 1 <= n_q <= {q_total} (Q), got n_q={n_q}")
    return n_q


def rvq_decode(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Sum of the looked-up code vectors.

    Args:
        codes: ``[..., q]`` int32/int64, ``q <= Q``, each in ``[0, K)``.
        codebooks: ``[Q, K, D]`` fp32/fp16/bf16 on the device of ``codes``.

    Returns:
        ``[..., D]`` of the codebooks' dtype: ``sum_i codebooks[i, codes[..., i]]``
        accumulated in fp32 in stage order.

    Raises:
        TypeError: non-integer codes or unsupported codebook dtype.
        ValueError: shapes, devices, or a code outside ``[0, K)`` (named).
    """
    op = "rvq_decode"
    q_total, k, d = _check_codes_and_codebooks(op, codes, codebooks)
    if codes.dim() < 1 or codes.shape[-1] > q_total:
        raise ValueError(
            f"{op}: expected codes [..., q] with q <= {q_total} (Q), got {tuple(codes.shape)}"
        )
    lead = codes.shape[:-1]
    out = _rvq_decode_op(codes.reshape(math.prod(lead), codes.shape[-1]), codebooks)
    return out.reshape(*lead, d)


class PackedCodebook:
    """A codebook packed once for many ``vq_search`` / ``rvq_encode`` calls.

    ``vq_search`` keeps no state, so the CPU kernel converts and packs the
    codebook in every call; for small batches (N = 1..64 rows) that is most of
    the time. A ``PackedCodebook`` holds the packed copy and gives exactly the
    results of the functions it stands for::

        packed = PackedCodebook(codebook, metric="l2")   # codebook [K, D]
        packed.search(x)                                 # == vq_search(x, codebook)
        packed = PackedCodebook(codebooks)               # codebooks [Q, K, D]
        packed.rvq_encode(x, n_q=4)                      # == rvq_encode(x, codebooks, n_q=4)

    It keeps a reference to ``codebook`` (and ``codebook_norms``) and packs
    again before the next call when PyTorch saw them change: an in-place op
    (their version counter) or new storage. Writes that bypass the version
    counter (``.data``, numpy views, DLPack) and any change to an inference
    tensor (which has no version counter) are not seen: call ``refresh()``
    after them. On CUDA, or where the native CPU module is not used, it
    caches the prepared (normalised) codebook and calls the ops.

    Args:
        codebook: ``[K, D]`` for ``search``, or ``[Q, K, D]`` for
            ``rvq_encode`` (metric l2 only); fp32/fp16/bf16, K, D >= 1.
        metric, codebook_norms, normalized: as in ``vq_search``.

    Raises:
        TypeError / ValueError: as ``vq_search`` / ``rvq_encode`` for the
            codebook and options (inf/NaN in the codebook names its row).
    """

    def __init__(
        self,
        codebook: torch.Tensor,
        *,
        metric: str = "l2",
        codebook_norms: torch.Tensor | None = None,
        normalized: bool = False,
    ) -> None:
        op = "PackedCodebook"
        _check_float(op, "codebook", codebook)
        if codebook.dim() == 3:
            _check_codebooks(op, codebook)
            if metric != "l2" or codebook_norms is not None or normalized:
                raise ValueError(
                    f"{op}: codebooks [Q, K, D] are for rvq_encode (metric 'l2', computed norms); "
                    f"got metric {metric!r}, codebook_norms "
                    f"{'given' if codebook_norms is not None else 'None'}, normalized={normalized}"
                )
        elif codebook.dim() == 2:
            _check_search_options(op, codebook, metric, codebook_norms, normalized, codebook.device)
        else:
            raise ValueError(
                f"{op}: expected codebook of shape [K, D] or [Q, K, D], got {tuple(codebook.shape)}"
            )
        self._codebook = codebook
        self._norms = codebook_norms
        self.metric = metric
        self.normalized = normalized
        self._key: tuple | None = None
        self.refresh()

    @property
    def codebook(self) -> torch.Tensor:
        """The codebook tensor this object packs (not a copy)."""
        return self._codebook

    @property
    def shape(self) -> torch.Size:
        return self._codebook.shape

    def __repr__(self) -> str:
        packed = "packed" if self._packed is not None else "not packed"
        return (
            f"PackedCodebook(shape={tuple(self.shape)}, dtype={_abi.dtype_name(self._codebook.dtype)}, "
            f"device={self._codebook.device}, metric={self.metric!r}, {packed})"
        )

    def refresh(self) -> None:
        """Packs the codebook again now (after writes PyTorch does not see)."""
        cb = self._codebook
        op = "PackedCodebook"
        if cb.dim() == 2:
            self._cb = _search_codebook(cb, self.metric, self.normalized)
        else:
            self._cb = cb
        self._cn = None
        if self._norms is not None:
            self._cn = self._norms.to(torch.float32).contiguous()
            _check_finite(op, "codebook_norms", self._cn[:, None])
        self._packed = None
        module = _abi.module(cb.device)
        isa = _abi.isa(_ISA_ENV)
        if module is not None and cb.device.type == "cpu":
            cbc = self._cb.contiguous()
            # SAFETY: cbc and self._cn are contiguous CPU tensors alive for the
            # synchronous call; the packed object is a copy.
            if cb.dim() == 2:
                if self.metric == "cosine":
                    mode = _NORMS_ZERO
                elif self._cn is None:
                    mode = _NORMS_COMPUTE
                else:
                    mode = _NORMS_GIVEN
                k, d = cbc.shape
                packed = module.vq_pack(
                    cb=_native.buffer(cbc),
                    cb_dtype=_abi.dtype_code(cbc.dtype),
                    k=k,
                    d=d,
                    norms=mode,
                    cn=_native.buffer(self._cn if mode == _NORMS_GIVEN else None),
                    isa=isa,
                    num_threads=_abi.threads(),
                )
                bad, what = packed.bad_row, "codebook"
            else:
                q_total, k, d = cbc.shape
                packed = module.rvq_pack(
                    cbs=_native.buffer(cbc),
                    dtype=_abi.dtype_code(cbc.dtype),
                    num_q=q_total,
                    k=k,
                    d=d,
                    isa=isa,
                    num_threads=_abi.threads(),
                )
                bad, what = packed.bad_row, "codebooks"
            if bad >= 0:
                raise _abi.non_finite_error(op, what, bad)
            self._packed = packed
        else:
            what = "codebook" if cb.dim() == 2 else "codebooks"
            _check_finite(op, what, self._cb.reshape(-1, self._cb.shape[-1]))
        self._key = self._state(isa)

    def _state(self, isa: int) -> tuple:
        """What a change of makes the packed copy stale."""
        key: tuple = (_tensor_state(self._codebook), isa, _native.reference_forced())
        if self._norms is not None:
            key += (_tensor_state(self._norms),)
        return key

    def _fresh(self) -> None:
        if self._state(_abi.isa(_ISA_ENV)) != self._key:
            self.refresh()

    def search(
        self, x: torch.Tensor, *, return_distance: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``vq_search(x, codebook, metric=..., ...)`` against the packed codebook.

        Args:
            x: ``[..., D]`` of the codebook's dtype and device.
            return_distance: as in ``vq_search``.

        Returns / Raises: as ``vq_search``.
        """
        op = "vq_search"
        cb = self._codebook
        if cb.dim() != 2:
            raise ValueError(
                f"{op}: this PackedCodebook holds codebooks {tuple(cb.shape)} [Q, K, D]; "
                "use rvq_encode, or pack a [K, D] codebook"
            )
        if torch.compiler.is_compiling():
            return vq_search(
                x,
                cb,
                metric=self.metric,
                codebook_norms=self._norms,
                normalized=self.normalized,
                return_distance=return_distance,
            )
        _check_float(op, "x", x)
        _check_same(op, "codebook", cb, x)
        _check_rows(op, x, cb)
        self._fresh()
        x2 = _search_rows(x, cb.shape[1], self.metric, self.normalized)
        module = _abi.module(x.device) if self._packed is not None else None
        if module is None:
            codes, best = _vq_search_op(x2, self._cb, self._cn, self.metric == "cosine")
        else:
            n, d = x2.shape
            codes = torch.empty(n, dtype=torch.int64)
            best = torch.empty(n, dtype=torch.float32)
            if n:
                xc = x2.contiguous()
                # SAFETY: xc, codes and best are contiguous CPU tensors alive
                # for the synchronous call; self._packed is immutable.
                module.vq_search_packed(
                    packed=self._packed,
                    x=_native.buffer(xc),
                    x_dtype=_abi.dtype_code(xc.dtype),
                    n=n,
                    d=d,
                    codes=_native.buffer(codes),
                    best=_native.buffer(best),
                    num_threads=_abi.threads(),
                )
        return _search_result(codes, best, x2, x.shape[:-1], self.metric, return_distance)

    def _native_packed(self) -> Any | None:
        """The packed copy of a ``[K, D]`` l2 codebook with computed norms, for this package's fused
        CPU ops (the block prediction loop of ``lumo-vq``), checked fresh first; None for other
        metrics, given norms or a stack, and where searches run through the reference (no native
        module, CUDA, ``LUMO_FORCE_REFERENCE``)."""
        if self._codebook.dim() != 2 or self.metric != "l2" or self.normalized or self._norms is not None:
            return None
        self._fresh()
        return self._packed

    def rvq_encode(self, x: torch.Tensor, *, n_q: int | None = None) -> torch.Tensor:
        """``rvq_encode(x, codebooks, n_q=n_q)`` against the packed ``[Q, K, D]`` codebooks.

        Returns / Raises: as ``rvq_encode``.
        """
        op = "rvq_encode"
        cbs = self._codebook
        if cbs.dim() != 3:
            raise ValueError(
                f"{op}: this PackedCodebook holds a codebook {tuple(cbs.shape)} [K, D]; "
                "use search, or pack codebooks [Q, K, D]"
            )
        if torch.compiler.is_compiling():
            return rvq_encode(x, cbs, n_q=n_q)
        _check_float(op, "x", x)
        _check_same(op, "codebooks", cbs, x)
        n_q = _check_rvq_rows(op, x, cbs, n_q)
        self._fresh()
        d = cbs.shape[2]
        x2 = x.reshape(-1, d)
        module = _abi.module(x.device) if self._packed is not None else None
        if module is None:
            codes = _rvq_encode_op(x2, cbs, n_q)
        else:
            n = x2.shape[0]
            codes = torch.empty(n, n_q, dtype=torch.int64)
            if n:
                xc = x2.contiguous()
                # SAFETY: xc and codes are contiguous CPU tensors alive for the
                # synchronous call; self._packed is immutable.
                module.rvq_encode_packed(
                    packed=self._packed,
                    x=_native.buffer(xc),
                    x_dtype=_abi.dtype_code(xc.dtype),
                    n=n,
                    d=d,
                    n_q=n_q,
                    codes=_native.buffer(codes),
                    num_threads=_abi.threads(),
                )
        return codes.reshape(*x.shape[:-1], n_q)


def _tensor_state(t: torch.Tensor) -> tuple:
    """Identity of a tensor's contents as PyTorch tracks them (no version for inference tensors)."""
    version = None if t.is_inference() else t._version
    return (t.data_ptr(), version, t.shape, t.stride(), t.dtype, t.device)


# ---------------------------------------------------------------------------
# Validation helpers.
# ---------------------------------------------------------------------------


def _check_float(op: str, what: str, t: object) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: expected {what} as a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _abi.DTYPE_CODES:
        raise TypeError(
            f"{op}: expected {what} of dtype float32, float16 or bfloat16, got {_abi.dtype_name(t.dtype)}"
        )


def _check_same(op: str, what: str, t: torch.Tensor, x: torch.Tensor) -> None:
    if t.device != x.device:
        raise ValueError(f"{op}: expected {what} on {x.device} (the device of x), got {t.device}")
    if t.dtype != x.dtype:
        raise TypeError(
            f"{op}: expected {what} of dtype {_abi.dtype_name(x.dtype)} (the dtype of x), got {_abi.dtype_name(t.dtype)}"
        )


def _check_codebooks(op: str, codebooks: torch.Tensor) -> tuple[int, int, int]:
    if codebooks.dim() != 3:
        raise ValueError(
            f"{op}: expected codebooks of shape [Q, K, D], got {tuple(codebooks.shape)}"
        )
    q_total, k, d = codebooks.shape
    if q_total == 0 or k == 0 or d == 0:
        raise ValueError(f"{op}: expected Q, K, D >= 1, got codebooks {tuple(codebooks.shape)}")
    return q_total, k, d


def _check_search_options(
    op: str,
    codebook: torch.Tensor,
    metric: str,
    codebook_norms: torch.Tensor | None,
    normalized: bool,
    device: torch.device,
) -> None:
    """Metric, codebook shape ([K, D], K, D >= 1) and the norms/normalized options."""
    if metric not in _METRICS:
        raise ValueError(f"{op}: expected metric 'l2' or 'cosine', got {metric!r}")
    if codebook.dim() != 2:
        raise ValueError(f"{op}: expected codebook of shape [K, D], got {tuple(codebook.shape)}")
    k, d = codebook.shape
    if k == 0:
        raise ValueError(f"{op}: expected a non-empty codebook (K >= 1), got K=0")
    if d == 0:
        raise ValueError(f"{op}: expected D >= 1, got D=0")
    if codebook_norms is not None:
        if metric != "l2":
            raise ValueError(
                f"{op}: codebook_norms apply to metric 'l2' only, got metric {metric!r}"
            )
        _check_norms(op, codebook_norms, k, device)
    if normalized and metric != "cosine":
        raise ValueError(f"{op}: normalized=True applies to metric 'cosine' only")


def _check_norms(op: str, codebook_norms: object, k: int, device: torch.device) -> None:
    """codebook_norms is a float [K] tensor on ``device``."""
    _check_float(op, "codebook_norms", codebook_norms)
    if codebook_norms.shape != (k,):
        raise ValueError(
            f"{op}: expected codebook_norms of shape [{k}] (K of the codebook), "
            f"got {tuple(codebook_norms.shape)}"
        )
    if codebook_norms.device != device:
        raise ValueError(
            f"{op}: expected codebook_norms on {device} (the device of x), "
            f"got {codebook_norms.device}"
        )


def _check_rows(op: str, x: torch.Tensor, codebook: torch.Tensor) -> None:
    """x is [..., D] with the D of codebook [K, D]."""
    if x.dim() < 1:
        raise ValueError(f"{op}: expected x of shape [..., D], got a 0-d tensor")
    k, d = codebook.shape
    if x.shape[-1] != d:
        raise ValueError(
            f"{op}: expected x [..., {d}] (D of the codebook [{k}, {d}]), got {tuple(x.shape)}"
        )


def _search_rows(x: torch.Tensor, d: int, metric: str, normalized: bool) -> torch.Tensor:
    """The [N, D] rows the op searches (l2-normalised in fp32 for cosine)."""
    x2 = x.reshape(-1, d)
    if metric == "cosine" and not normalized:
        # Normalised in fp32 so that bf16/fp16 inputs lose nothing more.
        x2 = F.normalize(x2.to(torch.float32), dim=-1)
    return x2


def _search_codebook(codebook: torch.Tensor, metric: str, normalized: bool) -> torch.Tensor:
    """The [K, D] codebook the op searches (l2-normalised in fp32 for cosine)."""
    if metric == "cosine" and not normalized:
        codebook = F.normalize(codebook.to(torch.float32), dim=-1)
    return codebook


def _search_result(
    codes: torch.Tensor,
    best: torch.Tensor,
    x2: torch.Tensor,
    lead: torch.Size,
    metric: str,
    return_distance: bool,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """vq_search's return value from the op's (codes, best score) of the rows x2."""
    codes = codes.reshape(lead)
    if not return_distance:
        return codes
    if metric == "cosine":
        value = best * -0.5  # best = -2 dot exactly
    else:
        # The score is finite (checked), but sqnorm(x) + score may still overflow.
        value = torch.clamp_min(sqnorm_seq(x2) + best, 0.0)
        _check_overflow("vq_search", value)
    return codes, value.reshape(lead)


def _check_finite(op: str, what: str, t: torch.Tensor) -> None:
    """Raise naming the first row of ``t`` ([M, D]) that holds inf or NaN."""
    bad = ~torch.isfinite(t).all(dim=-1)
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0, 0])
        raise _abi.non_finite_error(op, what, row)


def _check_overflow(op: str, best: torch.Tensor) -> None:
    bad = ~torch.isfinite(best)
    if bool(bad.any()):
        raise _overflow_error(op, int(torch.nonzero(bad)[0]))


def _overflow_error(op: str, row: int) -> ValueError:
    return _abi.overflow_error(op, "distances", row)


# ---------------------------------------------------------------------------
# lumo_uti::vq_search on [N, D] rows.
# ---------------------------------------------------------------------------


def _check_search_op(
    op: str, x: object, codebook: object, codebook_norms: object
) -> None:
    """What ``lumo_uti::vq_search`` reads: x [N, D] and codebook [K, D] of one
    float dtype on one device, K, D >= 1, codebook_norms None or float [K]."""
    _check_float(op, "x", x)
    _check_float(op, "codebook", codebook)
    _check_same(op, "codebook", codebook, x)
    if x.dim() != 2:
        raise ValueError(f"{op}: expected x of shape [N, D], got {tuple(x.shape)}")
    _check_search_options(op, codebook, "l2", codebook_norms, False, x.device)
    _check_rows(op, x, codebook)


def _search_buffers(
    x: torch.Tensor, cb: torch.Tensor, mode: int, cn: torch.Tensor, codes: torch.Tensor, best: torch.Tensor
) -> dict:
    """The buffer and size arguments that the CPU and CUDA ``vq_search`` share (contiguous tensors)."""
    n, d = x.shape
    return dict(
        x=_native.buffer(x),
        x_dtype=_abi.dtype_code(x.dtype),
        n=n,
        d=d,
        cb=_native.buffer(cb),
        cb_dtype=_abi.dtype_code(cb.dtype),
        k=cb.shape[0],
        norms=mode,
        cn=_native.buffer(cn),
        codes=_native.buffer(codes),
        best=_native.buffer(best),
    )


def _vq_search_impl(
    x: torch.Tensor,
    codebook: torch.Tensor,
    codebook_norms: torch.Tensor | None,
    inner_product: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    op = "vq_search"
    _check_search_op(op, x, codebook, codebook_norms)
    n = x.shape[0]
    if n == 0:
        return x.new_empty(0, dtype=torch.int64), x.new_empty(0, dtype=torch.float32)
    norms = None
    if codebook_norms is not None:
        norms = codebook_norms.to(torch.float32).contiguous()
        _check_finite(op, "codebook_norms", norms[:, None])
    mode = _NORMS_ZERO if inner_product else (_NORMS_COMPUTE if norms is None else _NORMS_GIVEN)
    module = _abi.module(x.device)
    if _abi.is_cpu(module):
        # The CPU kernel checks finiteness while it converts (one pass less).
        xc, cbc = x.contiguous(), codebook.contiguous()
        codes = torch.empty(n, dtype=torch.int64)
        best = torch.empty(n, dtype=torch.float32)
        # SAFETY: xc, cbc, norms, codes and best are contiguous CPU tensors
        # referenced here until the synchronous call returns. The codebook is
        # packed again in every call: a cache keyed on the tensor could miss
        # writes that bypass its version counter (``.data``, numpy views);
        # PackedCodebook is the explicit cache.
        module.vq_search(
            **_search_buffers(xc, cbc, mode, norms, codes, best),
            num_threads=_abi.threads(),
            isa=_abi.isa(_ISA_ENV),
        )
        return codes, best
    _check_finite(op, "x", x)
    _check_finite(op, "codebook", codebook)
    if module is None:
        codes, best = vq_search_reference(x, codebook, norms, inner_product=inner_product)
    else:
        xc, cbc = x.contiguous(), codebook.contiguous()
        codes = torch.empty(n, dtype=torch.int64, device=x.device)
        best = torch.empty(n, dtype=torch.float32, device=x.device)
        codes, best = _vq_search_cuda(module, xc, cbc, norms, mode, codes, best)
    _check_overflow(op, best)
    return codes, best


def _vq_search_fake(
    x: torch.Tensor,
    codebook: torch.Tensor,
    codebook_norms: torch.Tensor | None,
    inner_product: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_search_op("vq_search", x, codebook, codebook_norms)
    n = x.shape[0]
    return x.new_empty(n, dtype=torch.int64), x.new_empty(n, dtype=torch.float32)


# ---------------------------------------------------------------------------
# lumo_uti::rvq_encode / rvq_decode.
# ---------------------------------------------------------------------------


def _check_rvq_encode_op(op: str, x: object, codebooks: object, n_q: object) -> None:
    """What ``lumo_uti::rvq_encode`` reads: x [N, D] and codebooks [Q, K, D] of
    one float dtype on one device, Q, K, D >= 1, 1 <= n_q <= Q."""
    _check_float(op, "x", x)
    _check_float(op, "codebooks", codebooks)
    _check_same(op, "codebooks", codebooks, x)
    _check_codebooks(op, codebooks)
    if x.dim() != 2:
        raise ValueError(f"{op}: expected x of shape [N, D], got {tuple(x.shape)}")
    _check_rvq_rows(op, x, codebooks, n_q)


def _rvq_encode_buffers(x: torch.Tensor, cbs: torch.Tensor, n_q: int, codes: torch.Tensor) -> dict:
    """The buffer and size arguments that the CPU and CUDA ``rvq_encode`` share (contiguous tensors)."""
    n, d = x.shape
    q_total, k, _ = cbs.shape
    return dict(
        x=_native.buffer(x),
        dtype=_abi.dtype_code(x.dtype),
        n=n,
        d=d,
        cbs=_native.buffer(cbs),
        num_q=q_total,
        k=k,
        n_q=n_q,
        codes=_native.buffer(codes),
    )


def _rvq_encode_impl(x: torch.Tensor, codebooks: torch.Tensor, n_q: int) -> torch.Tensor:
    op = "rvq_encode"
    _check_rvq_encode_op(op, x, codebooks, n_q)
    n, d = x.shape
    if n == 0:
        return x.new_empty(0, n_q, dtype=torch.int64)
    module = _abi.module(x.device)
    if _abi.is_cpu(module):
        xc, cbc = x.contiguous(), codebooks.contiguous()
        codes = torch.empty(n, n_q, dtype=torch.int64)
        # SAFETY: contiguous CPU tensors referenced until the call returns.
        module.rvq_encode(
            **_rvq_encode_buffers(xc, cbc, n_q, codes),
            num_threads=_abi.threads(),
            isa=_abi.isa(_ISA_ENV),
        )
        return codes
    _check_finite(op, "x", x)
    _check_finite(op, "codebooks", codebooks[:n_q].reshape(-1, d))
    if module is None:
        codes = rvq_encode_reference(x, codebooks, n_q)
    else:
        codes = _rvq_encode_cuda(module, x.contiguous(), codebooks.contiguous(), n_q)
    return codes


def _rvq_encode_fake(x: torch.Tensor, codebooks: torch.Tensor, n_q: int) -> torch.Tensor:
    _check_rvq_encode_op("rvq_encode", x, codebooks, n_q)
    return x.new_empty(x.shape[0], n_q, dtype=torch.int64)


def _range_error(codes: torch.Tensor, flat: int, k: int) -> ValueError:
    n_q = codes.shape[1]
    row, stage = divmod(flat, n_q)
    value = int(codes[row, stage])
    return ValueError(
        f"rvq_decode: expected codes in [0, {k}), got {value} at row {row}, stage {stage}"
    )


def _check_codes_and_codebooks(op: str, codes: object, codebooks: object) -> tuple[int, int, int]:
    """Codes int32/int64 and float codebooks [Q, K, D] on one device -> (Q, K, D)."""
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"{op}: expected codes as a torch.Tensor, got {type(codes).__name__}")
    if codes.dtype not in _CODE_DTYPES:
        raise TypeError(f"{op}: expected int32 or int64 codes, got {_abi.dtype_name(codes.dtype)}")
    _check_float(op, "codebooks", codebooks)
    if codebooks.device != codes.device:
        raise ValueError(
            f"{op}: expected codebooks on {codes.device} (the device of codes), got {codebooks.device}"
        )
    return _check_codebooks(op, codebooks)


def _check_rvq_decode_op(op: str, codes: object, codebooks: object) -> None:
    """What ``lumo_uti::rvq_decode`` reads: codes [N, q] int32/int64 and
    codebooks [Q, K, D] (float, Q, K, D >= 1) on one device, q <= Q."""
    q_total = _check_codes_and_codebooks(op, codes, codebooks)[0]
    if codes.dim() != 2 or codes.shape[1] > q_total:
        raise ValueError(
            f"{op}: expected codes of shape [N, q] with q <= {q_total} (Q), got {tuple(codes.shape)}"
        )


def _rvq_decode_impl(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    _check_rvq_decode_op("rvq_decode", codes, codebooks)
    n, n_q = codes.shape
    _, k, d = codebooks.shape
    module = _abi.module(codes.device)
    if n == 0:
        return codebooks.new_empty(0, d)
    if not _abi.is_cpu(module):
        bad = (codes < 0) | (codes >= k)
        if bool(bad.any()):
            raise _range_error(codes, int(torch.nonzero(bad.reshape(-1))[0]), k)
        if module is None:
            return rvq_decode_reference(codes, codebooks)
        return _rvq_decode_cuda(module, codes.contiguous(), codebooks.contiguous())
    cc, cbc = codes.contiguous(), codebooks.contiguous()
    out = torch.empty(n, d, dtype=torch.float32)
    # SAFETY: contiguous CPU tensors referenced until the call returns; the
    # kernel bounds-checks every code before any lookup.
    bad = module.rvq_decode(
        codes=_native.buffer(cc),
        codes_itemsize=cc.element_size(),
        n=n,
        n_q=n_q,
        cbs=_native.buffer(cbc),
        dtype=_abi.dtype_code(cbc.dtype),
        num_q=cbc.shape[0],
        k=k,
        d=d,
        out=_native.buffer(out),
        num_threads=_abi.threads(),
    )
    if bad >= 0:
        raise _range_error(cc, bad, k)
    return out.to(codebooks.dtype)


def _rvq_decode_fake(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    _check_rvq_decode_op("rvq_decode", codes, codebooks)
    return codebooks.new_empty(codes.shape[0], codebooks.shape[2])


# ---------------------------------------------------------------------------
# CUDA calls: workspaces from PyTorch's caching allocator, then _C_cuda.
# Inputs are validated and contiguous; every call enqueues on the current
# stream of the input's device, which keeps the tensors alive until it ran.
# ---------------------------------------------------------------------------


def _cuda_workspace(module: ModuleType, n: int, k: int, device: torch.device) -> tuple[list, dict]:
    """The code-range split of a search and its partial results: (tensors to keep
    referenced until the call returns, keyword arguments of the call)."""
    queue = _abi.queue(device)
    splits = module.vq_search_splits(n=n, k=k, device=queue["device"])
    part_val = torch.empty(splits * n, dtype=torch.float32, device=device)
    part_idx = torch.empty(splits * n, dtype=torch.int32, device=device)
    kwargs = dict(part_val=_native.buffer(part_val), part_idx=_native.buffer(part_idx), splits=splits)
    return [part_val, part_idx], {**kwargs, **queue}


def _vq_search_cuda(
    module: ModuleType,
    x: torch.Tensor,
    cb: torch.Tensor,
    norms: torch.Tensor | None,
    mode: int,
    codes: torch.Tensor,
    best: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [N, D], ``cb`` [K, D] on one GPU -> (codes [N] int64, best [N] fp32)."""
    n, k = x.shape[0], cb.shape[0]
    cn = norms.clone() if norms is not None else torch.empty(k, dtype=torch.float32, device=x.device)
    keep, workspace = _cuda_workspace(module, n, k, x.device)
    module.vq_search(**_search_buffers(x, cb, mode, cn, codes, best), **workspace)
    del keep  # after the call has enqueued its work on the stream
    return codes, best


def _rvq_encode_cuda(module: ModuleType, x: torch.Tensor, cbs: torch.Tensor, n_q: int) -> torch.Tensor:
    """``x`` [N, D], ``cbs`` [Q, K, D] on one GPU -> codes [N, n_q] int64."""
    n, d = x.shape
    k = cbs.shape[1]
    dev = x.device
    codes = torch.empty(n, n_q, dtype=torch.int64, device=dev)
    residual = torch.empty(n, d, dtype=torch.float32, device=dev)
    cn = torch.empty(n_q, k, dtype=torch.float32, device=dev)
    keep, workspace = _cuda_workspace(module, n, k, dev)
    module.rvq_encode(
        **_rvq_encode_buffers(x, cbs, n_q, codes),
        residual=_native.buffer(residual),
        cn=_native.buffer(cn),
        **workspace,
    )
    del keep, residual, cn  # after the call has enqueued its work on the stream
    return codes


def _rvq_decode_cuda(module: ModuleType, codes: torch.Tensor, cbs: torch.Tensor) -> torch.Tensor:
    """``codes`` [N, q] (checked in range), ``cbs`` [Q, K, D] -> [N, D] of the codebooks' dtype."""
    n, n_q = codes.shape
    q_total, k, d = cbs.shape
    out = torch.empty(n, d, dtype=torch.float32, device=codes.device)
    module.rvq_decode(
        codes=_native.buffer(codes),
        codes_itemsize=codes.element_size(),
        n=n,
        n_q=n_q,
        cbs=_native.buffer(cbs),
        dtype=_abi.dtype_code(cbs.dtype),
        num_q=q_total,
        k=k,
        d=d,
        out=_native.buffer(out),
        **_abi.queue(codes.device),
    )
    return out.to(cbs.dtype)


_vq_search_op = torch.library.custom_op("lumo_uti::vq_search", mutates_args=())(_vq_search_impl)
_vq_search_op.register_fake(_vq_search_fake)
_rvq_encode_op = torch.library.custom_op("lumo_uti::rvq_encode", mutates_args=())(_rvq_encode_impl)
_rvq_encode_op.register_fake(_rvq_encode_fake)
_rvq_decode_op = torch.library.custom_op("lumo_uti::rvq_decode", mutates_args=())(_rvq_decode_impl)
_rvq_decode_op.register_fake(_rvq_decode_fake)
