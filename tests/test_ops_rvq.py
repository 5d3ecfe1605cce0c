"""lumo_uti.ops.rvq_encode / rvq_decode: kernels vs the reference, vs Hugging Face EnCodec, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lumo_uti.ops as ops
from lumo_uti.ops import _native
from lumo_uti.ops.vq import PackedCodebook
from lumo_uti.ops.reference import rvq_decode_reference, rvq_encode_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BUDGET = 2_000_000  # N * K * D * Q of one example: keeps the reference fast


@st.composite
def rvq_shape_st(draw: st.DrawFn) -> tuple[int, int, int, int]:
    q = draw(st.integers(1, 32))
    d = draw(st.sampled_from([1, 2, 3, 8, 16, 33, 128, 256, 512]))
    k = draw(st.integers(1, max(1, min(40000, BUDGET // (q * d)))))
    n = draw(st.integers(0, max(0, min(5000, BUDGET // (q * d * k)))))
    return n, k, d, q


@settings(max_examples=30)
@given(
    shape=rvq_shape_st(),
    dtype=st.sampled_from(DTYPES),
    ints=st.booleans(),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_encode_decode_match_reference(
    shape: tuple[int, int, int, int], dtype: torch.dtype, ints: bool, seed: int, data: st.DataObject
) -> None:
    n, k, d, q = shape
    g = torch.Generator().manual_seed(seed)
    if ints:  # small integers: exact ties in every stage
        cbs = torch.randint(-2, 3, (q, k, d), generator=g).to(dtype)
        x = torch.randint(-3, 4, (n, d), generator=g).to(dtype)
    else:
        cbs = (torch.randn(q, k, d, generator=g) / torch.arange(1, q + 1)[:, None, None]).to(dtype)
        x = torch.randn(n, d, generator=g).to(dtype)
    n_q = data.draw(st.integers(1, q))
    codes = ops.rvq_encode(x, cbs, n_q=n_q)
    assert codes.shape == (n, n_q) and codes.dtype == torch.int64
    assert torch.equal(codes, rvq_encode_reference(x, cbs, n_q))
    out = ops.rvq_decode(codes, cbs)
    assert out.dtype == dtype and out.shape == (n, d)
    assert torch.equal(out, rvq_decode_reference(codes, cbs))


def test_encode_equals_stagewise_vq_search() -> None:
    x, cbs = torch.randn(300, 16), torch.randn(6, 256, 16)
    residual, want = x.clone(), []
    for q in range(6):
        code = ops.vq_search(residual, cbs[q])
        want.append(code)
        residual = residual - cbs[q][code]
    codes = ops.rvq_encode(x, cbs)
    assert torch.equal(codes, torch.stack(want, dim=1))
    # decode(encode(x)) is x minus the last residual
    torch.testing.assert_close(ops.rvq_decode(codes, cbs), x - residual, rtol=0, atol=1e-5)


@pytest.mark.parametrize("num_quantizers", [2, 8])
def test_encode_equals_hf_encodec_quantizer(num_quantizers: int) -> None:
    transformers = pytest.importorskip("transformers")
    # frame_rate = 400 / (2 * 2) = 100 Hz and 6 bits per code: 0.6 kbps per quantizer.
    config = transformers.EncodecConfig(
        codebook_size=64,
        codebook_dim=16,
        hidden_size=16,
        num_filters=4,
        num_residual_layers=1,
        upsampling_ratios=[2, 2],
        target_bandwidths=[0.6 * num_quantizers + 0.01],
        sampling_rate=400,
    )
    assert config.num_quantizers == num_quantizers
    model = transformers.EncodecModel(config).eval()
    quantizer = model.quantizer
    torch.manual_seed(0)
    for layer in quantizer.layers:  # random codebooks (a fresh model has zeros)
        layer.codebook.embed.copy_(torch.randn_like(layer.codebook.embed))
    q_total = len(quantizer.layers)
    codebooks = torch.stack([layer.codebook.embed for layer in quantizer.layers])  # [Q, K, D]
    emb = torch.randn(2, 16, 75)  # [B, D, T], the layout EnCodec's quantizer takes
    with torch.no_grad():
        hf_codes = quantizer.encode(emb)  # [Q, B, T]
        hf_decoded = quantizer.decode(hf_codes)  # [B, D, T]
    ours = ops.rvq_encode(emb.transpose(1, 2), codebooks)  # [B, T, Q]
    assert hf_codes.shape[0] == q_total
    assert torch.equal(ours.permute(2, 0, 1), hf_codes)
    torch.testing.assert_close(
        ops.rvq_decode(ours, codebooks).transpose(1, 2), hf_decoded, rtol=0, atol=1e-5
    )


def test_batched_non_contiguous_and_int32_codes() -> None:
    cbs = torch.randn(40, 4, 128).permute(1, 0, 2)  # [4, 40, 128], non-contiguous
    x = torch.randn(3, 128, 11).transpose(1, 2)  # [3, 11, 128]
    codes = ops.rvq_encode(x, cbs, n_q=3)
    assert codes.shape == (3, 11, 3)
    assert torch.equal(codes.reshape(-1, 3), rvq_encode_reference(x.reshape(-1, 128), cbs, 3))
    out = ops.rvq_decode(codes.to(torch.int32)[..., :2], cbs)
    assert out.shape == (3, 11, 128)
    assert torch.equal(
        out, rvq_decode_reference(codes.reshape(-1, 3)[:, :2], cbs).reshape(3, 11, 128)
    )
    assert torch.equal(ops.rvq_decode(codes[..., :0], cbs), torch.zeros(3, 11, 128))


def test_deterministic_across_threads_and_splits() -> None:
    x, cbs = torch.randn(700, 32), torch.randn(8, 512, 32)
    torch.set_num_threads(1)
    one = ops.rvq_encode(x, cbs)
    torch.set_num_threads(2)
    assert torch.equal(one, ops.rvq_encode(x, cbs))
    assert torch.equal(one, torch.cat([ops.rvq_encode(x[:65], cbs), ops.rvq_encode(x[65:], cbs)]))
    assert torch.equal(ops.rvq_decode(one, cbs), ops.rvq_decode(one, cbs))


@pytest.mark.parametrize("n", [1, 50, 130])
def test_few_rows_split_over_code_tiles_matches_reference(n: int) -> None:
    # Few rows and a large codebook take the path that splits code tiles
    # between threads and packs one stage at a time.
    x, cbs = torch.randn(n, 48), torch.randn(6, 2048, 48)
    want = rvq_encode_reference(x, cbs, 6)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        assert torch.equal(ops.rvq_encode(x, cbs), want), threads
    bad = cbs.clone()
    bad[4, 7, 1] = float("nan")
    with pytest.raises(ValueError, match="codebooks row 8199"):
        ops.rvq_encode(x, bad)


def test_every_isa(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _native.cpu()
    if module is None:
        pytest.skip(f"CPU kernels not built ({_native.cpu_reason()})")
    x, cbs = torch.randn(200, 24).half(), torch.randn(5, 300, 24).half()
    want = rvq_encode_reference(x, cbs, 5)
    for bit, name in ((1, "scalar"), (2, "avx2"), (3, "avx512")):
        if module.vq_isa_mask() >> bit & 1:
            monkeypatch.setenv("LUMO_VQ_ISA", name)
            assert torch.equal(ops.rvq_encode(x, cbs), want), name


def test_empty() -> None:
    cbs = torch.randn(3, 10, 4)
    assert ops.rvq_encode(torch.empty(0, 4), cbs).shape == (0, 3)
    assert ops.rvq_encode(torch.empty(5, 0, 4), cbs, n_q=2).shape == (5, 0, 2)
    assert ops.rvq_decode(torch.empty(0, 3, dtype=torch.int64), cbs).shape == (0, 4)


@pytest.mark.parametrize("bad", [-1, 10, 2**40])
def test_decode_out_of_range_names_row_and_stage(bad: int) -> None:
    cbs = torch.randn(3, 10, 4)
    codes = torch.zeros(2, 4, 3, dtype=torch.int64)
    codes[1, 2, 1] = bad
    with pytest.raises(ValueError, match=rf"codes in \[0, 10\), got {bad} at row 6, stage 1"):
        ops.rvq_decode(codes, cbs)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (
            lambda: ops.rvq_encode(torch.randn(3, 4), torch.randn(2, 5, 3)),
            ValueError,
            r"expected x \[\.\.\., 3\]",
        ),
        (lambda: ops.rvq_encode(torch.randn(3, 4), torch.randn(5, 4)), ValueError, r"\[Q, K, D\]"),
        (
            lambda: ops.rvq_encode(torch.randn(3, 4), torch.randn(2, 0, 4)),
            ValueError,
            "Q, K, D >= 1",
        ),
        (
            lambda: ops.rvq_encode(torch.randn(3, 4), torch.randn(2, 5, 4), n_q=3),
            ValueError,
            "1 <= n_q <= 2",
        ),
        (
            lambda: ops.rvq_encode(torch.randn(3, 4), torch.randn(2, 5, 4), n_q=0),
            ValueError,
            "n_q=0",
        ),
        (
            lambda: ops.rvq_encode(torch.randn(3, 4), torch.randn(2, 5, 4), n_q=1.0),
            TypeError,
            "n_q as an int",
        ),
        (
            lambda: ops.rvq_encode(torch.randn(3, 4), torch.randn(2, 5, 4).bfloat16()),
            TypeError,
            "got bfloat16",
        ),
        (
            lambda: ops.rvq_encode(torch.randn(3, 4), torch.randn(2, 5, 4, device="meta")),
            ValueError,
            "on cpu",
        ),
        (
            lambda: ops.rvq_decode(torch.zeros(3, 2), torch.randn(2, 5, 4)),
            TypeError,
            "int32 or int64 codes, got float32",
        ),
        (
            lambda: ops.rvq_decode(torch.zeros(3, 3, dtype=torch.int64), torch.randn(2, 5, 4)),
            ValueError,
            "q <= 2",
        ),
        (
            lambda: ops.rvq_decode(
                torch.zeros(3, 2, dtype=torch.int64), torch.randn(2, 5, 4, device="meta")
            ),
            ValueError,
            "on cpu",
        ),
    ],
)
def test_bad_input(call: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        call()


def test_non_finite_names_the_row() -> None:
    x, cbs = torch.randn(4, 8), torch.randn(2, 6, 8)
    x[3, 0] = float("nan")
    with pytest.raises(ValueError, match="x row 3"):
        ops.rvq_encode(x, cbs)
    cbs[1, 2, 5] = float("inf")
    with pytest.raises(ValueError, match="codebooks row 8"):
        ops.rvq_encode(x[:3], cbs)


def test_opcheck_and_compile() -> None:
    cbs = torch.randn(3, 20, 6)
    torch.library.opcheck(torch.ops.lumo_uti.rvq_encode.default, (torch.randn(7, 6), cbs, 2))
    torch.library.opcheck(
        torch.ops.lumo_uti.rvq_encode.default, (torch.randn(7, 6).half(), cbs.half(), 3)
    )
    torch.library.opcheck(
        torch.ops.lumo_uti.rvq_decode.default, (torch.randint(0, 20, (7, 3)), cbs)
    )
    torch.library.opcheck(
        torch.ops.lumo_uti.rvq_decode.default,
        (torch.randint(0, 20, (7, 2), dtype=torch.int32), cbs.bfloat16()),
    )

    def roundtrip(x: torch.Tensor, cbs: torch.Tensor) -> torch.Tensor:
        return ops.rvq_decode(ops.rvq_encode(x, cbs), cbs)

    x = torch.randn(2, 9, 6)
    compiled = torch.compile(roundtrip, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x, cbs), roundtrip(x, cbs))


# ---------------------------------------------------------------------------
# PackedCodebook [Q, K, D]: packed once, the results of rvq_encode.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 25, 50, 130, 700])
def test_packed_codebooks_match_rvq_encode(n: int) -> None:
    # few rows split the code tiles between threads (a barrier per stage);
    # many rows split the rows
    x, cbs = torch.randn(n, 48), torch.randn(6, 2048, 48) / torch.arange(1, 7)[:, None, None]
    packed = PackedCodebook(cbs)
    want = rvq_encode_reference(x, cbs, 6)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            assert torch.equal(packed.rvq_encode(x), want), threads
            assert torch.equal(packed.rvq_encode(x, n_q=2), want[:, :2]), threads
        finally:
            torch.set_num_threads(2)
    xb = torch.randn(2, 48, n).transpose(1, 2)  # [2, n, 48], non-contiguous
    assert torch.equal(packed.rvq_encode(xb, n_q=3), ops.rvq_encode(xb, cbs, n_q=3))


@settings(max_examples=20)
@given(
    shape=rvq_shape_st(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31), data=st.data()
)
def test_packed_codebooks_match_rvq_encode_any_shape(
    shape: tuple[int, int, int, int], dtype: torch.dtype, seed: int, data: st.DataObject
) -> None:
    n, k, d, q = shape
    g = torch.Generator().manual_seed(seed)
    cbs = torch.randint(-2, 3, (q, k, d), generator=g).to(dtype)  # exact ties in every stage
    x = torch.randint(-3, 4, (n, d), generator=g).to(dtype)
    n_q = data.draw(st.integers(1, q))
    assert torch.equal(PackedCodebook(cbs).rvq_encode(x, n_q=n_q), ops.rvq_encode(x, cbs, n_q=n_q))


def test_packed_codebooks_follow_in_place_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    x, cbs = torch.randn(50, 32), torch.randn(4, 1024, 32)
    packed = PackedCodebook(cbs)
    assert torch.equal(packed.rvq_encode(x), ops.rvq_encode(x, cbs))
    cbs[2].mul_(0.25)
    assert torch.equal(packed.rvq_encode(x), ops.rvq_encode(x, cbs))
    cbs[0, 5] = x[3]
    assert packed.rvq_encode(x)[3, 0] == 5
    cbs.data[1].zero_()  # not seen until refresh()
    stale = packed.rvq_encode(x)
    assert not torch.equal(stale, ops.rvq_encode(x, cbs))
    packed.refresh()
    assert torch.equal(packed.rvq_encode(x), ops.rvq_encode(x, cbs))
    monkeypatch.setenv("LUMO_FORCE_REFERENCE", "1")
    assert torch.equal(packed.rvq_encode(x), rvq_encode_reference(x, cbs, 4))


def test_packed_codebooks_bad_input() -> None:
    cbs = torch.randn(3, 20, 8)
    cbs[2, 7, 1] = float("inf")
    with pytest.raises(
        ValueError, match="PackedCodebook: expected finite values, got inf/NaN in codebooks row 47"
    ):
        PackedCodebook(cbs)
    cbs[2, 7, 1] = 0.0
    packed = PackedCodebook(cbs)
    with pytest.raises(ValueError, match="1 <= n_q <= 3"):
        packed.rvq_encode(torch.randn(4, 8), n_q=4)
    with pytest.raises(TypeError, match="n_q as an int"):
        packed.rvq_encode(torch.randn(4, 8), n_q=2.0)
    with pytest.raises(ValueError, match=r"expected x \[\.\.\., 8\]"):
        packed.rvq_encode(torch.randn(4, 7))
    with pytest.raises(TypeError, match="got float32"):
        packed.rvq_encode(torch.randn(4, 8).bfloat16())
    x = torch.randn(5, 8)
    x[4, 2] = float("nan")
    with pytest.raises(
        ValueError, match="rvq_encode: expected finite values, got inf/NaN in x row 4"
    ):
        packed.rvq_encode(x)
    assert packed.rvq_encode(torch.empty(0, 8), n_q=2).shape == (0, 2)


# ---------------------------------------------------------------------------
# CUDA: the CPU kernel is the oracle.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t)[6:])
@pytest.mark.parametrize(
    "shape",
    [(1, 1, 1, 1), (300, 1024, 128, 8), (4500, 1024, 128, 4), (77, 2048, 256, 8), (5, 40, 3, 32)],
)
def test_cuda_matches_cpu(
    cuda_device: str, dtype: torch.dtype, shape: tuple[int, int, int, int]
) -> None:
    n, k, d, q = shape
    x = torch.randn(n, d).to(dtype)
    cbs = (torch.randn(q, k, d) / torch.arange(1, q + 1)[:, None, None]).to(dtype)
    want = ops.rvq_encode(x, cbs)
    got = ops.rvq_encode(x.to(cuda_device), cbs.to(cuda_device))
    assert torch.equal(got.cpu(), want)
    assert torch.equal(ops.rvq_decode(got, cbs.to(cuda_device)).cpu(), ops.rvq_decode(want, cbs))
    bad = want.clone().to(cuda_device)
    bad[0, 0] = k
    with pytest.raises(ValueError, match="at row 0, stage 0"):
        ops.rvq_decode(bad, cbs.to(cuda_device))
