"""vq_search's integer screen: the same codes and distances as the plain exact
kernel, bit for bit, whatever the scales, ties, norms and sizes.

The integer screen runs on the row-block path (one thread, or many rows), so
these tests pin the thread count. ``LUMO_VQ_SCREEN`` picks the path: 0 (exact
kernel alone), fp (FMA screen), int (integer screen wherever a kernel has one,
AVX2 included), int-bw (AVX-512 without VNNI), unset (the default). On AVX2
the fp and default paths at D >= 8 also run the 6-row groups of the FMA
screen, so these tests cover them too.
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

SCREENS = ("0", "fp", "int", "int-bw", None)


def every_path(fn, threads: int = 1) -> dict:
    """fn() on every vector ISA x screen, with `threads` torch threads."""
    isas = vector_isas()
    before = torch.get_num_threads()
    results = {}
    try:
        torch.set_num_threads(threads)
        with pytest.MonkeyPatch.context() as mp:
            for isa in isas:
                mp.setenv("LUMO_VQ_ISA", isa)
                for screen in SCREENS:
                    if screen is None:
                        mp.delenv("LUMO_VQ_SCREEN", raising=False)
                    else:
                        mp.setenv("LUMO_VQ_SCREEN", screen)
                    results[isa, screen] = fn()
    finally:
        torch.set_num_threads(before)
    return results


def assert_all_equal(results: dict) -> None:
    keys = list(results)
    first_codes, first_dist = results[keys[0]]
    for key in keys[1:]:
        codes, dist = results[key]
        assert torch.equal(codes, first_codes), key
        assert torch.equal(dist, first_dist), key


def make(n: int, k: int, d: int, style: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if style == "ints":  # small integers: many exact ties
        return (torch.randint(-3, 4, (n, d), generator=g).float(), torch.randint(-3, 4, (k, d), generator=g).float())
    if style == "near":  # codes one ulp apart, rows within 1e-6 of codes
        base = torch.randn(max(1, k // 3), d, generator=g)
        cb = torch.cat([base, torch.nextafter(base, torch.full_like(base, 1e9)), base * (1 + 2**-23)])[:k]
        cb = torch.cat([cb, torch.randn(k - cb.shape[0], d, generator=g)])
        x = cb[torch.randint(0, k, (n,), generator=g)] + torch.randn(n, d, generator=g) * 1e-6
        return x, cb
    if style == "row_scales":  # one scale for the call: rows from 1e-6 to 1e6
        x = torch.randn(n, d, generator=g) * torch.logspace(-6, 6, n)[torch.randperm(n, generator=g)][:, None]
        return x, torch.randn(k, d, generator=g) * 10
    if style == "far_codes":  # a few codes with huge norms: clamped norm terms
        cb = torch.randn(k, d, generator=g)
        cb[torch.randint(0, k, (max(1, k // 50),), generator=g)] *= 1e12
        return torch.randn(n, d, generator=g) * 1e-3, cb
    if style == "outlier_row":  # one row 1e4 times the rest: the other row blocks get their own scale
        x = torch.randn(n, d, generator=g)
        x[torch.randint(0, n, (1,), generator=g)] *= 1e4
        return x, torch.randn(k, d, generator=g)
    if style == "block_scales":  # each 64-row block at its own scale, some far below the call's
        x = torch.randn(n, d, generator=g) * (10.0 ** -torch.arange(n).div(64, rounding_mode="floor")).float()[:, None]
        return x, torch.randn(k, d, generator=g) * 1e-2
    if style == "one_dim_spread":  # large values in one dimension only
        cb = torch.randn(k, d, generator=g)
        cb[:, 0] *= 1e4
        x = torch.randn(n, d, generator=g)
        x[:, 0] *= 1e4
        return x, cb
    return torch.randn(n, d, generator=g) * 3, torch.randn(k, d, generator=g) * 3


def check_every_screen(x: torch.Tensor, cb: torch.Tensor, metric: str) -> None:
    """Every ISA x screen gives the same bits, and L2 codes match the reference."""
    results = every_path(lambda: ops.vq_search(x, cb, metric=metric, return_distance=True))
    assert_all_equal(results)
    if metric == "l2":
        want, _ = vq_search_reference(x, cb)
        assert torch.equal(next(iter(results.values()))[0], want)


STYLES = ["randn", "ints", "near", "row_scales", "far_codes", "one_dim_spread", "outlier_row", "block_scales"]


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 200),
    d=st.integers(1, 16),
    k=st.one_of(st.integers(1, 80), st.integers(500, 3000)),
    style=st.sampled_from(STYLES),
    metric=st.sampled_from(["l2", "l2", "cosine"]),
    seed=st.integers(0, 2**31),
)
def test_every_screen_gives_the_exact_kernels_bits(n: int, d: int, k: int, style: str, metric: str,
                                                  seed: int) -> None:
    check_every_screen(*make(n, k, d, style, seed), metric)


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 300),
    d=st.one_of(st.integers(17, 70), st.sampled_from([127, 128, 200, 256, 301])),
    # Past D = 32 the screens run from 16 tiles (AVX-512) or 128 (AVX2): 512
    # or 2048 codes; fewer codes test the unscreened kernels beside them.
    k=st.one_of(st.integers(1, 100), st.integers(600, 2600)),
    style=st.sampled_from(STYLES),
    metric=st.sampled_from(["l2", "l2", "cosine"]),
    seed=st.integers(0, 2**31),
)
def test_every_screen_gives_the_exact_kernels_bits_at_large_d(n: int, d: int, k: int, style: str, metric: str,
                                                             seed: int) -> None:
    check_every_screen(*make(n, k, d, style, seed), metric)


@pytest.mark.parametrize("d", [8, 128])
def test_outlier_row_keeps_the_others_exact(d: int) -> None:
    # Rows 1e6 apart in scale, codes near every row: the blocks without the
    # outlier take their own scale, and every row still gets its exact code.
    g = torch.Generator().manual_seed(17)
    cb = torch.randn(3000, d, generator=g)
    x = cb[torch.randint(0, 3000, (400,), generator=g)] + 1e-3 * torch.randn(400, d, generator=g)
    x[3] *= 1e6
    results = every_path(lambda: ops.vq_search(x, cb, return_distance=True))
    assert_all_equal(results)
    assert torch.equal(next(iter(results.values()))[0], vq_search_reference(x, cb)[0])


@pytest.mark.parametrize("threads", [1, 2])
def test_many_rows_on_threads_and_packed(threads: int) -> None:
    # Enough rows for the row-block path on every thread count; the packed
    # codebook (integer copy built once) gives the same bits as per-call packing.
    g = torch.Generator().manual_seed(7)
    x, cb = torch.randn(1500, 8, generator=g), torch.randn(5000, 8, generator=g)
    if threads == 2:  # the large-D integer screen as well
        x, cb = torch.randn(700, 96, generator=g), torch.randn(2100, 96, generator=g)
    packed = PackedCodebook(cb)
    assert_all_equal(every_path(lambda: search_both_ways(x, cb, packed), threads=threads))


def test_given_norms_far_below_zero_fall_back() -> None:
    # Norm terms below -2^29 units cannot be clamped safely: the call must fall
    # back to the fp32 screen and still find the exact codes.
    g = torch.Generator().manual_seed(3)
    x, cb = torch.randn(300, 6, generator=g), torch.randn(900, 6, generator=g)
    norms = (cb * cb).sum(-1)
    norms[::97] = -1e20
    results = every_path(lambda: ops.vq_search(x, cb, codebook_norms=norms, return_distance=True))
    assert_all_equal(results)
    assert torch.equal(next(iter(results.values()))[0], vq_search_reference(x, cb, norms)[0])


def test_zero_rows_and_zero_codebook() -> None:
    # All-zero rows (no row scale) and an all-zero codebook (no code scale):
    # no integer screen, same results.
    z = torch.zeros(200, 5)
    cb = torch.randn(700, 5)
    assert_all_equal(every_path(lambda: ops.vq_search(z, cb, return_distance=True)))
    assert_all_equal(every_path(lambda: ops.vq_search(cb[:300], torch.zeros(400, 5), return_distance=True)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(11)
    x, cb = torch.randn(400, 12, generator=g).to(dtype), torch.randn(2000, 12, generator=g).to(dtype)
    assert_all_equal(every_path(lambda: ops.vq_search(x, cb, return_distance=True)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_row_is_reported_on_every_path(bad: float) -> None:
    # A NaN is no larger than any scale: the integer screen must not quantise
    # it (undefined float-to-int conversion) but leave the row to the check.
    g = torch.Generator().manual_seed(5)
    x, cb = torch.randn(300, 8, generator=g), torch.randn(900, 8, generator=g)
    x[137, 3] = bad

    def call():
        with pytest.raises(ValueError, match="137"):
            ops.vq_search(x, cb)
        return torch.zeros(1), torch.zeros(1)

    every_path(call)
