"""lumo_uti.ops.rows_linear_cross_entropy: op vs a float64 materialised reference, memory, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from lumo_uti.ops import _native
from lumo_uti.ops.rows_ce import rows_linear_cross_entropy
from lumo_uti.ops.reference.rows_ce import rows_ce_forward_reference, rows_ce_new_rows_backward_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def materialised(hidden, base, new, targets, base_bias, new_bias, ignore_index, masked, reduction):
    """The plain path in float64: full logits, -inf columns, F.cross_entropy."""
    h = hidden.detach().double().requires_grad_(True)
    w = new.detach().double().requires_grad_(True)
    nb = None if new_bias is None else new_bias.detach().double().requires_grad_(True)
    z = h @ torch.cat([base.double(), w]).T
    if base_bias is not None or nb is not None:
        bb = torch.zeros(base.shape[0], dtype=torch.float64) if base_bias is None else base_bias.double()
        nbv = torch.zeros(new.shape[0], dtype=torch.float64) if nb is None else nb
        z = z + torch.cat([bb, nbv])
    for a, b in masked:
        z = z.index_fill(-1, torch.arange(a, b), float("-inf"))
    flat = F.cross_entropy(z.reshape(-1, z.shape[-1]), targets.reshape(-1).long(), ignore_index=ignore_index,
                           reduction=reduction)
    loss = flat.view(targets.shape) if reduction == "none" else flat
    return loss, h, w, nb


@st.composite
def case_st(draw: st.DrawFn) -> dict:
    t = draw(st.sampled_from([0, 1, 2, 4, 5, 17, 32, 33]))
    d = draw(st.sampled_from([1, 3, 8, 19]))
    r = draw(st.sampled_from([1, 7, 64, 130]))
    n = draw(st.sampled_from([0, 1, 5, 70]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    dt = [draw(st.sampled_from(DTYPES)) for _ in range(3)]
    hidden = torch.randn(t, d, generator=g).to(dt[0])
    base = (0.7 * torch.randn(r, d, generator=g)).to(dt[1])
    new = (0.7 * torch.randn(n, d, generator=g)).to(dt[2])
    bias = draw(st.booleans())
    base_bias = torch.randn(r, generator=g).to(dt[1]) if bias else None
    new_bias = torch.randn(n, generator=g).to(dt[2]) if bias else None
    v = r + n
    masked = []
    if draw(st.booleans()) and v > 2:
        a = draw(st.integers(1, v - 1))
        b = draw(st.integers(a, v))
        masked.append((a, b))
    allowed = torch.ones(v, dtype=torch.bool)
    for a, b in masked:
        allowed[a:b] = False
    choices = torch.nonzero(allowed).reshape(-1)
    targets = choices[torch.randint(0, choices.numel(), (t,), generator=g)]
    ignore_index = draw(st.sampled_from([-100, -1, 3]))
    ignore = draw(st.sampled_from(["none", "some", "all"]))
    if ignore == "all":
        targets[:] = ignore_index
    elif ignore == "some":
        targets[torch.rand(t, generator=g) < 0.3] = ignore_index
    if ignore_index == 3 and ignore == "none":
        targets[targets == 3] = choices[0]
    layout = draw(st.sampled_from(["contiguous", "strided", "transposed"]))
    if layout == "strided":
        wide = torch.randn(t, 2 * d + 1, generator=g).to(dt[0])
        wide[:, 1::2] = hidden
        hidden = wide[:, 1::2]
    elif layout == "transposed":
        hidden = hidden.T.contiguous().T
    target_dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    return dict(hidden=hidden, base=base, new=new, targets=targets.to(target_dtype), base_bias=base_bias,
                new_bias=new_bias, ignore_index=ignore_index, masked=masked,
                reduction=draw(st.sampled_from(["none", "sum", "mean"])))


def _tol(c: dict) -> float:
    d = c["hidden"].shape[1]
    return 2e-5 * (1 + d)


@settings(max_examples=80)
@given(case_st())
def test_matches_float64_materialised(case: dict) -> None:
    c = case
    hidden = c["hidden"].clone().requires_grad_(True)
    new = c["new"].clone().requires_grad_(True)
    new_bias = None if c["new_bias"] is None else c["new_bias"].clone().requires_grad_(True)
    loss = rows_linear_cross_entropy(hidden, c["base"], new, c["targets"], c["base_bias"], new_bias,
                                     ignore_index=c["ignore_index"], masked_columns=c["masked"] or None,
                                     reduction=c["reduction"])
    ref, h64, w64, nb64 = materialised(c["hidden"], c["base"], new, c["targets"], c["base_bias"], new_bias,
                                       c["ignore_index"], c["masked"], c["reduction"])
    assert loss.dtype == torch.float32 and loss.shape == ref.shape
    tol = _tol(c)
    torch.testing.assert_close(loss.double(), ref, rtol=tol, atol=tol, equal_nan=True)
    if not torch.isfinite(ref).all() or c["hidden"].shape[0] == 0:
        return
    weights = torch.randn(ref.shape, dtype=torch.float64) if c["reduction"] == "none" else torch.tensor(1.0)
    (loss.double() * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(hidden.grad.double(), h64.grad.to(hidden.dtype).double(),
                               rtol=tol + _lowp(hidden), atol=tol + _lowp(hidden))
    assert hidden.grad.dtype == hidden.dtype
    torch.testing.assert_close(new.grad.double(), w64.grad.to(new.dtype).double(),
                               rtol=tol + _lowp(new), atol=(tol + _lowp(new)) * max(1, c["hidden"].shape[0]))
    if new_bias is not None:
        torch.testing.assert_close(new_bias.grad.double(), nb64.grad.to(new_bias.dtype).double(),
                                   rtol=tol + _lowp(new_bias), atol=(tol + _lowp(new_bias)) * max(1, c["hidden"].shape[0]))


def _lowp(t: torch.Tensor) -> float:
    """Rounding of a gradient returned in a 16-bit dtype."""
    return {torch.float16: 1e-3, torch.bfloat16: 8e-3}.get(t.dtype, 0.0)


@settings(max_examples=40)
@given(case_st(), st.sampled_from([1, 3, 64, 100]))
def test_reference_tile_does_not_change_the_result(case: dict, tile: int) -> None:
    """The spec walks the vocabulary in tiles; any tile width (V not a multiple) gives the same values."""
    c = case
    h, tg = c["hidden"].reshape(-1, c["hidden"].shape[-1]), c["targets"].reshape(-1).long()
    masked = [x for pair in c["masked"] for x in pair]
    args = (h, c["base"], c["new"], tg, c["base_bias"], c["new_bias"], c["ignore_index"], masked, True)
    a = rows_ce_forward_reference(*args, tile=tile)
    b = rows_ce_forward_reference(*args, tile=10**6)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5, equal_nan=True)
    g = torch.rand(h.shape[0])
    base_rows = c["base"].shape[0]
    ga = rows_ce_new_rows_backward_reference(g, h, c["new"], c["new_bias"], tg, a[1], base_rows, c["ignore_index"],
                                             masked, tile=tile)
    gb = rows_ce_new_rows_backward_reference(g, h, c["new"], c["new_bias"], tg, a[1], base_rows, c["ignore_index"],
                                             masked, tile=10**6)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_gradcheck_float64(bias: bool) -> None:
    g = torch.Generator().manual_seed(1)
    h = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    base = torch.randn(9, 5, dtype=torch.float64, generator=g)
    new = torch.randn(4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    bb = torch.randn(9, dtype=torch.float64, generator=g) if bias else None
    nb = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    targets = torch.tensor([0, 12, -100, 10, 3, 11])
    inputs = (h, new) + ((nb,) if bias else ())

    def fn(h, new, nb=None):
        return rows_linear_cross_entropy(h, base, new, targets, bb, nb, masked_columns=[(5, 7)], reduction="none")

    assert torch.autograd.gradcheck(fn, inputs)


def test_tied_new_rows_get_both_gradients() -> None:
    """New rows shared by the embedding and the head: the gradient is the sum of both uses."""
    g = torch.Generator().manual_seed(2)
    base = torch.randn(20, 8, generator=g)
    new = torch.randn(6, 8, generator=g, requires_grad=True)
    ids = torch.tensor([21, 3, 25, 20, 7])
    table = torch.cat([base, new])
    hidden = torch.tanh(table[ids] * 1.5)
    targets = torch.tensor([22, 21, 0, 25, -100])
    rows_linear_cross_entropy(hidden, base, new, targets).backward()
    ours = new.grad.clone()
    new.grad = None
    hidden = torch.tanh(torch.cat([base, new])[ids] * 1.5)
    F.cross_entropy(hidden @ torch.cat([base, new]).T, targets).backward()
    torch.testing.assert_close(ours, new.grad, rtol=1e-5, atol=1e-6)


def test_mean_over_no_targets_is_nan_like_cross_entropy() -> None:
    out = rows_linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 4), torch.randn(2, 4), torch.full((3,), -100))
    assert torch.isnan(out)
    empty = rows_linear_cross_entropy(torch.randn(0, 4), torch.randn(5, 4), torch.randn(2, 4),
                                      torch.zeros(0, dtype=torch.long), reduction="sum")
    assert empty.item() == 0.0


def test_leading_dims_and_reduction_none_shape() -> None:
    h = torch.randn(2, 3, 4)
    t = torch.randint(0, 7, (2, 3))
    out = rows_linear_cross_entropy(h, torch.randn(5, 4), torch.randn(2, 4), t, reduction="none")
    assert out.shape == (2, 3)


def test_target_on_masked_column_is_infinite() -> None:
    out = rows_linear_cross_entropy(torch.randn(2, 4), torch.randn(5, 4), torch.randn(2, 4), torch.tensor([1, 5]),
                                    masked_columns=(5, 7), reduction="none")
    assert torch.isfinite(out[0]) and out[1].item() == float("inf")


# ---------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------

_H, _B, _N, _T = torch.randn(3, 4), torch.randn(5, 4), torch.randn(2, 4), torch.tensor([0, 1, 6])


@pytest.mark.parametrize(
    "kwargs, exc, text",
    [
        (dict(hidden=[[1.0]]), TypeError, "expected hidden as a torch.Tensor"),
        (dict(hidden=torch.ones(3, 4, dtype=torch.int32)), TypeError, "expected hidden of dtype"),
        (dict(targets=_T.float()), TypeError, "expected integer targets"),
        (dict(targets=torch.tensor([0, 1])), ValueError, "expected hidden of shape [*targets.shape, D]"),
        (dict(base_head_weight=torch.randn(5, 3)), ValueError, "expected base_head_weight of shape [rows, 4]"),
        (dict(new_head_rows=torch.randn(2)), ValueError, "expected new_head_rows of shape [rows, 4]"),
        (dict(base_bias=torch.randn(4)), ValueError, "expected base_bias of shape [5]"),
        (dict(new_bias=torch.randn(5)), ValueError, "expected new_bias of shape [2]"),
        (dict(base_head_weight=_B.clone().requires_grad_(True)), ValueError, "expected a frozen base_head_weight"),
        (dict(targets=torch.tensor([0, 7, 1])), ValueError, "expected targets in [0, 7) or ignore_index -100, got 7"),
        (dict(targets=torch.tensor([0, -2, 1])), ValueError, "got -2"),
        (dict(masked_columns=(3, 9)), ValueError, "expected masked columns 0 <= start <= stop <= 7"),
        (dict(masked_columns=[(1, 2, 3)]), ValueError, "expected masked_columns as (start, stop) int pairs"),
        (dict(reduction="avg"), ValueError, "expected reduction in"),
        (dict(ignore_index=1.5), TypeError, "expected ignore_index as an int"),
        (dict(base_head_weight=torch.randn(0, 4), new_head_rows=torch.randn(0, 4)), ValueError,
         "expected at least one head row"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_bad_inputs_raise_clear_errors(kwargs: dict, exc: type, text: str) -> None:
    args = dict(hidden=_H, base_head_weight=_B, new_head_rows=_N, targets=_T)
    args.update(kwargs)
    with pytest.raises(exc, match=pytest.importorskip("re").escape(text)):
        rows_linear_cross_entropy(**args)


def test_masked_ranges_are_merged() -> None:
    from lumo_uti.ops.rows_ce import _masked_ranges

    assert _masked_ranges([(5, 7), (0, 2), (1, 3), (7, 7)], 10) == [0, 3, 5, 7]
    assert _masked_ranges((4, 6), 10) == [4, 6]
    assert _masked_ranges(None, 10) == []


def test_opcheck() -> None:
    g = torch.Generator().manual_seed(3)
    h = torch.randn(5, 6, generator=g, requires_grad=True)
    args = (h, torch.randn(7, 6, generator=g), torch.randn(3, 6, generator=g, requires_grad=True),
            torch.tensor([0, 9, -100, 4, 2]), None, torch.randn(3, generator=g, requires_grad=True), -100, [1, 2], True)
    torch.library.opcheck(torch.ops.lumo_uti.rows_ce_forward.default, args)


# ---------------------------------------------------------------------------
# Memory: no tensor with V columns, no gradient of the base rows
# ---------------------------------------------------------------------------


class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor an aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


@pytest.mark.parametrize("force_reference", [False, True], ids=["default", "reference"])
def test_no_tensor_with_vocabulary_columns(monkeypatch: pytest.MonkeyPatch, force_reference: bool) -> None:
    if force_reference:
        monkeypatch.setenv("LUMO_FORCE_REFERENCE", "1")
    t, d, r, n = 16, 8, 5000, 700
    vocab = r + n
    hidden = torch.randn(t, d, requires_grad=True)
    base, new = torch.randn(r, d), torch.randn(n, d, requires_grad=True)
    new_bias = torch.zeros(n, requires_grad=True)
    targets = torch.randint(0, vocab, (t,))
    with _Shapes() as rec:
        loss = rows_linear_cross_entropy(hidden, base, new, targets, None, new_bias, masked_columns=(100, 200))
        loss.backward()
    assert rec.shapes, "the dispatch mode saw no op"
    big = [s for s in rec.shapes if (len(s) >= 1 and s[-1] >= vocab) or (len(s) == 2 and s[0] * s[1] >= t * vocab)]
    assert not big, f"tensors as wide as the vocabulary: {big}"
    assert (r, d) not in rec.shapes, "a gradient of the frozen base rows was allocated"
    assert hidden.grad is not None and new.grad.shape == (n, d)


# ---------------------------------------------------------------------------
# Determinism of the native kernels
# ---------------------------------------------------------------------------


def _native_or_skip() -> None:
    module = _native.cpu()
    if module is None or not hasattr(module, "rows_ce_forward"):
        pytest.skip(f"CPU kernels not built ({_native.cpu_reason()})")


def _run(hidden, base, new, targets, new_bias, ramp=True):
    h = hidden.clone().requires_grad_(True)
    w = new.clone().requires_grad_(True)
    nb = new_bias.clone().requires_grad_(True)
    loss = rows_linear_cross_entropy(h, base, w, targets, None, nb, masked_columns=(3, 9), reduction="none")
    loss.backward(torch.linspace(0.1, 1.0, loss.numel()) if ramp else torch.ones_like(loss))
    return loss.detach(), h.grad, w.grad, nb.grad


def test_same_bits_for_any_thread_count() -> None:
    _native_or_skip()
    g = torch.Generator().manual_seed(4)
    # 603 tokens: one thread walks them in items of 512 (steps of 128), two in
    # items of 304; dim 200: several column strips of the gradient product, the last partial.
    args = (torch.randn(603, 200, generator=g), torch.randn(1000, 200, generator=g),
            torch.randn(333, 200, generator=g), torch.randint(9, 1333, (603,), generator=g),
            torch.randn(333, generator=g))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(*args)
        torch.set_num_threads(max(2, before))
        many = _run(*args)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


def test_same_bits_for_any_token_split() -> None:
    """Each token's loss and hidden gradient do not depend on the other tokens of the call."""
    _native_or_skip()
    g = torch.Generator().manual_seed(5)
    h, base, new = torch.randn(97, 24, generator=g), torch.randn(500, 24, generator=g), torch.randn(77, 24, generator=g)
    targets, nb = torch.randint(9, 577, (97,), generator=g), torch.randn(77, generator=g)
    whole = _run(h, base, new, targets, nb, ramp=False)
    for cut in (1, 40, 96):
        first = _run(h[:cut], base, new, targets[:cut], nb, ramp=False)
        second = _run(h[cut:], base, new, targets[cut:], nb, ramp=False)
        assert torch.equal(torch.cat([first[0], second[0]]), whole[0])
        assert torch.equal(torch.cat([first[1], second[1]]), whole[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,dim,scale", [(23, 37, 1.0), (150, 230, 1.0), (40, 37, 30.0)],
                         ids=["small", "strips", "wide_logits"])
def test_same_bits_on_every_instruction_set(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, tokens: int,
                                            dim: int, scale: float) -> None:
    """Same bits on every ISA; "strips": more tokens than one step of an item, and a dim that the ISAs
    cut into different column strips (with partial ones) in the gradient product; "wide_logits":
    logits hundreds apart, so many exponentials underflow (the vector exp's range handling)."""
    _native_or_skip()
    mask = _native.cpu().rows_ce_isa_mask()
    isas = [name for name, code in (("scalar", 1), ("avx2", 2), ("avx512", 3)) if mask >> code & 1]
    g = torch.Generator().manual_seed(6)
    args = ((scale * torch.randn(tokens, dim, generator=g)).to(dtype), torch.randn(300, dim, generator=g).to(dtype),
            torch.randn(70, dim, generator=g).to(dtype), torch.randint(9, 370, (tokens,), generator=g),
            torch.randn(70, generator=g).to(dtype))
    results = {}
    for isa in isas:
        monkeypatch.setenv("LUMO_ROWS_CE_ISA", isa)
        results[isa] = _run(*args)
    for isa in isas[1:]:
        for a, b in zip(results[isas[0]], results[isa]):
            assert torch.equal(a, b), isa


def test_native_kernel_refuses_inconsistent_buffers() -> None:
    """The binding checks every extent against the sizes it is given."""
    _native_or_skip()
    h, b, n = torch.randn(4, 3), torch.randn(5, 3), torch.randn(2, 3)
    with pytest.raises(ValueError, match="rows_ce_forward: expected hidden of tokens \\* dim = 15 elements, got 12"):
        _native.cpu().rows_ce_forward(
            hidden=_native.buffer(h), hidden_dtype=0, base=_native.buffer(b), base_dtype=0, new_rows=_native.buffer(n),
            new_dtype=0, base_bias=(0, 0), base_bias_dtype=0, new_bias=(0, 0), new_bias_dtype=0,
            targets=_native.buffer(torch.zeros(5, dtype=torch.long)), masked=(0, 0), tokens=5, dim=3, base_rows=5,
            new_rows_count=2, ignore_index=-100, loss=(0, 0), lse=(0, 0), dhat=(0, 0), num_threads=1, isa=0)


# ---------------------------------------------------------------------------
# The results page's table (benchmarks/report.py, suite rows_ce)
# ---------------------------------------------------------------------------


def test_results_table_and_plot_render_from_json(tmp_path) -> None:
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("lumo_bench_report_rows_ce", root / "benchmarks" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    assert "rows_ce" in report.SUITES and "--isas" in report.SUITES["rows_ce"]
    row = {"bench": "rows_ce", "device": "cpu", "dtype": "float32", "tokens": 2048, "dim": 1024, "base_rows": 151936,
           "new_rows": 24960, "seconds": {"fused": 12.5, "materialized": 14.0},
           "time_ratio_vs_materialized": {"fused": 12.5 / 14.0, "materialized": 1.0},
           "peak_extra_bytes": {"fused": 125 * 2**20, "materialized": 4000 * 2**20},
           "memory_ratio_vs_materialized": 125 / 4000, "loss_rel_diff": 0.0, "isa": "avx2",
           "isa_forced": {"LUMO_ROWS_CE_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2"}}
    (tmp_path / "rows_ce.json").write_text(json.dumps({
        "format": "lumo-results", "version": 1, "suite": "rows_ce", "command": "python benchmarks/rows_ce.py",
        "date": "2026-01-02T03:04:05Z", "libraries": {"torch": "9.9"},
        "machine": {"cpu": "Test CPU", "isa": "avx512", "isa_forced": None, "cores": 2, "torch_threads": 2},
        "rows": [row]}))
    table = report.tables(tmp_path)["rows_ce.time"]
    assert ("| avx2 (PyTorch forced too) | 2048 | 1024 x 151936 + 24960 | float32 | 12.50 | 14.00 | 0.89 | 125.0 | "
            "4,000.0 | 0.031 | 0.0e+00 |") in table
    assert report.plots(tmp_path)["rows_ce.svg"].startswith(b"<?xml")


def test_zero_width_hidden_gives_the_bias_only_loss() -> None:
    # D = 0: every logit is its bias. The front used to fail in reshape(-1, 0).
    torch.manual_seed(0)
    hidden = torch.zeros(2, 3, 0, requires_grad=True)
    new = torch.zeros(2, 0, requires_grad=True)
    base_bias, new_bias = torch.randn(3), torch.randn(2, requires_grad=True)
    targets = torch.tensor([[0, 4, 1], [3, -100, 2]])
    loss = rows_linear_cross_entropy(hidden, torch.zeros(3, 0), new, targets, base_bias=base_bias,
                                     new_bias=new_bias)
    loss.backward()
    bias = torch.cat([base_bias, new_bias.detach()]).requires_grad_(True)
    want = F.cross_entropy(bias.expand(6, 5), targets.reshape(-1))
    want.backward()
    assert torch.allclose(loss, want)
    assert hidden.grad.shape == (2, 3, 0) and new.grad.shape == (2, 0)
    assert torch.allclose(new_bias.grad, bias.grad[3:])
