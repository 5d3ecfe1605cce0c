"""Pure-PyTorch reference of the token-range classification: the spec and the oracle.

Assumes validated inputs (see ``lumo_uti/ops/token_range.py``).
"""

from __future__ import annotations

import torch


def classify_ids_reference(ids: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """Block index of every ID: ``r`` with ``boundaries[r] <= id < boundaries[r+1]``, else -1.

    Args:
        ids: ``[*S]`` integer tensor, any device and layout.
        boundaries: ``[R+1]`` int64, strictly increasing, on the device of ``ids``.

    Returns:
        ``[*S]`` int32 tensor on the device of ``ids``.
    """
    ids64 = ids.to(torch.int64).contiguous()
    if boundaries.numel() < 2:
        return torch.full(ids.shape, -1, dtype=torch.int32, device=ids.device)
    # right=True: the number of boundaries <= id, so r = that count - 1.
    r = torch.searchsorted(boundaries, ids64, right=True) - 1
    inside = (ids64 >= boundaries[0]) & (ids64 < boundaries[-1])
    return torch.where(inside, r, -1).to(torch.int32)
