"""lumo_uti.ops.vq_search: native kernels vs the reference (exact codes), errors, determinism."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import lumo_uti.ops as ops
from lumo_uti.ops import _native
from lumo_uti.ops._native import buffer
from lumo_uti.ops.vq import PackedCodebook
from lumo_uti.ops.reference import sqnorm_seq, vq_search_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ISA_NAMES = {1: "scalar", 2: "avx2", 3: "avx512"}


def cpu_isas() -> list[str]:
    module = _native.cpu()
    if module is None:
        return []
    mask = module.vq_isa_mask()
    return [name for bit, name in ISA_NAMES.items() if mask >> bit & 1]


def native_cpu() -> None:
    if _native.cpu() is None:
        pytest.skip(f"CPU kernels not built ({_native.cpu_reason()})")


@pytest.fixture(params=list(ISA_NAMES.values()))
def isa(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each CPU instruction set in turn (skipped where this CPU lacks it)."""
    native_cpu()
    if request.param not in cpu_isas():
        pytest.skip(f"this CPU has no {request.param}")
    monkeypatch.setenv("LUMO_VQ_ISA", request.param)
    return request.param


def reference_codes(x: torch.Tensor, cb: torch.Tensor, **kw: object) -> torch.Tensor:
    """The public function on the reference backend (LUMO_FORCE_REFERENCE=1)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LUMO_FORCE_REFERENCE", "1")
    try:
        return ops.vq_search(x, cb, **kw)
    finally:
        mp.undo()


def brute_force_check(x: torch.Tensor, cb: torch.Tensor, codes: torch.Tensor) -> None:
    """Independent of the contract: the chosen code is nearest up to fp32 rounding."""
    xd, cd = x.reshape(-1, x.shape[-1]).double(), cb.double()
    dist = torch.cdist(xd, cd) ** 2
    chosen = dist.gather(1, codes.reshape(-1, 1))[:, 0]
    scale = (xd * xd).sum(1) + (cd * cd).sum(1).max()
    assert torch.all(chosen - dist.min(1).values <= 1e-5 * scale + 1e-6)


# ---------------------------------------------------------------------------
# Shapes: N 0..5000, K 1..40000, D 1..512, with N*K*D bounded so that the
# pure-PyTorch reference stays fast.
# ---------------------------------------------------------------------------

BUDGET = 3_000_000


@st.composite
def shape_st(draw: st.DrawFn) -> tuple[int, int, int]:
    kind = draw(st.sampled_from(["small", "wide_k", "wide_d", "wide_n"]))
    if kind == "small":
        return draw(st.integers(0, 40)), draw(st.integers(1, 70)), draw(st.integers(1, 40))
    if kind == "wide_k":
        d = draw(st.integers(1, 8))
        k = draw(st.integers(1, 40000))
        return draw(st.integers(0, max(0, min(5000, BUDGET // (k * d))))), k, d
    if kind == "wide_d":
        d = draw(st.integers(33, 512))
        k = draw(st.integers(1, max(1, BUDGET // (40 * d))))
        return draw(st.integers(0, 40)), k, d
    d = draw(st.integers(1, 16))
    k = draw(st.integers(1, max(1, min(200, BUDGET // (5000 * d)))))
    return draw(st.integers(0, 5000)), k, d


def make_inputs(
    n: int, k: int, d: int, dtype: torch.dtype, style: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if style == "ints":  # small integers: many exact ties
        cb = torch.randint(-2, 3, (k, d), generator=g).float()
        x = torch.randint(-2, 3, (n, d), generator=g).float()
    elif style == "dups":  # duplicate codebook rows, x on codes
        base = torch.randn(max(1, k // 3), d, generator=g)
        cb = base[torch.randint(0, base.shape[0], (k,), generator=g)]
        x = cb[torch.randint(0, k, (n,), generator=g)] if n else torch.empty(0, d)
    else:
        cb = torch.randn(k, d, generator=g) * 3
        x = torch.randn(n, d, generator=g) * 3
    return x.to(dtype), cb.to(dtype)


@settings(max_examples=40)
@given(
    shape=shape_st(),
    dtype=st.sampled_from(DTYPES),
    style=st.sampled_from(["randn", "ints", "dups"]),
    metric=st.sampled_from(["l2", "l2", "cosine"]),
    seed=st.integers(0, 2**31),
)
def test_matches_reference(
    shape: tuple[int, int, int], dtype: torch.dtype, style: str, metric: str, seed: int
) -> None:
    n, k, d = shape
    x, cb = make_inputs(n, k, d, dtype, style, seed)
    codes, dist = ops.vq_search(x, cb, metric=metric, return_distance=True)
    ref_codes, ref_dist = reference_codes(x, cb, metric=metric, return_distance=True)
    assert codes.dtype == torch.int64 and codes.shape == (n,)
    assert torch.equal(codes, ref_codes)
    assert torch.equal(dist, ref_dist)
    if metric == "l2" and n and n * k * d <= 500_000:
        brute_force_check(x.float(), cb.float(), codes)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t)[6:])
@pytest.mark.parametrize(
    "shape", [(1, 1, 1), (5, 33, 3), (130, 517, 8), (67, 300, 130), (3, 4099, 4)]
)
def test_every_isa_matches_reference(
    isa: str, dtype: torch.dtype, shape: tuple[int, int, int]
) -> None:
    n, k, d = shape
    for style in ("randn", "ints", "dups"):
        x, cb = make_inputs(n, k, d, dtype, style, seed=n * 7 + k)
        ref = vq_search_reference(x, cb)[0]
        for threads in (1, 2):
            torch.set_num_threads(threads)
            try:
                assert torch.equal(ops.vq_search(x, cb), ref), (isa, style, threads)
            finally:
                torch.set_num_threads(2)


def screened_inputs(n: int, k: int, d: int, style: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_inputs, plus "near": codes one ulp apart and x within 1e-6 of them."""
    if style != "near":
        return make_inputs(n, k, d, torch.float32, style, seed)
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(max(1, k // 3), d, generator=g)
    cb = torch.cat([base, torch.nextafter(base, torch.full_like(base, 1e9)), base * (1 + 2**-23)])[:k]
    cb = torch.cat([cb, torch.randn(k - cb.shape[0], d, generator=g)])
    x = cb[torch.randint(0, k, (n,), generator=g)] + torch.randn(n, d, generator=g) * 1e-6
    return x, cb


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 150),
    d=st.integers(1, 40),
    k=st.one_of(st.integers(1, 300), st.integers(4097, 4200)),
    style=st.sampled_from(["randn", "ints", "dups", "near"]),
    metric=st.sampled_from(["l2", "l2", "cosine"]),
    seed=st.integers(0, 2**31),
)
def test_screened_and_plain_kernels_agree(n: int, d: int, k: int, style: str, metric: str, seed: int) -> None:
    # LUMO_VQ_SCREEN (read on every call) switches the screened kernel off: both
    # kernels must give the same codes and distances, bit for bit, on every ISA
    # that has one. K > 4096 screens at D > 32 too (at least 128 code tiles on AVX2, 16 on AVX-512).
    native_cpu()
    isas = [name for name in cpu_isas() if name != "scalar"]
    if not isas:
        pytest.skip("no vector ISA on this CPU")
    x, cb = screened_inputs(n, k, d, style, seed)
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        for name in isas:
            mp.setenv("LUMO_VQ_ISA", name)
            for screen in ("0", "1"):
                mp.setenv("LUMO_VQ_SCREEN", screen)
                results[name, screen] = ops.vq_search(x, cb, metric=metric, return_distance=True)
    first_codes, first_dist = results[isas[0], "0"]
    for key, (codes, dist) in results.items():
        assert torch.equal(codes, first_codes), key
        assert torch.equal(dist, first_dist), key


