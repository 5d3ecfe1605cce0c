"""Audit pictures, drawn with PIL only (no matplotlib).

- ``image_grid``: one row per image, original | reconstruction, with PSNR/SSIM
  and the reconstruction's block-edge ratio (original's in brackets);
- ``audio_comparison``: per clip, the two waveforms overlaid and the two
  log-magnitude spectrograms (dB, 80 dB range, a dark-to-yellow colormap);
- ``codebook_histogram``: per codebook, code counts (entries grouped into at
  most 512 columns) with used fraction and perplexity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .roundtrip import Roundtrip

_BG = (255, 255, 255)
_INK = (20, 20, 20)
_ORIGINAL = (31, 119, 180)
_RECON = (255, 127, 14)
_CELL = 128  # images smaller than this are enlarged (nearest) so codes stay visible
_MAX_CELL = 256
_LABEL = 14
# Colormap stops (position, RGB): black -> purple -> orange -> light yellow.
_STOPS = np.array([0.0, 0.35, 0.7, 1.0])
_COLORS = np.array([[0, 0, 4], [120, 28, 109], [237, 105, 37], [252, 255, 164]], dtype=np.float64)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] ``[H, W]`` -> uint8 RGB ``[H, W, 3]``."""
    v = np.clip(values, 0.0, 1.0)
    rgb = np.stack([np.interp(v, _STOPS, _COLORS[:, c]) for c in range(3)], axis=-1)
    return rgb.round().astype(np.uint8)


def _save(image, path: Path) -> str:
    import io

    from .._io import atomic_write_bytes

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path.name


def _pil(pixels: torch.Tensor):
    from PIL import Image

    arr = (pixels.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr, "RGB")


def _fit(image, side: int):
    from PIL import Image

    w, h = image.size
    scale = side / max(w, h)
    method = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BICUBIC
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), method)


def image_grid(roundtrips: list[Roundtrip], rows: list[dict[str, Any]], path: Path, max_rows: int = 16) -> str:
    """Original | reconstruction per row; returns the file name."""
    from PIL import Image, ImageDraw

    shown = list(zip(roundtrips, rows))[:max_rows]
    side = min(_MAX_CELL, max(_CELL, max(max(rt.reference.shape[-2:]) for rt, _ in shown)))
    pad, label = 6, _LABEL + 4
    width = 2 * side + 3 * pad
    canvas = Image.new("RGB", (width, pad + label + len(shown) * (side + label + pad)), _BG)
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), "original", fill=_INK)
    draw.text((2 * pad + side, pad), "reconstruction", fill=_INK)
    y = pad + label
    for rt, row in shown:
        for col, pixels in enumerate((rt.reference, rt.reconstruction)):
            canvas.paste(_fit(_pil(pixels), side), (pad + col * (side + pad), y))
        caption = f"{row['name']}  PSNR {row['psnr_db']:.2f} dB  SSIM {row['ssim']:.3f}"
        if row.get("block_edge_ratio") is not None:
            ref = row.get("block_edge_ratio_reference")
            caption += f"  block-edge {row['block_edge_ratio']:.2f}" + (f" (orig {ref:.2f})" if ref is not None else "")
        draw.text((pad, y + side + 2), caption, fill=_INK)
        y += side + label + pad
    return _save(canvas, path)


