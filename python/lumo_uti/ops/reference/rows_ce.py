"""Pure-PyTorch spec of the rows-only linear cross-entropy: the oracle and the fallback.

The vocabulary is ``[0, R)`` (frozen base rows) followed by ``[R, R + N)``
(trainable new rows); logit ``z[t, v] = hidden[t] . W[v] + b[v]`` with ``W``
the base rows then the new rows. Masked columns get ``-inf``. Both functions
walk the vocabulary in tiles of ``tile`` columns with an online log-sum-exp,
so no ``[T, V]`` tensor exists; the largest temporary is ``[T, tile]``.
Accumulation is in float32 (float64 when an input is float64). Inputs are
assumed validated by ``lumo_uti.ops.rows_ce``.
"""

from __future__ import annotations

import torch

__all__ = ["rows_ce_forward_reference", "rows_ce_new_rows_backward_reference", "TILE"]

TILE = 2048


def _acc_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _mask_tile(z: torch.Tensor, lo: int, masked: list[int]) -> None:
    """Set the columns of tile ``[lo, lo + width)`` that fall in a masked range to -inf, in place."""
    hi = lo + z.shape[1]
    for a, b in zip(masked[::2], masked[1::2]):
        a, b = max(a, lo), min(b, hi)
        if a < b:
            z[:, a - lo : b - lo] = float("-inf")


def _tiles(base_rows: int, new_rows: int, tile: int):
    """(lo, rows of W, bias slice source) per tile; tiles never straddle base and new rows."""
    for table, offset, count in ((0, 0, base_rows), (1, base_rows, new_rows)):
        for start in range(0, count, tile):
            yield table, offset + start, start, min(count, start + tile)


