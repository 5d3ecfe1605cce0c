"""Image codecs over Hugging Face VQ models: ``hf-janus``, ``hf-chameleon``, ``hf-emu3``.

Each runs the model's own encoder and ``quant_conv``, then replaces the model's
nearest-codebook step (a full N x K distance matrix + argmin) with
``lumo_uti.ops.vq_search`` on its codebook; decoding uses the model's decoder.
The codes equal the model's own ``encode`` (tests check this per backend).

Input size policy (see ``image_io``): Janus and Chameleon take a fixed square
resolution (shorter side resized, centre crop); Emu3 takes any size whose sides
are multiples of its spatial factor (each side rounded to the nearest multiple,
scaled down to at most ``max_pixels``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..ops import vq_search
from .base import ImageCodec
from .hf_common import CodecError, directory_identity, load_model

_HALF = (0.5, 0.5, 0.5)
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class _HFVQImageCodec(ImageCodec):
    model_class: str
    mean = _HALF
    std = _HALF

    def __init__(self, directory: str | Path, *, device: str | torch.device = "cpu", **options: Any):
        self.model, self.directory = load_model(self.model_class, directory, device)
        self._options = self._check_options(options)
        self._identity = directory_identity(self.directory, self.kind, self._options)
        config = self.model.config
        self.downsample = 2 ** (len(config.channel_multiplier) - 1)
        weight = self.model.quantize.embedding.weight
        self.codebook_size, self.num_codebooks = int(weight.shape[0]), 1

    def _check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        if options:
            raise CodecError(f"{self.kind}: unknown options {sorted(options)}")
        return {}

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    @property
    def device(self) -> torch.device:
        return self.model.quantize.embedding.weight.device

    def to(self, device):
        self.model.to(device)
        return self

    def _search(self, latents: torch.Tensor) -> torch.Tensor:
        """latents ``[..., D]`` -> codes ``[...]`` on the model's codebook."""
        return vq_search(latents, self.model.quantize.embedding.weight)


class JanusCodec(_HFVQImageCodec):
    """``hf-janus``: JanusVQVAE (LlamaGen-style VQ, D=8, K=16384 in the released model)."""

    kind = "hf-janus"
    model_class = "JanusVQVAE"

    @property
    def resolution(self) -> int:
        return self.model.config.num_patches * self.downsample

    def pixel_size(self, width: int, height: int) -> tuple[int, int]:
        return self.resolution, self.resolution

    @torch.inference_mode()
    def encode_tensor(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model.quant_conv(self.model.encoder(pixel_values.to(self.model.dtype)))
        return self._search(hidden.permute(0, 2, 3, 1))

    @torch.inference_mode()
    def decode_tensor(self, codes: torch.Tensor) -> torch.Tensor:
        side = self.model.config.num_patches
        if tuple(codes.shape[1:]) != (side, side):
            raise ValueError(f"hf-janus: the decoder takes {side}x{side} codes, got {tuple(codes.shape[1:])}")
        return self.model.decode(codes.reshape(codes.shape[0], -1))


class ChameleonCodec(_HFVQImageCodec):
    """``hf-chameleon``: ChameleonVQVAE (encode only: Hugging Face ships no decoder for it)."""

    kind = "hf-chameleon"
    model_class = "ChameleonVQVAE"

    def pixel_size(self, width: int, height: int) -> tuple[int, int]:
        return self.model.config.resolution, self.model.config.resolution

    @torch.inference_mode()
    def encode_tensor(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model.quant_conv(self.model.encoder(pixel_values.to(self.model.dtype)))
        return self._search(hidden.permute(0, 2, 3, 1))

    def decode_tensor(self, codes: torch.Tensor) -> torch.Tensor:
        raise CodecError(
            "hf-chameleon: the Hugging Face ChameleonVQVAE has no decoder, so its codes cannot be turned back "
            "into pixels (decode_codes still returns the codes)"
        )


class Emu3Codec(_HFVQImageCodec):
    """``hf-emu3``: Emu3VQVAE on single frames (the image is repeated over the temporal window).

    Option ``max_pixels`` (default 512*512) bounds the encoded area.
    """

    kind = "hf-emu3"
    model_class = "Emu3VQVAE"
    mean = _CLIP_MEAN
    std = _CLIP_STD

    def _check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        max_pixels = int(options.pop("max_pixels", 512 * 512))
        if options:
            raise CodecError(f"{self.kind}: unknown options {sorted(options)} (known: max_pixels)")
        if max_pixels < 1:
            raise CodecError(f"{self.kind}: max_pixels must be >= 1, got {max_pixels}")
        self.max_pixels = max_pixels
        return {"max_pixels": max_pixels}

    def pixel_size(self, width: int, height: int) -> tuple[int, int]:
        f = self.downsample
        scale = min(1.0, math.sqrt(self.max_pixels / (width * height)))
        return max(f, round(width * scale / f) * f), max(f, round(height * scale / f) * f)

    @torch.inference_mode()
    def encode_tensor(self, pixel_values: torch.Tensor) -> torch.Tensor:
        m = self.model
        frames = pixel_values.to(m.dtype).unsqueeze(1).repeat(1, m.config.temporal_downsample_factor, 1, 1, 1)
        hidden = m.quant_conv(m.encoder(frames).permute(0, 2, 1, 3, 4))  # [B, C, T, H, W]
        latents = hidden.permute(0, 2, 3, 4, 1)  # [B, T, H, W, C]: search over C, as the model does
        return self._search(latents)[:, 0]

    @torch.inference_mode()
    def decode_tensor(self, codes: torch.Tensor) -> torch.Tensor:
        video = self.model.decode(codes)  # [B, T * factor, 3, H, W]
        return video[:, 0] if video.dim() == 5 else video
