"""lumo_uti.ops.classify_ids: native kernels vs the reference vs a bisect oracle."""

from __future__ import annotations

import bisect

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lumo_uti.ops as ops
from lumo_uti.ops import _native, token_range
from lumo_uti.ops.reference import classify_ids_reference

I64_MIN, I64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
I32_MIN, I32_MAX = int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max)

# Qwen3 base rows, UTI specials, image codes, audio codes (DESIGN.md section 4).
TOKEN_SPACE = [0, 151936, 152064, 168448, 176640]


def oracle(ids: np.ndarray, bounds: list[int]) -> np.ndarray:
    """The spec, one ID at a time with bisect."""
    flat = [
        bisect.bisect_right(bounds, v) - 1 if len(bounds) >= 2 and bounds[0] <= v < bounds[-1] else -1
        for v in np.asarray(ids, dtype=object).reshape(-1).tolist()
    ]
    return np.array(flat, dtype=np.int32).reshape(np.shape(ids))


def cpu_kernel() -> object:
    module = _native.cpu()
    if module is None:
        pytest.skip(f"CPU kernels not built ({_native.cpu_reason()})")
    return module


# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------


@st.composite
def boundaries_st(draw: st.DrawFn) -> list[int]:
    kind = draw(st.sampled_from(["small", "wide", "many", "token_space"]))
    if kind == "token_space":
        return list(TOKEN_SPACE[: draw(st.integers(0, len(TOKEN_SPACE)))])
    if kind == "small":
        values = st.integers(-40, 40)
        size = st.integers(0, 6)
    elif kind == "wide":
        values = st.integers(I64_MIN, I64_MAX)
        size = st.integers(0, 6)
    else:
        values = st.integers(-(10**6), 10**6)
        size = st.integers(7, 200)
    n = draw(size)
    return sorted(draw(st.lists(values, min_size=n, max_size=n, unique=True)))


def _interesting(bounds: list[int], lo: int, hi: int) -> list[int]:
    """Values at and around every boundary, plus the extremes of the dtype."""
    cand = {lo, hi, lo + 1, hi - 1, 0, -1, 1}
    for b in bounds:
        cand.update((b - 1, b, b + 1))
    return sorted(v for v in cand if lo <= v <= hi)


@st.composite
def case_st(draw: st.DrawFn) -> tuple[np.ndarray, list[int], str]:
    """(ids as a possibly non-contiguous numpy array, boundaries, layout name)."""
    bounds = draw(boundaries_st())
    dtype = draw(st.sampled_from([np.int32, np.int64]))
    lo, hi = (I32_MIN, I32_MAX) if dtype == np.int32 else (I64_MIN, I64_MAX)
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=ndim, max_size=ndim)))
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    if layout == "transposed" and ndim < 2:
        layout = "contiguous"
    if layout == "strided" and ndim < 1:
        layout = "contiguous"
    base_shape = shape
    if layout == "transposed":
        base_shape = shape[::-1]
    elif layout == "strided":
        base_shape = (shape[0] * 2,) + shape[1:]
    size = int(np.prod(base_shape, dtype=np.int64))
    values = st.one_of(st.sampled_from(_interesting(bounds, lo, hi)), st.integers(lo, hi))
    flat = draw(st.lists(values, min_size=size, max_size=size))
    base = np.array(flat, dtype=dtype).reshape(base_shape)
    if layout == "transposed":
        ids = base.T
    elif layout == "strided":
        ids = base[::2]
    else:
        ids = base
    assert ids.shape == shape
    return ids, bounds, layout


# ---------------------------------------------------------------------------
# Kernel vs reference vs oracle
# ---------------------------------------------------------------------------


@given(case=case_st())
def test_tensor_matches_reference_and_oracle(device: str, case) -> None:
    ids_np, bounds, _ = case
    want = oracle(ids_np, bounds)
    ids = torch.from_numpy(np.ascontiguousarray(ids_np)).to(device)
    if ids_np.ndim >= 2 and not ids_np.flags.c_contiguous:
        # The same values as a transposed tensor view.
        ids = torch.from_numpy(np.ascontiguousarray(ids_np.T)).to(device).permute(*range(ids_np.ndim - 1, -1, -1))
    b = torch.tensor(bounds, dtype=torch.int64, device=device)
    got = ops.classify_ids(ids, b)
    ref = classify_ids_reference(ids, b)
    assert got.dtype == torch.int32 and ref.dtype == torch.int32
    assert got.device == ids.device and got.shape == ids.shape
    np.testing.assert_array_equal(got.cpu().numpy(), want)
    np.testing.assert_array_equal(ref.cpu().numpy(), want)


