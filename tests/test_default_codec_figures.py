"""The shipped codecs reproduce the per-photo and per-clip figures that docs/codec_training.md states."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "codec_training.md"
EVAL_IMAGES = ROOT / "python" / "lumo_uti" / "data" / "eval" / "images"
EVAL_AUDIO = ROOT / "python" / "lumo_uti" / "data" / "eval" / "audio"


def _documented() -> dict[str, dict[str, float]]:
    """Rows ``| photo_<name> | PSNR | SSIM | block-edge ratio | PSNR / SSIM with 8 views |`` of the
    shipped-weights table."""
    rows = re.findall(r"^\| (photo_\w+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) / ([\d.]+) \|$",
                      DOC.read_text(), re.MULTILINE)
    return {name: {"psnr_db": float(p), "ssim": float(s), "block_edge_ratio": float(e),
                   "views_8_psnr_db": float(p8), "views_8_ssim": float(s8)} for name, p, s, e, p8, s8 in rows}


def test_the_documented_photos_are_bundled():
    documented = _documented()
    assert len(documented) >= 3
    bundled = {p.stem for p in EVAL_IMAGES.glob("photo_*.png")}
    assert bundled and bundled <= set(documented)


@pytest.mark.parametrize("photo", sorted(p.stem for p in EVAL_IMAGES.glob("photo_*.png")))
def test_shipped_image_codec_reproduces_the_documented_figures(photo):
    from PIL import Image

    import lumo_uti
    from lumo_model.codec.image_quality import block_edge_ratio
    from lumo_uti.codecs.image_io import images_to_tensor, to_rgb
    from lumo_uti.metrics import psnr, ssim

    from lumo_uti.codecs.lumo_vq import LumoVQCodec

    codec = lumo_uti.load().image_codec
    with Image.open(EVAL_IMAGES / f"{photo}.png") as im:
        x = images_to_tensor([to_rgb(im).copy()], codec.mean, codec.std)
    assert x.shape[-2:] == (256, 256)  # bundled at the evaluation size: no resizing here
    with torch.inference_mode():
        codes = codec.encode_tensor(x)
        y = codec.decode_tensor(codes).clamp(-1, 1)
        y8 = LumoVQCodec(codec.directory, decode_views=8).decode_tensor(codes).clamp(-1, 1)
    ref, rec, rec8 = ((x + 1) / 2, *(((v + 1) / 2 * 255).round() / 255 for v in (y, y8)))
    want = _documented()[photo]
    assert psnr(ref, rec) == pytest.approx(want["psnr_db"], abs=0.05)
    assert ssim(ref, rec) == pytest.approx(want["ssim"], abs=0.005)
    assert block_edge_ratio(rec) == pytest.approx(want["block_edge_ratio"], abs=0.01)
    # the decode_views option's column: the same codes, decoded as the mean of eight views
    assert psnr(ref, rec8) == pytest.approx(want["views_8_psnr_db"], abs=0.05)
    assert ssim(ref, rec8) == pytest.approx(want["views_8_ssim"], abs=0.005)


def _documented_clips() -> dict[str, tuple[float, float]]:
    """Rows ``| speech_... | SI-SNR | mel distance |`` (and music) of the shipped-weights tables."""
    rows = re.findall(r"^\| ((?:speech|music)_[\w-]+) \| ([\d.]+) \| ([\d.]+) \|$", DOC.read_text(), re.MULTILINE)
    return {name: (float(snr), float(mel)) for name, snr, mel in rows}


def test_every_bundled_clip_is_documented():
    bundled = {p.stem for p in EVAL_AUDIO.glob("*.wav")}
    assert len(bundled) >= 8 and bundled == set(_documented_clips())


@pytest.mark.parametrize("clip", sorted(p.stem for p in EVAL_AUDIO.glob("*.wav")))
def test_shipped_audio_codec_reproduces_the_documented_figures(clip):
    import lumo_uti
    from lumo_uti.codecs.audio_io import prepare
    from lumo_uti.media import Audio
    from lumo_uti.metrics import mel_distance, si_snr

    codec = lumo_uti.load().audio_codec
    path = EVAL_AUDIO / f"{clip}.wav"
    wave = prepare(Audio.load(path), codec.sample_rate, 1, str(path))[0]
    with torch.inference_mode():
        rec = codec.decode_tensor(codec.encode_tensor(wave[None, None]))[0, 0, : wave.shape[0]]
    snr, mel = _documented_clips()[clip]
    assert si_snr(wave, rec) == pytest.approx(snr, abs=0.05)
    assert mel_distance(wave, rec, codec.sample_rate) == pytest.approx(mel, abs=0.005)
