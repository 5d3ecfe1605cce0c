"""Token kinds and ID arithmetic: what each global ID means to the sequence grammar.

``Layout`` turns a token space into a per-ID kind (marker, grid, image code,
audio code, text, or one of the never-emitted kinds) using the compiled
``classify`` plus two small lookup tables, so the decoder and the constraint
masks never look at token strings.

The functions under "ID arithmetic" are the one place that maps codes and
grid sides to global IDs and back (``TokenSpace``, encode, decode and the
constraints all call them). They take a placed ``Block`` and work on Python
ints, NumPy arrays and torch tensors alike (plain arithmetic, broadcast)::

    code c of codebook q:  offset + q * codebook_size + c
    grid side v (1..size): offset + v - 1
"""

from __future__ import annotations

from enum import IntEnum
from types import SimpleNamespace
from typing import Any, Iterable

import numpy as np

from ..token_space import AUDIO_END, AUDIO_START, IMAGE_END, IMAGE_PATCH, IMAGE_START, TokenSpace


class Kind(IntEnum):
    """The grammar's view of one token ID."""

    TEXT = 0
    IMAGE_START = 1
    IMAGE_END = 2
    AUDIO_START = 3
    AUDIO_END = 4
    IMAGE_PATCH = 5
    GRID = 6
    IMAGE_CODE = 7
    AUDIO_CODE = 8
    RESERVED = 9  # unnamed (or unknown-named) slot of the specials block
    PADDING = 10  # base padding rows and tail padding
    OUT_OF_RANGE = 11  # >= padded_vocab_size
    NEGATIVE = 12


# The kinds as plain ints, for code that runs per token or per span (looking up
# an IntEnum member and comparing with it is several times slower).
K = SimpleNamespace(**{kind.name: int(kind) for kind in Kind})

_MARKER_KINDS = {
    IMAGE_START: Kind.IMAGE_START,
    IMAGE_END: Kind.IMAGE_END,
    AUDIO_START: Kind.AUDIO_START,
    AUDIO_END: Kind.AUDIO_END,
    IMAGE_PATCH: Kind.IMAGE_PATCH,
}

# Rule names for IDs that are never valid anywhere.
INVALID_ID_RULES = {
    Kind.NEGATIVE: ("id.negative", "negative token ID"),
    Kind.OUT_OF_RANGE: ("id.out_of_range", "token ID >= padded vocab size"),
    Kind.PADDING: ("id.padding", "padding-row ID (never emitted)"),
    Kind.RESERVED: ("id.reserved", "reserved special slot (not a token of this grammar)"),
}
INVALID_KINDS = frozenset(INVALID_ID_RULES)
START_KINDS = frozenset({Kind.IMAGE_START, Kind.AUDIO_START})


class Layout:
    """Kinds, codebook arithmetic and marker IDs of one token space."""

    def __init__(self, token_space: TokenSpace):
        ts = token_space
        self.token_space = ts
        self.image = ts.codes_block("image")
        self.audio = ts.codes_block("audio")
        self.grid = next((b for b in ts.blocks if b.kind == "grid"), None)
        special = next((b for b in ts.blocks if b.kind == "special"), None)

        region_kind = []
        for region in ts.regions:
            if region.name == "text":
                region_kind.append(Kind.TEXT)
            elif region.name in ("base_padding", "padding"):
                region_kind.append(Kind.PADDING)
            else:
                blk = ts.block(region.name)
                if blk.kind == "grid":
                    region_kind.append(Kind.GRID)
                elif blk.kind == "codes":
                    region_kind.append(Kind.IMAGE_CODE if blk.modality == "image" else Kind.AUDIO_CODE)
                else:
                    region_kind.append(Kind.RESERVED)  # refined per slot below
        self._region_kind = np.array(region_kind, dtype=np.int8)
        self._special_region = next((i for i, r in enumerate(ts.regions) if special and r.name == special.name), -1)
        self._special_offset = special.offset if special else 0
        slot_kind = np.full(special.size if special else 0, Kind.RESERVED, dtype=np.int8)
        self.marker_id: dict[Kind, int] = {}
        for i, name in enumerate(special.tokens if special else ()):
            if name in _MARKER_KINDS and self._has_modality_for(name):
                slot_kind[i] = _MARKER_KINDS[name]
                self.marker_id[_MARKER_KINDS[name]] = special.offset + i
        self._slot_kind = slot_kind

    def _has_modality_for(self, marker: str) -> bool:
        if marker in (IMAGE_START, IMAGE_END):
            return self.image is not None
        if marker in (AUDIO_START, AUDIO_END):
            return self.audio is not None
        return True  # <|image_patch|> needs no codec block

    def kinds(self, ids: np.ndarray) -> np.ndarray:
        """``Kind`` of every ID: ``ids`` int64 [N] -> int8 [N]."""
        region = self.token_space.classify(ids)
        kinds = np.where(region >= 0, self._region_kind[np.maximum(region, 0)] if len(ids) else region, 0)
        kinds = kinds.astype(np.int8, copy=False)
        outside = region < 0
        if outside.any():
            kinds[outside & (ids < 0)] = Kind.NEGATIVE
            kinds[outside & (ids >= 0)] = Kind.OUT_OF_RANGE
        if self._special_region >= 0:
            in_special = region == self._special_region
            if in_special.any():
                kinds[in_special] = self._slot_kind[ids[in_special] - self._special_offset]
        return kinds

    def codes_block_of(self, kind: Kind) -> Any:
        """The codes block of ``Kind.IMAGE_CODE`` or ``Kind.AUDIO_CODE``."""
        return self.image if kind == Kind.IMAGE_CODE else self.audio

    def codebook_of(self, ids: Any, kind: Kind) -> Any:
        """Codebook index of image/audio code IDs (int64 [N] -> int64 [N])."""
        return codebook_of(self.codes_block_of(kind), ids)

    def grid_value(self, token_id: int) -> int:
        """Side length carried by a grid token."""
        return int(grid_side(self.grid, int(token_id)))


