"""PackedCodebook's norm-ordered copy: the same codes and distances as the exact kernel, bit for bit.

Where the integer screen runs on a packed codebook (AVX-512 with BW by default, AVX2 with
``LUMO_VQ_SCREEN=int`` at packing time), ``vq_pack`` stores the codes ordered by norm, in scale
groups of 16 tiles with steps of their own, and every kernel reads the lanes' own code indices.
Where the norms spread (as in these codebooks), a group of rows, taken in order of their norms,
also skips whole groups of codes whose norms are out of its reach.
These tests search such copies on every ISA x screen (the screen is read per call, so the
unscreened ``LUMO_VQ_SCREEN=0`` path runs the ordered copy through its exact fallback), with
1 and 2 threads (few rows split by rows, fewer by code tiles), against the reference. The codebooks
are heavy-tailed (norms over six orders of magnitude), hold exact duplicates (ties must go to the
lowest index whatever the packed order) and have a partial last scale group.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lumo_uti.ops as ops
from lumo_uti.ops.reference import vq_search_reference
from lumo_uti.ops.vq import PackedCodebook
from test_ops_vq_int_screen import assert_all_equal, every_path


def heavy_tailed(n: int, k: int, d: int, row_scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes with log-normal sizes, some duplicated and some zero; rows near codes, plus noise."""
    g = torch.Generator().manual_seed(seed)
    cb = torch.randn(k, d, generator=g) * torch.exp(2.0 * torch.randn(k, 1, generator=g))
    dup = torch.randint(0, k, (max(1, k // 20),), generator=g)
    cb[torch.randint(0, k, (dup.numel(),), generator=g)] = cb[dup]  # exact ties, in either index order
    cb[torch.randint(0, k, (3,), generator=g)] = 0.0
    near = cb[torch.randint(0, k, (n,), generator=g)]
    x = near + row_scale * torch.randn(n, d, generator=g) * near.abs().mean(1, keepdim=True).clamp_min(1e-3)
    return x, cb


def check_packed(x: torch.Tensor, cb: torch.Tensor, threads: int, **options) -> None:
    packed = PackedCodebook(cb, **options)  # packed once, under the default screen: ordered where it runs

    def both():
        fresh = PackedCodebook(cb, **options)  # packed under this path's ISA and screen
        got = packed.search(x, return_distance=True)
        again = fresh.search(x, return_distance=True)
        assert torch.equal(got[0], again[0]) and torch.equal(got[1], again[1])
        return got

    results = every_path(both, threads=threads)
    assert_all_equal(results)
    want = ops.vq_search(x, cb, return_distance=True, **options)
    codes, dist = next(iter(results.values()))
    assert torch.equal(codes, want[0]) and torch.equal(dist, want[1])
    if not options:
        assert torch.equal(codes, vq_search_reference(x, cb)[0])


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 130),
    d=st.one_of(st.integers(9, 40), st.sampled_from([96, 192])),
    # More than 16 tiles (512 codes on AVX-512, 256 on AVX2) are ordered; 3 groups and a part.
    k=st.one_of(st.integers(520, 1700), st.just(16 * 32 * 3 + 37)),
    row_scale=st.sampled_from([0.0, 1e-3, 0.3, 3.0]),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**31),
)
def test_ordered_copy_gives_the_exact_kernels_bits(n: int, d: int, k: int, row_scale: float, threads: int,
                                                  seed: int) -> None:
    check_packed(*heavy_tailed(n, k, d, row_scale, seed), threads)


@pytest.mark.parametrize("options", [{"metric": "cosine"}, {"norms": True}])
def test_ordered_copy_with_cosine_and_given_norms(options: dict) -> None:
    x, cb = heavy_tailed(70, 1300, 24, 0.3, seed=3)
    if options.pop("norms", False):  # given norms follow their codes into the packed order
        options["codebook_norms"] = (cb * cb).sum(-1) * 1.5 + 1.0
    check_packed(x, cb, threads=2, **options)


def test_ordered_copy_with_rows_no_screen_takes() -> None:
    # Rows and a few codes near 1e18 and 1e17: the distances still fit fp32, but the screening
    # bound of those rows (about (d + 2) 2^-24 |x| |c|) passes 1e30, where no screen takes a row,
    # so they go through the exact fallback, which must read the ordered lanes' own indices
    # (with duplicates: the lowest index wins).
    g = torch.Generator().manual_seed(5)
    cb = torch.randn(1100, 33, generator=g) * torch.exp(torch.randn(1100, 1, generator=g))
    cb[::50] *= 1e17
    cb[1::50] = cb[::50]
    x = torch.randn(40, 33, generator=g)
    x[::3] *= 1e18
    check_packed(x, cb, threads=2)


def test_prediction_errors_of_the_default_image_codec() -> None:
    # The workload the ordering is for: a K = 16384, D = 192 codebook of prediction errors
    # (max |v| 3.3 against a mean of 0.16), rows in the sizes of one anti-diagonal.
    import lumo_uti

    codec = lumo_uti.load().image_codec
    cb = codec.model.codebook
    g = torch.Generator().manual_seed(0)
    x = cb[torch.randint(0, cb.shape[0], (32,), generator=g)] + 0.05 * torch.randn(32, cb.shape[1], generator=g)
    packed = PackedCodebook(cb)
    for n in (1, 5, 8, 32):
        for threads in (1, 2):
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                got = packed.search(x[:n], return_distance=True)
            finally:
                torch.set_num_threads(before)
            want = ops.vq_search(x[:n], cb, return_distance=True)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (n, threads)
            assert torch.equal(got[0], vq_search_reference(x[:n], cb)[0]), (n, threads)
