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

from .base import ImageCodec
from .codebook_cache import CodebookCache
from .hf_common import CodecError, directory_identity, load_hf_model, reduce_by_directory

_HALF = (0.5, 0.5, 0.5)
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class _HFVQImageCodec(ImageCodec):
    model_class: str
    mean = _HALF
    std = _HALF

    def __init__(self, directory: str | Path, *, device: str | torch.device = "cpu", **options: Any):
        self.model, self.directory = load_hf_model(self.model_class, directory, device)
        self._options = self._check_options(options)
        self._identity = directory_identity(self.directory, self.kind, self._options)
        config = self.model.config
        self.downsample = 2 ** (len(config.channel_multiplier) - 1)
        weight = self.model.quantize.embedding.weight
        self.codebook_size, self.num_codebooks = int(weight.shape[0]), 1
        self._codebook = CodebookCache()  # packed once, not in every encode

    def __reduce__(self) -> tuple:
        return reduce_by_directory(self)  # by reference: see hf_common

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
        return self._codebook(self.model.quantize.embedding.weight).search(latents)

    def encoder_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The model's encoder output for pixel values ``[B, 3, H, W]`` (before ``quant_conv``)."""
        return _vqgan_encode(self.model.encoder, pixel_values.to(self.model.dtype))


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
        hidden = self.model.quant_conv(self.encoder_features(pixel_values))
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
        hidden = self.model.quant_conv(self.encoder_features(pixel_values))
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
        hidden = self.model.quant_conv(self.encoder_features(pixel_values))  # [B, C, T, H, W]
        latents = hidden.permute(0, 2, 3, 4, 1)  # [B, T, H, W, C]: search over C, as the model does
        return self._search(latents)[:, 0]

    def encoder_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The encoder's output for still images ``[B, 3, H, W]``, as ``[B, C, T, h, w]`` (before ``quant_conv``)."""
        m = self.model
        return _emu3_encode_still(m.encoder, pixel_values.to(m.dtype), m.config.temporal_downsample_factor)

    @torch.inference_mode()
    def decode_tensor(self, codes: torch.Tensor) -> torch.Tensor:
        video = self.model.decode(codes)  # [B, T * factor, 3, H, W]
        return video[:, 0] if video.dim() == 5 else video


def _emu3_encode_still(encoder, pixels: torch.Tensor, temporal: int) -> torch.Tensor:
    """``Emu3VQVAEEncoder`` on still images ``[B, 3, H, W]`` -> ``[B, C, T, h, w]``.

    Emu3 encodes an image as ``temporal`` copies of it, and the encoder's
    spatial layers run frame by frame, so the model computes the same frame
    ``temporal`` times. Here they run once per image and their output is
    repeated, laid out as the model lays it out ([B, T, C, h, w] permuted), so
    the temporal layers see the same tensor: a ``temporal``-fold saving on
    the spatial layers, the bulk of the encode, with codes identical to the
    model's ``encode`` (tests/test_codecs.py). Mirrors the encoder's
    ``forward`` (transformers 4.5x-5.x); a change there fails that test.
    """
    hidden = encoder.conv_in(pixels)
    hidden = encoder.down_block(hidden)
    hidden = encoder.middle_block(hidden)
    hidden = encoder.norm_out(hidden)
    hidden *= torch.sigmoid(hidden)
    hidden = encoder.conv_out(hidden)  # [B, C, h, w]
    hidden = hidden.unsqueeze(1).repeat(1, temporal, 1, 1, 1).permute(0, 2, 1, 3, 4)  # [B, C, T, h, w]
    for conv in encoder.time_conv:
        hidden = conv(hidden)
        hidden *= torch.sigmoid(hidden)
    for layer in encoder.time_res_stack:
        hidden = layer(hidden)
    return hidden  # the model's encoder returns this permuted to [B, T, C, h, w]; quant_conv wants [B, C, T, h, w]


def _vqgan_encode(encoder, pixels: torch.Tensor) -> torch.Tensor:
    """The forward of the Janus / Chameleon VQ encoders, keeping one activation at a time.

    The models' ``forward`` appends every block's output to a list it holds
    until the end, so an encode keeps all activations alive at once (Chameleon,
    two 512 px images: about 0.5 GB). The same layers in the same order give
    the same bits while releasing each output once the next is computed:
    measured, half the peak memory and no slower. Mirrors transformers'
    ``JanusVQVAEEncoder`` / ``ChameleonVQVAEEncoder.forward``; the
    identical-codes tests (tests/test_codecs.py) fail if those change.
    """
    hidden = encoder.conv_in(pixels)
    for i_level in range(encoder.num_resolutions):
        level = encoder.down[i_level]
        for i_block in range(encoder.num_res_blocks):
            hidden = level.block[i_block](hidden)
            if len(level.attn) > 0:
                hidden = level.attn[i_block](hidden)
        if i_level != encoder.num_resolutions - 1:
            hidden = level.downsample(hidden)
    mid = encoder.mid
    if hasattr(mid, "block_1"):  # Chameleon: blocks called one by one; Janus: one module
        hidden = mid.block_2(mid.attn_1(mid.block_1(hidden)))
    else:
        hidden = mid(hidden)
    hidden = encoder.norm_out(hidden)
    hidden *= torch.sigmoid(hidden)
    return encoder.conv_out(hidden)