@given(case=case_st())
def test_numpy_matches_oracle(case) -> None:
    ids_np, bounds, _ = case
    for b in (bounds, np.array(bounds, dtype=np.int64), torch.tensor(bounds, dtype=torch.int64)):
        got = ops.classify_ids(ids_np, b)
        assert isinstance(got, np.ndarray) and got.dtype == np.int32 and got.shape == ids_np.shape
        np.testing.assert_array_equal(got, oracle(ids_np, bounds))


@given(case=case_st())
def test_cpu_kernel_equals_reference(case) -> None:
    """The native CPU kernel (called directly) and the reference agree bit for bit."""
    module = cpu_kernel()
    ids_np, bounds, _ = case
    ids = np.ascontiguousarray(ids_np)
    b = np.array(bounds, dtype=np.int64)
    out = np.full(ids.shape, 7, dtype=np.int32)
    module.classify_ids(ids.ctypes.data, ids.itemsize, ids.size, b.ctypes.data, b.size, out.ctypes.data, 1)
    ref = classify_ids_reference(torch.from_numpy(ids), torch.from_numpy(b)).numpy()
    np.testing.assert_array_equal(out, ref)


def test_strided_tensor_views(device: str) -> None:
    base = torch.arange(-20, 100, dtype=torch.int64, device=device).reshape(8, 15)
    bounds = torch.tensor([-5, 0, 7, 50, 90], device=device)
    for view in (base.t(), base[:, ::3], base[1::2, 2:9], base[0].expand(4, 15), base.t()[::2]):
        got = ops.classify_ids(view, bounds)
        assert got.is_contiguous() and got.shape == view.shape
        np.testing.assert_array_equal(got.cpu().numpy(), oracle(view.cpu().numpy(), bounds.tolist()))


def test_numpy_negative_strides_and_big_endian() -> None:
    a = np.arange(-10, 30, dtype=np.int64)[::-3]
    np.testing.assert_array_equal(ops.classify_ids(a, [0, 10, 20]), oracle(a, [0, 10, 20]))
    be = np.arange(-5, 25, dtype=">i8")
    np.testing.assert_array_equal(ops.classify_ids(be, [0, 10, 20]), oracle(be.astype(np.int64), [0, 10, 20]))


def test_token_space_example(device: str) -> None:
    ids = torch.tensor(
        [0, 151642, 151935, 151936, 152063, 152064, 168447, 168448, 176639, 176640, -1, I64_MAX],
        device=device,
    )
    want = [0, 0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1]
    assert ops.classify_ids(ids, TOKEN_SPACE).tolist() == want
    assert ops.classify_ids(ids.int().cpu().numpy(), TOKEN_SPACE).tolist() == want


@pytest.mark.parametrize("bounds", [[], [5], [5, 6], list(range(0, 1000, 3))], ids=["R=-1", "R=0", "R=1", "R=many"])
@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 0, 2)], ids=str)
def test_empty_ids(device: str, shape, bounds) -> None:
    for dtype in (torch.int32, torch.int64):
        got = ops.classify_ids(torch.empty(shape, dtype=dtype, device=device), bounds)
        assert got.shape == shape and got.dtype == torch.int32 and got.device.type == device
    got_np = ops.classify_ids(np.empty(shape, dtype=np.int64), bounds)
    assert got_np.shape == shape and got_np.dtype == np.int32


def test_zero_dim(device: str) -> None:
    got = ops.classify_ids(torch.tensor(12, device=device), [0, 10, 20])
    assert got.shape == () and int(got) == 1
    got_np = ops.classify_ids(np.array(25), [0, 10, 20])
    assert got_np.shape == () and int(got_np) == -1


