"""Token-range classification: which block of the token space each ID lies in.

``classify_ids(ids, boundaries)`` maps every ID to ``r`` with
``boundaries[r] <= id < boundaries[r+1]``, or -1 outside
``[boundaries[0], boundaries[-1])``. Backends: ``lumo_uti._C`` (CPU),
``lumo_uti._C_cuda`` (CUDA) and ``reference.token_range`` (any
device; the fallback, or forced by ``LUMO_FORCE_REFERENCE=1``).

Tensors go through the ``torch.library`` op ``lumo_uti::classify_ids`` (so
the call works under ``torch.compile``); numpy arrays skip the dispatcher and
call the CPU kernel on the array memory directly, since the grammar decoder
calls this per step on small arrays.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np
import torch

from . import _abi, _native
from .reference.token_range import classify_ids_reference

__all__ = ["classify_ids"]

_OP = "classify_ids"
_INT64_MAX = np.iinfo(np.int64).max

# Integer dtypes the op accepts for ids; the kernels read int32/int64 directly
# and the others are widened to int64 first (lossless). The front also takes
# uint16/32/64 tensors (_TORCH_WIDE_UNSIGNED) and widens them before the op.
_TORCH_ID_DTYPES = frozenset({torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8})
_TORCH_WIDE_UNSIGNED = frozenset(
    getattr(torch, name) for name in ("uint16", "uint32", "uint64") if hasattr(torch, name)
)
_TORCH_KERNEL_ITEMSIZE = {torch.int32: 4, torch.int64: 8}
_NUMPY_KERNEL_ITEMSIZE = {np.dtype(np.int32): 4, np.dtype(np.int64): 8}

Boundaries = Union[torch.Tensor, np.ndarray, Sequence[int]]


def classify_ids(ids: torch.Tensor | np.ndarray, boundaries: Boundaries) -> Any:
    """Block index of every token ID.

    Args:
        ids: ``[*S]`` integer IDs: a ``torch.Tensor`` (int8/16/32/64 or
            uint8/16/32/64, any device, any strides) or a numpy integer array.
            Unsigned IDs beyond int64 lie past every boundary (-1).
        boundaries: ``[R+1]`` strictly increasing integers (tensor, ndarray or
            list); ``R >= 0``. A tensor must be on the device of ``ids``.

    Returns:
        ``[*S]`` int32 of the same kind as ``ids`` (numpy in, numpy out;
        tensor in, tensor on the device of ``ids``): ``r`` with
        ``boundaries[r] <= id < boundaries[r+1]``, else -1.

    Raises:
        TypeError: ``ids`` is not a tensor/ndarray or not integer, or the
            boundaries are not integer.
        ValueError: boundaries not 1-D, not strictly increasing, out of int64
            range, or on another device than ``ids``.
    """
    if isinstance(ids, np.ndarray):
        return _classify_numpy(ids, boundaries)
    if isinstance(ids, torch.Tensor):
        ids = _widen_unsigned(ids)
        _check_ids_dtype(ids.dtype)
        return _classify_op(ids, _bounds_tensor(boundaries, ids.device))
    raise TypeError(
        f"{_OP}: expected ids as a torch.Tensor or numpy.ndarray, got {type(ids).__name__}"
    )


# ---------------------------------------------------------------------------
# Validation shared by the front, the op and its fake.
# ---------------------------------------------------------------------------


def _check_ids_dtype(dtype: torch.dtype) -> None:
    if dtype not in _TORCH_ID_DTYPES:
        if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
            raise TypeError(f"{_OP}: expected integer ids, got {_abi.dtype_name(dtype)}")
        raise TypeError(
            f"{_OP}: expected ids of dtype int8, int16, int32, int64 or uint8, "
            f"got {_abi.dtype_name(dtype)}"
        )


def _widen_unsigned(ids: torch.Tensor) -> torch.Tensor:
    """uint16/32/64 tensors -> int64 (the op takes uint8 and signed types only).

    uint64 values >= 2^63 become int64 max, which lies past any int64
    boundary, as they do; a plain cast would wrap them to negative IDs.
    """
    if ids.dtype not in _TORCH_WIDE_UNSIGNED:
        return ids
    if ids.dtype == torch.uint64:
        as_signed = ids.view(torch.int64)
        return torch.where(as_signed < 0, torch.full_like(as_signed, _INT64_MAX), as_signed)
    return ids.to(torch.int64)


def _check_op_args(ids: torch.Tensor, boundaries: torch.Tensor) -> None:
    _check_ids_dtype(ids.dtype)
    if boundaries.dim() != 1:
        raise ValueError(f"{_OP}: expected 1-D boundaries, got shape {tuple(boundaries.shape)}")
    if boundaries.dtype != torch.int64:
        raise TypeError(f"{_OP}: expected int64 boundaries, got {_abi.dtype_name(boundaries.dtype)}")
    if boundaries.device != ids.device:
        raise ValueError(
            f"{_OP}: expected boundaries on {ids.device} (the device of ids), "
            f"got {boundaries.device}"
        )


def _unsorted_error(b: np.ndarray | torch.Tensor, i: int) -> ValueError:
    return ValueError(
        f"{_OP}: expected strictly increasing boundaries, got "
        f"boundaries[{i}]={int(b[i])} >= boundaries[{i + 1}]={int(b[i + 1])}"
    )


def _bounds_tensor(boundaries: Boundaries, device: torch.device) -> torch.Tensor:
    """Boundaries as a 1-D int64 tensor on ``device`` (values checked later, in the op)."""
    if isinstance(boundaries, torch.Tensor):
        if boundaries.dim() != 1:
            raise ValueError(
                f"{_OP}: expected 1-D boundaries, got shape {tuple(boundaries.shape)}"
            )
        if boundaries.dtype not in _TORCH_ID_DTYPES:
            raise TypeError(
                f"{_OP}: expected integer boundaries, got {_abi.dtype_name(boundaries.dtype)}"
            )
        if boundaries.device != device:
            raise ValueError(
                f"{_OP}: expected boundaries on {device} (the device of ids), "
                f"got {boundaries.device}"
            )
        return boundaries.to(torch.int64)
    return torch.from_numpy(_bounds_numpy(boundaries, device)).to(device)


def _bounds_numpy(boundaries: Boundaries, device: torch.device | str = "cpu") -> np.ndarray:
    """Boundaries as a C-contiguous 1-D int64 array (sortedness checked by the caller)."""
    if isinstance(boundaries, np.ndarray):
        arr = boundaries
    elif isinstance(boundaries, torch.Tensor):
        if boundaries.device.type != "cpu":
            raise ValueError(
                f"{_OP}: expected boundaries on {device} (the device of ids), "
                f"got {boundaries.device}"
            )
        if boundaries.dtype not in _TORCH_ID_DTYPES:
            raise TypeError(
                f"{_OP}: expected integer boundaries, got {_abi.dtype_name(boundaries.dtype)}"
            )
        arr = boundaries.detach().numpy()
    elif isinstance(boundaries, (list, tuple, range)):
        if len(boundaries) == 0:
            return np.empty(0, dtype=np.int64)
        arr = np.asarray(boundaries)
    else:
        raise TypeError(
            f"{_OP}: expected boundaries as a tensor, ndarray or list of int, "
            f"got {type(boundaries).__name__}"
        )
    if arr.ndim != 1:
        raise ValueError(f"{_OP}: expected 1-D boundaries, got shape {tuple(arr.shape)}")
    if arr.dtype != np.int64:
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{_OP}: expected integer boundaries, got {arr.dtype}")
        if arr.dtype.kind == "u" and arr.dtype.itemsize == 8 and arr.size and arr.max() > _INT64_MAX:
            raise ValueError(
                f"{_OP}: expected boundaries within int64, got {int(arr.max())}"
            )
        arr = arr.astype(np.int64)
    if not (arr.flags.c_contiguous and arr.flags.aligned):
        arr = np.ascontiguousarray(arr)
    return arr


def _check_sorted_host(b: torch.Tensor | np.ndarray, module: Any, ptr: int | None = None) -> None:
    """Raise unless the host int64 array/tensor ``b`` (contiguous) is strictly increasing.

    ``ptr``: address of ``b`` if the caller has it already (saves ~1 us).
    """
    n = len(b)
    if n < 2:
        return
    if module is not None:
        if ptr is None:
            ptr = b.data_ptr() if isinstance(b, torch.Tensor) else b.ctypes.data
        i = module.first_unsorted(bounds_ptr=ptr, num_bounds=n)
    else:
        t = b if isinstance(b, torch.Tensor) else torch.from_numpy(b)
        bad = torch.nonzero(t[1:] <= t[:-1])
        i = int(bad[0, 0]) if bad.numel() else -1
    if i >= 0:
        raise _unsorted_error(b, i)


# ---------------------------------------------------------------------------
# numpy: straight to the CPU kernel.
# ---------------------------------------------------------------------------


def _numpy_ids(ids: np.ndarray) -> tuple[np.ndarray, int]:
    itemsize = _NUMPY_KERNEL_ITEMSIZE.get(ids.dtype)
    if itemsize is None:
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{_OP}: expected integer ids, got {ids.dtype}")
        if ids.dtype.kind == "u" and ids.dtype.itemsize == 8:
            # IDs >= 2^63 - 1 lie past any int64 boundary, as does 2^63 - 1
            # itself, so clipping keeps every result.
            ids = np.minimum(ids, _INT64_MAX)
        ids = ids.astype(np.int64)
        itemsize = 8
    flags = ids.flags
    if not (flags.c_contiguous and flags.aligned):
        ids = np.ascontiguousarray(ids)
    return ids, itemsize


def _classify_numpy(ids: np.ndarray, boundaries: Boundaries) -> np.ndarray:
    ids, itemsize = _numpy_ids(ids)
    b = _bounds_numpy(boundaries)
    module = _abi.cpu_module()
    if module is None:
        _check_sorted_host(b, None)
        return classify_ids_reference(torch.from_numpy(ids), torch.from_numpy(b)).numpy()
    b_ptr = b.ctypes.data
    _check_sorted_host(b, module, b_ptr)
    out = np.empty(ids.shape, dtype=np.int32)
    # SAFETY: ids, b and out are C-contiguous, aligned, referenced here until
    # the call returns, and hold ids.size / b.size / ids.size elements.
    module.classify_ids(
        ids_ptr=ids.ctypes.data, ids_itemsize=itemsize, n=ids.size, bounds_ptr=b_ptr,
        num_bounds=b.size, out_ptr=out.ctypes.data, num_threads=_abi.threads(),
    )
    return out


# ---------------------------------------------------------------------------
# Tensors: the torch.library op lumo_uti::classify_ids.
# ---------------------------------------------------------------------------


def _kernel_ids(ids: torch.Tensor) -> torch.Tensor:
    if ids.dtype not in _TORCH_KERNEL_ITEMSIZE:
        ids = ids.to(torch.int64)
    return ids.contiguous()


def _classify_cpu(ids: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    b = boundaries.contiguous()
    module = _abi.cpu_module()
    _check_sorted_host(b, module)
    if module is None:
        return classify_ids_reference(ids, b)
    kids = _kernel_ids(ids)
    out = torch.empty(ids.shape, dtype=torch.int32)
    # SAFETY: kids, b and out are contiguous CPU tensors referenced here until
    # the synchronous call returns.
    module.classify_ids(
        ids_ptr=kids.data_ptr(), ids_itemsize=kids.element_size(), n=kids.numel(),
        bounds_ptr=b.data_ptr(), num_bounds=b.numel(), out_ptr=out.data_ptr(),
        num_threads=_abi.threads(),
    )
    return out


def _classify_cuda(ids: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    # Sortedness is checked on a host copy: one small device-to-host transfer.
    _check_sorted_host(boundaries.to("cpu").contiguous(), _native.cpu())
    module = _abi.cuda_module()
    if module is None:
        return classify_ids_reference(ids, boundaries)
    kids = _kernel_ids(ids)
    b = boundaries.contiguous()
    out = torch.empty(ids.shape, dtype=torch.int32, device=ids.device)
    # SAFETY: kids, b and out live on ids.device and are used on its current
    # stream, so the caching allocator keeps their memory until the kernel ran.
    module.classify_ids(
        ids_ptr=kids.data_ptr(), ids_itemsize=kids.element_size(), n=kids.numel(),
        bounds_ptr=b.data_ptr(), num_bounds=b.numel(), out_ptr=out.data_ptr(),
        **_abi.queue(ids.device),
    )
    return out


def _classify_impl(ids: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    _check_op_args(ids, boundaries)
    if ids.device.type == "cpu":
        return _classify_cpu(ids, boundaries)
    if ids.device.type == "cuda":
        return _classify_cuda(ids, boundaries)
    _check_sorted_host(boundaries.to("cpu").contiguous(), _native.cpu())
    return classify_ids_reference(ids, boundaries)


@torch.library.custom_op("lumo_uti::classify_ids", mutates_args=())
def _classify_op(ids: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    return _classify_impl(ids, boundaries)


@_classify_op.register_fake
def _classify_fake(ids: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    _check_op_args(ids, boundaries)
    return ids.new_empty(ids.shape, dtype=torch.int32)
