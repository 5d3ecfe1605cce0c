"""Row-masked embedding gradient: the gradient of the new rows only.

``rowmask_embedding_backward(ids, grad_out, row_start, num_rows)`` returns
``[num_rows, D]`` fp32: row ``r`` is the sum of ``grad_out`` at the positions
whose ID is ``row_start + r``; positions with other IDs are ignored. It is the
backward of an embedding lookup into a table of ``num_rows`` rows placed at
``row_start`` (the trainable new rows of an extended vocabulary), without the full-vocabulary
gradient that ``torch.nn.functional.embedding`` would produce.

Determinism: positions are bucketed by a stable sort and each row is summed in
ascending position order in fp32, so the bits do not depend on thread count,
scheduling or device stream (no atomics). Memory: O(num_rows * D + tokens).

Backends: ``lumo_uti._C`` (CPU: counting sort + per-row reduction split over
threads by row), ``lumo_uti._C_cuda`` (CUDA: the front sorts the hit
positions with a stable device sort, the kernel reduces each row's segment)
and ``reference.rowmask`` (the spec, the oracle of the tests, and the
fallback, or forced by ``LUMO_FORCE_REFERENCE=1``).
"""

from __future__ import annotations

import torch

from . import _abi, _native
from .reference.rowmask import rowmask_embedding_backward_reference

__all__ = ["rowmask_embedding_backward", "rowmask_embedding_backward_reference"]

_OP = "rowmask_embedding_backward"
_ID_DTYPES = frozenset({torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8})
_INT64_MAX = 2**63 - 1


def rowmask_embedding_backward(
    ids: torch.Tensor, grad_out: torch.Tensor, row_start: int, num_rows: int
) -> torch.Tensor:
    """Gradient of the embedding rows ``[row_start, row_start + num_rows)``.

    Args:
        ids: ``[*S]`` integer token IDs (any strides).
        grad_out: ``[*S, D]`` fp32/fp16/bf16 gradient of the embedding output,
            on the device of ``ids`` (any strides).
        row_start: first table row of the block (>= 0).
        num_rows: rows in the block (>= 0).

    Returns:
        ``[num_rows, D]`` float32 on the device of ``ids``.

    Raises:
        TypeError: non-integer ids, unsupported grad dtype, non-int row range.
        ValueError: shapes that do not match, devices that differ, negative
            or overflowing row range.
    """
    _check_args(ids, grad_out, row_start, num_rows)
    return _rowmask_op(ids, grad_out, int(row_start), int(num_rows))