@pytest.mark.parametrize("bounds", [[], [3]], ids=["no-bounds", "one-bound"])
def test_fewer_than_two_bounds_give_minus_one(device: str, bounds) -> None:
    ids = torch.tensor([I64_MIN, -1, 0, 3, 4, I64_MAX], device=device)
    assert ops.classify_ids(ids, bounds).tolist() == [-1] * 6


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.uint8], ids=str)
def test_small_integer_tensors(device: str, dtype) -> None:
    ids = torch.arange(0, 100, dtype=dtype, device=device)
    np.testing.assert_array_equal(
        ops.classify_ids(ids, [3, 50, 60]).cpu().numpy(), oracle(ids.cpu().numpy(), [3, 50, 60])
    )


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.uint32, np.uint64], ids=str)
def test_numpy_integer_dtypes(dtype) -> None:
    info = np.iinfo(dtype)
    ids = np.array([info.min, info.max, 0, 5, 100], dtype=dtype)
    bounds = [0, 5, 100, I64_MAX]
    np.testing.assert_array_equal(ops.classify_ids(ids, bounds), oracle(ids, bounds))


def test_large_input_is_thread_count_independent() -> None:
    """The CPU kernel splits big inputs over threads; results are identical for any count."""
    module = cpu_kernel()
    rng = np.random.default_rng(0)
    ids = rng.integers(-1000, 200_000, size=300_001, dtype=np.int64)
    b = np.array(TOKEN_SPACE, dtype=np.int64)
    outs = []
    for threads in (1, 2, 3, 8, 0):
        out = np.empty(ids.shape, dtype=np.int32)
        module.classify_ids(ids.ctypes.data, 8, ids.size, b.ctypes.data, b.size, out.ctypes.data, threads)
        outs.append(out)
    ref = classify_ids_reference(torch.from_numpy(ids), torch.from_numpy(b)).numpy()
    for out in outs:
        np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(ops.classify_ids(torch.from_numpy(ids), b).numpy(), ref)


def test_meta_tensors_use_the_fake() -> None:
    out = ops.classify_ids(torch.empty(3, 4, dtype=torch.int64, device="meta"), torch.empty(5, dtype=torch.int64, device="meta"))
    assert out.device.type == "meta" and out.shape == (3, 4) and out.dtype == torch.int32


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_float_ids_rejected(device: str) -> None:
    with pytest.raises(TypeError, match=r"^classify_ids: expected integer ids, got float32$"):
        ops.classify_ids(torch.zeros(3, device=device), [0, 1])
    with pytest.raises(TypeError, match=r"^classify_ids: expected integer ids, got float64$"):
        ops.classify_ids(np.zeros(3), [0, 1])
    with pytest.raises(TypeError, match=r"expected integer ids, got bool"):
        ops.classify_ids(np.zeros(3, dtype=bool), [0, 1])
    with pytest.raises(TypeError, match=r"expected ids as a torch.Tensor or numpy.ndarray, got list"):
        ops.classify_ids([1, 2], [0, 1])


@pytest.mark.parametrize("kind", ["list", "numpy", "tensor"])
def test_unsorted_boundaries_rejected(device: str, kind) -> None:
    bounds = [0, 5, 5, 9]
    b = {"list": bounds, "numpy": np.array(bounds), "tensor": torch.tensor(bounds, device=device)}[kind]
    msg = r"^classify_ids: expected strictly increasing boundaries, got boundaries\[1\]=5 >= boundaries\[2\]=5$"
    with pytest.raises(ValueError, match=msg):
        ops.classify_ids(torch.arange(4, device=device), b)
    if device == "cpu":
        with pytest.raises(ValueError, match=msg):
            ops.classify_ids(np.arange(4), b)


def test_unsorted_boundaries_rejected_by_reference_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUMO_FORCE_REFERENCE", "1")
    with pytest.raises(ValueError, match=r"boundaries\[0\]=9 >= boundaries\[1\]=3"):
        ops.classify_ids(np.arange(4), [9, 3])
    with pytest.raises(ValueError, match=r"boundaries\[0\]=9 >= boundaries\[1\]=3"):
        ops.classify_ids(torch.arange(4), [9, 3])


