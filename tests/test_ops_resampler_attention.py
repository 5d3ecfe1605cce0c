"""resampler_attention: kernels vs the reference, gradients, determinism, errors, opcheck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lumo_uti.ops import _native, resampler_attention
from lumo_uti.ops.resampler_attention import (
    _bwd_op,
    _fwd_op,
    resampler_attention_backward_reference,
    resampler_attention_reference,
)

needs_cpu_kernel = pytest.mark.skipif(_native.cpu() is None, reason="CPU kernels not built")

TOL = {
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
    torch.float16: dict(atol=4e-3, rtol=4e-3),
}


def make_inputs(B, Hq, Hkv, L, N, D, dtype, *, mask_kind="pad", device="cpu", noncontig=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def t(*shape):
        if noncontig:  # same values, transposed storage
            x = torch.randn(*shape[:-2], shape[-1], shape[-2], generator=g).transpose(-1, -2)
        else:
            x = torch.randn(*shape, generator=g)
        return x.to(dtype).to(device)

    q, kc, vc = t(B, Hq, L, D), t(B, Hkv, N, D), t(B, Hkv, N, D)
    kl, vl = t(B, Hkv, L, D), t(B, Hkv, L, D)
    if mask_kind == "none":
        mask = None
    elif mask_kind == "pad":  # a real prefix per sample, padding after it
        lengths = torch.randint(0, N + 1, (B,), generator=g)
        mask = (torch.arange(N)[None, :] < lengths[:, None]).to(device)
    else:
        mask = (torch.rand(B, N, generator=g) < 0.7).to(device)
    return q, kc, vc, kl, vl, mask


def naive(q, kc, vc, kl, vl, mask, scale=None):
    """What a user would write: concatenated keys and SDPA (fp32)."""
    group = q.shape[1] // kc.shape[1]
    k = torch.cat([kc, kl], 2).float().repeat_interleave(group, 1)
    v = torch.cat([vc, vl], 2).float().repeat_interleave(group, 1)
    attn_mask = None
    if mask is not None:
        keep = torch.cat([mask, mask.new_ones(mask.shape[0], kl.shape[2])], 1)
        attn_mask = keep[:, None, None, :]
    return F.scaled_dot_product_attention(q.float(), k, v, attn_mask=attn_mask, scale=scale).to(q.dtype)


def grads(fn, inputs, go):
    ins = [x.detach().clone().requires_grad_(True) for x in inputs[:5]]
    out = fn(*ins, inputs[5])
    return (out, *torch.autograd.grad(out, ins, go))


def test_reference_equals_sdpa_on_concatenated_keys():
    inputs = make_inputs(2, 6, 2, 5, 9, 16, torch.float32, mask_kind="random")
    out_ref, lse = resampler_attention_reference(*inputs)
    torch.testing.assert_close(out_ref, naive(*inputs), atol=1e-5, rtol=1e-5)
    assert lse.shape == (2, 6, 5) and lse.dtype == torch.float32


def test_closed_form_backward_equals_autograd_of_reference():
    inputs = make_inputs(2, 4, 2, 6, 11, 24, torch.float32, mask_kind="pad")
    go = torch.randn(2, 4, 6, 24)
    want = grads(lambda *a: resampler_attention_reference(*a)[0], inputs, go)[1:]
    out, lse = resampler_attention_reference(*inputs)
    got = resampler_attention_backward_reference(go, *inputs, out, lse, 24 ** -0.5)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


@needs_cpu_kernel
@settings(max_examples=30)
@given(
    B=st.integers(1, 3), Hkv=st.integers(1, 3), group=st.sampled_from([1, 2, 4]), L=st.integers(1, 12),
    N=st.one_of(st.integers(0, 40), st.integers(300, 1000)), D=st.integers(32, 128),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    mask_kind=st.sampled_from(["none", "pad", "random"]), noncontig=st.booleans(), seed=st.integers(0, 2**16),
)
def test_cpu_kernel_matches_reference_forward_and_grads(B, Hkv, group, L, N, D, dtype, mask_kind, noncontig, seed):
    inputs = make_inputs(B, Hkv * group, Hkv, L, N, D, dtype, mask_kind=mask_kind, noncontig=noncontig, seed=seed)
    go = torch.randn(B, Hkv * group, L, D, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    got = grads(resampler_attention, inputs, go)
    want = grads(lambda *a: resampler_attention_reference(*a)[0], inputs, go)
    for name, g, w in zip(("out", "dq", "dk_ctx", "dv_ctx", "dk_lat", "dv_lat"), got, want):
        assert g.dtype == dtype and g.shape == w.shape, name
        # Gradients sum over up to N*group terms: scale the tolerance with their size.
        scale = max(1.0, float(w.detach().float().abs().amax())) if w.numel() else 1.0
        torch.testing.assert_close(g.float(), w.float(), atol=TOL[dtype]["atol"] * scale, rtol=TOL[dtype]["rtol"],
                                   msg=lambda m: f"{name}: {m}")


@needs_cpu_kernel
def test_empty_context_and_fully_masked_context_attend_latents_only():
    q, kc, vc, kl, vl, _ = make_inputs(2, 4, 2, 3, 0, 32, torch.float32)
    out = resampler_attention(q, kc, vc, kl, vl, torch.zeros(2, 0, dtype=torch.bool))
    # N = 0 equals attention over the latents alone.
    k_only = make_inputs(2, 4, 2, 3, 5, 32, torch.float32)
    torch.testing.assert_close(out, naive(q, kc, vc, kl, vl, None), atol=1e-5, rtol=1e-5)
    qq, kc5, vc5, kl5, vl5, _ = k_only
    masked = resampler_attention(qq, kc5, vc5, kl5, vl5, torch.zeros(2, 5, dtype=torch.bool))
    torch.testing.assert_close(masked, naive(qq, kc5[:, :, :0], vc5[:, :, :0], kl5, vl5, None), atol=1e-5, rtol=1e-5)
    # A masked context position gets no gradient.
    ins = [x.clone().requires_grad_(True) for x in k_only[:5]]
    mask = torch.tensor([[True, False, True, False, False], [False] * 5])
    resampler_attention(*ins, mask).sum().backward()
    assert torch.all(ins[1].grad[0, :, 1] == 0) and torch.all(ins[2].grad[1] == 0)
    assert torch.any(ins[1].grad[0, :, 0] != 0)


@needs_cpu_kernel
def test_custom_scale():
    inputs = make_inputs(1, 2, 1, 4, 7, 32, torch.float32)
    torch.testing.assert_close(resampler_attention(*inputs, scale=0.3), naive(*inputs, scale=0.3), atol=1e-5, rtol=1e-5)


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_deterministic_across_runs_threads_and_batch(dtype):
    inputs = make_inputs(3, 8, 2, 16, 300, 64, dtype, mask_kind="pad", seed=3)
    go = torch.randn(3, 8, 16, 64).to(dtype)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3, 1):
            torch.set_num_threads(threads)
            results.append(grads(resampler_attention, inputs, go))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
    # Sample 1 alone gives the same bits as inside the batch.
    alone = grads(resampler_attention, [x[1:2] for x in inputs], go[1:2])
    for a, b in zip(results[0], alone):
        assert torch.equal(a[1:2], b)


def test_force_reference_env(monkeypatch):
    inputs = make_inputs(2, 4, 2, 5, 9, 32, torch.float32, mask_kind="random")
    monkeypatch.setenv("LUMO_FORCE_REFERENCE", "1")
    out = resampler_attention(*inputs)
    assert torch.equal(out, resampler_attention_reference(*inputs)[0])


def test_bad_inputs():
    q, kc, vc, kl, vl, mask = make_inputs(2, 4, 2, 3, 5, 8, torch.float32)
    with pytest.raises(ValueError, match=r"Hq=4 to be a multiple of Hkv"):
        resampler_attention(q, kc[:, :1].repeat(1, 3, 1, 1), vc[:, :1].repeat(1, 3, 1, 1),
                            kl[:, :1].repeat(1, 3, 1, 1), vl[:, :1].repeat(1, 3, 1, 1))
    with pytest.raises(TypeError, match="expected k_ctx of dtype float32"):
        resampler_attention(q, kc.half(), vc, kl, vl)
    with pytest.raises(TypeError, match="expected q of dtype float32, float16 or bfloat16, got float64"):
        resampler_attention(q.double(), kc, vc, kl, vl)
    with pytest.raises(ValueError, match="expected 4-D q"):
        resampler_attention(q[0], kc, vc, kl, vl)
    with pytest.raises(ValueError, match=r"expected v_ctx of shape \(2, 2, 5, 8\)"):
        resampler_attention(q, kc, vc[:, :, :4], kl, vl)
    with pytest.raises(ValueError, match=r"expected k_lat of shape \(2, 2, 3, 8\)"):
        resampler_attention(q, kc, vc, kl[:, :, :2], vl)
    with pytest.raises(TypeError, match="expected a bool ctx_mask, got int64"):
        resampler_attention(q, kc, vc, kl, vl, mask.long())
    with pytest.raises(ValueError, match=r"expected ctx_mask of shape \(2, 5\)"):
        resampler_attention(q, kc, vc, kl, vl, mask[:, :4])
    with pytest.raises(ValueError, match="expected a finite float scale"):
        resampler_attention(q, kc, vc, kl, vl, scale=float("nan"))
    with pytest.raises(TypeError, match="expected q as a torch.Tensor"):
        resampler_attention(q.numpy(), kc, vc, kl, vl)
    with pytest.raises(ValueError, match="expected v_lat on cpu"):
        resampler_attention(q, kc, vc, kl, vl.to("meta"))


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_head_dim_zero_is_an_error_on_every_backend(monkeypatch, backend):
    # D = 0 has no default scale (D ** -0.5) and nothing to attend with.
    if backend == "reference":
        monkeypatch.setenv("LUMO_FORCE_REFERENCE", "1")
    q, kc, vc, kl, vl, mask = make_inputs(1, 2, 1, 3, 4, 0, torch.float32)
    match = r"^resampler_attention: expected head dim D >= 1, got q of shape \(1, 2, 3, 0\)$"
    for scale in (None, 1.0):
        with pytest.raises(ValueError, match=match):
            resampler_attention(q, kc, vc, kl, vl, mask, scale=scale)
    with pytest.raises(ValueError, match=match):
        _fwd_op(q, kc, vc, kl, vl, mask, 1.0)


# Where one NaN (or inf) is planted by nan_case, and what it reaches in the reference.
NAN_CASES = ["q", "k_ctx", "k_ctx_first_32", "k_ctx_all", "k_ctx_masked", "v_ctx", "v_ctx_masked", "k_lat",
             "v_lat", "scores_all_-inf"]


def nan_case(where, D, dtype, seed=0):
    """Inputs (B=2, Hq=4, Hkv=2, L=5, N=40, a random mask with key 3 masked and key 4
    real) with NaN planted; "k_ctx_first_32": in the first 32 context keys of a KV
    head (a whole first tile of the CUDA kernels), "k_ctx_all": in all of them;
    "scores_all_-inf": an infinite query element whose every score is -inf (the
    reference's probabilities are then NaN too)."""
    q, kc, vc, kl, vl, mask = make_inputs(2, 4, 2, 5, 40, D, dtype, mask_kind="random", seed=seed)
    mask[:, 3], mask[:, 4] = False, True
    nan = float("nan")
    if where == "q":
        q[1, 2, 3, D // 2] = nan
    elif where == "k_ctx":
        kc[0, 1, 4, 0] = nan
    elif where == "k_ctx_first_32":
        kc[1, 0, :32, 1] = nan
    elif where == "k_ctx_all":
        kc[1, 1, :, 0] = nan
    elif where == "k_ctx_masked":
        kc[0, 1, 3, 0] = nan
    elif where == "v_ctx":
        vc[1, 0, 4, D - 1] = nan
    elif where == "v_ctx_masked":
        vc[1, 0, 3, D - 1] = nan
    elif where == "k_lat":
        kl[1, 1, 2, 0] = nan
    elif where == "v_lat":
        vl[0, 0, 0, 0] = nan
    else:  # query row (0, 1, 2) reads kv head 0: every key of it negative along dim 0
        q[0, 1, 2, 0] = float("inf")
        kc[0, 0, :, 0] = -1.0 - kc[0, 0, :, 0].abs()
        kl[0, 0, :, 0] = -1.0 - kl[0, 0, :, 0].abs()
    return q, kc, vc, kl, vl, mask


def assert_same_nans(got, want, tol, what):
    """got is NaN exactly where want is, and close to it elsewhere."""
    assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN positions differ"
    keep = ~want.isnan()
    size = max(1.0, float(want[keep].float().abs().amax())) if keep.any() else 1.0
    torch.testing.assert_close(got[keep].float(), want[keep].float(), atol=tol["atol"] * size,
                               rtol=tol["rtol"], msg=lambda m: f"{what}: {m}")


def check_nan_propagation(where, D, dtype):
    """The public op (forward and backward) against the reference, NaN positions included."""
    inputs = nan_case(where, D, dtype)
    scale = D ** -0.5
    leaves = [t.clone().requires_grad_(True) for t in inputs[:5]]
    out = resampler_attention(*leaves, inputs[5])
    want_out, want_lse = resampler_attention_reference(*inputs, scale)
    assert want_out.isnan().any() or where == "k_ctx_masked"  # a masked key is never read
    assert_same_nans(out.detach(), want_out, TOL[dtype], "out")
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    out.backward(go)
    want = resampler_attention_backward_reference(go, *inputs, want_out, want_lse, scale)
    for name, leaf, w in zip(["q", "k_ctx", "v_ctx", "k_lat", "v_lat"], leaves, want):
        assert_same_nans(leaf.grad, w, TOL[dtype], name)


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("where", NAN_CASES)
def test_nan_propagates_as_in_the_reference(where, dtype):
    check_nan_propagation(where, 24, dtype)


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        ins = [mode.from_tensor(x) for x in make_inputs(2, 4, 2, 3, 5, 8, torch.bfloat16)]
        out, lse = _fwd_op(*ins, 0.5)
        assert out.shape == (2, 4, 3, 8) and out.dtype == torch.bfloat16
        assert lse.shape == (2, 4, 3) and lse.dtype == torch.float32


@pytest.mark.parametrize("mask_kind", ["none", "pad"])
def test_opcheck(mask_kind):
    q, kc, vc, kl, vl, mask = make_inputs(2, 4, 2, 3, 5, 8, torch.float32, mask_kind=mask_kind)
    ins = [x.requires_grad_(True) for x in (q, kc, vc, kl, vl)]
    torch.library.opcheck(_fwd_op, (*ins, mask, 8 ** -0.5))
    out, lse = _fwd_op(*[x.detach() for x in ins], mask, 8 ** -0.5)
    torch.library.opcheck(_bwd_op, (torch.randn_like(out), q.detach(), kc.detach(), vc.detach(), kl.detach(),
                                    vl.detach(), mask, out, lse, 8 ** -0.5))


def test_torch_compile_fullgraph():
    inputs = make_inputs(2, 4, 2, 3, 5, 16, torch.float32, mask_kind="pad")
    compiled = torch.compile(lambda *a: resampler_attention(*a) * 2, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(*inputs), resampler_attention(*inputs) * 2)


# -- CUDA: the CPU kernel is the oracle ---------------------------------------------------


@settings(max_examples=20)
@given(
    B=st.integers(1, 3), Hkv=st.integers(1, 3), group=st.sampled_from([1, 2, 4]), L=st.integers(1, 70),
    N=st.one_of(st.integers(0, 40), st.integers(300, 1000)), D=st.integers(32, 128),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    mask_kind=st.sampled_from(["none", "pad", "random"]), seed=st.integers(0, 2**16),
)
def test_cuda_kernel_matches_cpu_kernel(cuda_device, B, Hkv, group, L, N, D, dtype, mask_kind, seed):
    inputs = make_inputs(B, Hkv * group, Hkv, L, N, D, dtype, mask_kind=mask_kind, seed=seed)
    go = torch.randn(B, Hkv * group, L, D, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    want = grads(resampler_attention, inputs, go)
    got = grads(resampler_attention, [None if x is None else x.to(cuda_device) for x in inputs], go.to(cuda_device))
    for name, g, w in zip(("out", "dq", "dk_ctx", "dv_ctx", "dk_lat", "dv_lat"), got, want):
        scale = max(1.0, float(w.detach().float().abs().amax())) if w.numel() else 1.0
        torch.testing.assert_close(g.cpu().float(), w.float(), atol=TOL[dtype]["atol"] * scale,
                                   rtol=TOL[dtype]["rtol"], msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_deterministic(cuda_device, dtype):
    inputs = [None if x is None else x.to(cuda_device)
              for x in make_inputs(4, 16, 4, 64, 729, 96, dtype, mask_kind="pad", seed=5)]
    go = torch.randn(4, 16, 64, 96, device=cuda_device).to(dtype)
    first = grads(resampler_attention, inputs, go)
    for _ in range(2):
        for a, b in zip(first, grads(resampler_attention, inputs, go)):
            assert torch.equal(a, b)


# -- CPU instruction sets, odd shapes, thread splits ----------------------------------------

ISA_NAMES = {1: "scalar", 2: "avx2", 3: "avx512"}


def cpu_isas() -> list[str]:
    module = _native.cpu()
    if module is None:
        return []
    mask = module.resampler_attn_isa_mask()
    return [name for bit, name in ISA_NAMES.items() if mask >> bit & 1]


@needs_cpu_kernel
@pytest.mark.parametrize("isa", list(ISA_NAMES.values()))
@pytest.mark.parametrize(
    "shape",
    [(2, 4, 2, 5, 9, 24), (1, 16, 4, 64, 729, 96), (2, 6, 3, 7, 0, 33), (2, 4, 1, 3, 130, 100), (1, 3, 1, 69, 65, 17)],
    ids=lambda s: "B{}_Hq{}_Hkv{}_L{}_N{}_D{}".format(*s),
)
def test_every_isa_matches_reference_and_auto_bits(monkeypatch, isa, shape):
    if isa not in cpu_isas():
        pytest.skip(f"this CPU has no {isa}")
    B, Hq, Hkv, L, N, D = shape
    for dtype, mask_kind in ((torch.float32, "pad"), (torch.bfloat16, "random")):
        inputs = make_inputs(B, Hq, Hkv, L, N, D, dtype, mask_kind=mask_kind, seed=7)
        go = torch.randn(B, Hq, L, D, generator=torch.Generator().manual_seed(8)).to(dtype)
        auto = grads(resampler_attention, inputs, go)
        monkeypatch.setenv("LUMO_RESAMPLER_ISA", isa)
        got = grads(resampler_attention, inputs, go)
        monkeypatch.delenv("LUMO_RESAMPLER_ISA")
        want = grads(lambda *a: resampler_attention_reference(*a)[0], inputs, go)
        for name, g, a, w in zip(("out", "dq", "dk_ctx", "dv_ctx", "dk_lat", "dv_lat"), got, auto, want):
            assert torch.equal(g, a), f"{isa} {name}: every ISA gives the same bits"
            scale = max(1.0, float(w.detach().float().abs().amax())) if w.numel() else 1.0
            torch.testing.assert_close(g.float(), w.float(), atol=TOL[dtype]["atol"] * scale, rtol=TOL[dtype]["rtol"],
                                       msg=lambda m: f"{isa} {name}: {m}")


def test_bad_isa_env(monkeypatch):
    monkeypatch.setenv("LUMO_RESAMPLER_ISA", "sse9")
    inputs = make_inputs(1, 2, 1, 3, 4, 8, torch.float32)
    if _native.cpu() is None:
        pytest.skip("CPU kernels not built")
    with pytest.raises(ValueError, match="LUMO_RESAMPLER_ISA: expected one of auto, scalar, avx2, avx512"):
        resampler_attention(*inputs)


@needs_cpu_kernel
def test_fully_masked_rows_and_padding_gradients():
    # Sample 0 fully masked, sample 1 masked in the middle; N and L not multiples of the tiles.
    q, kc, vc, kl, vl, _ = make_inputs(2, 6, 2, 67, 130, 40, torch.float32, seed=11)
    mask = torch.ones(2, 130, dtype=torch.bool)
    mask[0] = False
    mask[1, 50:90] = False
    go = torch.randn(2, 6, 67, 40, generator=torch.Generator().manual_seed(12))
    got = grads(resampler_attention, (q, kc, vc, kl, vl, mask), go)
    want = grads(lambda *a: resampler_attention_reference(*a)[0], (q, kc, vc, kl, vl, mask), go)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    assert torch.all(got[2][0] == 0) and torch.all(got[3][0] == 0)  # dk_ctx, dv_ctx of masked sample
    assert torch.all(got[2][1, :, 50:90] == 0) and torch.all(got[3][1, :, 50:90] == 0)


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_row_block_split_is_thread_invariant(dtype):
    # One (batch, kv head) pair with several 64-row blocks: the forward splits
    # its row blocks over the threads; the bits must not change.
    inputs = make_inputs(1, 8, 1, 40, 200, 48, dtype, mask_kind="pad", seed=13)
    go = torch.randn(1, 8, 40, 48, generator=torch.Generator().manual_seed(14)).to(dtype)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3, 5):
            torch.set_num_threads(threads)
            results.append(grads(resampler_attention, inputs, go))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


# -- thread split: dynamic items, backward row halves, concurrent callers --------------------


def _half_split_case(dtype=torch.float32):
    # 3 pairs of 5 row blocks each (rows = 8 x 40): the backward splits each
    # pair's rows into two halves (2 + 3 blocks) whose dK/dV partials are added.
    inputs = make_inputs(3, 8, 1, 40, 200, 48, dtype, mask_kind="pad", seed=21)
    go = torch.randn(3, 8, 40, 48, generator=torch.Generator().manual_seed(22)).to(dtype)
    return inputs, go


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_backward_halves_same_bits_whichever_half_finishes_first(dtype):
    inputs, go = _half_split_case(dtype)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want = grads(resampler_attention, inputs, go)
        got = []
        for threads in (2, 3, 4):
            torch.set_num_threads(threads)
            got += [grads(resampler_attention, inputs, go) for _ in range(8)]
    finally:
        torch.set_num_threads(before)
    for other in got:
        for a, b in zip(want, other):
            assert torch.equal(a, b)
    # Sample 2 alone (its halves on an idle pool) gives the same bits as in the batch.
    alone = grads(resampler_attention, [x[2:3] for x in inputs], go[2:3])
    for a, b in zip(want, alone):
        assert torch.equal(a[2:3], b)


@needs_cpu_kernel
def test_concurrent_callers_get_the_same_bits():
    # A caller that finds the pool busy runs its items on its own thread.
    import threading

    inputs, go = _half_split_case()
    want = grads(resampler_attention, inputs, go)
    results, errors = [], []

    def work():
        try:
            for _ in range(4):
                results.append(grads(resampler_attention, inputs, go))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        torch.set_num_threads(before)
    assert not errors and len(results) == 12
    for other in results:
        for a, b in zip(want, other):
            assert torch.equal(a, b)