def _spectrogram(wave: torch.Tensor, n_fft: int) -> np.ndarray:
    """Mono ``[T]`` -> magnitude dB ``[F, frames]`` (low frequencies last row first)."""
    window = torch.hann_window(n_fft, dtype=torch.float64)
    spec = torch.stft(wave.to(torch.float64), n_fft, hop_length=max(1, n_fft // 4), window=window,
                      center=True, pad_mode="constant", return_complex=True).abs()
    return (20 * torch.log10(spec + 1e-8)).numpy()


def audio_comparison(rt: Roundtrip, row: dict[str, Any], sample_rate: int, path: Path) -> str:
    """Waveforms overlaid + two spectrograms for one clip; returns the file name."""
    from PIL import Image, ImageDraw

    from ..metrics import stft_sizes

    width, wave_h, spec_h, pad = 800, 160, 160, 6
    n = min(rt.reference.shape[-1], rt.reconstruction.shape[-1])
    ref = rt.reference[:, :n].mean(dim=0)
    rec = rt.reconstruction[:, :n].mean(dim=0)
    height = pad + _LABEL + wave_h + 2 * (spec_h + _LABEL + pad) + pad
    canvas = Image.new("RGB", (width + 2 * pad, height), _BG)
    draw = ImageDraw.Draw(canvas)
    title = (f"{row['name']}  SI-SNR {row['si_snr_db']:.2f} dB  STFT {row['stft_distance']:.3f}  "
             f"mel {row['mel_distance']:.3f}   blue: original, orange: reconstruction")
    draw.text((pad, pad), title, fill=_INK)
    top = pad + _LABEL
    peak = float(max(ref.abs().max(), rec.abs().max(), 1e-6))
    draw.line([(pad, top + wave_h // 2), (pad + width, top + wave_h // 2)], fill=(200, 200, 200))
    def ypos(v: float) -> float:
        return top + wave_h / 2 - v / peak * (wave_h / 2 - 2)

    for wave, color in ((ref, _ORIGINAL), (rec, _RECON)):
        samples = wave.numpy()
        if n <= width:  # few samples: a polyline through them
            xs = np.linspace(pad, pad + width, max(n, 2))
            draw.line([(float(x), ypos(float(v))) for x, v in zip(xs, samples)], fill=color)
            continue
        # Many samples: the min/max envelope per pixel column keeps peaks visible.
        for x, chunk in enumerate(np.array_split(samples, width)):
            draw.line([(pad + x, ypos(float(chunk.max()))), (pad + x, ypos(float(chunk.min())))], fill=color)
    n_fft = stft_sizes(sample_rate, n)[min(1, len(stft_sizes(sample_rate, n)) - 1)]
    spec_ref, spec_rec = _spectrogram(ref, n_fft), _spectrogram(rec, n_fft)
    top_db = float(spec_ref.max())
    y = top + wave_h + pad
    for label, spec in (("original spectrogram", spec_ref), ("reconstruction spectrogram", spec_rec)):
        draw.text((pad, y), f"{label} (dB, {n_fft}-point FFT, 80 dB range)", fill=_INK)
        norm = (spec - (top_db - 80.0)) / 80.0
        img = Image.fromarray(colormap(norm[::-1].copy()), "RGB").resize((width, spec_h), Image.Resampling.BILINEAR)
        canvas.paste(img, (pad, y + _LABEL))
        y += spec_h + _LABEL + pad
    return _save(canvas, path)


def codebook_histogram(modality: str, books: list[dict[str, Any]], path: Path) -> str:
    """One bar chart per codebook; returns the file name."""
    from PIL import Image, ImageDraw

    width, bar_h, pad = 512, 90, 6
    canvas = Image.new("RGB", (width + 2 * pad, pad + len(books) * (bar_h + _LABEL + pad)), _BG)
    draw = ImageDraw.Draw(canvas)
    y = pad
    for book in books:
        hist = np.asarray(book["histogram"], dtype=np.float64)
        k = hist.size
        draw.text((pad, y), f"{modality} codebook {book['codebook']}: {book['used']}/{k} used "
                            f"({book['fraction']:.1%}), perplexity {book['perplexity']:.1f}", fill=_INK)
        top = y + _LABEL
        cols = min(width, k)
        grouped = np.array([c.sum() for c in np.array_split(hist, cols)])
        peak = grouped.max() if grouped.size and grouped.max() > 0 else 1.0
        col_w = width / cols
        draw.rectangle([pad, top, pad + width, top + bar_h], outline=(200, 200, 200))
        for i, count in enumerate(grouped):
            if count > 0:
                h = max(1.0, count / peak * (bar_h - 2))
                x0 = pad + i * col_w
                draw.rectangle([x0, top + bar_h - h, max(x0, x0 + col_w - 1), top + bar_h], fill=_ORIGINAL)
        y = top + bar_h + pad
    return _save(canvas, path)
