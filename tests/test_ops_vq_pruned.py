"""vq_search's axis-pruned path (D <= 8, K >= 2048, N >= 256, L2 with computed
norms): the same codes and distances as the plain exact kernel, bit for bit.

The pruned path visits the codes out of index order (sorted by one
coordinate) and skips the far ones, so these tests aim at what that could
break: exact ties between codes of different keys (the lowest index must
win), many codes with one key, rows far outside the codebook, one row scale
per call, half-precision inputs, thread counts. ``LUMO_VQ_PRUNE=0`` turns the
path off; ``LUMO_VQ_SCREEN=0`` with it gives the plain exact kernel.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lumo_uti.ops as ops
from lumo_uti.ops.reference import vq_search_reference
from lumo_uti.ops.vq import PackedCodebook
from vq_paths import search_both_ways, vector_isas


def on_every_path(fn, threads: int = 2) -> dict:
    """fn() with the pruned path on and off, on every vector ISA and screen."""
    before = torch.get_num_threads()
    results = {}
    try:
        torch.set_num_threads(threads)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("LUMO_VQ_PRUNE", "0")
            mp.setenv("LUMO_VQ_SCREEN", "0")
            results["exact"] = fn()
            for isa in vector_isas():
                mp.setenv("LUMO_VQ_ISA", isa)
                for screen in ("fp", "int", None):
                    if screen is None:
                        mp.delenv("LUMO_VQ_SCREEN", raising=False)
                    else:
                        mp.setenv("LUMO_VQ_SCREEN", screen)
                    for prune in ("0", "1"):
                        mp.setenv("LUMO_VQ_PRUNE", prune)
                        results[isa, screen, prune] = fn()
    finally:
        torch.set_num_threads(before)
    return results


def assert_same_bits(results: dict) -> None:
    want_codes, want_dist = results["exact"]
    for key, (codes, dist) in results.items():
        assert torch.equal(codes, want_codes), key
        assert torch.equal(dist, want_dist), key


def make(n: int, k: int, d: int, style: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if style == "ints":  # small integers: exact ties between codes of different keys
        return (torch.randint(-4, 5, (n, d), generator=g).float(), torch.randint(-4, 5, (k, d), generator=g).float())
    if style == "duplicates":  # every code several times, at scattered indices
        base = torch.randn(k // 4 + 1, d, generator=g)
        cb = base[torch.randint(0, base.shape[0], (k,), generator=g)]
        return base[torch.randint(0, base.shape[0], (n,), generator=g)], cb
    if style == "one_key":  # most codes share the sorting coordinate's value
        cb = torch.randn(k, d, generator=g)
        cb[: k * 3 // 4, 0] = 0.5
        cb[:, 0] *= 10  # make coordinate 0 the widest
        return torch.randn(n, d, generator=g) * 3, cb
    if style == "far_rows":  # rows well outside the codebook's range
        return torch.randn(n, d, generator=g) * 100 + 50, torch.randn(k, d, generator=g)
    if style == "huge_rows":  # keys 1e15 from a codebook 1e-15 wide: bucket positions past 2^63
        return torch.randn(n, d, generator=g) * 1e15, torch.randn(k, d, generator=g) * 1e-15
    if style == "near":  # rows within 1e-6 of codes, codes one ulp apart
        base = torch.randn(k // 2, d, generator=g)
        cb = torch.cat([base, torch.nextafter(base, torch.full_like(base, 1e9))])
        cb = torch.cat([cb, torch.randn(k - cb.shape[0], d, generator=g)])
        return cb[torch.randint(0, k, (n,), generator=g)] + torch.randn(n, d, generator=g) * 1e-6, cb
    if style == "row_scales":  # rows from 1e-4 to 1e4 in one call
        x = torch.randn(n, d, generator=g) * torch.logspace(-4, 4, n)[torch.randperm(n, generator=g)][:, None]
        return x, torch.randn(k, d, generator=g) * 10
    if style == "clusters":  # a few tight clusters: many near ties
        centers = torch.randn(7, d, generator=g) * 5
        cb = centers[torch.randint(0, 7, (k,), generator=g)] + torch.randn(k, d, generator=g) * 1e-3
        return centers[torch.randint(0, 7, (n,), generator=g)] + torch.randn(n, d, generator=g) * 1e-2, cb
    return torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)


STYLES = ["randn", "ints", "duplicates", "one_key", "far_rows", "huge_rows", "near", "row_scales", "clusters"]


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(256, 700),
    d=st.integers(1, 8),
    k=st.integers(2048, 5000),
    style=st.sampled_from(STYLES),
    seed=st.integers(0, 2**31),
)
def test_pruned_path_gives_the_exact_kernels_bits(n: int, d: int, k: int, style: str, seed: int) -> None:
    x, cb = make(n, k, d, style, seed)
    results = on_every_path(lambda: ops.vq_search(x, cb, return_distance=True))
    assert_same_bits(results)
    assert torch.equal(results["exact"][0], vq_search_reference(x, cb)[0])


@pytest.mark.parametrize("threads", [1, 2])
def test_pruned_path_on_any_thread_count(threads: int) -> None:
    g = torch.Generator().manual_seed(9)
    x, cb = torch.randint(-3, 4, (1500, 4), generator=g).float(), torch.randint(-3, 4, (9000, 4), generator=g).float()
    assert_same_bits(on_every_path(lambda: ops.vq_search(x, cb, return_distance=True), threads=threads))


def test_packed_codebook_prunes_too() -> None:
    g = torch.Generator().manual_seed(4)
    x, cb = torch.randn(900, 6, generator=g), torch.randint(-2, 3, (6000, 6), generator=g).float()
    packed = PackedCodebook(cb)
    assert_same_bits(on_every_path(lambda: search_both_ways(x, cb, packed)))

    # A codebook packed with the pruned search on holds the key-ordered copy
    # (about twice the bytes); packed with it off, not.
    def packed_bytes(prune: str) -> int:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("LUMO_VQ_PRUNE", prune)
            for name in ("LUMO_VQ_SCREEN", "LUMO_VQ_ISA"):
                mp.delenv(name, raising=False)
            fresh = PackedCodebook(cb)
            fresh.search(x[:1])
            return fresh._packed.nbytes

    assert packed_bytes("1") > 1.5 * packed_bytes("0")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pruned_path_half_inputs(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(12)
    x, cb = torch.randn(600, 8, generator=g).to(dtype), torch.randn(4000, 8, generator=g).to(dtype)
    assert_same_bits(on_every_path(lambda: ops.vq_search(x, cb, return_distance=True)))


def test_rows_far_beyond_the_codebook() -> None:
    # Row keys about 1e15 against codes 1e-15 wide: their bucket positions are
    # far past 2^63 and must clamp to the end buckets, not overflow.
    g = torch.Generator().manual_seed(8)
    x, cb = torch.randn(400, 4, generator=g) * 1e15, torch.randn(3000, 4, generator=g) * 1e-15
    assert_same_bits(on_every_path(lambda: ops.vq_search(x, cb, return_distance=True)))


def test_constant_codebook_and_strided_rows() -> None:
    # A codebook equal along every coordinate has no axis to sort by (the
    # regular path runs); rows given as a strided view are read correctly.
    g = torch.Generator().manual_seed(2)
    x = torch.randn(800, 10, generator=g)[:, ::2]
    assert_same_bits(on_every_path(lambda: ops.vq_search(x, torch.ones(3000, 5), return_distance=True)))
    cb = torch.randn(3000, 5, generator=g)
    assert_same_bits(on_every_path(lambda: ops.vq_search(x, cb, return_distance=True)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_reported_with_pruning_on(bad: float) -> None:
    g = torch.Generator().manual_seed(6)
    x, cb = torch.randn(500, 4, generator=g), torch.randn(3000, 4, generator=g)
    x[321, 2] = bad
    with pytest.raises(ValueError, match="321"):
        ops.vq_search(x, cb)
    x[321, 2] = 0.0
    cb[2345, 1] = bad
    with pytest.raises(ValueError, match="2345"):
        ops.vq_search(x, cb)
