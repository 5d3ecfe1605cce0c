"""The CUDA kernels, run on the CPU by the SIMT emulator, against the references.

``tests/simt_build.py`` compiles the real ``csrc/ops/*/cuda.cu`` kernels and bindings as
C++ over ``tests/simt/simt.h`` (every CUDA thread a fiber, barriers and warp
shuffles emulated, threads run in forward, reverse or random order). The
``on_simt`` fixture points the ops' CUDA paths (the module and the stream) at
that build, so the public ops run their CUDA branch, front included, on CPU
tensors. This checks indexing, tiling, code-range splits, barriers, shuffle
trees and tie rules on machines without a GPU; it says nothing about speed.
The same tests on a real GPU are the ``cuda`` cases of the op tests.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import simt_build
from test_ops_resampler_attention import NAN_CASES, check_nan_propagation
from lumo_uti import ops
from lumo_uti.ops import _abi, _native
from lumo_uti.ops.reference import classify_ids_reference
from lumo_uti.ops.resampler_attention import (
    resampler_attention_backward_reference,
    resampler_attention_reference,
)

# The package re-exports functions under some module names: look the modules up.
rowmask_mod = importlib.import_module("lumo_uti.ops.rowmask")
token_range_mod = importlib.import_module("lumo_uti.ops.token_range")

FLOATS = [torch.float32, torch.float16, torch.bfloat16]
SCHEDULES = st.sampled_from([0, 1, 2])  # forward, reverse, random thread order


@pytest.fixture(scope="module")
def simt_module():
    try:
        return simt_build.load()
    except simt_build.SimtUnavailable as e:
        pytest.skip(f"SIMT emulator unavailable: {e}")


@pytest.fixture
def on_simt(simt_module, monkeypatch):
    """Route the CUDA paths of the ops to the emulator, for CPU tensors."""
    monkeypatch.delenv("LUMO_FORCE_REFERENCE", raising=False)
    monkeypatch.setattr(_native, "queue", lambda device: (0, 0))
    monkeypatch.setattr(_native, "cuda", lambda: simt_module)
    monkeypatch.setattr(_abi, "module", lambda device: simt_module)
    simt_module.simt_configure(0, 0, 132)
    yield simt_module
    simt_module.simt_configure(0, 0, 132)


def _reference(monkeypatch, fn, *args, **kwargs):
    with monkeypatch.context() as m:
        m.setenv("LUMO_FORCE_REFERENCE", "1")
        return fn(*args, **kwargs)


def test_emulator_identifies_itself(on_simt):
    assert on_simt.simt is True
    assert on_simt.build_info()["cuda_status"].startswith("built: SIMT")
    assert on_simt.device_count() == 1


# ---------------------------------------------------------------------------
# VQ: search, RVQ encode / decode (csrc/ops/vq/cuda.cu).
# ---------------------------------------------------------------------------


@settings(max_examples=60)
@given(
    n=st.integers(0, 200),
    k=st.integers(1, 600),
    d=st.integers(1, 40),
    dtype=st.sampled_from(FLOATS),
    metric=st.sampled_from(["l2", "l2-norms", "cosine"]),
    schedule=SCHEDULES,
    seed=st.integers(0, 2**32 - 1),
    sm_count=st.sampled_from([1, 5, 132]),
)
def test_vq_search_matches_reference(on_simt, monkeypatch, n, k, d, dtype, metric, schedule, seed, sm_count):
    # sm_count changes how many code-range splits the search uses (1 .. 64).
    on_simt.simt_configure(schedule, seed, sm_count)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(dtype)
    cb = torch.randn(k, d, generator=g).to(dtype)
    kwargs: dict = dict(return_distance=True)
    if metric == "cosine":
        kwargs["metric"] = "cosine"
    elif metric == "l2-norms":
        kwargs["codebook_norms"] = (cb.float() ** 2).sum(-1) + 0.25
    codes, dist = ops.vq_search(x, cb, **kwargs)
    want_codes, want_dist = _reference(monkeypatch, ops.vq_search, x, cb, **kwargs)
    assert torch.equal(codes, want_codes)
    assert torch.equal(dist, want_dist)


@pytest.mark.parametrize("schedule", [0, 1, 2])
@pytest.mark.parametrize("d", [3, 8, 17])
def test_vq_search_ties_go_to_lowest_index_across_splits(on_simt, monkeypatch, schedule, d):
    # 6 distinct codes, each repeated in every 64-code tile and in every split.
    on_simt.simt_configure(schedule, 7, 132)
    base = torch.randn(6, d)
    cb = base.repeat(300, 1)  # K = 1800: 29 tiles, several splits
    x = torch.cat([base, base + 1e-3, torch.randn(40, d)])
    codes = ops.vq_search(x, cb)
    want = _reference(monkeypatch, ops.vq_search, x, cb)
    assert torch.equal(codes, want)
    assert torch.equal(codes[:6], torch.arange(6))


@pytest.mark.parametrize("dtype", FLOATS)
def test_vq_search_batched_non_contiguous(on_simt, monkeypatch, dtype):
    x = torch.randn(3, 40, 9).to(dtype).transpose(0, 1)[:, :, ::2]  # [40, 3, 5], strided
    cb = torch.randn(10, 77).to(dtype).t()[:70]  # [70, 10] -> take [70, 5] below
    cb = cb[:, :5]
    codes = ops.vq_search(x, cb)
    assert codes.shape == (40, 3)
    assert torch.equal(codes, _reference(monkeypatch, ops.vq_search, x, cb))


@settings(max_examples=40)
@given(
    n=st.integers(0, 120),
    k=st.integers(1, 300),
    d=st.integers(1, 24),
    q=st.integers(1, 6),
    dtype=st.sampled_from(FLOATS),
    schedule=SCHEDULES,
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_rvq_encode_decode_match_reference(on_simt, monkeypatch, n, k, d, q, dtype, schedule, seed, data):
    on_simt.simt_configure(schedule, seed, data.draw(st.sampled_from([1, 3, 132])))
    n_q = data.draw(st.integers(1, q))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(dtype)
    cbs = (torch.randn(q, k, d, generator=g) * torch.logspace(0, -1, q)[:, None, None]).to(dtype)
    codes = ops.rvq_encode(x, cbs, n_q=n_q)
    assert torch.equal(codes, _reference(monkeypatch, ops.rvq_encode, x, cbs, n_q=n_q))
    for index_dtype in (torch.int64, torch.int32):
        c = codes.to(index_dtype)
        out = ops.rvq_decode(c, cbs)
        assert torch.equal(out, _reference(monkeypatch, ops.rvq_decode, c, cbs))


@pytest.mark.parametrize("dtype", FLOATS)
def test_vq_search_large_k_and_d(on_simt, monkeypatch, dtype):
    # 13 d-chunks of 16, 47 code tiles, one split and several.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 200, generator=g).to(dtype)
    cb = torch.randn(3000, 200, generator=g).to(dtype)
    cb[2500] = cb[7]  # a duplicate far from its twin
    x[0] = cb[7]
    for sm_count in (1, 132):
        on_simt.simt_configure(0, 0, sm_count)
        codes, dist = ops.vq_search(x, cb, return_distance=True)
        want_codes, want_dist = _reference(monkeypatch, ops.vq_search, x, cb, return_distance=True)
        assert torch.equal(codes, want_codes) and torch.equal(dist, want_dist)
        assert codes[0] == 7


def test_rvq_encode_32_stages(on_simt, monkeypatch):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 16, generator=g)
    cbs = torch.randn(32, 64, 16, generator=g) * torch.logspace(0, -2, 32)[:, None, None]
    codes = ops.rvq_encode(x, cbs)
    assert codes.shape == (50, 32)
    assert torch.equal(codes, _reference(monkeypatch, ops.rvq_encode, x, cbs))


def test_rvq_decode_reports_out_of_range_code(on_simt):
    cbs = torch.randn(2, 5, 3)
    codes = torch.tensor([[0, 1], [4, 5]])
    with pytest.raises(ValueError, match=r"\[0, 5\), got 5 at row 1, stage 1"):
        ops.rvq_decode(codes, cbs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_cuda_path_errors_name_the_row(on_simt, bad):
    # The CUDA branch of the front checks finiteness before its kernels and
    # overflow after them; the messages match the CPU kernel's.
    x, cb = torch.randn(2, 3, 4), torch.randn(6, 4)
    x[1, 1, 2] = bad
    with pytest.raises(ValueError, match="inf/NaN in x row 4"):
        ops.vq_search(x, cb)
    cb[5, 0] = bad
    with pytest.raises(ValueError, match="codebook row 5"):
        ops.vq_search(x[0], cb)
    xr, cbs = torch.randn(4, 8), torch.randn(2, 6, 8)
    xr[3, 0] = bad
    with pytest.raises(ValueError, match="x row 3"):
        ops.rvq_encode(xr, cbs)
    cbs[1, 2, 5] = bad
    with pytest.raises(ValueError, match="codebooks row 8"):
        ops.rvq_encode(xr[:3], cbs)


def test_cuda_path_overflow_is_an_error(on_simt):
    x, cb = torch.full((2, 4), 1e20), torch.full((3, 4), -1e20)
    with pytest.raises(ValueError, match="overflow fp32 for row 0"):
        ops.vq_search(x, cb)
    # A finite score, but the returned distance sqnorm(x) + score overflows.
    x[0], cb = 1.0, torch.zeros(3, 4)
    with pytest.raises(ValueError, match="overflow fp32 for row 1"):
        ops.vq_search(x, cb, return_distance=True)


def test_vq_kernel_argument_errors(on_simt):
    x = torch.randn(4, 3)
    cb = torch.randn(5, 3)
    scratch = torch.empty(64 * 4)
    idx = torch.empty(64 * 4, dtype=torch.int32)
    codes = torch.empty(4, dtype=torch.int64)
    best = torch.empty(4)
    cn = torch.empty(5)

    def call(k=5, splits=1, x_dtype=0, norms=0, n=4, cb=cb, cn=cn):
        buf = _native.buffer
        on_simt.vq_search(buf(x), x_dtype, n, 3, buf(cb), 0, k, norms, buf(cn), buf(codes), buf(best),
                          buf(scratch[: splits * n]), buf(idx[: splits * n]), splits, 0, 0)

    call()
    assert torch.equal(codes, torch.cdist(x, cb).argmin(1))
    with pytest.raises(ValueError, match="k >= 1"):
        call(k=0, cb=cb[:0], cn=cn[:0])
    with pytest.raises(ValueError, match="splits"):
        call(splits=0)
    with pytest.raises(ValueError, match="dtype"):
        call(x_dtype=7)
    with pytest.raises(ValueError, match="norms"):
        call(norms=3)
    # Sizes that disagree with the buffers: an error before any kernel runs.
    with pytest.raises(ValueError, match=r"expected cb of k \* d = 18 elements, got 15"):
        call(k=6, cn=torch.empty(6))
    with pytest.raises(ValueError, match=r"expected x of n \* d = 15 elements, got 12"):
        call(n=5)
    with pytest.raises(ValueError, match=r"expected cn of k = 5 elements, got 4"):
        call(cn=cn[:4])


# ---------------------------------------------------------------------------
# Resampler cross-attention (csrc/ops/resampler_attention/cuda.cu).
# ---------------------------------------------------------------------------

TOL = {
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
    torch.float16: dict(atol=4e-3, rtol=4e-3),
}


def _attention_inputs(g, B, Hq, Hkv, L, N, D, dtype):
    def t(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    return t(B, Hq, L, D), t(B, Hkv, N, D), t(B, Hkv, N, D), t(B, Hkv, L, D), t(B, Hkv, L, D)


@settings(max_examples=30)
@given(
    B=st.integers(1, 2),
    Hkv=st.integers(1, 2),
    group=st.integers(1, 3),
    L=st.integers(1, 9),
    N=st.integers(0, 70),
    D=st.sampled_from([1, 8, 32, 33, 64, 96, 128, 160]),  # <= 128: tiled kernels
    dtype=st.sampled_from(FLOATS),
    masked=st.sampled_from(["none", "random", "one-row-empty"]),
    schedule=SCHEDULES,
    seed=st.integers(0, 2**32 - 1),
)
def test_resampler_attention_forward_backward_match_reference(
    on_simt, B, Hkv, group, L, N, D, dtype, masked, schedule, seed
):
    on_simt.simt_configure(schedule, seed, 132)
    g = torch.Generator().manual_seed(seed)
    Hq = Hkv * group
    inputs = _attention_inputs(g, B, Hq, Hkv, L, N, D, dtype)
    mask = None
    if masked != "none":
        mask = torch.rand(B, N, generator=g) < 0.7
        if masked == "one-row-empty":
            mask[0] = False
    scale = D**-0.5
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    out = ops.resampler_attention(*leaves, mask)
    grad_out = torch.randn(out.shape, generator=g).to(dtype)
    out.backward(grad_out)

    want_out, want_lse = resampler_attention_reference(*inputs, mask, scale)
    tol = TOL[dtype]
    torch.testing.assert_close(out.float(), want_out.float(), **tol)
    want_grads = resampler_attention_backward_reference(grad_out, *inputs, mask, want_out, want_lse, scale)
    # Gradients sum over up to N + L terms: scale the tolerance with their size.
    for name, leaf, want in zip(["q", "k_ctx", "v_ctx", "k_lat", "v_lat"], leaves, want_grads):
        size = max(1.0, float(want.float().abs().amax())) if want.numel() else 1.0
        torch.testing.assert_close(leaf.grad.float(), want.float(), atol=tol["atol"] * size, rtol=tol["rtol"],
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_resampler_attention_lse_and_masked_keys(on_simt):
    # Masked context keys get exactly zero gradients; a fully masked context
    # still attends to the latents.
    g = torch.Generator().manual_seed(3)
    q, kc, vc, kl, vl = _attention_inputs(g, 2, 4, 2, 5, 33, 40, torch.float32)
    mask = torch.rand(2, 33, generator=g) < 0.5
    mask[1] = False
    leaves = [t.clone().requires_grad_(True) for t in (q, kc, vc, kl, vl)]
    out = ops.resampler_attention(*leaves, mask)
    out.sum().backward()
    assert torch.all(leaves[1].grad.transpose(1, 2)[~mask] == 0)
    assert torch.all(leaves[2].grad.transpose(1, 2)[~mask] == 0)
    want, _ = resampler_attention_reference(q, kc, vc, kl, vl, mask, 40**-0.5)
    torch.testing.assert_close(out, want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("where", NAN_CASES)
@pytest.mark.parametrize("D", [40, 160], ids=["tiled", "rowwise"])
def test_resampler_attention_nan_propagates_as_in_the_reference(on_simt, where, D):
    # A NaN query used to give zeros (the max over its scores skipped NaN);
    # masked keys' NaN values now reach the row-wise kernels' sums too.
    on_simt.simt_configure(2, 5, 132)
    check_nan_propagation(where, D, torch.float32)


def test_resampler_attention_head_dim_zero_is_an_error(on_simt):
    q, kv, lat = torch.randn(1, 2, 3, 0), torch.randn(1, 1, 4, 0), torch.randn(1, 1, 3, 0)
    with pytest.raises(ValueError, match=r"expected head dim D >= 1"):
        ops.resampler_attention(q, kv, kv, lat, lat)


# ---------------------------------------------------------------------------
# Row-masked embedding gradient and token classification (rowmask.cu, token_range.cu).
# ---------------------------------------------------------------------------


@settings(max_examples=30)
@given(
    n=st.integers(0, 300),
    dim=st.integers(1, 300),
    num_rows=st.integers(1, 40),
    row_start=st.integers(0, 20),
    dtype=st.sampled_from(FLOATS),
    strided=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_rowmask_segment_reduce_matches_reference(on_simt, n, dim, num_rows, row_start, dtype, strided, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, row_start + num_rows + 10, (n,), generator=g)
    wide = torch.randn(n, dim + (7 if strided else 0), generator=g).to(dtype)
    grad = wide[:, :dim]  # a row-strided view when strided
    got = rowmask_mod._cuda(ids, grad, row_start, num_rows)
    want = rowmask_mod.rowmask_embedding_backward_reference(ids, grad, row_start, num_rows)
    # Both sum each row's hits in ascending position order in fp32.
    assert torch.equal(got, want.to(got.dtype))


@settings(max_examples=30)
@given(
    n=st.integers(0, 2000),
    bounds=st.sets(st.integers(0, 1000), min_size=1, max_size=9),
    itemsize=st.sampled_from([torch.int32, torch.int64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_classify_ids_matches_reference(on_simt, n, bounds, itemsize, seed):
    g = torch.Generator().manual_seed(seed)
    boundaries = torch.tensor(sorted(bounds), dtype=torch.int64)
    ids = torch.randint(-5, 1100, (n,), generator=g).to(itemsize)
    got = token_range_mod._classify_cuda(ids, boundaries)
    assert torch.equal(got, classify_ids_reference(ids, boundaries))


# ---------------------------------------------------------------------------
# The emulator itself: it must catch what it exists to catch.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", [0, 1, 2])
def test_emulator_block_reduction_and_missing_barrier(on_simt, schedule):
    on_simt.simt_configure(schedule, 11, 132)
    x = torch.arange(256, dtype=torch.float32)
    assert on_simt.selftest_block_sum(x.data_ptr(), True) == float(x.sum())
    if schedule == 0:  # other orders may happen to run every store before the reads
        # Thread 0 runs to the first barrier alone and reads s[128], which
        # nobody wrote yet (shared memory is NaN-filled for every block): the
        # missing barrier shows as a wrong sum, not as a lucky race.
        assert math.isnan(on_simt.selftest_block_sum(x.data_ptr(), False))


def test_emulator_reports_deadlock(on_simt):
    out = torch.zeros(64, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="deadlock"):
        on_simt.selftest_divergent_barrier(out.data_ptr())


def test_emulator_shuffles_and_early_exit(on_simt):
    a, b, c = (torch.zeros(64, dtype=torch.int32) for _ in range(3))
    on_simt.selftest_shuffles(a.data_ptr(), b.data_ptr(), c.data_ptr())
    lane = torch.arange(64) % 32
    values = (lane * 7) % 32
    halves = values.reshape(4, 16).amax(1).repeat_interleave(16)
    assert torch.equal(a.long(), halves)
    tid = torch.arange(64)
    assert torch.equal(b.long(), torch.where(lane + 3 < 32, tid + 3, tid))
    assert torch.equal(c.long(), (tid // 32 * 32 + 5) * 10)
    out = torch.zeros(64, dtype=torch.int32)
    on_simt.selftest_early_exit(out.data_ptr())
    assert torch.equal(out.long(), 63 - torch.arange(64))


def test_emulator_rejects_bad_launch_configuration(on_simt):
    with pytest.raises(RuntimeError, match="cudaErrorInvalidConfiguration"):
        on_simt.selftest_oversized_block()


def test_emulator_reports_shared_memory_overrun(on_simt):
    with pytest.raises(RuntimeError, match=r"wrote outside its 128 bytes of dynamic shared memory"):
        on_simt.selftest_smem_overrun()


@pytest.mark.parametrize("D", [96, 200])  # tiled and row-wise kernels
def test_resampler_attention_bits_do_not_depend_on_thread_order(on_simt, D):
    g = torch.Generator().manual_seed(5)
    inputs = _attention_inputs(g, 2, 4, 2, 20, 45, D, torch.float32)
    mask = torch.rand(2, 45, generator=g) < 0.8
    grad_out = torch.randn(2, 4, 20, D, generator=g)
    results = []
    for schedule in (0, 1, 2):
        on_simt.simt_configure(schedule, 99, 132)
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        out = ops.resampler_attention(*leaves, mask)
        out.backward(grad_out)
        results.append([out.detach(), *(leaf.grad for leaf in leaves)])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
    want, _ = resampler_attention_reference(*inputs, mask, D**-0.5)
    torch.testing.assert_close(results[0][0], want, atol=2e-5, rtol=1e-4)