def test_bad_boundaries_rejected(device: str) -> None:
    ids = torch.arange(4, device=device)
    with pytest.raises(ValueError, match=r"^classify_ids: expected 1-D boundaries, got shape \(2, 2\)$"):
        ops.classify_ids(ids, torch.tensor([[0, 1], [2, 3]], device=device))
    with pytest.raises(ValueError, match=r"expected 1-D boundaries, got shape \(2, 2\)"):
        ops.classify_ids(np.arange(4), [[0, 1], [2, 3]])
    with pytest.raises(TypeError, match=r"^classify_ids: expected integer boundaries, got float32$"):
        ops.classify_ids(ids, torch.tensor([0.0, 1.0], device=device))
    with pytest.raises(TypeError, match=r"expected integer boundaries, got float64"):
        ops.classify_ids(np.arange(4), [0.5, 1.5])
    with pytest.raises(ValueError, match=r"expected boundaries within int64"):
        ops.classify_ids(np.arange(4), np.array([0, 2**63], dtype=np.uint64))
    with pytest.raises(TypeError, match=r"expected boundaries as a tensor, ndarray or list of int, got str"):
        ops.classify_ids(np.arange(4), "0,1")


def test_boundaries_on_another_device_rejected(device: str) -> None:
    with pytest.raises(ValueError, match=rf"^classify_ids: expected boundaries on {device}.*\(the device of ids\), got meta$"):
        ops.classify_ids(torch.arange(4, device=device), torch.arange(3, device="meta"))
    with pytest.raises(ValueError, match=r"expected boundaries on cpu \(the device of ids\), got meta"):
        ops.classify_ids(np.arange(4), torch.arange(3, device="meta"))


def test_native_checks_sizes_and_pointers() -> None:
    """The C++ side re-checks what it is given: ValueError / IndexError, never a crash."""
    module = cpu_kernel()
    out = np.empty(4, dtype=np.int32)
    ids = np.arange(4, dtype=np.int64)
    b = np.array([0, 2, 4], dtype=np.int64)
    with pytest.raises(ValueError, match=r"^classify_ids: expected n >= 0, got -1$"):
        module.classify_ids(ids.ctypes.data, 8, -1, b.ctypes.data, 3, out.ctypes.data, 1)
    with pytest.raises(ValueError, match=r"expected ids_itemsize 4 \(int32\) or 8 \(int64\), got 2"):
        module.classify_ids(ids.ctypes.data, 2, 4, b.ctypes.data, 3, out.ctypes.data, 1)
    with pytest.raises(ValueError, match=r"expected a non-null ids pointer for n > 0, got null"):
        module.classify_ids(0, 8, 4, b.ctypes.data, 3, out.ctypes.data, 1)
    with pytest.raises(ValueError, match=r"expected a non-null out pointer for n > 0, got null"):
        module.classify_ids(ids.ctypes.data, 8, 4, b.ctypes.data, 3, 0, 1)
    with pytest.raises(ValueError, match=r"expected a non-null bounds pointer"):
        module.classify_ids(ids.ctypes.data, 8, 4, 0, 3, out.ctypes.data, 1)
    with pytest.raises(ValueError, match=r"expected num_bounds >= 0, got -2"):
        module.classify_ids(ids.ctypes.data, 8, 4, b.ctypes.data, -2, out.ctypes.data, 1)
    with pytest.raises(IndexError, match=r"expected num_bounds <= 2\^31 \(int32 block indices\), got 2147483649"):
        module.classify_ids(ids.ctypes.data, 8, 4, b.ctypes.data, 2**31 + 1, out.ctypes.data, 1)
    with pytest.raises(ValueError, match=r"expected num_threads >= 0, got -1"):
        module.classify_ids(ids.ctypes.data, 8, 4, b.ctypes.data, 3, out.ctypes.data, -1)
    module.classify_ids(0, 8, 0, 0, 0, 0, 1)  # n == 0: nothing is read or written
    assert module.first_unsorted(b.ctypes.data, 3) == -1
    assert module.first_unsorted(0, 1) == -1
    bad = np.array([0, 4, 4, 9], dtype=np.int64)
    assert module.first_unsorted(bad.ctypes.data, 4) == 1


# ---------------------------------------------------------------------------
# torch.library: opcheck, torch.compile
# ---------------------------------------------------------------------------


