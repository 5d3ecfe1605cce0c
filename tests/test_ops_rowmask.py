"""lumo_uti.ops.rowmask_embedding_backward: kernels vs reference vs dense embedding backward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import lumo_uti.ops as ops
from lumo_uti.ops import _native, rowmask
from lumo_uti.ops._native import buffer
from lumo_uti.ops.rowmask import rowmask_embedding_backward_reference as reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def cpu_kernel() -> object:
    module = _native.cpu()
    if module is None:
        pytest.skip(f"CPU kernels not built ({_native.cpu_reason()})")
    return module


def dense_oracle(ids: torch.Tensor, grad: torch.Tensor, row_start: int, num_rows: int) -> torch.Tensor:
    """torch's own full-table embedding backward (fp64), sliced to the block."""
    table = torch.zeros(max(1, row_start + num_rows), grad.shape[-1], dtype=torch.float64, requires_grad=True)
    keep = (ids >= 0) & (ids < row_start + num_rows)
    out = F.embedding(torch.where(keep, ids.long(), 0), table)
    out.backward(grad.double() * keep.unsqueeze(-1))
    return table.grad[row_start : row_start + num_rows].float()


# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------


@st.composite
def case_st(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(ids, grad_out, row_start, num_rows), covering empty, none/all new, repeats, odd layouts."""
    row_start = draw(st.sampled_from([0, 1, 5, 100, 151936]))
    num_rows = draw(st.integers(0, 40))
    dim = draw(st.sampled_from([0, 1, 3, 8, 17, 64]))
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=ndim, max_size=ndim)))
    kind = draw(st.sampled_from(["mixed", "none_new", "all_new", "one_row", "wide"]))
    lo, hi = {
        "mixed": (max(0, row_start - 5), row_start + num_rows + 5),
        "none_new": (0, row_start) if row_start else (num_rows, num_rows + 10),
        "all_new": (row_start, row_start + max(num_rows, 1)),
        "one_row": (row_start, row_start + 1),
        "wide": (0, 200_000),
    }[kind]
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(lo, max(hi, lo + 1), shape, generator=g)
    if kind == "all_new" and num_rows == 0:
        num_rows = 1
    id_dtype = draw(st.sampled_from([torch.int64, torch.int32, torch.int16]))
    if id_dtype == torch.int16:
        ids = ids.clamp(max=2**15 - 1)
    ids = ids.to(id_dtype)
    dtype = draw(st.sampled_from(DTYPES))
    grad = torch.randn(*shape, dim, generator=g).to(dtype)
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided", "expanded"]))
    if layout == "transposed" and ndim >= 2:
        ids = ids.transpose(0, 1).contiguous().transpose(0, 1)
        grad = grad.transpose(0, 1).contiguous().transpose(0, 1)
    elif layout == "strided":
        wide = torch.randn(*shape, dim * 2 + 1, generator=g).to(dtype)
        wide[..., 1 : 2 * dim + 1 : 2] = grad
        grad = wide[..., 1 : 2 * dim + 1 : 2]
        ids = torch.stack([ids, ids], -1)[..., 0]
    elif layout == "expanded" and ndim >= 1 and shape[0] > 0:
        # Row stride 0: every row of the batch reads the same gradient memory.
        grad = grad[:1].expand(shape[0], *grad.shape[1:])
    return ids, grad, row_start, num_rows


# ---------------------------------------------------------------------------
# Correctness
# ---------------------------------------------------------------------------


@given(case=case_st())
def test_matches_reference_exactly_and_dense_oracle(device: str, case) -> None:
    ids, grad, row_start, num_rows = case
    ids, grad = ids.to(device), grad.to(device)
    out = ops.rowmask_embedding_backward(ids, grad, row_start, num_rows)
    assert out.shape == (num_rows, grad.shape[-1]) and out.dtype == torch.float32
    assert out.device.type == device
    # Same summation order (ascending position per row, fp32): bit-identical.
    torch.testing.assert_close(out, reference(ids, grad, row_start, num_rows), rtol=0, atol=0)
    torch.testing.assert_close(out.cpu(), dense_oracle(ids.cpu(), grad.cpu(), row_start, num_rows), rtol=1e-5, atol=1e-5)


@given(case=case_st())
@settings(max_examples=30)
def test_cpu_kernel_direct_equals_reference(case) -> None:
    module = cpu_kernel()
    ids, grad, row_start, num_rows = case
    flat_ids = ids.reshape(-1).to(torch.int64).contiguous()
    g = grad.reshape(ids.numel(), grad.shape[-1]).contiguous()
    out = torch.full((num_rows, g.shape[1]), float("nan"))
    module.rowmask_embedding_backward(
        buffer(flat_ids), 8, flat_ids.numel(), buffer(g), _CODE[g.dtype], g.shape[1], g.shape[1],
        row_start, num_rows, buffer(out), 1,
    )
    torch.testing.assert_close(out, reference(ids, grad, row_start, num_rows), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_special_values_and_half_conversions(device: str, dtype) -> None:
    """Subnormals, infinities, NaN and extremes of each dtype convert exactly to fp32."""
    if dtype == torch.float16:
        vals = [0.0, -0.0, 6e-8, -6e-8, 1e-5, 65504.0, -65504.0, float("inf"), float("-inf"), 1.0, -2.5]
    else:
        info = torch.finfo(dtype)
        vals = [0.0, -0.0, info.tiny, -info.tiny, info.max, -info.max, float("inf"), float("-inf"), 1.0, -2.5, 1e-40]
    g = torch.tensor(vals, dtype=dtype).reshape(-1, 1).to(device)
    ids = torch.arange(len(vals), device=device)
    out = ops.rowmask_embedding_backward(ids, g, 0, len(vals))
    assert torch.equal(out.cpu(), g.cpu().float())
    nan = ops.rowmask_embedding_backward(torch.zeros(1, dtype=torch.long, device=device), torch.full((1, 2), float("nan"), dtype=dtype, device=device), 0, 1)
    assert torch.isnan(nan).all()


def test_empty_and_degenerate(device: str) -> None:
    empty = ops.rowmask_embedding_backward(torch.empty(0, dtype=torch.long, device=device), torch.empty(0, 4, device=device), 10, 3)
    assert torch.equal(empty.cpu(), torch.zeros(3, 4))
    none = ops.rowmask_embedding_backward(torch.arange(10, device=device), torch.ones(10, 4, device=device), 10, 3)
    assert torch.equal(none.cpu(), torch.zeros(3, 4))
    zero_rows = ops.rowmask_embedding_backward(torch.arange(10, device=device), torch.ones(10, 4, device=device), 0, 0)
    assert zero_rows.shape == (0, 4)
    zero_dim = ops.rowmask_embedding_backward(torch.arange(10, device=device), torch.ones(10, 0, device=device), 0, 5)
    assert zero_dim.shape == (5, 0)
    scalar = ops.rowmask_embedding_backward(torch.tensor(11, device=device), torch.arange(3.0, device=device), 10, 3)
    assert torch.equal(scalar.cpu(), torch.tensor([[0.0, 0, 0], [0, 1, 2], [0, 0, 0]]))


def test_repeated_ids_sum_in_position_order(device: str) -> None:
    """Many hits on one row: fp32 sum in ascending position order, exactly."""
    n = 5000
    g = torch.randn(n, 7) * torch.logspace(-6, 6, n).unsqueeze(1)
    ids = torch.full((n,), 42)
    out = ops.rowmask_embedding_backward(ids.to(device), g.to(device), 40, 4).cpu()
    acc = torch.zeros(7)
    for i in range(n):
        acc = acc + g[i]
    assert torch.equal(out[2], acc)
    assert torch.equal(out[[0, 1, 3]], torch.zeros(3, 7))


# ---------------------------------------------------------------------------
# Determinism: runs, thread counts, batch composition
# ---------------------------------------------------------------------------


def _big_case() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(151000, 151936 + 600, (8192,), generator=g)
    ids[:2000] = 151936 + 3  # a hot row
    grad = torch.randn(8192, 96, generator=g).to(torch.bfloat16)
    return ids, grad


def test_deterministic_across_runs_and_thread_counts() -> None:
    module = cpu_kernel()
    ids, grad = _big_case()
    want = reference(ids, grad, 151936, 512)
    g = grad.contiguous()
    for threads in (1, 2, 3, 8, 0):
        out = torch.empty(512, 96)
        module.rowmask_embedding_backward(buffer(ids), 8, ids.numel(), buffer(g), 2, 96, 96, 151936, 512, buffer(out), threads)
        assert torch.equal(out, want), threads
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for _ in range(2):
                assert torch.equal(ops.rowmask_embedding_backward(ids, grad, 151936, 512), want)
    finally:
        torch.set_num_threads(old)


def test_other_positions_do_not_change_a_rows_bits(device: str) -> None:
    """Adding positions of other rows (a bigger batch) leaves each row's result unchanged."""
    ids, grad = _big_case()
    small = ops.rowmask_embedding_backward(ids[:3000].to(device), grad[:3000].to(device), 151936, 512)
    extra_ids = torch.cat([ids[:3000], torch.full((500,), 151936 + 511)])
    extra_grad = torch.cat([grad[:3000], torch.randn(500, 96).to(grad.dtype)])
    big = ops.rowmask_embedding_backward(extra_ids.to(device), extra_grad.to(device), 151936, 512)
    assert torch.equal(small[:511], big[:511])


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_bad_inputs_rejected(device: str) -> None:
    ids = torch.arange(4, device=device)
    g = torch.ones(4, 3, device=device)
    with pytest.raises(TypeError, match=r"^rowmask_embedding_backward: expected integer ids, got float32$"):
        ops.rowmask_embedding_backward(ids.float(), g, 0, 4)
    with pytest.raises(TypeError, match=r"expected grad_out of dtype float32, float16 or bfloat16, got float64"):
        ops.rowmask_embedding_backward(ids, g.double(), 0, 4)
    with pytest.raises(ValueError, match=r"expected grad_out of shape \[\*ids.shape, D\] = \[4, D\], got \(3, 3\)"):
        ops.rowmask_embedding_backward(ids, g[:3], 0, 4)
    with pytest.raises(ValueError, match=r"expected row_start >= 0, got -1"):
        ops.rowmask_embedding_backward(ids, g, -1, 4)
    with pytest.raises(ValueError, match=r"expected num_rows >= 0, got -2"):
        ops.rowmask_embedding_backward(ids, g, 0, -2)
    with pytest.raises(TypeError, match=r"expected num_rows as an int, got float"):
        ops.rowmask_embedding_backward(ids, g, 0, 2.0)
    with pytest.raises(ValueError, match=r"expected row_start \+ num_rows within int64"):
        ops.rowmask_embedding_backward(ids, g, 2**62, 2**62)
    with pytest.raises(ValueError, match=r"expected grad_out on .* \(the device of ids\), got meta"):
        ops.rowmask_embedding_backward(ids, torch.ones(4, 3, device="meta"), 0, 4)
    with pytest.raises(TypeError, match=r"expected ids and grad_out as torch.Tensor, got list"):
        ops.rowmask_embedding_backward([1, 2], g, 0, 4)


def test_native_checks_sizes_and_pointers() -> None:
    """The C++ side re-checks what it is given: ValueError / IndexError, never a crash."""
    module = cpu_kernel()
    ids = torch.arange(4)
    g = torch.ones(4, 3)
    out = torch.empty(4, 3)
    args = dict(ids=buffer(ids), ids_itemsize=8, n=4, grad=buffer(g), dtype=0, dim=3,
                grad_row_stride=3, row_start=0, num_rows=4, out=buffer(out), num_threads=1)
    for key, bad, msg in [
        ("n", -1, r"^rowmask_embedding_backward: expected n >= 0, got -1$"),
        ("ids_itemsize", 2, r"expected ids_itemsize 4 \(int32\) or 8 \(int64\), got 2"),
        ("dtype", 5, r"expected dtype 0 \(float32\), 1 \(float16\) or 2 \(bfloat16\), got 5"),
        ("grad_row_stride", 2, r"expected grad_row_stride >= dim, got 2"),
        ("num_threads", -1, r"expected num_threads >= 0, got -1"),
        ("out", (0, 12), r"expected a non-null out pointer"),
        ("grad", (0, 12), r"expected a non-null grad pointer"),
        # Sizes that disagree with the buffers they describe.
        ("n", 5, r"expected ids of n = 5 elements, got 4"),
        ("num_rows", 5, r"expected out of num_rows \* dim = 15 elements, got 12"),
        ("grad_row_stride", 4, r"expected grad of \(n - 1\) \* grad_row_stride \+ dim = 15 elements, got 12"),
        ("grad", (g.data_ptr(), 11), r"expected grad of .* = 12 elements, got 11"),
    ]:
        with pytest.raises(ValueError, match=msg):
            module.rowmask_embedding_backward(**{**args, key: bad})
    with pytest.raises(IndexError, match=r"expected sizes whose product num_rows \* dim fits int64"):
        module.rowmask_embedding_backward(**{**args, "num_rows": 2**62})
    with pytest.raises(IndexError, match=r"expected row_start \+ num_rows within int64"):
        module.rowmask_embedding_backward(
            **{**args, "grad": (0, 0), "dim": 0, "out": (0, 0), "row_start": 2**62, "num_rows": 2**62}
        )


# ---------------------------------------------------------------------------
# torch.library, backends, autograd use
# ---------------------------------------------------------------------------


def test_opcheck(device: str) -> None:
    base = torch.randint(0, 30, (5, 6), device=device)
    samples = [
        (base, torch.randn(5, 6, 4, device=device), 10, 12),
        (base.t(), torch.randn(6, 5, 4, device=device).to(torch.bfloat16), 0, 30),
        (base[:, ::2].int(), torch.randn(5, 3, 2, device=device).half(), 25, 3),
        (torch.empty(0, dtype=torch.long, device=device), torch.empty(0, 3, device=device), 0, 2),
    ]
    for args in samples:
        torch.library.opcheck(torch.ops.lumo_uti.rowmask_embedding_backward.default, args)


def test_meta_tensors_use_the_fake() -> None:
    out = ops.rowmask_embedding_backward(torch.empty(3, 4, dtype=torch.long, device="meta"), torch.empty(3, 4, 8, device="meta", dtype=torch.bfloat16), 5, 9)
    assert out.device.type == "meta" and out.shape == (9, 8) and out.dtype == torch.float32


def test_forced_reference_and_native_path(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    calls: list[int] = []

    def spy(*args):
        calls.append(1)
        return reference(*args)

    monkeypatch.setattr(rowmask, "rowmask_embedding_backward_reference", spy)
    ids = torch.randint(0, 20, (50,), device=device)
    g = torch.randn(50, 5, device=device)
    monkeypatch.delenv("LUMO_FORCE_REFERENCE", raising=False)
    a = ops.rowmask_embedding_backward(ids, g, 5, 10)
    assert calls == []
    monkeypatch.setenv("LUMO_FORCE_REFERENCE", "1")
    b = ops.rowmask_embedding_backward(ids, g, 5, 10)
    assert calls == [1]
    assert torch.equal(a, b)


def test_missing_native_module_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LUMO_FORCE_REFERENCE", raising=False)
    monkeypatch.setattr(_native, "cpu", lambda: None)
    ids = torch.randint(0, 20, (50,))
    g = torch.randn(50, 5)
    assert torch.equal(ops.rowmask_embedding_backward(ids, g, 5, 10), reference(ids, g, 5, 10))


# ---------------------------------------------------------------------------
# CUDA only: the CPU kernel is the oracle
# ---------------------------------------------------------------------------


@given(case=case_st())
@settings(max_examples=50)
def test_cuda_equals_cpu_kernel(cuda_device: str, case) -> None:
    ids, grad, row_start, num_rows = case
    want = ops.rowmask_embedding_backward(ids, grad, row_start, num_rows)
    got = ops.rowmask_embedding_backward(ids.to(cuda_device), grad.to(cuda_device), row_start, num_rows)
    assert torch.equal(got.cpu(), want)


def test_cuda_deterministic_across_runs(cuda_device: str) -> None:
    ids, grad = _big_case()
    ids, grad = ids.to(cuda_device), grad.to(cuda_device)
    first = ops.rowmask_embedding_backward(ids, grad, 151936, 512)
    for _ in range(3):
        assert torch.equal(ops.rowmask_embedding_backward(ids, grad, 151936, 512), first)
    assert torch.equal(first.cpu(), ops.rowmask_embedding_backward(ids.cpu(), grad.cpu(), 151936, 512))


@given(case=case_st())
@settings(max_examples=50)
def test_cuda_front_bucketing_on_cpu(case) -> None:
    """The (positions, offsets) the CUDA kernel reduces, checked on CPU with a Python segment sum."""
    ids, grad, row_start, num_rows = case
    flat = ids.reshape(-1)
    pos, offsets = rowmask.bucket_positions(flat, row_start, num_rows)
    assert offsets.shape == (num_rows + 1,) and int(offsets[0]) == 0 and int(offsets[-1]) == pos.numel()
    assert bool((offsets[1:] >= offsets[:-1]).all())
    g = grad.reshape(flat.numel(), grad.shape[-1]).float()
    out = torch.zeros(num_rows, grad.shape[-1])
    for r in range(num_rows):
        seg = pos[offsets[r] : offsets[r + 1]]
        assert bool((flat[seg].long() == row_start + r).all()) and bool((seg[1:] > seg[:-1]).all())
        for j in seg.tolist():  # the kernel's order: ascending position
            out[r] = out[r] + g[j]
    assert torch.equal(out, reference(ids, grad, row_start, num_rows))
