"""The default image codec beside JPEG and WebP held to the same number of bytes as its codes.

A 256 x 256 image is 1024 codes of log2(16384) = 14 bits: 1792 bytes. For
each image, JPEG (Pillow, 4:2:0) and WebP (Pillow/libwebp, method 6) are
saved at the highest quality whose file fits in those bytes (a format that
does not fit even at quality 1 is reported as not fitting), and all three
reconstructions are measured with the same PSNR and SSIM (per RGB channel) as
``lumo codec-eval``. The JPEG/WebP files carry headers the codes do not, and
spend their bytes where the image needs them; the codec spends 14 bits on
every 8 x 8 block. This is a quality comparison, not a speed one: the JSON
holds the per-image figures, the means over the images every format fits, and
the machine record.

    python benchmarks/image_rate_baselines.py [--images DIR] [--out FILE]

``--images`` defaults to the bundled evaluation images (three photos, twelve
drawn images); ``data/images_eval`` of ``lumo codec-corpus`` adds the fourth
photo.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from machine import machine

import lumo_uti
from lumo_uti._io import atomic_write_text
from lumo_uti.codecs.image_io import fit_square, images_to_tensor, to_rgb
from lumo_uti.metrics import psnr, ssim

EVAL_IMAGES = Path(lumo_uti.__file__).parent / "data" / "eval" / "images"
SIZE = 256


def _largest_that_fits(image: Image.Image, fmt: str, budget: int) -> tuple[int, bytes] | None:
    """(quality, file) of the highest quality in 1..100 whose file is at most ``budget`` bytes."""
    for q in range(100, 0, -1):  # downwards: file size is not strictly monotonic in the quality
        buf = io.BytesIO()
        image.save(buf, fmt, quality=q, **({"method": 6} if fmt == "WEBP" else {}))
        if buf.tell() <= budget:
            return q, buf.getvalue()
    return None


def _scores(reference: torch.Tensor, decoded: torch.Tensor) -> dict[str, float]:
    return {"psnr_db": round(psnr(reference, decoded), 3), "ssim": round(ssim(reference, decoded), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=str(EVAL_IMAGES), help="folder of evaluation images")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    codec = lumo_uti.load().image_codec
    budget = (SIZE // codec.downsample) ** 2 * math.ceil(math.log2(codec.codebook_size)) // 8
    if not Path(args.images).is_dir():
        sys.exit(f"--images: {args.images} is not a folder")
    paths = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        sys.exit(f"no images in {args.images}")
    rows = {}
    for path in paths:
        with Image.open(path) as im:
            square = fit_square(to_rgb(im, str(path)).copy(), SIZE)
        reference = images_to_tensor([square], (0.5,) * 3, (0.5,) * 3)
        with torch.inference_mode():
            decoded = codec.decode_tensor(codec.encode_tensor(images_to_tensor([square], codec.mean, codec.std)))
        ours = (((decoded.clamp(-1, 1) + 1) / 2) * 255).round() / 255  # what a PNG of the decode holds
        row = {"lumo-vq": _scores((reference + 1) / 2, ours)}
        for fmt in ("JPEG", "WEBP"):
            fitted = _largest_that_fits(square, fmt, budget)
            if fitted is None:
                row[fmt.lower()] = None
                continue
            quality, data = fitted
            with Image.open(io.BytesIO(data)) as im:
                back = torch.from_numpy(np.asarray(im.convert("RGB"), np.float32) / 255).permute(2, 0, 1)[None]
            row[fmt.lower()] = {**_scores((reference + 1) / 2, back), "quality": quality, "bytes": len(data)}
        rows[path.name] = row

    def means(names: list[str], formats: tuple[str, ...] = ("lumo-vq", "jpeg", "webp")) -> dict | None:
        if not names:
            return None
        return {fmt: {k: round(statistics.fmean(rows[n][fmt][k] for n in names), 3) for k in ("psnr_db", "ssim")}
                for fmt in formats}

    photos = [n for n in rows if n.startswith("photo_")]
    report = {
        "suite": "image_rate_baselines",
        "command": "python benchmarks/image_rate_baselines.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "codec": str(Path(codec.directory).name) + " (the default bundle)",
        "size": SIZE,
        "budget_bytes": budget,
        "per_image": rows,
        "photos_where_all_fit": [n for n in photos if all(rows[n][f] for f in ("jpeg", "webp"))],
        "images_where_all_fit": [n for n in rows if all(rows[n][f] for f in ("jpeg", "webp"))],
        "photos_webp_fits": [n for n in photos if rows[n]["webp"]],
    }
    report["mean_over_photos_where_all_fit"] = means(report["photos_where_all_fit"])
    report["mean_over_photos_webp_fits"] = means(report["photos_webp_fits"], ("lumo-vq", "webp"))
    report["mean_over_images_where_all_fit"] = means(report["images_where_all_fit"])
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")  # a failed write keeps the previous report


if __name__ == "__main__":
    main()
