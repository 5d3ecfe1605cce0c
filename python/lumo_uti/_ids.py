"""Turning user-supplied token IDs into int64 arrays without silent wrap-around."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

_I64 = np.iinfo(np.int64)


def tensor_to_numpy(obj: Any, what: str) -> Any:
    """A ``torch.Tensor`` -> its values as a numpy array; anything else unchanged.

    Raises TypeError for non-integer tensors (float, complex, bool) and for
    sparse or other non-strided layouts, ValueError for a meta tensor (it has
    no values to read).
    """
    torch = sys.modules.get("torch")  # a tensor cannot exist before torch is imported
    if torch is None or not isinstance(obj, torch.Tensor):
        return obj
    if obj.is_floating_point() or obj.is_complex() or obj.dtype == torch.bool:
        raise TypeError(f"{what}: expected integers, got dtype {obj.dtype}")
    if obj.is_meta:
        raise ValueError(f"{what}: got a meta tensor, which has no values; pass a tensor on a real device")
    if obj.layout != torch.strided:
        raise TypeError(f"{what}: expected a dense (strided) tensor, got layout {obj.layout}")
    return obj.detach().cpu().numpy()


def as_int64_ids(ids: Any, *, what: str = "ids", one_dim: bool = False) -> np.ndarray:
    """Array-like / tensor of integers (any signed or unsigned dtype) -> int64 ndarray.

    Integers beyond int64 (Python ints, uint64 values >= 2**63) are clamped to
    the int64 range, which keeps them out of every token range instead of
    wrapping around.
    Raises TypeError for non-integers (floats, bools, strings), ValueError for
    a meta tensor and for a wrong number of dimensions when ``one_dim``.
    """
    ids = tensor_to_numpy(ids, what)
    try:
        arr = np.asarray(ids)
        if arr.dtype.kind in "fO" and not isinstance(ids, np.ndarray):
            # A Python list mixing int64 and larger ints becomes float64: redo exactly.
            arr = np.asarray(ids, dtype=object)
    except (ValueError, OverflowError) as e:
        raise TypeError(f"{what}: expected a flat sequence of integers ({e})") from None
    if one_dim and arr.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D sequence of token IDs, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        return np.zeros(arr.shape, dtype=np.int64)
    if arr.dtype.kind == "i":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "u":
        out = arr.astype(np.int64)  # lossless below 8 bytes; uint64 >= 2**63 wraps, fixed next
        if arr.dtype.itemsize == 8:
            out[arr > np.uint64(_I64.max)] = _I64.max
        return out
    if arr.dtype == object:
        flat = []
        for v in arr.reshape(-1).tolist():
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{what}: expected integers, got {type(v).__name__} {v!r}")
            flat.append(min(max(int(v), _I64.min), _I64.max))
        return np.array(flat, dtype=np.int64).reshape(arr.shape)
    raise TypeError(f"{what}: expected integers, got dtype {arr.dtype}")


def as_int64_codes(codes: Any, what: str) -> np.ndarray:
    """Array-like / tensor of non-negative integer codes -> int64 ndarray (a new array).

    Raises TypeError for non-integers and ValueError for a negative code or a
    code beyond int64 (such as a uint64 value >= 2**63), naming the value.
    """
    codes = tensor_to_numpy(codes, what)
    arr = np.asarray(codes)
    if arr.dtype == object and arr.size:
        values = arr.reshape(-1).tolist()
        bad = next((v for v in values if isinstance(v, bool) or not isinstance(v, (int, np.integer))), None)
        if bad is not None:
            raise TypeError(f"{what}: expected integer codes, got {type(bad).__name__} {bad!r}")
        low, high = min(values), max(values)
        if low < 0:
            raise ValueError(f"{what}: codes must be >= 0, got {int(low)}")
        if high > _I64.max:
            raise ValueError(f"{what}: code {int(high)} is beyond int64 (codes must be < 2**63)")
        return np.array(values, dtype=np.int64).reshape(arr.shape)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(f"{what}: expected integer codes, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{what}: codes must be >= 0, got {int(arr.min())}")
    if arr.size and arr.dtype == np.uint64 and arr.max() > np.uint64(_I64.max):
        raise ValueError(f"{what}: code {int(arr.max())} is beyond int64 (codes must be < 2**63)")
    return np.array(arr, dtype=np.int64, copy=True, order="C")
