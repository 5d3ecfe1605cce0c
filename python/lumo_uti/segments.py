"""Document segments that are not text: code grids and placeholders.

``ImageCodes`` and ``AudioCodes`` hold codec output (integer codes) and compare
by value; ``ImagePlaceholder`` stands for a run of ``<|image_patch|>`` tokens
(the VLM, Track A, puts its connector's vectors at those positions).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._ids import as_int64_codes


def _as_int64_codes(codes: Any, what: str, ndims: tuple[int, ...], axes: str) -> np.ndarray:
    arr = as_int64_codes(codes, what)
    if arr.ndim not in ndims:
        raise ValueError(f"{what}: expected codes of shape {axes}, got shape {tuple(arr.shape)}")
    out = np.ascontiguousarray(arr)
    out.setflags(write=False)  # value objects: hashable, safe to share
    return out


class _Codes:
    __slots__ = ("_codes",)
    _codes: np.ndarray

    @classmethod
    def _checked(cls, codes: np.ndarray):
        """Wrap int64 codes that the caller made and checked (the decoder): no copy, no checks."""
        obj = cls.__new__(cls)
        arr = np.ascontiguousarray(codes, dtype=np.int64)
        arr.setflags(write=False)
        obj._codes = arr
        return obj

    @property
    def codes(self) -> np.ndarray:
        """The codes as a read-only C-contiguous ``int64`` array."""
        return self._codes

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._codes.shape)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._codes.shape == other._codes.shape and bool(np.array_equal(self._codes, other._codes))

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._codes.shape, self._codes.tobytes()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape})"


class ImageCodes(_Codes):
    """Image codes: ``[H, W]`` (one code layer) or ``[L, H, W]`` (L layers).

    The sequence grammar lays them out row-major over cells, with the L layers
    of a cell next to each other (layer index innermost).
    """

    __slots__ = ()

    def __init__(self, codes: Any):
        arr = _as_int64_codes(codes, "ImageCodes", (2, 3), "[H, W] or [L, H, W]")
        if 0 in arr.shape:
            raise ValueError(f"ImageCodes: every axis must be >= 1, got shape {tuple(arr.shape)}")
        # One layer is always stored as [H, W], so [1, H, W] and [H, W] compare equal.
        self._codes = arr[0] if arr.ndim == 3 and arr.shape[0] == 1 else arr

    @classmethod
    def _checked(cls, codes: np.ndarray) -> "ImageCodes":
        obj = super()._checked(codes)
        if obj._codes.ndim == 3 and obj._codes.shape[0] == 1:
            obj._codes = obj._codes[0]
        return obj

    @property
    def layers(self) -> np.ndarray:
        """The codes as ``[L, H, W]`` (a view; L = 1 for a plain grid)."""
        return self._codes if self._codes.ndim == 3 else self._codes[None]

    @property
    def num_layers(self) -> int:
        return self.layers.shape[0]

    @property
    def height(self) -> int:
        return self.layers.shape[1]

    @property
    def width(self) -> int:
        return self.layers.shape[2]


class AudioCodes(_Codes):
    """Audio codes ``[T, Q]``: T frames of Q residual codebooks (T may be 0)."""

    __slots__ = ()

    def __init__(self, codes: Any):
        arr = _as_int64_codes(codes, "AudioCodes", (2,), "[T, Q]")
        if arr.shape[1] == 0:
            raise ValueError(f"AudioCodes: expected Q >= 1 codebooks, got shape {tuple(arr.shape)}")
        self._codes = arr

    @property
    def num_frames(self) -> int:
        return self._codes.shape[0]

    @property
    def num_codebooks(self) -> int:
        return self._codes.shape[1]


class ImagePlaceholder:
    """A run of ``num_tokens`` ``<|image_patch|>`` tokens (slots the VLM fills with image features)."""

    __slots__ = ("num_tokens",)

    def __init__(self, num_tokens: int = 64):
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, (int, np.integer)) or num_tokens < 1:
            raise ValueError(f"ImagePlaceholder: expected num_tokens >= 1, got {num_tokens!r}")
        self.num_tokens = int(num_tokens)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImagePlaceholder):
            return NotImplemented
        return self.num_tokens == other.num_tokens

    def __hash__(self) -> int:
        return hash(("ImagePlaceholder", self.num_tokens))

    def __repr__(self) -> str:
        return f"ImagePlaceholder({self.num_tokens})"


# Every segment type, by the name a JSON document uses for it (``lumo_uti.docjson``).
# Code that treats each kind of segment differently dispatches on ``segment_kind``.
SEGMENT_TYPES: dict[str, type] = {
    "text": str,
    "image_codes": ImageCodes,
    "audio_codes": AudioCodes,
    "image_placeholder": ImagePlaceholder,
}


def segment_kind(segment: Any) -> str | None:
    """The name of ``segment``'s type in ``SEGMENT_TYPES``; None for anything else (e.g. media)."""
    for name, cls in SEGMENT_TYPES.items():
        if isinstance(segment, cls):
            return name
    return None


def segment_type_names() -> str:
    """``"str, ImageCodes, AudioCodes or ImagePlaceholder"``, for error messages."""
    names = [cls.__name__ for cls in SEGMENT_TYPES.values()]
    return ", ".join(names[:-1]) + " or " + names[-1]
