"""Encode + decode of every evaluation sample, in the codec's own space.

Images are audited at the codec's natural size: ``codec.preprocess`` gives the
model-space input ``[3, H, W]`` (resized/cropped as the codec's size policy
says), it is encoded and decoded with ``encode_tensor`` / ``decode_tensor``,
and both sides are converted back to pixels in ``[0, 1]`` (the decode is
clamped) for the metrics. Audio is audited at the codec's sample rate and
channel count after ``audio_io.prepare``; the decode is compared over the
common length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..codecs import audio_io, image_io


@dataclass
class Roundtrip:
    """One sample through the codec.

    Attributes:
        name: the sample's name (path relative to the data directory).
        source: the original media (PIL image or ``Audio``).
        reference: image ``[3, H, W]`` pixels in [0, 1] / audio ``[C, T]`` at the codec rate.
        codes: int64 codes, image ``[H', W']`` (or ``[L, H', W']``) / audio ``[T', Q]``.
        raw: the decoder's output as returned (model space; for the sanity checks).
        reconstruction: like ``reference`` (image clamped to [0, 1]; audio ``[C, T_out]``).
        info: sizes / rates for reports.
    """

    name: str
    source: Any
    reference: torch.Tensor
    codes: torch.Tensor
    raw: torch.Tensor
    reconstruction: torch.Tensor
    info: dict[str, Any]


def _to_pixels(x: torch.Tensor, codec) -> torch.Tensor:
    """Model-space ``[3, H, W]`` -> pixels in [0, 1] (float64, CPU)."""
    mean = torch.tensor(codec.mean, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(codec.std, dtype=torch.float64).view(3, 1, 1)
    return (x.detach().to("cpu", torch.float64) * std + mean).clamp(0.0, 1.0)


@torch.inference_mode()
def image_roundtrip(codec, name: str, image) -> Roundtrip:
    rgb = image_io.to_rgb(image, name)
    x = codec.preprocess(rgb, name)  # [3, H, W] model space
    codes = codec.encode_tensor(x[None].to(codec.device))[0].cpu()
    raw = codec.decode_tensor(codes[None].to(codec.device))[0].cpu()
    info = {"input_size": list(rgb.size), "model_size": [int(x.shape[-1]), int(x.shape[-2])],
            "code_shape": list(codes.shape)}
    # Pixels as the audit compares them: the quantised 8-bit input and the clamped decode.
    return Roundtrip(name, image, _to_pixels(x, codec), codes, raw, _to_pixels(raw.float(), codec), info)


@torch.inference_mode()
def audio_roundtrip(codec, name: str, audio) -> Roundtrip:
    wave = audio_io.prepare(audio, codec.sample_rate, codec.channels, name)  # [C, T]
    codes = codec.encode_tensor(wave[None].to(codec.device))[0].cpu()  # [T', Q]
    raw = codec.decode_tensor(codes[None].to(codec.device))[0].cpu()  # [C, T_out]
    info = {"input_sample_rate": audio.sample_rate, "input_channels": audio.num_channels,
            "input_samples": audio.num_samples, "samples": int(wave.shape[-1]),
            "decoded_samples": int(raw.shape[-1]), "code_shape": list(codes.shape)}
    return Roundtrip(name, audio, wave.to(torch.float64), codes, raw, raw.detach().to(torch.float64), info)


def roundtrip(modality: str, codec, name: str, item) -> Roundtrip:
    return (image_roundtrip if modality == "image" else audio_roundtrip)(codec, name, item)
