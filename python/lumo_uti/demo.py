"""``lumo demo``: the quick tour on the embedded default bundle.

Encodes a small bundled document (text, a photo, a spoken sentence; files in
``lumo_uti/data/demo``) to one stream of global token IDs, decodes it back
strictly, and writes the inputs, the IDs, the reconstructions (PNG, WAV), a
side-by-side picture and a short report into an output folder.

The demo photo is scikit-image's ``chelsea`` (CC0) at 256 x 168, and the
sentence is espeak-ng speech in a voice the audio codec was not trained on;
both are from the codecs' evaluation split (docs/codec_training.md).
"""

from __future__ import annotations

import io
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

TEXTS = ("LumoOmni demo: one stream of tokens for text, pictures and sound. Here is a cat:",
         "And a spoken sentence:", "The end.")


def demo_dir() -> Path:
    return Path(str(resources.files("lumo_uti") / "data" / "demo"))


def demo_document() -> list[Any]:
    """The bundled document: [text, PIL image, text, Audio, text]."""
    from PIL import Image

    from .media import Audio

    with Image.open(demo_dir() / "image.png") as im:
        image = im.convert("RGB")
    audio = Audio.load(demo_dir() / "speech.wav")
    return [TEXTS[0], image, TEXTS[1], audio, TEXTS[2]]


def run(out: str | Path, uti: Any = None) -> tuple[list[str], bool]:
    """Run the demo into ``out``; returns (summary lines, round trip ok)."""
    from PIL import Image, ImageDraw

    from . import load
    from ._io import atomic_write_bytes, atomic_write_text
    from .codecs.audio_io import prepare
    from .docjson import describe_segment
    from .media import Audio
    from .metrics import psnr, si_snr

    uti = uti or load()
    ts = uti.token_space
    if uti.image_codec is None or uti.audio_codec is None:
        raise ValueError("lumo demo needs a bundle with an image and an audio codec")
    document = demo_document()
    ids = uti.encode(document)
    decoded = uti.decode(ids)  # strict: raises on any grammar violation
    image, audio = document[1], document[3]
    image_out, audio_out = decoded[1], decoded[3]

    texts_ok = [decoded[i] == document[i] for i in (0, 2, 4)] == [True] * 3 and len(decoded) == len(document)
    size_ok = image_out.size == image.size
    wave_in = prepare(audio, uti.audio_codec.sample_rate, 1)[0]
    wave_out = audio_out.waveform[0, : wave_in.shape[0]]
    rate_ok = audio_out.sample_rate == uti.audio_codec.sample_rate and wave_out.shape[0] == wave_in.shape[0]
    image_psnr = psnr(np.asarray(image, np.float32) / 255, np.asarray(image_out, np.float32) / 255)
    audio_si_snr = si_snr(wave_in, wave_out)
    ok = texts_ok and size_ok and rate_ok

    lines = [f"bundle       {ts.name}", f"fingerprint  {ts.fingerprint}",
             f"codecs       image {uti.image_codec.identity['name']} ({uti.image_codec.kind}), "
             f"audio {uti.audio_codec.identity['name']} ({uti.audio_codec.kind})",
             f"tokens       {len(ids)}", ""]
    lines.append(f"{'#':<3}{'segment':<58}{'tokens':>7}  blocks")
    for index, seg in enumerate(document):
        seg_ids = np.asarray(uti.encode([seg]))
        regions = sorted({ts.regions[r].name for r in ts.classify(seg_ids)})
        lines.append(f"{index:<3}{_describe(seg, describe_segment):<58}{len(seg_ids):>7}  {', '.join(regions)}")
    lines += [
        "",
        f"text round trip      {'exact' if texts_ok else 'MISMATCH'}",
        f"image                {image.size[0]}x{image.size[1]} -> {image_out.size[0]}x{image_out.size[1]}, "
        f"PSNR {image_psnr:.2f} dB",
        f"audio                {audio.duration:.2f} s -> {audio_out.duration:.2f} s at {audio_out.sample_rate} Hz, "
        f"SI-SNR {audio_si_snr:.2f} dB",
    ]

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def png(img) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    atomic_write_bytes(out / "input_image.png", png(image))
    atomic_write_bytes(out / "decoded_image.png", png(image_out))
    Audio(wave_in[None], uti.audio_codec.sample_rate).save(out / "input_audio.wav")
    Audio(wave_out[None], audio_out.sample_rate).save(out / "decoded_audio.wav")
    atomic_write_text(out / "ids.json", json.dumps(ids) + "\n")
    atomic_write_text(out / "decoded_text.json", json.dumps([decoded[i] for i in (0, 2, 4)]) + "\n")
    w, h = image.size
    side = Image.new("RGB", (2 * w + 12, h + 20), "white")
    side.paste(image, (0, 20))
    side.paste(image_out, (w + 12, 20))
    draw = ImageDraw.Draw(side)
    draw.text((4, 4), "input", fill="black")
    draw.text((w + 16, 4), f"decoded ({image_psnr:.1f} dB)", fill="black")
    atomic_write_bytes(out / "side_by_side.png", png(side))
    summary = {"fingerprint": ts.fingerprint, "tokens": len(ids), "image_psnr_db": image_psnr,
               "audio_si_snr_db": audio_si_snr, "round_trip_ok": ok}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "report.md", "# lumo demo\n\n```\n" + "\n".join(lines) + "\n```\n\n"
                      "![input and decoded image](side_by_side.png)\n\n"
                      "Audio: `input_audio.wav` (at the codec's rate) and `decoded_audio.wav`.\n")
    lines += ["", f"wrote {out}/: input_image.png, decoded_image.png, side_by_side.png, input_audio.wav, "
                  "decoded_audio.wav, ids.json, decoded_text.json, summary.json, report.md"]
    return lines, ok


def _describe(seg: Any, describe_segment) -> str:
    from .media import Audio

    if isinstance(seg, Audio):
        return f"audio {seg.duration:.2f} s at {seg.sample_rate} Hz"
    if hasattr(seg, "size") and hasattr(seg, "mode"):
        return f"image {seg.size[0]}x{seg.size[1]} {seg.mode}"
    return describe_segment(seg)