def _check_args(ids: torch.Tensor, grad_out: torch.Tensor, row_start: int, num_rows: int) -> None:
    if not isinstance(ids, torch.Tensor) or not isinstance(grad_out, torch.Tensor):
        raise TypeError(
            f"{_OP}: expected ids and grad_out as torch.Tensor, got "
            f"{type(ids).__name__} and {type(grad_out).__name__}"
        )
    if ids.dtype not in _ID_DTYPES:
        raise TypeError(f"{_OP}: expected integer ids, got {_abi.dtype_name(ids.dtype)}")
    if grad_out.dtype not in _abi.DTYPE_CODES:
        raise TypeError(f"{_OP}: expected grad_out of dtype float32, float16 or bfloat16, got {_abi.dtype_name(grad_out.dtype)}")
    if grad_out.dim() != ids.dim() + 1 or tuple(grad_out.shape[:-1]) != tuple(ids.shape):
        raise ValueError(
            f"{_OP}: expected grad_out of shape [*ids.shape, D] = [{', '.join(map(str, ids.shape))}, D], "
            f"got {tuple(grad_out.shape)}"
        )
    if grad_out.device != ids.device:
        raise ValueError(f"{_OP}: expected grad_out on {ids.device} (the device of ids), got {grad_out.device}")
    for name, value in (("row_start", row_start), ("num_rows", num_rows)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{_OP}: expected {name} as an int, got {type(value).__name__}")
        if value < 0:
            raise ValueError(f"{_OP}: expected {name} >= 0, got {value}")
    if num_rows > _INT64_MAX - row_start:
        raise ValueError(f"{_OP}: expected row_start + num_rows within int64, got {row_start} + {num_rows}")


def _flat(ids: torch.Tensor, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ids as contiguous [N] int32/int64, grad as [N, D] with unit inner stride."""
    flat_ids = ids.reshape(-1)
    if flat_ids.dtype not in (torch.int32, torch.int64):
        flat_ids = flat_ids.to(torch.int64)
    flat_ids = flat_ids.contiguous()
    g = grad_out.reshape(ids.numel(), grad_out.shape[-1])
    # The kernels take a row stride, so a row-strided view (e.g. a slice of a
    # wider buffer) is read in place; anything else is copied once.
    if g.shape[1] > 1 and g.stride(1) != 1 or g.shape[0] > 1 and g.stride(0) < g.shape[1]:
        g = g.contiguous()
    return flat_ids, g


def _row_stride(g: torch.Tensor) -> int:
    return g.stride(0) if g.shape[0] > 1 else g.shape[1]


def _cpu(ids: torch.Tensor, grad_out: torch.Tensor, row_start: int, num_rows: int) -> torch.Tensor:
    module = _abi.cpu_module()
    if module is None:
        return rowmask_embedding_backward_reference(ids, grad_out, row_start, num_rows)
    flat_ids, g = _flat(ids, grad_out)
    out = torch.empty(num_rows, grad_out.shape[-1], dtype=torch.float32)
    # SAFETY: flat_ids, g and out are CPU tensors referenced here until the
    # synchronous call returns; g rows are _row_stride(g) elements apart.
    buf = _native.buffer
    module.rowmask_embedding_backward(
        ids=buf(flat_ids), ids_itemsize=flat_ids.element_size(), n=flat_ids.numel(), grad=buf(g),
        dtype=_abi.dtype_code(g.dtype), dim=g.shape[1], grad_row_stride=_row_stride(g),
        row_start=row_start, num_rows=num_rows, out=buf(out), num_threads=_abi.threads(),
    )
    return out


def bucket_positions(flat_ids: torch.Tensor, row_start: int, num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hit positions sorted by (row, position), and each row's slice of them.

    Args:
        flat_ids: ``[N]`` integer IDs (any device).

    Returns:
        ``positions: [H]`` int64 and ``offsets: [num_rows + 1]`` int64 (row
        ``r``'s positions are ``positions[offsets[r]:offsets[r+1]]``), on the
        device of ``flat_ids``; the input of the CUDA segment reduction.
    """
    rel = flat_ids.to(torch.int64) - row_start
    # nonzero is ascending, and a stable sort by row keeps that order inside a
    # row: positions sorted by (row, position), the reduction order.
    pos = torch.nonzero((rel >= 0) & (rel < num_rows)).reshape(-1)
    keys, order = torch.sort(rel[pos], stable=True)
    pos = pos[order].contiguous()
    offsets = torch.searchsorted(keys, torch.arange(num_rows + 1, device=flat_ids.device, dtype=torch.int64))
    return pos, offsets.to(torch.int64).contiguous()


def _cuda(ids: torch.Tensor, grad_out: torch.Tensor, row_start: int, num_rows: int) -> torch.Tensor:
    module = _abi.cuda_module()
    if module is None:
        return rowmask_embedding_backward_reference(ids, grad_out, row_start, num_rows)
    flat_ids, g = _flat(ids, grad_out)
    device = ids.device
    pos, offsets = bucket_positions(flat_ids, row_start, num_rows)
    out = torch.empty(num_rows, grad_out.shape[-1], dtype=torch.float32, device=device)
    # SAFETY: pos, offsets, g and out live on `device` and are used on its
    # current stream, so the caching allocator keeps them until the kernel ran.
    buf = _native.buffer
    module.rowmask_segment_reduce(
        positions=buf(pos), num_hits=pos.numel(), offsets=buf(offsets), grad=buf(g),
        dtype=_abi.dtype_code(g.dtype), n=g.shape[0], dim=g.shape[1], grad_row_stride=_row_stride(g),
        num_rows=num_rows, out=buf(out), **_abi.queue(device),
    )
    return out


def _impl(ids: torch.Tensor, grad_out: torch.Tensor, row_start: int, num_rows: int) -> torch.Tensor:
    _check_args(ids, grad_out, row_start, num_rows)
    if ids.device.type == "cpu":
        return _cpu(ids, grad_out, row_start, num_rows)
    if ids.device.type == "cuda":
        return _cuda(ids, grad_out, row_start, num_rows)
    return rowmask_embedding_backward_reference(ids, grad_out, row_start, num_rows)


@torch.library.custom_op("lumo_uti::rowmask_embedding_backward", mutates_args=())
def _rowmask_op(ids: torch.Tensor, grad_out: torch.Tensor, row_start: int, num_rows: int) -> torch.Tensor:
    return _impl(ids, grad_out, row_start, num_rows)


@_rowmask_op.register_fake
def _rowmask_fake(ids: torch.Tensor, grad_out: torch.Tensor, row_start: int, num_rows: int) -> torch.Tensor:
    _check_args(ids, grad_out, row_start, num_rows)
    return grad_out.new_empty((num_rows, grad_out.shape[-1]), dtype=torch.float32)