def test_planted_exact_ties_go_to_lowest_index() -> None:
    # x sits exactly between codes 3 and 1 (integer distances, no rounding),
    # and code 5 duplicates code 1: the lowest index of the minimum wins.
    cb = torch.tensor([[10.0, 0.0], [2.0, 0.0], [0.0, 10.0], [-2.0, 0.0], [0.0, -10.0], [2.0, 0.0]])
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [-2.0, 0.0], [1.0, 0.0]])
    for dtype in DTYPES:
        codes, dist = ops.vq_search(x.to(dtype), cb.to(dtype), return_distance=True)
        assert codes.tolist() == [1, 1, 3, 1]
        assert dist.tolist() == [4.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("k", [1, 31, 32, 33, 1000])
def test_all_codes_equal_gives_zero(k: int) -> None:
    cb = torch.full((k, 6), 0.25)
    x = torch.randn(70, 6)
    assert torch.equal(ops.vq_search(x, cb), torch.zeros(70, dtype=torch.int64))


def test_near_ties_match_reference() -> None:
    # Codes one ulp apart: only the exact contract decides these.
    base = torch.randn(64, 16)
    cb = torch.cat([base, torch.nextafter(base, torch.full_like(base, 1e9)), base * (1 + 2**-23)])
    x = base.repeat(3, 1) + torch.randn(192, 16) * 1e-6
    assert torch.equal(ops.vq_search(x, cb), vq_search_reference(x, cb)[0])


def test_batched_and_non_contiguous() -> None:
    x = torch.randn(3, 16, 40)[:, :, ::2]  # [3, 16, 20], strided
    xt = torch.randn(3, 20, 5).transpose(1, 2)  # [3, 5, 20], transposed
    cb = torch.randn(20, 300).t()  # [300, 20], transposed
    for inp in (x, xt):
        codes = ops.vq_search(inp, cb)
        assert codes.shape == inp.shape[:-1]
        flat = vq_search_reference(inp.reshape(-1, 20), cb)[0].reshape(inp.shape[:-1])
        assert torch.equal(codes, flat)


def test_deterministic_across_runs_threads_and_splits() -> None:
    x, cb = torch.randn(1500, 8), torch.randn(5000, 8)
    torch.set_num_threads(1)
    one = ops.vq_search(x, cb, return_distance=True)
    torch.set_num_threads(2)
    two = ops.vq_search(x, cb, return_distance=True)
    again = ops.vq_search(x, cb, return_distance=True)
    parts = [
        ops.vq_search(x[a:b], cb, return_distance=True) for a, b in ((0, 1), (1, 700), (700, 1500))
    ]
    for other in (two, again, tuple(torch.cat(p) for p in zip(*parts))):
        assert torch.equal(one[0], other[0]) and torch.equal(one[1], other[1])
    # few rows: the kernel splits the codes across threads instead
    small = [ops.vq_search(x[:3], cb) for _ in range(2)]
    torch.set_num_threads(1)
    assert torch.equal(small[0], ops.vq_search(x[:3], cb)) and torch.equal(small[0], small[1])
    torch.set_num_threads(2)


def _search_in_child(x: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
    return ops.vq_search(x, cb)


def test_concurrent_calls() -> None:
    # The CPU kernels share one worker pool: a call that finds it busy runs alone.
    native_cpu()
    x, cb = torch.randn(300, 8), torch.randn(5000, 8)
    xs, cbs = torch.randn(40, 64), torch.randn(6, 2048, 64)
    want = vq_search_reference(x, cb)[0]
    want_rvq = ops.rvq_encode(xs, cbs)
    with ThreadPoolExecutor(4) as pool:
        got = list(
            pool.map(
                lambda i: ops.vq_search(x, cb) if i % 2 else ops.rvq_encode(xs, cbs), range(12)
            )
        )
    for i, g in enumerate(got):
        assert torch.equal(g, want if i % 2 else want_rvq), i


def test_forked_child_starts_a_pool_of_its_own() -> None:
    native_cpu()
    x, cb = torch.randn(300, 8), torch.randn(5000, 8)
    want = ops.vq_search(x, cb)  # the parent's pool has run
    with multiprocessing.get_context("fork").Pool(1) as child:
        assert torch.equal(child.apply(_search_in_child, (x, cb)), want)


def test_codebook_changes_are_always_seen() -> None:
    # No state survives a call: writes that bypass the version counter too.
    x = torch.randn(64, 8)
    cb = torch.randn(3000, 8)
    for _ in range(2):
        assert torch.equal(ops.vq_search(x, cb), vq_search_reference(x, cb)[0])
    cb.mul_(-1)
    assert torch.equal(ops.vq_search(x, cb), vq_search_reference(x, cb)[0])
    cb.data[7] = x[0]  # .data has its own version counter
    assert ops.vq_search(x, cb)[0] == 7
    cb.numpy()[9] = x[1].numpy()  # a write PyTorch never sees
    assert ops.vq_search(x, cb)[1] == 9


def test_native_packed_codebook_is_a_copy() -> None:
    # lumo_uti._C.vq_pack / vq_search_packed: an explicit, caller-held packed
    # codebook (what vq_search does inside every call).
    native_cpu()
    module = _native.cpu()
    x, cb = torch.randn(300, 12), torch.randn(999, 12)
    packed = module.vq_pack(buffer(cb), 0, 999, 12, 0, (0, 0), 0)
    assert (packed.k, packed.d, packed.bad_row) == (999, 12, -1) and packed.nbytes >= 999 * 13 * 4
    want = vq_search_reference(x, cb)
    cb.zero_()  # the packed copy does not change
    codes, best = torch.empty(300, dtype=torch.int64), torch.empty(300)
    status = module.vq_search_packed(packed, buffer(x), 0, 300, 12, buffer(codes), buffer(best), 2)
    assert status is None and torch.equal(codes, want[0]) and torch.equal(best, want[1])
    x[17, 3] = float("inf")
    with pytest.raises(ValueError, match=r"^vq_search: expected finite values, got inf/NaN in x row 17$"):
        module.vq_search_packed(packed, buffer(x), 0, 300, 12, buffer(codes), buffer(best), 1)
    with pytest.raises(ValueError, match="packed codebook's dimension"):
        x11 = x[:, :11].contiguous()
        module.vq_search_packed(packed, buffer(x11), 0, 300, 11, buffer(codes), buffer(best), 1)
    cb[5, 0] = float("nan")
    assert module.vq_pack(buffer(cb), 0, 999, 12, 0, (0, 0), 0).bad_row == 5


def test_codebook_norms_and_cosine() -> None:
    x, cb = torch.randn(50, 12), torch.randn(400, 12)
    assert torch.equal(ops.vq_search(x, cb, codebook_norms=sqnorm_seq(cb)), ops.vq_search(x, cb))
    # Norms are used as given: zero norms rank by the dot product alone.
    by_dot = ops.vq_search(x, cb, codebook_norms=torch.zeros(400))
    assert torch.equal(by_dot, torch.argmax(x @ cb.t(), dim=1))
    codes, sim = ops.vq_search(x, cb, metric="cosine", return_distance=True)
    cos = F.normalize(x, dim=1) @ F.normalize(cb, dim=1).t()
    assert torch.equal(codes, cos.argmax(1))
    torch.testing.assert_close(sim, cos.max(1).values, rtol=1e-5, atol=1e-5)
    xn, cbn = F.normalize(x, dim=1), F.normalize(cb, dim=1)
    assert torch.equal(ops.vq_search(xn, cbn, metric="cosine", normalized=True), codes)


def test_distance_is_squared_l2() -> None:
    x, cb = torch.randn(40, 9), torch.randn(77, 9)
    codes, dist = ops.vq_search(x, cb, return_distance=True)
    torch.testing.assert_close(dist, ((x - cb[codes]) ** 2).sum(1), rtol=1e-5, atol=1e-5)


def test_empty_rows() -> None:
    cb = torch.randn(10, 4)
    codes, dist = ops.vq_search(torch.empty(0, 4), cb, return_distance=True)
    assert codes.shape == (0,) and codes.dtype == torch.int64 and dist.shape == (0,)
    assert ops.vq_search(torch.empty(2, 0, 4), cb).shape == (2, 0)


@pytest.mark.parametrize(
    ("x", "cb", "kw", "exc", "match"),
    [
        (torch.randn(3, 4), torch.randn(5, 3), {}, ValueError, r"expected x \[\.\.\., 3\]"),
        (torch.randn(3, 4), torch.randn(0, 4), {}, ValueError, "non-empty codebook"),
        (
            torch.randn(3, 4),
            torch.randn(5, 4).half(),
            {},
            TypeError,
            "dtype float32 .the dtype of x., got float16",
        ),
        (torch.randn(3, 4).double(), torch.randn(5, 4).double(), {}, TypeError, "got float64"),
        (
            torch.randn(3, 4),
            torch.randn(5, 4, device="meta"),
            {},
            ValueError,
            "expected codebook on cpu",
        ),
        (
            torch.randn(3, 4),
            torch.randn(5, 4),
            {"metric": "dot"},
            ValueError,
            "metric 'l2' or 'cosine'",
        ),
        (
            torch.randn(3, 4),
            torch.randn(5, 4),
            {"codebook_norms": torch.ones(4)},
            ValueError,
            r"shape \[5\]",
        ),
        (
            torch.randn(3, 4),
            torch.randn(5, 4),
            {"metric": "cosine", "codebook_norms": torch.ones(5)},
            ValueError,
            "'l2' only",
        ),
        (torch.randn(3, 4), torch.randn(5), {}, ValueError, r"shape \[K, D\]"),
        ([[1.0]], torch.randn(5, 1), {}, TypeError, "x as a torch.Tensor"),
    ],
)
def test_bad_input(x: object, cb: torch.Tensor, kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        ops.vq_search(x, cb, **kw)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_names_the_row(bad: float) -> None:
    x, cb = torch.randn(2, 3, 4), torch.randn(6, 4)
    x[1, 1, 2] = bad
    with pytest.raises(ValueError, match="inf/NaN in x row 4"):
        ops.vq_search(x, cb)
    cb[5, 0] = bad
    with pytest.raises(ValueError, match="codebook row 5"):
        ops.vq_search(x[0], cb)


def test_overflow_is_an_error() -> None:
    x, cb = torch.full((2, 4), 1e20), torch.full((3, 4), -1e20)
    with pytest.raises(ValueError, match="overflow fp32 for row 0"):
        ops.vq_search(x, cb)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_returned_distance_that_overflows_is_an_error(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    # The ranking score cn - 2 dot is 0 (finite), but sqnorm(x) + score, the
    # returned squared distance, overflows fp32 for rows 1 and 2.
    if backend == "reference":
        monkeypatch.setenv("LUMO_FORCE_REFERENCE", "1")
    x, cb = torch.full((3, 4), 1e20), torch.zeros(2, 4)
    x[0] = 1.0
    assert ops.vq_search(x, cb).tolist() == [0, 0, 0]  # the codes themselves are exact
    with pytest.raises(ValueError, match=r"^vq_search: distances overflow fp32 for row 1 "):
        ops.vq_search(x, cb, return_distance=True)
    with pytest.raises(ValueError, match=r"^vq_search: distances overflow fp32 for row 1 "):
        PackedCodebook(cb).search(x, return_distance=True)
    codes, dist = ops.vq_search(x[:1], cb, return_distance=True)
    assert codes.tolist() == [0] and dist.tolist() == [4.0]


def test_opcheck_and_compile() -> None:
    op = torch.ops.lumo_uti.vq_search.default
    for args in (
        (torch.randn(9, 5), torch.randn(17, 5), None, False),
        (torch.randn(9, 5).half(), torch.randn(17, 5).half(), torch.rand(17), False),
        (torch.randn(0, 5), torch.randn(17, 5), None, True),
    ):
        torch.library.opcheck(op, args)

    def f(x: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
        return ops.vq_search(x * 2, cb) + 1

    x, cb = torch.randn(4, 6, 8), torch.randn(50, 8)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x, cb), f(x, cb))


def test_dac_style_stage_matches_plain_pytorch() -> None:
    # The example of docs/ops_vq.md ("DAC/SNAC-style stages"), checked against
    # the usual normalise + matmul + argmax formulation.
    torch.manual_seed(0)
    dim, code_dim, k = 32, 8, 1024
    in_proj = torch.nn.Linear(dim, code_dim)
    out_proj = torch.nn.Linear(code_dim, dim)
    codebook = torch.randn(k, code_dim)
    h = torch.randn(2, 50, dim)  # [B, T, dim]

    z = in_proj(h)  # [B, T, code_dim]
    codes = ops.vq_search(z, codebook, metric="cosine")  # [B, T]
    z_q = codebook[codes]  # raw (unnormalised) codes, as DAC does
    out = out_proj(z_q)  # [B, T, dim]

    sim = F.normalize(z, dim=-1) @ F.normalize(codebook, dim=-1).t()
    assert torch.equal(codes, sim.argmax(-1))
    assert out.shape == h.shape


# ---------------------------------------------------------------------------
# PackedCodebook: packed once, the results of vq_search.
# ---------------------------------------------------------------------------


def assert_same_search(
    packed: PackedCodebook, x: torch.Tensor, cb: torch.Tensor, **kw: object
) -> None:
    got = packed.search(x, return_distance=True)
    want = ops.vq_search(x, cb, return_distance=True, **kw)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(packed.search(x), want[0])


@settings(max_examples=40)
@given(
    shape=shape_st(),
    dtype=st.sampled_from(DTYPES),
    style=st.sampled_from(["randn", "ints", "dups"]),
    options=st.sampled_from(["l2", "cosine", "norms", "normalized"]),
    seed=st.integers(0, 2**31),
)
def test_packed_codebook_matches_vq_search(
    shape: tuple[int, int, int], dtype: torch.dtype, style: str, options: str, seed: int
) -> None:
    n, k, d = shape
    x, cb = make_inputs(n, k, d, dtype, style, seed)
    kw: dict = {
        "l2": {},
        "cosine": {"metric": "cosine"},
        "norms": {"codebook_norms": sqnorm_seq(cb) + 1.5},
        "normalized": {"metric": "cosine", "normalized": True},
    }[options]
    assert_same_search(PackedCodebook(cb, **kw), x, cb, **kw)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 8, 33, 64, 65, 300])
def test_packed_codebook_small_batches(isa: str, n: int) -> None:
    # N = 1..64 is what the packed codebook is for: every ISA, 1 and 2 threads.
    x, cb = make_inputs(n, 5000, 8, torch.float32, "ints", seed=n)
    packed = PackedCodebook(cb)
    want = vq_search_reference(x, cb)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            got = packed.search(x, return_distance=True)
            assert torch.equal(got[0], want[0]), threads
            assert torch.equal(got[1], ops.vq_search(x, cb, return_distance=True)[1]), threads
        finally:
            torch.set_num_threads(2)
    xb = torch.randn(3, 8, n).transpose(1, 2)  # batched, non-contiguous
    assert torch.equal(packed.search(xb), ops.vq_search(xb, cb))


def test_packed_codebook_follows_in_place_changes() -> None:
    x = torch.randn(64, 8)
    cb = torch.randn(3000, 8)
    packed = PackedCodebook(cb)
    assert_same_search(packed, x, cb)
    cb.mul_(-1)  # in place: the version counter moves, the next call packs again
    assert_same_search(packed, x, cb)
    cb[7] = x[0]
    assert packed.search(x)[0] == 7
    cb.set_(torch.randn(3000, 8))  # new storage
    assert_same_search(packed, x, cb)
    # writes PyTorch never sees: the packed copy is stale until refresh()
    before = packed.search(x)
    cb.data[9] = x[1]
    cb.numpy()[11] = x[2].numpy()
    assert torch.equal(packed.search(x), before)
    packed.refresh()
    assert packed.search(x)[1] == 9 and packed.search(x)[2] == 11
    assert_same_search(packed, x, cb)
    # a trained codebook: optimizer steps update it in place
    emb = torch.nn.Embedding(500, 8)
    packed = PackedCodebook(emb.weight, metric="cosine")
    opt = torch.optim.SGD(emb.parameters(), lr=1.0)
    for _ in range(2):
        assert_same_search(packed, x, emb.weight, metric="cosine")
        emb.weight.grad = torch.randn_like(emb.weight)
        opt.step()
    # given norms are tracked too
    norms = sqnorm_seq(cb)
    packed = PackedCodebook(cb, codebook_norms=norms)
    assert_same_search(packed, x, cb, codebook_norms=norms)
    norms.zero_()
    assert_same_search(packed, x, cb, codebook_norms=norms)


def test_packed_codebook_reference_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    x, cb = torch.randn(20, 6), torch.randn(300, 6)
    packed = PackedCodebook(cb, metric="cosine")
    monkeypatch.setenv("LUMO_FORCE_REFERENCE", "1")
    assert_same_search(packed, x, cb, metric="cosine")
    assert_same_search(PackedCodebook(cb), x, cb)


def test_packed_codebook_on_each_device(device: str) -> None:
    x, cb = torch.randn(40, 8, device=device), torch.randn(700, 8, device=device)
    for kw in ({}, {"metric": "cosine"}):
        assert_same_search(PackedCodebook(cb, **kw), x, cb, **kw)


def test_packed_codebook_compiles() -> None:
    cb = torch.randn(50, 8)
    packed = PackedCodebook(cb)

    def f(x: torch.Tensor) -> torch.Tensor:
        return packed.search(x * 2) + 1

    x = torch.randn(4, 6, 8)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), f(x))


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (
            lambda: PackedCodebook([[1.0]]),
            TypeError,
            "PackedCodebook: expected codebook as a torch.Tensor",
        ),
        (lambda: PackedCodebook(torch.ones(5, 4, dtype=torch.int64)), TypeError, "got int64"),
        (
            lambda: PackedCodebook(torch.randn(5)),
            ValueError,
            r"shape \[K, D\] or \[Q, K, D\], got \(5,\)",
        ),
        (lambda: PackedCodebook(torch.randn(0, 4)), ValueError, "non-empty codebook"),
        (
            lambda: PackedCodebook(torch.randn(5, 4), metric="dot"),
            ValueError,
            "metric 'l2' or 'cosine'",
        ),
        (
            lambda: PackedCodebook(
                torch.randn(5, 4), metric="cosine", codebook_norms=torch.ones(5)
            ),
            ValueError,
            "'l2' only",
        ),
        (
            lambda: PackedCodebook(torch.randn(5, 4), codebook_norms=torch.ones(4)),
            ValueError,
            r"shape \[5\]",
        ),
        (
            lambda: PackedCodebook(
                torch.randn(5, 4), codebook_norms=torch.tensor([1.0, 2, float("nan"), 1, 1])
            ),
            ValueError,
            "inf/NaN in codebook_norms row 2",
        ),
        (
            lambda: PackedCodebook(torch.randn(2, 5, 4), metric="cosine"),
            ValueError,
            "are for rvq_encode",
        ),
        (lambda: PackedCodebook(torch.randn(2, 0, 4)), ValueError, "Q, K, D >= 1"),
        (
            lambda: PackedCodebook(torch.randn(5, 4)).search(torch.randn(3, 5)),
            ValueError,
            r"x \[\.\.\., 4\]",
        ),
        (
            lambda: PackedCodebook(torch.randn(5, 4)).search(torch.randn(3, 4).half()),
            TypeError,
            "expected codebook of dtype float16 .the dtype of x., got float32",
        ),
        (
            lambda: PackedCodebook(torch.randn(5, 4)).search(torch.randn(3, 4, device="meta")),
            ValueError,
            "expected codebook on meta",
        ),
        (lambda: PackedCodebook(torch.randn(5, 4)).search("x"), TypeError, "x as a torch.Tensor"),
        (
            lambda: PackedCodebook(torch.randn(2, 5, 4)).search(torch.randn(3, 4)),
            ValueError,
            "use rvq_encode",
        ),
        (
            lambda: PackedCodebook(torch.randn(5, 4)).rvq_encode(torch.randn(3, 4)),
            ValueError,
            "use search",
        ),
    ],
)
def test_packed_codebook_bad_input(make: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_packed_codebook_non_finite_and_overflow(bad: float) -> None:
    cb = torch.randn(40, 4)
    cb[33, 2] = bad
    with pytest.raises(
        ValueError, match="PackedCodebook: expected finite values, got inf/NaN in codebook row 33"
    ):
        PackedCodebook(cb)
    cb[33, 2] = 0.0
    packed = PackedCodebook(cb)
    x = torch.randn(2, 3, 4)
    x[1, 0, 3] = bad
    with pytest.raises(
        ValueError, match="vq_search: expected finite values, got inf/NaN in x row 3"
    ):
        packed.search(x)
    cb[21, 0] = bad  # seen at the next call, which packs again
    with pytest.raises(ValueError, match="codebook row 21"):
        packed.search(x[0])
    big = PackedCodebook(torch.full((3, 4), -1e20))
    with pytest.raises(ValueError, match="overflow fp32 for row 0"):
        big.search(torch.full((2, 4), 1e20))


# ---------------------------------------------------------------------------
# CUDA: the CPU kernel is the oracle.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t)[6:])
@pytest.mark.parametrize(
    "shape",
    [(1, 1, 1), (37, 1000, 4), (513, 4097, 8), (300, 700, 130), (2, 20000, 8), (4096, 64, 256)],
)
def test_cuda_matches_cpu(
    cuda_device: str, dtype: torch.dtype, shape: tuple[int, int, int]
) -> None:
    n, k, d = shape
    for style in ("randn", "ints", "dups"):
        x, cb = make_inputs(n, k, d, dtype, style, seed=k)
        want = ops.vq_search(x, cb, return_distance=True)
        got = ops.vq_search(x.to(cuda_device), cb.to(cuda_device), return_distance=True)
        assert torch.equal(got[0].cpu(), want[0]), style
        assert torch.equal(got[1].cpu(), want[1]), style
        # cosine: normalise once on the CPU (F.normalize's own rounding differs
        # between devices), so that both kernels see the same inputs
        xn, cbn = F.normalize(x.float(), dim=-1), F.normalize(cb.float(), dim=-1)
        want = ops.vq_search(xn, cbn, metric="cosine", normalized=True)
        got = ops.vq_search(
            xn.to(cuda_device), cbn.to(cuda_device), metric="cosine", normalized=True
        )
        assert torch.equal(got.cpu(), want), style
    again = ops.vq_search(x.to(cuda_device), cb.to(cuda_device))
    assert torch.equal(again, ops.vq_search(x.to(cuda_device), cb.to(cuda_device)))


def test_cuda_errors_and_empty(cuda_device: str) -> None:
    cb = torch.randn(6, 4, device=cuda_device)
    assert ops.vq_search(torch.empty(0, 4, device=cuda_device), cb).shape == (0,)
    with pytest.raises(ValueError, match="expected codebook on"):
        ops.vq_search(torch.randn(3, 4), cb)
    x = torch.randn(3, 4, device=cuda_device)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match="x row 2"):
        ops.vq_search(x, cb)
