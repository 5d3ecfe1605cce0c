"""Image losses and measures for ``lumo train-codec image``: a differentiable SSIM and the block-edge ratio.

``block_edge_ratio`` (and ``LUMA``) live in ``lumo_uti.metrics`` so that ``lumo audit``
reports the same measure (``lumo_uti`` must not import ``lumo_model``); they are
re-exported here under their old names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lumo_uti.metrics import LUMA, block_edge_ratio

__all__ = ["LUMA", "block_edge_ratio", "ssim_map"]


def _window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-coords**2 / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim_map(x: torch.Tensor, y: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM of ``[B, C, H, W]`` images in [0, 1] (valid windows only; differentiable).

    The same constants as ``lumo_uti.metrics.ssim`` (Gaussian 11 x 11, sigma 1.5, k1 0.01, k2 0.03),
    so its mean equals that function's value.
    """
    c = x.shape[1]
    size = max(1, min(window, x.shape[-1], x.shape[-2]))
    size -= 1 - size % 2
    kernel = _window(size, sigma, c, x)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = filt(x), filt(y)
    vx, vy, cov = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    return (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
