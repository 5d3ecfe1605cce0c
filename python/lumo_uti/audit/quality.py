"""metrics_v2 over the round trips: the numbers the gates compare.

Image: ``image.psnr_db`` is the PSNR of the MSE pooled over every pixel of
every image (capped at 100 dB, which also stands for "identical"),
``image.ssim`` the mean per-image SSIM, ``image.block_edge_ratio`` the mean
per-image block-edge ratio of the reconstructions (``metrics.block_edge_ratio``
on the grid of the codec's downsample factor, taken from the model size over
the code grid, else 8 pixels); each image row also records the original's
ratio (``block_edge_ratio_reference``, about 1.0 for natural images) so that a
value can be read against it. An image with fewer than two blocks on a side
has no block edge: its row holds None and the mean skips it.

Audio: ``audio.si_snr_db``, ``audio.stft_distance`` and ``audio.mel_distance``
are means over clips, each clip compared over the common length of input and
decode at the codec's rate.

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
DEFAULT_BLOCK = 8  # when the code grid does not divide the model size evenly


def block_size(info: dict[str, Any]) -> int:
    """The codec's downsample factor from a round trip's ``model_size`` ``[W, H]`` and ``code_shape``.

    Codes are ``[H', W']`` or ``[L, H', W']``; the factor is ``H / H'`` when it
    is a whole number equal to ``W / W'`` (and at least 2), else ``DEFAULT_BLOCK``.
    """
    try:
        w, h = (int(v) for v in info["model_size"])
        gh, gw = (int(v) for v in info["code_shape"][-2:])
    except (KeyError, TypeError, ValueError):
        return DEFAULT_BLOCK
    if gh <= 0 or gw <= 0 or h % gh or w % gw or h // gh != w // gw or h // gh < 2:
        return DEFAULT_BLOCK
    return h // gh


def _edge_ratio(pixels: torch.Tensor, block: int) -> float | None:
    """Block-edge ratio of one ``[3, H, W]`` image; None when it has fewer than two blocks on a side."""
    if min(pixels.shape[-2:]) < 2 * block:
        return None
    return metrics.block_edge_ratio(pixels[None], block)


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
        block = block_size(rt.info)
        rows.append(dict(name=rt.name, psnr_db=_cap(metrics.psnr(rt.reference, rt.reconstruction)),
                         ssim=metrics.ssim(rt.reference, rt.reconstruction),
                         block_edge_ratio=_edge_ratio(rt.reconstruction, block),
                         block_edge_ratio_reference=_edge_ratio(rt.reference, block),
                         block_edge_px=block, **rt.info))
    edges = [r["block_edge_ratio"] for r in rows if r["block_edge_ratio"] is not None]
    pooled_ref = torch.cat([rt.reference.reshape(-1) for rt in roundtrips])
    pooled_rec = torch.cat([rt.reconstruction.reshape(-1) for rt in roundtrips])
    books = codebook_stats([rt.codes for rt in roundtrips], codebook_size, axis_last=False)
    values = {
        "image.psnr_db": _cap(metrics.psnr(pooled_ref, pooled_rec)),
        "image.ssim": sum(r["ssim"] for r in rows) / len(rows),
        # Absent (not None) when no image is large enough: the gate then reads "skipped".
        **({"image.block_edge_ratio": sum(edges) / len(edges)} if edges else {}),
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
