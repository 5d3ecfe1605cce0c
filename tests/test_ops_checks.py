"""Every registered ``torch.ops.lumo_uti`` op checks what it reads, and so does the C++ side.

The ops are public through ``torch.ops`` (and ``torch.compile`` calls them
directly), so each one re-checks its tensors' shapes, dtypes and devices
instead of trusting the Python front: bad calls raise "op: expected X, got Y",
in eager mode and in the fake (meta) implementations alike. Below the ops,
each binding of ``lumo_uti._C`` takes its buffers as (address, extent) and
checks the extents against the sizes it is given before a kernel runs.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import lumo_uti.ops  # noqa: F401 - registers the ops
from lumo_uti.ops import _native
from lumo_uti.ops._native import buffer

OPS = torch.ops.lumo_uti
f32, f16, bf16, i64 = torch.float32, torch.float16, torch.bfloat16, torch.int64


def _attention(D: int = 8, dtype: torch.dtype = f32) -> list:
    """Valid inputs of resampler_attention_fwd: q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, scale."""
    return [torch.randn(2, 4, 3, D).to(dtype), torch.randn(2, 2, 5, D).to(dtype), torch.randn(2, 2, 5, D).to(dtype),
            torch.randn(2, 2, 3, D).to(dtype), torch.randn(2, 2, 3, D).to(dtype),
            torch.rand(2, 5) < 0.5, 0.35]


def _attention_bwd(**changes: torch.Tensor) -> list:
    """Valid inputs of resampler_attention_bwd (grad_out, the forward's inputs, out, lse, scale),
    with some replaced."""
    q, kc, vc, kl, vl, mask, scale = _attention()
    out, lse = OPS.resampler_attention_fwd(q, kc, vc, kl, vl, mask, scale)
    args = dict(grad_out=torch.randn_like(out), q=q, k_ctx=kc, v_ctx=vc, k_lat=kl, v_lat=vl,
                ctx_mask=mask, out=out, lse=lse, scale=scale)
    args.update(changes)
    return list(args.values())


def _rows_ce(**changes: object) -> list:
    """Valid inputs of rows_ce_forward (hidden, base_weight, new_weight, targets, base_bias, new_bias,
    ignore_index, masked, with_grad), with some replaced."""
    args = dict(hidden=torch.randn(5, 4), base_weight=torch.randn(7, 4), new_weight=torch.randn(3, 4),
                targets=torch.tensor([0, 9, -100, 4, 2]), base_bias=torch.randn(7), new_bias=torch.randn(3),
                ignore_index=-100, masked=[1, 2], with_grad=True)
    args.update(changes)
    return list(args.values())


def _rows_ce_bwd(**changes: object) -> list:
    """Valid inputs of rows_ce_new_rows_backward (grad_loss, hidden, new_weight, new_bias, targets, lse,
    base_rows, ignore_index, masked), with some replaced."""
    args = dict(grad_loss=torch.ones(5), hidden=torch.randn(5, 4), new_weight=torch.randn(3, 4),
                new_bias=torch.randn(3), targets=torch.tensor([0, 9, -100, 4, 2]), lse=torch.randn(5),
                base_rows=7, ignore_index=-100, masked=[1, 2])
    args.update(changes)
    return list(args.values())


# (name, op, make_args, exception, message). make_args builds the arguments at
# test time (after seeding).
BAD_CALLS: list[tuple[str, Callable, Callable[[], list], type, str]] = [
    # -- vq_search(x [N, D], codebook [K, D], codebook_norms [K] | None, inner_product)
    ("vq_search-d-mismatch", OPS.vq_search, lambda: [torch.randn(64, 1 << 20), torch.randn(16, 1), None, False],
     ValueError, r"vq_search: expected x \[\.\.\., 1\] \(D of the codebook \[16, 1\]\), got \(64, 1048576\)"),
    ("vq_search-x-3d", OPS.vq_search, lambda: [torch.randn(2, 3, 4), torch.randn(5, 4), None, False],
     ValueError, r"vq_search: expected x of shape \[N, D\], got \(2, 3, 4\)"),
    ("vq_search-codebook-1d", OPS.vq_search, lambda: [torch.randn(3, 4), torch.randn(4), None, False],
     ValueError, r"vq_search: expected codebook of shape \[K, D\], got \(4,\)"),
    ("vq_search-empty-codebook", OPS.vq_search, lambda: [torch.randn(3, 4), torch.randn(0, 4), None, False],
     ValueError, r"vq_search: expected a non-empty codebook \(K >= 1\), got K=0"),
    ("vq_search-d-zero", OPS.vq_search, lambda: [torch.randn(3, 0), torch.randn(5, 0), None, False],
     ValueError, r"vq_search: expected D >= 1, got D=0"),
    ("vq_search-dtype", OPS.vq_search, lambda: [torch.randn(3, 4).double(), torch.randn(5, 4).double(), None, False],
     TypeError, r"vq_search: expected x of dtype float32, float16 or bfloat16, got float64"),
    ("vq_search-mixed-dtype", OPS.vq_search, lambda: [torch.randn(3, 4), torch.randn(5, 4).half(), None, False],
     TypeError, r"vq_search: expected codebook of dtype float32 \(the dtype of x\), got float16"),
    ("vq_search-device", OPS.vq_search, lambda: [torch.randn(3, 4), torch.randn(5, 4, device="meta"), None, False],
     ValueError, r"vq_search: expected codebook on cpu \(the device of x\), got meta"),
    ("vq_search-norms-short", OPS.vq_search, lambda: [torch.randn(64, 8), torch.randn(16, 8), torch.rand(3), False],
     ValueError, r"vq_search: expected codebook_norms of shape \[16\] \(K of the codebook\), got \(3,\)"),
    ("vq_search-norms-2d", OPS.vq_search, lambda: [torch.randn(4, 8), torch.randn(16, 8), torch.rand(16, 1), False],
     ValueError, r"vq_search: expected codebook_norms of shape \[16\]"),
    ("vq_search-norms-int", OPS.vq_search, lambda: [torch.randn(4, 8), torch.randn(16, 8), torch.ones(16, dtype=i64), False],
     TypeError, r"vq_search: expected codebook_norms of dtype float32, float16 or bfloat16, got int64"),
    ("vq_search-norms-device", OPS.vq_search, lambda: [torch.randn(4, 8), torch.randn(16, 8), torch.rand(16, device="meta"), False],
     ValueError, r"vq_search: expected codebook_norms on cpu \(the device of x\), got meta"),
    # -- rvq_encode(x [N, D], codebooks [Q, K, D], n_q)
    ("rvq_encode-d-mismatch", OPS.rvq_encode, lambda: [torch.randn(8, 1 << 16), torch.randn(2, 4, 3), 2],
     ValueError, r"rvq_encode: expected x \[\.\.\., 3\] \(D of the codebooks \(2, 4, 3\)\), got \(8, 65536\)"),
    ("rvq_encode-x-3d", OPS.rvq_encode, lambda: [torch.randn(2, 8, 3), torch.randn(2, 4, 3), 2],
     ValueError, r"rvq_encode: expected x of shape \[N, D\], got \(2, 8, 3\)"),
    ("rvq_encode-n_q-too-big", OPS.rvq_encode, lambda: [torch.randn(8, 3), torch.randn(2, 4, 3), 5],
     ValueError, r"rvq_encode: expected 1 <= n_q <= 2 \(Q\), got n_q=5"),
    ("rvq_encode-n_q-zero", OPS.rvq_encode, lambda: [torch.randn(8, 3), torch.randn(2, 4, 3), 0],
     ValueError, r"rvq_encode: expected 1 <= n_q <= 2 \(Q\), got n_q=0"),
    ("rvq_encode-codebooks-2d", OPS.rvq_encode, lambda: [torch.randn(8, 3), torch.randn(4, 3), 1],
     ValueError, r"rvq_encode: expected codebooks of shape \[Q, K, D\], got \(4, 3\)"),
    ("rvq_encode-empty-k", OPS.rvq_encode, lambda: [torch.randn(8, 3), torch.randn(2, 0, 3), 1],
     ValueError, r"rvq_encode: expected Q, K, D >= 1, got codebooks \(2, 0, 3\)"),
    ("rvq_encode-mixed-dtype", OPS.rvq_encode, lambda: [torch.randn(8, 3).to(bf16), torch.randn(2, 4, 3), 1],
     TypeError, r"rvq_encode: expected codebooks of dtype bfloat16 \(the dtype of x\), got float32"),
    ("rvq_encode-device", OPS.rvq_encode, lambda: [torch.randn(8, 3), torch.randn(2, 4, 3, device="meta"), 1],
     ValueError, r"rvq_encode: expected codebooks on cpu \(the device of x\), got meta"),
    # -- rvq_decode(codes [N, q], codebooks [Q, K, D])
    ("rvq_decode-too-many-stages", OPS.rvq_decode, lambda: [torch.zeros(5, 3, dtype=i64), torch.randn(2, 4, 3)],
     ValueError, r"rvq_decode: expected codes of shape \[N, q\] with q <= 2 \(Q\), got \(5, 3\)"),
    ("rvq_decode-codes-1d", OPS.rvq_decode, lambda: [torch.zeros(5, dtype=i64), torch.randn(2, 4, 3)],
     ValueError, r"rvq_decode: expected codes of shape \[N, q\] with q <= 2 \(Q\), got \(5,\)"),
    ("rvq_decode-float-codes", OPS.rvq_decode, lambda: [torch.zeros(5, 2), torch.randn(2, 4, 3)],
     TypeError, r"rvq_decode: expected int32 or int64 codes, got float32"),
    ("rvq_decode-int-codebooks", OPS.rvq_decode, lambda: [torch.zeros(5, 2, dtype=i64), torch.ones(2, 4, 3, dtype=i64)],
     TypeError, r"rvq_decode: expected codebooks of dtype float32, float16 or bfloat16, got int64"),
    ("rvq_decode-empty-codebooks", OPS.rvq_decode, lambda: [torch.zeros(5, 2, dtype=i64), torch.randn(2, 4, 0)],
     ValueError, r"rvq_decode: expected Q, K, D >= 1, got codebooks \(2, 4, 0\)"),
    ("rvq_decode-device", OPS.rvq_decode, lambda: [torch.zeros(5, 2, dtype=i64), torch.randn(2, 4, 3, device="meta")],
     ValueError, r"rvq_decode: expected codebooks on cpu \(the device of codes\), got meta"),
    # -- resampler_attention_fwd(q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, scale)
    ("attention_fwd-k_ctx-short", OPS.resampler_attention_fwd, lambda: [*_attention()[:1], torch.randn(2, 2, 5, 4), *_attention()[2:]],
     ValueError, r"resampler_attention: expected k_ctx of shape \[B=2, Hkv, N, D=8\], got \(2, 2, 5, 4\)"),
    ("attention_fwd-v_lat-short", OPS.resampler_attention_fwd, lambda: [*_attention()[:4], torch.randn(2, 2, 2, 8), *_attention()[5:]],
     ValueError, r"resampler_attention: expected v_lat of shape \(2, 2, 3, 8\) \(\[B, Hkv, L, D\]\), got \(2, 2, 2, 8\)"),
    ("attention_fwd-mask-short", OPS.resampler_attention_fwd, lambda: [*_attention()[:5], torch.ones(2, 4, dtype=torch.bool), 0.35],
     ValueError, r"resampler_attention: expected ctx_mask of shape \(2, 5\) \(\[B, N\]\), got \(2, 4\)"),
    ("attention_fwd-head-dim-zero", OPS.resampler_attention_fwd, lambda: _attention(D=0),
     ValueError, r"resampler_attention: expected head dim D >= 1, got q of shape \(2, 4, 3, 0\)"),
    ("attention_fwd-mixed-dtype", OPS.resampler_attention_fwd, lambda: [_attention()[0].half(), *_attention()[1:]],
     TypeError, r"resampler_attention: expected k_ctx of dtype float16 \(the dtype of q\), got float32"),
    ("attention_fwd-device", OPS.resampler_attention_fwd, lambda: [*_attention()[:3], torch.randn(2, 2, 3, 8, device="meta"), *_attention()[4:]],
     ValueError, r"resampler_attention: expected k_lat on cpu \(the device of q\), got meta"),
    ("attention_fwd-inf-scale", OPS.resampler_attention_fwd, lambda: [*_attention()[:6], float("inf")],
     ValueError, r"resampler_attention: expected a finite float scale, got inf"),
    # -- resampler_attention_bwd(grad_out, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, out, lse, scale)
    ("attention_bwd-out-short", OPS.resampler_attention_bwd, lambda: _attention_bwd(out=torch.randn(2, 4, 1, 8)),
     ValueError, r"resampler_attention: expected out of shape \(2, 4, 3, 8\), got \(2, 4, 1, 8\)"),
    ("attention_bwd-lse-short", OPS.resampler_attention_bwd, lambda: _attention_bwd(lse=torch.randn(2, 4)),
     ValueError, r"resampler_attention: expected lse of shape \(2, 4, 3\), got \(2, 4\)"),
    ("attention_bwd-grad_out-short", OPS.resampler_attention_bwd, lambda: _attention_bwd(grad_out=torch.randn(2, 4, 3, 2)),
     ValueError, r"resampler_attention: expected grad_out of shape \(2, 4, 3, 8\), got \(2, 4, 3, 2\)"),
    ("attention_bwd-lse-dtype", OPS.resampler_attention_bwd, lambda: _attention_bwd(lse=torch.randn(2, 4, 3).half()),
     TypeError, r"resampler_attention: expected lse of dtype float32, got float16"),
    ("attention_bwd-out-dtype", OPS.resampler_attention_bwd, lambda: _attention_bwd(out=torch.randn(2, 4, 3, 8).to(bf16)),
     TypeError, r"resampler_attention: expected out of dtype float32, got bfloat16"),
    ("attention_bwd-grad_out-dtype", OPS.resampler_attention_bwd, lambda: _attention_bwd(grad_out=torch.ones(2, 4, 3, 8, dtype=i64)),
     TypeError, r"resampler_attention: expected grad_out of dtype float32, float16 or bfloat16, got int64"),
    ("attention_bwd-lse-device", OPS.resampler_attention_bwd, lambda: _attention_bwd(lse=torch.randn(2, 4, 3, device="meta")),
     ValueError, r"resampler_attention: expected lse on cpu \(the device of q\), got meta"),
    ("attention_bwd-q-short", OPS.resampler_attention_bwd, lambda: _attention_bwd(q=torch.randn(2, 4, 3, 7)),
     ValueError, r"resampler_attention: expected k_ctx of shape \[B=2, Hkv, N, D=7\], got \(2, 2, 5, 8\)"),
    # -- rowmask_embedding_backward(ids [*S], grad_out [*S, D], row_start, num_rows)
    ("rowmask-shape", OPS.rowmask_embedding_backward, lambda: [torch.zeros(4, 5, dtype=i64), torch.randn(4, 6, 3), 0, 8],
     ValueError, r"rowmask_embedding_backward: expected grad_out of shape \[\*ids.shape, D\] = \[4, 5, D\], got \(4, 6, 3\)"),
    ("rowmask-float-ids", OPS.rowmask_embedding_backward, lambda: [torch.zeros(4), torch.randn(4, 3), 0, 8],
     TypeError, r"rowmask_embedding_backward: expected integer ids, got float32"),
    ("rowmask-grad-dtype", OPS.rowmask_embedding_backward, lambda: [torch.zeros(4, dtype=i64), torch.randn(4, 3).double(), 0, 8],
     TypeError, r"rowmask_embedding_backward: expected grad_out of dtype float32, float16 or bfloat16, got float64"),
    ("rowmask-device", OPS.rowmask_embedding_backward, lambda: [torch.zeros(4, dtype=i64), torch.randn(4, 3, device="meta"), 0, 8],
     ValueError, r"rowmask_embedding_backward: expected grad_out on cpu \(the device of ids\), got meta"),
    ("rowmask-negative-rows", OPS.rowmask_embedding_backward, lambda: [torch.zeros(4, dtype=i64), torch.randn(4, 3), 0, -1],
     ValueError, r"rowmask_embedding_backward: expected num_rows >= 0, got -1"),
    # -- classify_ids(ids [*S], boundaries [R+1] int64)
    ("classify-float-ids", OPS.classify_ids, lambda: [torch.zeros(4), torch.tensor([0, 5])],
     TypeError, r"classify_ids: expected integer ids, got float32"),
    ("classify-bounds-2d", OPS.classify_ids, lambda: [torch.zeros(4, dtype=i64), torch.tensor([[0, 5]])],
     ValueError, r"classify_ids: expected 1-D boundaries, got shape \(1, 2\)"),
    ("classify-bounds-int32", OPS.classify_ids, lambda: [torch.zeros(4, dtype=i64), torch.tensor([0, 5], dtype=torch.int32)],
     TypeError, r"classify_ids: expected int64 boundaries, got int32"),
    ("classify-bounds-device", OPS.classify_ids, lambda: [torch.zeros(4, dtype=i64), torch.tensor([0, 5], device="meta")],
     ValueError, r"classify_ids: expected boundaries on cpu \(the device of ids\), got meta"),
    # -- rows_ce_forward(hidden [T, D], base [R, D], new [N, D], targets [T], base_bias [R]?, new_bias [N]?, ...)
    ("rows_ce_fwd-hidden-1d", OPS.rows_ce_forward, lambda: _rows_ce(hidden=torch.randn(5)),
     ValueError, r"rows_ce_forward: expected hidden of shape \[T, D\], got \(5,\)"),
    ("rows_ce_fwd-base-d", OPS.rows_ce_forward, lambda: _rows_ce(base_weight=torch.randn(7, 3)),
     ValueError, r"rows_ce_forward: expected base_weight of shape \[rows, 4\] \(D of hidden\), got \(7, 3\)"),
    ("rows_ce_fwd-new-d", OPS.rows_ce_forward, lambda: _rows_ce(new_weight=torch.randn(3, 1 << 16)),
     ValueError, r"rows_ce_forward: expected new_weight of shape \[rows, 4\] \(D of hidden\), got \(3, 65536\)"),
    ("rows_ce_fwd-targets-short", OPS.rows_ce_forward, lambda: _rows_ce(targets=torch.zeros(4, dtype=i64)),
     ValueError, r"rows_ce_forward: expected targets of shape \[5\] \(T of hidden\), got \(4,\)"),
    ("rows_ce_fwd-float-targets", OPS.rows_ce_forward, lambda: _rows_ce(targets=torch.zeros(5)),
     TypeError, r"rows_ce_forward: expected integer targets, got float32"),
    ("rows_ce_fwd-base_bias-short", OPS.rows_ce_forward, lambda: _rows_ce(base_bias=torch.randn(6)),
     ValueError, r"rows_ce_forward: expected base_bias of shape \[7\] \(R of base_weight\), got \(6,\)"),
    ("rows_ce_fwd-new_bias-short", OPS.rows_ce_forward, lambda: _rows_ce(new_bias=torch.randn(2)),
     ValueError, r"rows_ce_forward: expected new_bias of shape \[3\] \(N of new_weight\), got \(2,\)"),
    ("rows_ce_fwd-hidden-dtype", OPS.rows_ce_forward, lambda: _rows_ce(hidden=torch.ones(5, 4, dtype=i64)),
     TypeError, r"rows_ce_forward: expected hidden of dtype float32, float16, bfloat16 or float64, got int64"),
    ("rows_ce_fwd-new-dtype", OPS.rows_ce_forward, lambda: _rows_ce(new_weight=torch.ones(3, 4, dtype=torch.int32)),
     TypeError, r"rows_ce_forward: expected new_weight of dtype float32, float16, bfloat16 or float64, got int32"),
    ("rows_ce_fwd-device", OPS.rows_ce_forward, lambda: _rows_ce(base_weight=torch.randn(7, 4, device="meta")),
     ValueError, r"rows_ce_forward: expected base_weight on cpu \(the device of hidden\), got meta"),
    ("rows_ce_fwd-targets-device", OPS.rows_ce_forward, lambda: _rows_ce(targets=torch.zeros(5, dtype=i64, device="meta")),
     ValueError, r"rows_ce_forward: expected targets on cpu \(the device of hidden\), got meta"),
    ("rows_ce_fwd-masked-past-vocab", OPS.rows_ce_forward, lambda: _rows_ce(masked=[8, 11]),
     ValueError, r"rows_ce_forward: expected masked as sorted \[start, stop\) pairs within \[0, 10\], got \[8, 11\]"),
    ("rows_ce_fwd-masked-unsorted", OPS.rows_ce_forward, lambda: _rows_ce(masked=[4, 6, 1, 2]),
     ValueError, r"rows_ce_forward: expected masked as sorted \[start, stop\) pairs"),
    ("rows_ce_fwd-masked-odd", OPS.rows_ce_forward, lambda: _rows_ce(masked=[1]),
     ValueError, r"rows_ce_forward: expected masked as sorted \[start, stop\) pairs"),
    ("rows_ce_fwd-no-rows", OPS.rows_ce_forward,
     lambda: _rows_ce(base_weight=torch.randn(0, 4), new_weight=torch.randn(0, 4), targets=torch.full((5,), -100),
                      base_bias=None, new_bias=None, masked=[]),
     ValueError, r"rows_ce_forward: expected at least one head row, got R = N = 0"),
    # -- rows_ce_new_rows_backward(grad_loss [T], hidden [T, D], new [N, D], new_bias [N]?, targets [T], lse [T], ...)
    ("rows_ce_bwd-lse-short", OPS.rows_ce_new_rows_backward, lambda: _rows_ce_bwd(lse=torch.randn(4)),
     ValueError, r"rows_ce_new_rows_backward: expected lse of shape \[5\] \(T of hidden\), got \(4,\)"),
    ("rows_ce_bwd-lse-dtype", OPS.rows_ce_new_rows_backward, lambda: _rows_ce_bwd(lse=torch.randn(5).half()),
     TypeError, r"rows_ce_new_rows_backward: expected lse of dtype float32 \(the forward's\), got float16"),
    ("rows_ce_bwd-grad_loss-short", OPS.rows_ce_new_rows_backward, lambda: _rows_ce_bwd(grad_loss=torch.ones(3)),
     ValueError, r"rows_ce_new_rows_backward: expected grad_loss of shape \[5\] \(T of hidden\), got \(3,\)"),
    ("rows_ce_bwd-grad_loss-dtype", OPS.rows_ce_new_rows_backward, lambda: _rows_ce_bwd(grad_loss=torch.ones(5, dtype=i64)),
     TypeError, r"rows_ce_new_rows_backward: expected grad_loss of dtype float32, float16, bfloat16 or float64, got int64"),
    ("rows_ce_bwd-new-d", OPS.rows_ce_new_rows_backward, lambda: _rows_ce_bwd(new_weight=torch.randn(3, 6)),
     ValueError, r"rows_ce_new_rows_backward: expected new_weight of shape \[N, 4\] \(D of hidden\), got \(3, 6\)"),
    ("rows_ce_bwd-new_bias-short", OPS.rows_ce_new_rows_backward, lambda: _rows_ce_bwd(new_bias=torch.randn(4)),
     ValueError, r"rows_ce_new_rows_backward: expected new_bias of shape \[3\] \(N of new_weight\), got \(4,\)"),
    ("rows_ce_bwd-targets-short", OPS.rows_ce_new_rows_backward, lambda: _rows_ce_bwd(targets=torch.zeros(6, dtype=i64)),
     ValueError, r"rows_ce_new_rows_backward: expected targets of shape \[5\] \(T of hidden\), got \(6,\)"),
    ("rows_ce_bwd-float-targets", OPS.rows_ce_new_rows_backward, lambda: _rows_ce_bwd(targets=torch.zeros(5)),
     TypeError, r"rows_ce_new_rows_backward: expected integer targets, got float32"),
    ("rows_ce_bwd-device", OPS.rows_ce_new_rows_backward, lambda: _rows_ce_bwd(lse=torch.randn(5, device="meta")),
     ValueError, r"rows_ce_new_rows_backward: expected lse on cpu \(the device of hidden\), got meta"),
    ("rows_ce_bwd-negative-base-rows", OPS.rows_ce_new_rows_backward, lambda: _rows_ce_bwd(base_rows=-1),
     ValueError, r"rows_ce_new_rows_backward: expected base_rows >= 0, got -1"),
    ("rows_ce_bwd-masked-past-vocab", OPS.rows_ce_new_rows_backward, lambda: _rows_ce_bwd(masked=[2, 12]),
     ValueError, r"rows_ce_new_rows_backward: expected masked as sorted \[start, stop\) pairs within \[0, 10\]"),
]

def test_every_registered_op_is_covered() -> None:
    registered = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("lumo_uti::")}
    covered = {op._qualified_op_name.split("::")[1] for _, op, *_ in BAD_CALLS}
    assert registered == covered


@pytest.mark.parametrize(("name", "op", "make_args", "exc", "match"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_call_raises(name: str, op: Callable, make_args: Callable, exc: type, match: str) -> None:
    args = make_args()
    with pytest.raises(exc, match=f"^{match}"):
        op(*args)


@pytest.mark.parametrize(("name", "op", "make_args", "exc", "match"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_call_raises_in_the_fake_implementation(name: str, op: Callable, make_args: Callable, exc: type,
                                                    match: str) -> None:
    # What torch.compile traces: the same check, on tensors without data.
    args = make_args()
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(exc, match=f"^{match}"):
            op(*fake)


def test_resampler_backward_with_undersized_saved_tensors_never_computes() -> None:
    # Before the checks, an out / lse / grad_out of the wrong size was read
    # out of bounds and gave non-finite gradients.
    q, kc, vc, kl, vl, mask, scale = _attention()
    out, lse = OPS.resampler_attention_fwd(q, kc, vc, kl, vl, mask, scale)
    good = OPS.resampler_attention_bwd(torch.ones_like(out), q, kc, vc, kl, vl, mask, out, lse, scale)
    assert all(torch.isfinite(g).all() for g in good)
    for bad in (dict(out=out[:, :, :1]), dict(lse=lse[:, :, :1]), dict(grad_out=torch.ones(2, 4, 1, 8))):
        args = dict(grad_out=torch.ones_like(out), out=out, lse=lse) | bad
        with pytest.raises(ValueError, match="resampler_attention: expected"):
            OPS.resampler_attention_bwd(args["grad_out"], q, kc, vc, kl, vl, mask, args["out"], args["lse"],
                                        scale)


# ---------------------------------------------------------------------------
# The C++ side: each binding checks every buffer's extent against its sizes.
# ---------------------------------------------------------------------------


def _cpu_module():
    module = _native.cpu()
    if module is None:
        pytest.skip(f"CPU kernels not built ({_native.cpu_reason()})")
    return module


def test_buffer_extent_covers_views() -> None:
    t = torch.arange(60.0).reshape(6, 10)
    assert buffer(t) == (t.data_ptr(), 60)
    assert buffer(t[:, :4]) == (t.data_ptr(), 54)  # 5 row strides + 4
    assert buffer(t[2:3, 1:5]) == (t[2:3, 1:5].data_ptr(), 4)
    assert buffer(t[:0]) == (0, 0) and buffer(None) == (0, 0)


class Buffers:
    """``buffer()`` of tensors kept alive until the native call has read them."""

    def __init__(self) -> None:
        self.alive: list[torch.Tensor] = []

    def __call__(self, t: torch.Tensor) -> tuple[int, int]:
        self.alive.append(t)
        return buffer(t)


def _vq_args(b: Buffers) -> dict:
    return dict(x=b(torch.randn(4, 3)), x_dtype=0, n=4, d=3, cb=b(torch.randn(5, 3)), cb_dtype=0, k=5, norms=0,
                cn=(0, 0), codes=b(torch.empty(4, dtype=i64)), best=b(torch.empty(4)), num_threads=1, isa=0)


def _rvq_args(b: Buffers) -> dict:
    return dict(x=b(torch.randn(4, 3)), dtype=0, n=4, d=3, cbs=b(torch.randn(2, 5, 3)), num_q=2, k=5, n_q=2,
                codes=b(torch.empty(4, 2, dtype=i64)), num_threads=1, isa=0)


def _decode_args(b: Buffers) -> dict:
    return dict(codes=b(torch.zeros(4, 2, dtype=i64)), codes_itemsize=8, n=4, n_q=2, cbs=b(torch.randn(2, 5, 3)),
                dtype=0, num_q=2, k=5, d=3, out=b(torch.empty(4, 3)), num_threads=1)


def _attention_fwd_args(b: Buffers) -> dict:
    q, kc, vc, kl, vl, mask, scale = _attention()
    return dict(q=b(q), k_ctx=b(kc), v_ctx=b(vc), k_lat=b(kl), v_lat=b(vl), ctx_mask=b(mask.to(torch.uint8)),
                out=b(torch.empty(2, 4, 3, 8)), lse=b(torch.empty(2, 4, 3)), B=2, Hq=4, Hkv=2, L=3, N=5, D=8,
                scale=scale, dtype=0, num_threads=1)


def _attention_bwd_args(b: Buffers) -> dict:
    fwd = _attention_fwd_args(b)
    fwd["out"], fwd["lse"] = b(torch.randn(2, 4, 3, 8)), b(torch.randn(2, 4, 3))
    grads = {f"d{k}": b(torch.empty(n)) for k, n in
             (("q", 192), ("k_ctx", 160), ("v_ctx", 160), ("k_lat", 96), ("v_lat", 96))}
    return dict(dout=b(torch.randn(2, 4, 3, 8)), **fwd, **grads)

def _rows_ce_fwd_args(b: Buffers) -> dict:
    return dict(hidden=b(torch.randn(5, 4)), hidden_dtype=0, base=b(torch.randn(7, 4)), base_dtype=0,
                new_rows=b(torch.randn(3, 4)), new_dtype=0, base_bias=b(torch.randn(7)), base_bias_dtype=0,
                new_bias=b(torch.randn(3)), new_bias_dtype=0, targets=b(torch.tensor([0, 9, -100, 4, 2])),
                masked=b(torch.tensor([1, 2])), tokens=5, dim=4, base_rows=7, new_rows_count=3, ignore_index=-100,
                loss=b(torch.empty(5)), lse=b(torch.empty(5)), dhat=b(torch.empty(5, 4)), num_threads=1, isa=0)


def _rows_ce_bwd_args(b: Buffers) -> dict:
    fwd = _rows_ce_fwd_args(b)
    keep = ("hidden", "hidden_dtype", "new_rows", "new_dtype", "new_bias", "new_bias_dtype", "targets", "masked",
            "tokens", "dim", "base_rows", "new_rows_count", "ignore_index", "num_threads", "isa")
    return dict(grad_loss=b(torch.ones(5)), lse=b(torch.zeros(5)), grad_new=b(torch.empty(3, 4)),
                grad_new_bias=b(torch.empty(3)), **{k: fwd[k] for k in keep})



# (function, make_args, changes, message): every case has sizes that disagree
# with a buffer (or overflow); the kernels would read or write out of bounds.
NATIVE_CASES = [
    ("vq_search", _vq_args, lambda b: dict(d=1 << 20), r"vq_search: expected x of n \* d = 4194304 elements, got 12"),
    ("vq_search", _vq_args, lambda b: dict(k=16), r"vq_search: expected cb of k \* d = 48 elements, got 15"),
    ("vq_search", _vq_args, lambda b: dict(norms=1), r"vq_search: expected cn of k = 5 elements, got 0"),
    ("vq_search", _vq_args, lambda b: dict(norms=1, cn=b(torch.ones(3))), r"vq_search: expected cn of k = 5 elements, got 3"),
    ("vq_search", _vq_args, lambda b: dict(best=b(torch.empty(3))), r"vq_search: expected best of n = 4 elements, got 3"),
    ("vq_search", _vq_args, lambda b: dict(n=-1), r"vq_search: expected n >= 0, got -1"),
    ("vq_search", _vq_args, lambda b: dict(x=(0, 12)), r"vq_search: expected a non-null x pointer, got null"),
    ("vq_search", _vq_args, lambda b: dict(n=1 << 62, d=1 << 8),
     r"vq_search: expected sizes whose product n \* d fits int64"),
    ("rvq_encode", _rvq_args, lambda b: dict(num_q=3), r"rvq_encode: expected cbs of num_q \* k \* d = 45 elements, got 30"),
    ("rvq_encode", _rvq_args, lambda b: dict(n_q=3), r"rvq_encode: expected codes of n \* n_q = 12 elements, got 8"),
    ("rvq_decode", _decode_args, lambda b: dict(n_q=1), r"rvq_decode: expected codes of n \* n_q = 4 elements, got 8"),
    ("rvq_decode", _decode_args, lambda b: dict(k=50),
     r"rvq_decode: expected cbs of num_q \* k \* d = 300 elements, got 30"),
    ("resampler_attn_forward", _attention_fwd_args, lambda b: dict(D=16),
     r"resampler_attention \(cpu\): expected q of B \* Hq \* L \* D = 384 elements, got 192"),
    ("resampler_attn_forward", _attention_fwd_args, lambda b: dict(N=6),
     r"resampler_attention \(cpu\): expected k_ctx of B \* Hkv \* N \* D = 192 elements, got 160"),
    ("resampler_attn_forward", _attention_fwd_args, lambda b: dict(lse=b(torch.empty(2, 4, 2))),
     r"resampler_attention \(cpu\): expected lse of B \* Hq \* L = 24 elements, got 16"),
    ("resampler_attn_forward", _attention_fwd_args, lambda b: dict(ctx_mask=b(torch.ones(2, 4, dtype=torch.uint8))),
     r"resampler_attention \(cpu\): expected ctx_mask of B \* N = 10 elements, got 8"),
    ("resampler_attn_backward", _attention_bwd_args, lambda b: dict(out=b(torch.empty(2, 4, 1, 8))),
     r"resampler_attention_backward \(cpu\): expected out of B \* Hq \* L \* D = 192 elements, got 64"),
    ("resampler_attn_backward", _attention_bwd_args, lambda b: dict(lse=b(torch.empty(2, 4))),
     r"resampler_attention_backward \(cpu\): expected lse of B \* Hq \* L = 24 elements, got 8"),
    ("resampler_attn_backward", _attention_bwd_args, lambda b: dict(dout=b(torch.empty(2, 4, 3, 2))),
     r"resampler_attention_backward \(cpu\): expected dout of B \* Hq \* L \* D = 192 elements, got 48"),
    ("resampler_attn_backward", _attention_bwd_args, lambda b: dict(dk_lat=b(torch.empty(5))),
     r"resampler_attention_backward \(cpu\): expected dk_lat of B \* Hkv \* L \* D = 96 elements, got 5"),
    ("rows_ce_forward", _rows_ce_fwd_args, lambda b: dict(dim=8),
     r"rows_ce_forward: expected hidden of tokens \* dim = 40 elements, got 20"),
    ("rows_ce_forward", _rows_ce_fwd_args, lambda b: dict(base_rows=9),
     r"rows_ce_forward: expected base of base_rows \* dim = 36 elements, got 28"),
    ("rows_ce_forward", _rows_ce_fwd_args, lambda b: dict(new_rows_count=4),
     r"rows_ce_forward: expected new_rows of new_rows \* dim = 16 elements, got 12"),
    ("rows_ce_forward", _rows_ce_fwd_args, lambda b: dict(base_bias=b(torch.randn(6))),
     r"rows_ce_forward: expected base_bias of base_rows = 7 elements, got 6"),
    ("rows_ce_forward", _rows_ce_fwd_args, lambda b: dict(dhat=b(torch.empty(5, 3))),
     r"rows_ce_forward: expected dhat of tokens \* dim = 20 elements, got 15"),
    ("rows_ce_forward", _rows_ce_fwd_args, lambda b: dict(lse=b(torch.empty(4))),
     r"rows_ce_forward: expected lse of tokens = 5 elements, got 4"),
    ("rows_ce_forward", _rows_ce_fwd_args, lambda b: dict(targets=b(torch.tensor([0, 1, 2, 3, 10]))),
     r"rows_ce_forward: expected targets in \[0, base_rows \+ new_rows\) or ignore_index, got 10"),
    ("rows_ce_new_rows_backward", _rows_ce_bwd_args, lambda b: dict(grad_new=b(torch.empty(2, 4))),
     r"rows_ce_new_rows_backward: expected grad_new of new_rows \* dim = 12 elements, got 8"),
    ("rows_ce_new_rows_backward", _rows_ce_bwd_args, lambda b: dict(lse=b(torch.empty(3))),
     r"rows_ce_new_rows_backward: expected lse of tokens = 5 elements, got 3"),
    ("rows_ce_new_rows_backward", _rows_ce_bwd_args, lambda b: dict(tokens=6),
     r"rows_ce_new_rows_backward: expected hidden of tokens \* dim = 24 elements, got 20"),
]


@pytest.mark.parametrize(("fn", "make_args", "changes", "match"), NATIVE_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(NATIVE_CASES)])
def test_native_sizes_are_checked_against_the_buffers(fn: str, make_args: Callable, changes: Callable,
                                                      match: str) -> None:
    module = _cpu_module()
    b = Buffers()
    args = make_args(b)
    getattr(module, fn)(**args)  # the unchanged call is fine
    with pytest.raises((ValueError, IndexError), match=f"^{match}"):
        getattr(module, fn)(**(args | changes(b)))


def test_native_packed_calls_check_their_buffers() -> None:
    module = _cpu_module()
    cb = torch.randn(9, 4)
    with pytest.raises(ValueError, match=r"^vq_pack: expected cb of k \* d = 40 elements, got 36"):
        module.vq_pack(buffer(cb), 0, 10, 4, 0, (0, 0), 0)
    packed = module.vq_pack(buffer(cb), 0, 9, 4, 0, (0, 0), 0)
    x, codes, best = torch.randn(6, 4), torch.empty(6, dtype=i64), torch.empty(6)
    assert module.vq_search_packed(packed, buffer(x), 0, 6, 4, buffer(codes), buffer(best), 1) is None
    x7 = torch.randn(7, 4)
    with pytest.raises(ValueError, match=r"^vq_search: expected codes of n = 7 elements, got 6"):
        module.vq_search_packed(packed, buffer(x7), 0, 7, 4, buffer(codes), buffer(best), 1)
    cbs = torch.randn(3, 9, 4)
    with pytest.raises(ValueError, match=r"^rvq_pack: expected cbs of num_q \* k \* d = 144 elements, got 108"):
        module.rvq_pack(buffer(cbs), 0, 4, 9, 4, 0, 1)
    rpacked = module.rvq_pack(buffer(cbs), 0, 3, 9, 4, 0, 1)
    with pytest.raises(ValueError, match=r"^rvq_encode: expected codes of n \* n_q = 18 elements, got 6"):
        module.rvq_encode_packed(rpacked, buffer(x), 0, 6, 4, 3, buffer(codes), 1)