def _op_samples(device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    b = torch.tensor(TOKEN_SPACE, device=device)
    base = torch.randint(-10, 180_000, (6, 8), device=device)
    return [
        (base, b),
        (base.t(), b),
        (base[:, ::2].int(), b),
        (torch.empty(0, 3, dtype=torch.int64, device=device), b),
        (torch.tensor(151936, device=device), b),
        (base, torch.empty(0, dtype=torch.int64, device=device)),
    ]


def test_opcheck(device: str) -> None:
    for args in _op_samples(device):
        torch.library.opcheck(torch.ops.lumo_uti.classify_ids.default, args)


def test_torch_compile_fullgraph(device: str) -> None:
    def f(ids: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
        return ops.classify_ids(ids + 1, bounds) * 2

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    try:
        for ids, b in _op_samples(device)[:4]:
            torch.testing.assert_close(compiled(ids, b), f(ids, b), rtol=0, atol=0)
    finally:
        torch._dynamo.reset()


# ---------------------------------------------------------------------------
# Backend selection
# ---------------------------------------------------------------------------


def _spy_reference(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []

    def spy(ids: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return classify_ids_reference(ids, boundaries)

    monkeypatch.setattr(token_range, "classify_ids_reference", spy)
    return calls


def test_forced_reference(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    calls = _spy_reference(monkeypatch)
    ids = torch.arange(-3, 30, device=device)
    want = oracle(ids.cpu().numpy(), [0, 10, 20])

    monkeypatch.delenv("LUMO_FORCE_REFERENCE", raising=False)
    assert not ops.backends()["reference_forced"]
    np.testing.assert_array_equal(ops.classify_ids(ids, [0, 10, 20]).cpu().numpy(), want)
    native_calls = len(calls)

    monkeypatch.setenv("LUMO_FORCE_REFERENCE", "1")
    assert ops.backends()["reference_forced"]
    np.testing.assert_array_equal(ops.classify_ids(ids, [0, 10, 20]).cpu().numpy(), want)
    assert len(calls) == native_calls + 1
    if device == "cpu":
        np.testing.assert_array_equal(ops.classify_ids(ids.numpy(), [0, 10, 20]), want)
        assert len(calls) == native_calls + 2


def test_native_path_does_not_call_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu_kernel()
    monkeypatch.delenv("LUMO_FORCE_REFERENCE", raising=False)
    calls = _spy_reference(monkeypatch)
    ops.classify_ids(torch.arange(10), [0, 5, 10])
    ops.classify_ids(np.arange(10), [0, 5, 10])
    assert calls == []


def test_missing_native_module_falls_back_to_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LUMO_FORCE_REFERENCE", raising=False)
    monkeypatch.setattr(_native, "cpu", lambda: None)
    calls = _spy_reference(monkeypatch)
    ids = np.arange(-3, 30)
    np.testing.assert_array_equal(ops.classify_ids(ids, [0, 10, 20]), oracle(ids, [0, 10, 20]))
    np.testing.assert_array_equal(
        ops.classify_ids(torch.from_numpy(ids), [0, 10, 20]).numpy(), oracle(ids, [0, 10, 20])
    )
    assert len(calls) == 2


# ---------------------------------------------------------------------------
# CUDA only: the CPU kernel is the oracle
# ---------------------------------------------------------------------------


@given(case=case_st())
def test_cuda_equals_cpu_kernel(cuda_device: str, case) -> None:
    ids_np, bounds, _ = case
    ids = torch.from_numpy(np.ascontiguousarray(ids_np))
    cpu = ops.classify_ids(ids, bounds)
    gpu = ops.classify_ids(ids.to(cuda_device), bounds)
    assert torch.equal(gpu.cpu(), cpu)


def test_cuda_large_and_side_stream(cuda_device: str) -> None:
    ids = torch.randint(-1000, 200_000, (3, 1_000_003), device=cuda_device)
    b = torch.tensor(TOKEN_SPACE, device=cuda_device)
    want = ops.classify_ids(ids.cpu(), TOKEN_SPACE)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = ops.classify_ids(ids, b)
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(got.cpu(), want)
    assert torch.equal(ops.classify_ids(ids[:, ::7].int(), b).cpu(), ops.classify_ids(ids[:, ::7].cpu().int(), TOKEN_SPACE))


def test_cuda_second_device(cuda_device: str) -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    ids = torch.arange(-5, 200_000, 7, device="cuda:1")
    got = ops.classify_ids(ids, TOKEN_SPACE)
    assert got.device == ids.device
    assert torch.equal(got.cpu(), ops.classify_ids(ids.cpu(), TOKEN_SPACE))


def test_cuda_boundaries_on_cpu_rejected(cuda_device: str) -> None:
    with pytest.raises(ValueError, match=r"expected boundaries on cuda:0 \(the device of ids\), got cpu"):
        ops.classify_ids(torch.arange(4, device="cuda:0"), torch.tensor([0, 2]))
