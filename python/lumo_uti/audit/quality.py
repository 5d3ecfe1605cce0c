"""metrics_v2 over the round trips: the numbers the gates compare.

Image: ``image.psnr_db`` is the PSNR of the MSE pooled over every pixel of
every image (capped at 100 dB, which also stands for "identical"),
``image.ssim`` the mean per-image SSIM. Audio: ``audio.si_snr_db``,
``audio.stft_distance`` and ``audio.mel_distance`` are means over clips, each
clip compared over the common length of input and decode at the codec's rate.
Codebooks: usage fraction and perplexity per codebook (image layer / audio
residual codebook) over all samples' codes; the gated value is the worst
codebook's. Per-sample values are kept for the report.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import metrics
from .roundtrip import Roundtrip

PSNR_CAP_DB = 100.0


def _cap(x: float) -> float:
    return min(x, PSNR_CAP_DB)


def codebook_stats(codes: list[torch.Tensor], codebook_size: int, axis_last: bool) -> list[dict[str, Any]]:
    """Usage per codebook. Image codes ``[H, W]`` / ``[L, H, W]`` (``axis_last`` False), audio ``[T, Q]``."""
    if axis_last:
        per = [torch.cat([c[:, q].reshape(-1) for c in codes]) for q in range(codes[0].shape[-1])]
    else:
        layered = [c if c.dim() == 3 else c[None] for c in codes]
        per = [torch.cat([c[q].reshape(-1) for c in layered]) for q in range(layered[0].shape[0])]
    out = []
    for q, flat in enumerate(per):
        usage = metrics.codebook_usage(flat, codebook_size)
        out.append(dict(usage, codebook=q, codes=int(flat.numel())))
    return out


def measure_images(roundtrips: list[Roundtrip], codebook_size: int):
    """-> (metrics, per-sample rows, per-codebook usage)."""
    rows = []
    for rt in roundtrips:
        rows.append(dict(name=rt.name, psnr_db=_cap(metrics.psnr(rt.reference, rt.reconstruction)),
                         ssim=metrics.ssim(rt.reference, rt.reconstruction), **rt.info))
    pooled_ref = torch.cat([rt.reference.reshape(-1) for rt in roundtrips])
    pooled_rec = torch.cat([rt.reconstruction.reshape(-1) for rt in roundtrips])
    books = codebook_stats([rt.codes for rt in roundtrips], codebook_size, axis_last=False)
    values = {
        "image.psnr_db": _cap(metrics.psnr(pooled_ref, pooled_rec)),
        "image.ssim": sum(r["ssim"] for r in rows) / len(rows),
        "image.codebook_usage": min(b["fraction"] for b in books),
        "image.codebook_perplexity": min(b["perplexity"] for b in books),
    }
    return values, rows, books


def measure_audio(roundtrips: list[Roundtrip], codebook_size: int, sample_rate: int):
    """-> (metrics, per-sample rows, per-codebook usage)."""
    rows = []
    for rt in roundtrips:
        n = min(rt.reference.shape[-1], rt.reconstruction.shape[-1])
        ref, rec = rt.reference[:, :n], rt.reconstruction[:, :n]
        rows.append(dict(name=rt.name, si_snr_db=metrics.si_snr(ref, rec),
                         stft_distance=metrics.multi_resolution_stft_distance(ref, rec, sample_rate),
                         mel_distance=metrics.mel_distance(ref, rec, sample_rate), compared_samples=int(n), **rt.info))
    books = codebook_stats([rt.codes for rt in roundtrips], codebook_size, axis_last=True)
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    values = {
        "audio.si_snr_db": mean("si_snr_db"),
        "audio.stft_distance": mean("stft_distance"),
        "audio.mel_distance": mean("mel_distance"),
        "audio.codebook_usage": min(b["fraction"] for b in books),
        "audio.codebook_perplexity": min(b["perplexity"] for b in books),
    }
    return values, rows, books