# -- ID arithmetic ------------------------------------------------------------------------
def code_id(block: Any, codebook: Any, code: Any) -> Any:
    """Global ID(s) of ``code`` in ``codebook`` of a codes block (broadcasts; no range check)."""
    return block.offset + codebook * block.codebook_size + code


def codebook_of(block: Any, ids: Any) -> Any:
    """Codebook index of code ID(s) of ``block``."""
    return (ids - block.offset) // block.codebook_size


def code_of(block: Any, ids: Any) -> Any:
    """Code (index inside its codebook) of code ID(s) of ``block``."""
    return (ids - block.offset) % block.codebook_size


def codebook_range(block: Any, codebook: int) -> tuple[int, int]:
    """``[start, end)`` of the IDs of one codebook of a codes block."""
    start = code_id(block, codebook, 0)
    return start, start + block.codebook_size


def interleaved_code_ids(block: Any, codes: np.ndarray) -> np.ndarray:
    """Codes ``[..., num_codebooks]`` (codebook innermost) -> their global IDs, flat int64 in that order."""
    return code_id(block, np.arange(codes.shape[-1], dtype=np.int64), codes.astype(np.int64, copy=False)).reshape(-1)


def grid_id(block: Any, side: Any) -> Any:
    """Global ID(s) of the grid token(s) for side length(s) ``side`` (1..size; no range check)."""
    return block.offset + side - 1


def grid_side(block: Any, ids: Any) -> Any:
    """Side length(s) carried by grid token ID(s)."""
    return ids - block.offset + 1


def kind_table(kinds: Iterable[Kind]) -> np.ndarray:
    """Bool lookup table over ``Kind`` values: True for ``kinds`` (index it with a kinds array)."""
    table = np.zeros(len(Kind), dtype=bool)
    table[[int(k) for k in kinds]] = True
    return table


def scan(kinds: np.ndarray, i: int, stop: np.ndarray, limit: int | None = None) -> int:
    """First position in ``[i, limit)`` whose kind is in the table ``stop``; ``limit`` when none.

    ``limit`` defaults to ``len(kinds)``. The window grows geometrically, so a
    call costs O(result - i) amortised, however long the rest of the array is.
    """
    n, chunk = len(kinds) if limit is None else min(limit, len(kinds)), 256
    while i < n:
        seg = stop[kinds[i : min(n, i + chunk)]]
        if seg.any():
            return i + int(np.argmax(seg))
        i += chunk
        chunk *= 2
    return n


def run_end(kinds: np.ndarray, i: int, kind: Kind, limit: int | None = None) -> int:
    """First position in ``[i, limit)`` whose kind is not ``kind`` (``limit`` or len when none); O(run)."""
    n, chunk, kind = len(kinds) if limit is None else min(limit, len(kinds)), 256, int(kind)
    while i < n:
        seg = kinds[i : min(n, i + chunk)] != kind
        if seg.any():
            return i + int(np.argmax(seg))
        i += chunk
        chunk *= 2
    return n


def ordered_run(ids: np.ndarray, kinds: np.ndarray, i: int, kind: Kind, block: Any, index: int, limit: int,
                *, in_order: bool = True) -> int:
    """How many tokens from ``i`` (at most ``limit``) are codes of ``kind`` in codebook order.

    The first must be of codebook ``index``, the next of ``index + 1`` (mod
    ``num_codebooks``) and so on. With ``in_order=False``: how many are codes
    of ``kind`` *not* of codebook ``index`` (the codes lenient parsing drops
    while it waits for that codebook). O(result) amortised, like ``run_end``.
    """
    n, start, chunk, kind = min(len(ids), i + limit), i, 64, int(kind)
    num_codebooks = block.num_codebooks
    while i < n:
        j = min(n, i + chunk)
        ok = kinds[i:j] == kind
        if in_order and num_codebooks > 1:
            ok &= codebook_of(block, ids[i:j]) == (index + np.arange(i - start, j - start)) % num_codebooks
        elif not in_order:
            ok &= codebook_of(block, ids[i:j]) != index
        if not ok.all():
            return i + int(np.argmin(ok)) - start
        i, chunk = j, chunk * 2
    return n - start
