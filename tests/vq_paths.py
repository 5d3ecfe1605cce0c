"""Helpers of the VQ kernel-path tests: which vector ISAs this CPU runs, and a search both ways."""

from __future__ import annotations

import pytest
import torch

import lumo_uti.ops as ops

from lumo_uti.ops import _native
from lumo_uti.ops.vq import PackedCodebook

ISA_NAMES = {2: "avx2", 3: "avx512"}


def vector_isas() -> list[str]:
    """The vector ISAs the CPU kernels run here (``LUMO_VQ_ISA`` names); skips without any."""
    module = _native.cpu()
    if module is None:
        pytest.skip(f"CPU kernels not built ({_native.cpu_reason()})")
    mask = module.vq_isa_mask()
    isas = [name for bit, name in ISA_NAMES.items() if mask >> bit & 1]
    if not isas:
        pytest.skip("no vector ISA on this CPU")
    return isas


def search_both_ways(x: torch.Tensor, cb: torch.Tensor, packed: PackedCodebook) -> tuple[torch.Tensor, torch.Tensor]:
    """``vq_search`` (codes, distances), checked bit for bit against the same search on ``packed``."""
    a = ops.vq_search(x, cb, return_distance=True)
    b = packed.search(x, return_distance=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    return a
