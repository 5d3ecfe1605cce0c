"""Packed codebooks kept by a codec between encode calls.

``vq_search`` / ``rvq_encode`` keep no state, so each call packs the codebook
again; for the short clips and single images a codec often encodes, that
packing is a large share of the quantiser step. A codec keeps a
``CodebookCache`` instead and searches through its ``PackedCodebook``.

The cache is keyed on the tensors themselves, so it never serves a stale copy
to a model whose codebook was replaced (a new tensor), moved (``.to``) or
written in place (the version counter ``PackedCodebook`` watches).

Caches pickle empty (a packed codebook is a native object and a copy of the
codebook): a codec that is pickled after an encode repacks on its next one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..ops import PackedCodebook

__all__ = ["CodebookCache", "StackedCodebookCache"]


class CodebookCache:
    """The ``PackedCodebook`` of whatever codebook tensor the caller passes now.

    ``cache(codebook)`` packs ``codebook`` on the first call and whenever it is
    a different tensor object than last time; in-place writes and device moves
    of the same object are picked up by ``PackedCodebook`` itself.
    """

    def __init__(self, **options) -> None:
        self._options = options  # metric, normalized: as for PackedCodebook
        self._packed: PackedCodebook | None = None

    def __call__(self, codebook: torch.Tensor) -> PackedCodebook:
        if self._packed is None or self._packed.codebook is not codebook:
            self._packed = PackedCodebook(codebook, **self._options)
        return self._packed

    def __getstate__(self) -> dict:
        return {"_options": self._options}  # the packed copy is rebuilt on the next call

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state["_options"])


class StackedCodebookCache:
    """The ``PackedCodebook`` of ``torch.stack(codebooks)`` ([Q, K, D]) for per-stage tensors.

    HF RVQ modules keep one codebook tensor per stage; stacking them copies, so
    the stack is rebuilt (and packed) only when a stage's tensor differs from
    the last call's: another object, storage, device, or version.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._packed: PackedCodebook | None = None
        # The tensors the key describes, kept alive so that no new tensor can
        # take over their id and storage address while the key is in use.
        self._sources: list[torch.Tensor] = []

    def __call__(self, codebooks: Sequence[torch.Tensor], device: torch.device) -> PackedCodebook:
        key = (torch.device(device),) + tuple(_state(t) for t in codebooks)
        if self._packed is None or key != self._key:
            self._packed = PackedCodebook(torch.stack(list(codebooks)).to(device))
            self._key = key
            self._sources = list(codebooks)
        return self._packed

    def __getstate__(self) -> dict:
        return {}  # the key holds ids and addresses, meaningless in another process

    def __setstate__(self, state: dict) -> None:
        self.__init__()


def _state(t: torch.Tensor) -> tuple:
    # Inference tensors have no version counter; their in-place writes are not
    # seen (the same limit as PackedCodebook, documented there).
    version = None if t.is_inference() else t._version
    return (id(t), t.data_ptr(), t.device, t.dtype, tuple(t.shape), version)
