"""Image losses and measures for ``lumo train-codec image``: a differentiable SSIM and the block-edge ratio."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights: the grey level the block-edge ratio is measured on.
LUMA = (0.299, 0.587, 0.114)


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


def block_edge_ratio(images: torch.Tensor, patch: int = 8) -> float:
    """Mean absolute grey-level gradient across ``patch``-pixel block boundaries over that inside blocks.

    ``images``: ``[B, 3, H, W]`` (any range). Horizontal and vertical neighbour
    differences are pooled; a difference is "across" when its two pixels lie in
    different blocks of the ``patch`` grid anchored at the top-left corner. About
    1.0 for natural images; a visible block grid gives clearly more.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"block_edge_ratio: expected images [B, 3, H, W], got {tuple(images.shape)}")
    if images.shape[-1] < 2 * patch or images.shape[-2] < 2 * patch:
        raise ValueError(f"block_edge_ratio: images must be at least {2 * patch} pixels on each side, "
                         f"got {tuple(images.shape[-2:])}")
    w = torch.tensor(LUMA, dtype=torch.float64, device=images.device)
    grey = (images.double() * w[None, :, None, None]).sum(1)
    dx = (grey[..., :, 1:] - grey[..., :, :-1]).abs()
    dy = (grey[..., 1:, :] - grey[..., :-1, :]).abs()
    across_x = (torch.arange(dx.shape[-1], device=images.device) % patch) == patch - 1
    across_y = (torch.arange(dy.shape[-2], device=images.device) % patch) == patch - 1
    across = torch.cat([dx[..., across_x].flatten(), dy[..., across_y, :].flatten()])
    inside = torch.cat([dx[..., ~across_x].flatten(), dy[..., ~across_y, :].flatten()])
    return float(across.mean() / inside.mean().clamp_min(1e-12))
