"""Pure-PyTorch reference of the VQ ops: the spec of their arithmetic, and the oracle.

The native kernels reproduce this arithmetic bit for bit, so codes are compared
with ``==`` in the tests, near-ties included. The contract (docs/ops_vq.md):

- inputs are converted to fp32 (exact for fp16/bf16);
- ``sqnorm(v) = (...((v0*v0) + v1*v1) + ...) + v[D-1]*v[D-1]``: every product
  and every sum rounded to fp32, summed in order ``d = 0..D-1``, no FMA;
- ``dot(x, c)`` likewise with ``x[d]*c[d]``;
- the ranking key is ``score[n, k] = cn[k] - (dot + dot)``, one fp32 rounding
  (``dot + dot`` is exact), with ``cn = sqnorm(c)`` (metric l2) or ``0``
  (inner product on normalised inputs, metric cosine);
- the code is the lowest ``k`` of the smallest ``score``;
- RVQ: ``r_0 = x``, ``code_q = argmin score(r_q, C_q)``,
  ``r_{q+1} = r_q - C_q[code_q]`` (fp32, elementwise);
- RVQ decode: ``out = (...(C_0[c_0] + C_1[c_1]) + ...)`` in fp32.

These functions assume validated inputs (see ``lumo_uti/ops/vq.py``) and work in chunks of
rows so that no more than ~4M distances exist at once.
"""

from __future__ import annotations

import torch

# Distances alive at once in the reference: rows per chunk = this // K.
_CHUNK_ELEMS = 1 << 22


def sqnorm_seq(v: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of each row of ``v`` ([M, D]) in the contract's order -> [M] fp32."""
    v = v.to(torch.float32)
    acc = torch.zeros(v.shape[0], dtype=torch.float32, device=v.device)
    for d in range(v.shape[1]):
        col = v[:, d]
        acc = acc + col * col
    return acc


def dot_seq(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``dot[n, k]`` of fp32 ``x`` [n, D] and ``c`` [K, D] in the contract's order -> [n, K]."""
    acc = torch.zeros(x.shape[0], c.shape[0], dtype=torch.float32, device=x.device)
    for d in range(x.shape[1]):
        acc = acc + x[:, d, None] * c[None, :, d]
    return acc


def vq_scores_reference(
    x: torch.Tensor, codebook: torch.Tensor, cn: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code by the contract's score, in row chunks.

    Args:
        x: ``[N, D]`` float (any dtype, any layout).
        codebook: ``[K, D]`` float, ``K >= 1``.
        cn: ``[K]`` fp32 code norms (``sqnorm_seq(codebook)`` for l2, zeros
            for the inner product).

    Returns:
        ``(codes [N] int64, best [N] fp32)``: the argmin (lowest index on ties)
        and the minimal score ``cn[k] - 2 dot(x, c_k)``.
    """
    n, k = x.shape[0], codebook.shape[0]
    xf = x.to(torch.float32)
    cf = codebook.to(torch.float32)
    codes = torch.empty(n, dtype=torch.int64, device=x.device)
    best = torch.empty(n, dtype=torch.float32, device=x.device)
    step = max(1, _CHUNK_ELEMS // max(k, 1))
    for start in range(0, n, step):
        dot = dot_seq(xf[start : start + step], cf)
        score = cn[None, :] - (dot + dot)
        # torch.argmin returns the first index of the minimum: ties -> lowest k.
        idx = torch.argmin(score, dim=1)
        codes[start : start + step] = idx
        best[start : start + step] = score.gather(1, idx[:, None])[:, 0]
    return codes, best


def vq_search_reference(
    x: torch.Tensor,
    codebook: torch.Tensor,
    codebook_norms: torch.Tensor | None = None,
    *,
    inner_product: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of the ``lumo_uti::vq_search`` op: ``x`` [N, D], ``codebook`` [K, D].

    ``inner_product``: rank by ``-2 dot`` (cn = 0) instead of the squared L2
    distance. ``codebook_norms``: ``[K]`` norms to use instead of
    ``sqnorm_seq(codebook)`` (l2 only). Returns ``(codes [N] int64, best [N] fp32)``.
    """
    k = codebook.shape[0]
    if inner_product:
        cn = torch.zeros(k, dtype=torch.float32, device=x.device)
    elif codebook_norms is not None:
        cn = codebook_norms.to(torch.float32)
    else:
        cn = sqnorm_seq(codebook)
    return vq_scores_reference(x, codebook, cn)


def rvq_encode_reference(x: torch.Tensor, codebooks: torch.Tensor, n_q: int) -> torch.Tensor:
    """Residual VQ codes: ``x`` [N, D], ``codebooks`` [Q, K, D] -> ``[N, n_q]`` int64."""
    residual = x.to(torch.float32)
    codes = torch.empty(x.shape[0], n_q, dtype=torch.int64, device=x.device)
    for q in range(n_q):
        cb = codebooks[q].to(torch.float32)
        code, _ = vq_scores_reference(residual, cb, sqnorm_seq(cb))
        codes[:, q] = code
        residual = residual - cb[code]
    return codes


def rvq_decode_reference(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Sum of looked-up vectors: ``codes`` [N, q] (in range), ``codebooks`` [Q, K, D] -> [N, D].

    Accumulates in fp32 in stage order and returns the codebooks' dtype.
    """
    n, q = codes.shape
    out = torch.zeros(n, codebooks.shape[2], dtype=torch.float32, device=codebooks.device)
    for i in range(q):
        out = out + codebooks[i].to(torch.float32)[codes[:, i].to(torch.int64)]
    return out.to(codebooks.dtype)