def rows_ce_forward_reference(
    hidden: torch.Tensor,
    base_weight: torch.Tensor,
    new_weight: torch.Tensor,
    targets: torch.Tensor,
    base_bias: torch.Tensor | None,
    new_bias: torch.Tensor | None,
    ignore_index: int,
    masked: list[int],
    with_grad: bool,
    tile: int = TILE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token loss, log-sum-exp and the unit gradient of the hidden states.

    Args:
        hidden: ``[T, D]``; base_weight: ``[R, D]``; new_weight: ``[N, D]``.
        targets: ``[T]`` integer IDs in ``[0, R + N)`` or ``ignore_index``.
        base_bias: ``[R]`` or None; new_bias: ``[N]`` or None.
        masked: flat ``[start0, stop0, start1, stop1, ...]`` sorted, disjoint
            half-open column ranges set to -inf.
        with_grad: also return ``dhat``.

    Returns:
        ``loss [T]`` (``lse - z[t, target]``, 0 where ignored), ``lse [T]``
        (0 where ignored), and ``dhat [T, D]``: ``sum_v softmax(z)[t, v] W[v] -
        W[target]`` (0 where ignored; ``[0]`` when not ``with_grad``), so the
        gradient of the hidden state is ``grad_loss[t] * dhat[t]``. All in the
        accumulation dtype.
    """
    acc = _acc_dtype(hidden, base_weight, new_weight, base_bias, new_bias)
    dev = hidden.device
    t_count, dim = hidden.shape
    base_rows, new_rows = base_weight.shape[0], new_weight.shape[0]
    valid = targets != ignore_index
    h = hidden.to(acc)
    tgt = torch.where(valid, targets, 0).to(torch.int64)
    m = torch.full((t_count,), float("-inf"), dtype=acc, device=dev)
    s = torch.zeros(t_count, dtype=acc, device=dev)
    z_target = torch.zeros(t_count, dtype=acc, device=dev)
    d_acc = torch.zeros(t_count, dim, dtype=acc, device=dev) if with_grad else None
    rows = torch.arange(t_count, device=dev)
    for table, lo, a, b in _tiles(base_rows, new_rows, tile):
        weight = (base_weight if table == 0 else new_weight)[a:b].to(acc)
        bias = base_bias if table == 0 else new_bias
        z = h @ weight.T
        if bias is not None:
            z = z + bias[a:b].to(acc)
        _mask_tile(z, lo, masked)
        inside = (tgt >= lo) & (tgt < lo + (b - a))
        z_target = torch.where(inside, z[rows, (tgt - lo).clamp(0, b - a - 1)], z_target)
        m_new = torch.maximum(m, z.amax(dim=1))
        # A row whose columns so far are all -inf keeps m = -inf; shifting by 0
        # there keeps exp() at 0 instead of exp(-inf + inf) = NaN.
        shift = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        scale = torch.exp(m - shift)
        p = torch.exp(z - shift[:, None])
        s = s * scale + p.sum(dim=1)
        if d_acc is not None:
            d_acc = d_acc * scale[:, None] + p @ weight
        m = m_new
    lse = torch.where(torch.isinf(m), m, m + torch.log(s))
    loss = torch.where(valid, lse - z_target, torch.zeros_like(lse))
    lse = torch.where(valid, lse, torch.zeros_like(lse))
    if d_acc is None:
        return loss, lse, torch.zeros(0, dtype=acc, device=dev)
    w_target = torch.zeros(t_count, dim, dtype=acc, device=dev)
    is_base = valid & (tgt < base_rows)
    is_new = valid & (tgt >= base_rows)
    if base_rows:
        w_target[is_base] = base_weight[tgt[is_base]].to(acc)
    if new_rows:
        w_target[is_new] = new_weight[tgt[is_new] - base_rows].to(acc)
    dhat = torch.where(valid[:, None], d_acc / s[:, None] - w_target, torch.zeros_like(d_acc))
    return loss, lse, dhat


def rows_ce_new_rows_backward_reference(
    grad_loss: torch.Tensor,
    hidden: torch.Tensor,
    new_weight: torch.Tensor,
    new_bias: torch.Tensor | None,
    targets: torch.Tensor,
    lse: torch.Tensor,
    base_rows: int,
    ignore_index: int,
    masked: list[int],
    tile: int = TILE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the new rows (and their bias) from the per-token loss gradient.

    Args:
        grad_loss: ``[T]`` gradient of each token's loss.
        hidden, new_weight, new_bias, targets: as in the forward.
        lse: ``[T]`` from the forward.

    Returns:
        ``grad_new [N, D]`` and ``grad_new_bias [N]`` in the accumulation
        dtype: ``sum_t grad_loss[t] * (softmax(z)[t, R + n] - [target_t == R + n])``
        times ``hidden[t]`` (resp. 1), over non-ignored tokens.
    """
    acc = _acc_dtype(hidden, new_weight, new_bias, grad_loss)
    dev = hidden.device
    new_rows, dim = new_weight.shape
    valid = targets != ignore_index
    g = torch.where(valid, grad_loss.to(acc), torch.zeros((), dtype=acc, device=dev))
    h = hidden.to(acc)
    tgt = torch.where(valid, targets, -1).to(torch.int64)
    grad_new = torch.zeros(new_rows, dim, dtype=acc, device=dev)
    grad_bias = torch.zeros(new_rows, dtype=acc, device=dev)
    lse_safe = torch.where(valid, lse.to(acc), torch.zeros_like(g))
    for a in range(0, new_rows, tile):
        b = min(new_rows, a + tile)
        lo = base_rows + a
        z = h @ new_weight[a:b].to(acc).T
        if new_bias is not None:
            z = z + new_bias[a:b].to(acc)
        _mask_tile(z, lo, masked)
        onehot = (tgt[:, None] - lo) == torch.arange(b - a, device=dev)[None, :]
        dz = (torch.exp(z - lse_safe[:, None]) - onehot.to(acc)) * g[:, None]
        dz = torch.where(valid[:, None], dz, torch.zeros((), dtype=acc, device=dev))
        grad_new[a:b] = dz.T @ h
        grad_bias[a:b] = dz.sum(dim=0)
    return grad_new, grad_bias
