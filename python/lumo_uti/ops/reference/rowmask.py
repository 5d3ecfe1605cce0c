"""Pure-PyTorch reference of the row-masked embedding gradient: the spec and the oracle."""

from __future__ import annotations

import torch


def rowmask_embedding_backward_reference(
    ids: torch.Tensor, grad_out: torch.Tensor, row_start: int, num_rows: int
) -> torch.Tensor:
    """Gradient of embedding rows ``[row_start, row_start + num_rows)``, in fp32.

    Args:
        ids: ``[*S]`` integer tensor.
        grad_out: ``[*S, D]`` float tensor on the device of ``ids``.
        row_start, num_rows: the row block (validated by the caller).

    Returns:
        ``[num_rows, D]`` float32: row ``r`` sums ``grad_out`` over the
        positions with ``ids == row_start + r`` in ascending position order
        (a stable sort, then a sequential segment sum: the kernels' order).
    """
    dim = grad_out.shape[-1]
    out = torch.zeros(num_rows, dim, dtype=torch.float32, device=grad_out.device)
    rel = ids.reshape(-1).to(torch.int64) - row_start
    g = grad_out.reshape(ids.numel(), dim).to(torch.float32)
    pos = torch.nonzero((rel >= 0) & (rel < num_rows)).reshape(-1)
    if pos.numel() == 0 or dim == 0:
        return out
    keys, order = torch.sort(rel[pos], stable=True)
    pos = pos[order]
    # Adding in hit order row by row: for each k, the k-th hit of every row at
    # once (rows with fewer hits are done); same order as a sequential sum.
    starts = torch.searchsorted(keys, keys, right=False)
    rank = torch.arange(keys.numel(), device=keys.device) - starts
    for k in range(int(rank.max()) + 1):
        sel = rank == k
        out[keys[sel]] += g[pos[sel]]
    return out
