"""Turning user-supplied token IDs into int64 arrays without silent wrap-around."""

from __future__ import annotations

from typing import Any

import numpy as np

_I64 = np.iinfo(np.int64)


def as_int64_ids(ids: Any, *, what: str = "ids", one_dim: bool = False) -> np.ndarray:
    """Array-like / tensor of integers -> int64 ndarray.

    Integers beyond int64 (Python ints, uint64) are clamped to the int64 range,
    which keeps them out of every token range instead of wrapping around.
    Raises TypeError for non-integers (floats, bools, strings) and ValueError
    for a wrong number of dimensions when ``one_dim``.
    """
    if hasattr(ids, "detach") and hasattr(ids, "cpu"):  # torch.Tensor without importing torch
        ids = ids.detach().cpu().numpy()
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
        return np.minimum(arr, _I64.max).astype(np.int64)
    if arr.dtype == object:
        flat = []
        for v in arr.reshape(-1).tolist():
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{what}: expected integers, got {type(v).__name__} {v!r}")
            flat.append(min(max(int(v), _I64.min), _I64.max))
        return np.array(flat, dtype=np.int64).reshape(arr.shape)
    raise TypeError(f"{what}: expected integers, got dtype {arr.dtype}")
