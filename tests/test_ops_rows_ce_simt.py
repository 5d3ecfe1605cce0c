"""rows_linear_cross_entropy's CUDA kernels on the CPU through the SIMT emulator, against the CPU kernel.

``tests/simt_build.py`` compiles ``csrc/ops/rows_ce/cuda.cu`` and its binding
as C++ over the emulator; the op's CUDA branch (front included) then runs on
CPU tensors. The CPU kernel (or the reference where it is missing) is the oracle.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import simt_build
from lumo_uti.ops import _native
from lumo_uti.ops.rows_ce import rows_linear_cross_entropy

rows_ce_mod = importlib.import_module("lumo_uti.ops.rows_ce")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def simt_module():
    try:
        return simt_build.load()
    except simt_build.SimtUnavailable as e:
        pytest.skip(f"SIMT emulator unavailable: {e}")


def _run(module, monkeypatch, case, schedule=0):
    """Loss and gradients with the op's native path on `module` (None: as installed)."""
    if module is not None:
        monkeypatch.setattr(_native, "queue", lambda device: (0, 0))
        monkeypatch.setattr(rows_ce_mod, "_module", lambda *ts: module)
        module.simt_configure(schedule, 7, 132)
    h = case["hidden"].clone().requires_grad_(True)
    w = case["new"].clone().requires_grad_(True)
    nb = None if case["new_bias"] is None else case["new_bias"].clone().requires_grad_(True)
    loss = rows_linear_cross_entropy(h, case["base"], w, case["targets"], case["base_bias"], nb,
                                     masked_columns=case["masked"], reduction="none")
    loss.backward(torch.linspace(0.5, 1.5, loss.numel()))
    monkeypatch.undo()
    return [loss.detach(), h.grad, w.grad] + ([] if nb is None else [nb.grad])


@st.composite
def case_st(draw):
    t = draw(st.sampled_from([1, 3, 17, 33, 70]))
    d = draw(st.sampled_from([1, 5, 16, 21]))
    r = draw(st.sampled_from([1, 70, 300]))
    n = draw(st.sampled_from([0, 1, 65]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    dt = draw(st.sampled_from(DTYPES))
    bias = draw(st.booleans())
    v = r + n
    masked = [(v // 2, v // 2 + 3)] if draw(st.booleans()) and v > 8 else []
    targets = torch.randint(0, v, (t,), generator=g)
    for a, b in masked:
        targets[(targets >= a) & (targets < b)] = 0
    targets[torch.rand(t, generator=g) < 0.25] = -100
    if draw(st.booleans()):
        targets[t // 2:] = -100  # a padded tail: whole blocks of ignored tokens when t >= 33
    return dict(
        hidden=torch.randn(t, d, generator=g).to(dt), base=(0.5 * torch.randn(r, d, generator=g)).to(dt),
        new=(0.5 * torch.randn(n, d, generator=g)).to(dt), targets=targets,
        base_bias=torch.randn(r, generator=g).to(dt) if bias else None,
        new_bias=torch.randn(n, generator=g).to(dt) if bias else None, masked=masked,
    )


@settings(max_examples=25)
@given(case_st(), st.sampled_from([0, 1, 2]))
def test_cuda_kernels_match_cpu_kernel(simt_module, monkeypatch, case, schedule) -> None:
    got = _run(simt_module, monkeypatch, case, schedule)
    want = _run(None, monkeypatch, case)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-4, equal_nan=True)
