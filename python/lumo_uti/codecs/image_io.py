"""Images in and out of codec pixel space, with one documented policy.

Mode policy (``to_rgb``): RGB as is; L, 1, CMYK, YCbCr, LAB, HSV converted to
RGB; anything with alpha (RGBA, LA, PA, P with transparency, and the
premultiplied RGBa and La) composited over white; 16-bit and 32-bit integer
modes (I;16*, I) scaled by 1/257 (65535 -> 255); float mode F clipped to
[0, 255], and refused when a pixel is NaN or infinite (no colour to give it).

Size policy (``fit_square``): for codecs with a fixed input resolution R, the
shorter side is resized to R (bicubic, antialiased) and the centre R x R square
is kept. Decoding returns R x R images.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def to_rgb(image, where: str = "image"):
    """Any PIL image -> an RGB PIL image (see the module docstring)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise TypeError(f"{where}: expected a PIL.Image.Image, got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{where}: image has size {image.width}x{image.height}; both sides must be >= 1")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        if mode == "La":  # Pillow converts La (premultiplied) to LA only
            image = image.convert("LA")
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I"):
        arr = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        bad = ~np.isfinite(arr)
        if bad.any():
            y, x = (int(v) for v in np.argwhere(bad)[0])
            raise ValueError(
                f"{where}: float image has {int(bad.sum())} NaN or infinite pixel(s), the first at x={x}, y={y} "
                f"(value {arr[y, x]}); expected finite values in [0, 255]"
            )
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def fit_square(image, size: int):
    """Resize the shorter side to ``size`` (bicubic) and centre-crop ``size x size``."""
    from PIL import Image

    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def images_to_tensor(images: Sequence, mean: Sequence[float], std: Sequence[float]):
    """RGB PIL images of one size -> float32 ``[B, 3, H, W]``, (x / 255 - mean) / std."""
    import torch

    arr = np.stack([np.asarray(img, dtype=np.float32) for img in images]) / 255.0  # [B, H, W, 3]
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


def tensor_to_images(pixels, mean: Sequence[float], std: Sequence[float]) -> list:
    """float ``[B, 3, H, W]`` in model space -> RGB PIL images (clipped, rounded)."""
    import torch
    from PIL import Image

    m = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    x = (pixels.detach().float() * s + m).clamp(0, 1) * 255.0
    arr = x.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, "RGB") for a in arr]
