"""``lumo-vq``: the project's own image tokenizer (patch VQ + a learned context decoder).

Encoding: the image (RGB in [-1, 1]) is cut into ``patch x patch`` blocks and
each block (``3 * patch * patch`` values) goes to its nearest codebook vector
(squared L2, ``lumo_uti.ops.vq_search``): one code per block, so a 256 x 256
image is 32 x 32 = 1024 codes with the default 8 x 8 patch. The codebook is a
k-means codebook of real image blocks (``lumo train-codec image``), so encoding
is exactly the MSE-optimal choice for the looked-up blocks.

Decoding: the looked-up blocks plus a residual from a small convolutional
decoder that sees the 3 x 3 (and, stacked, wider) neighbourhood of codes; it
removes block seams and restores detail a single block cannot carry. With no
decoder weights (``decoder.blocks == 0``) decoding is the plain lookup.

Size policy (``pixel_size``): each side is rounded to the nearest multiple of
``patch`` (halves to even, at least one patch); if the longer side then exceeds ``max_side``
(default 512) both are scaled down, keeping the aspect ratio, and rounded
again. So an image whose sides are multiples of 8 and at most 512 is encoded
at, and decodes to, exactly its own size.

Files: ``config.json`` (format ``lumo-vq``) and ``model.safetensors``
(``codebook`` [K, D] and the ``decoder.*`` tensors; stored in float16, run in
float32).
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import PackedCodebook, vq_search
from .base import ImageCodec
from .codebook_cache import CodebookCache
from .hf_common import CodecError, directory_identity
from .model_files import config_keys, load_model_dir, save_model_dir

FORMAT = "lumo-vq"
# config.json's hyper-parameters and the ranges loading accepts (checked before anything is built).
CONFIG_KEYS = config_keys({
    "patch": (1, 64),
    "codebook_size": (1, 1 << 20),
    "decoder_channels": (0, 4096),
    "decoder_blocks": (0, 64),
})
# Largest max_side option (pixels) a codec accepts.
MAX_SIDE_LIMIT = 16384


class ResBlock(nn.Module):
    """x + conv(gelu(conv(gelu(x)))), 3 x 3, same width."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))


class ContextDecoder(nn.Module):
    """Looked-up blocks ``[B, D, h, w]`` -> a residual of the same shape (zero at init)."""

    def __init__(self, dim: int, channels: int, blocks: int):
        super().__init__()
        self.inp = nn.Conv2d(dim, channels, 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(channels) for _ in range(blocks))
        self.out = nn.Conv2d(channels, dim, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        h = self.inp(blocks)
        for block in self.blocks:
            h = block(h)
        return self.out(F.gelu(h))


class PatchVQ(nn.Module):
    """The model: codebook + optional context decoder (the trainable part)."""

    def __init__(self, *, patch: int = 8, codebook_size: int = 16384, decoder_channels: int = 128,
                 decoder_blocks: int = 2):
        super().__init__()
        self.patch = patch
        self.dim = 3 * patch * patch
        self.register_buffer("codebook", torch.zeros(codebook_size, self.dim))
        self.decoder = ContextDecoder(self.dim, decoder_channels, decoder_blocks) if decoder_blocks > 0 else None

    def config(self) -> dict[str, Any]:
        dec = self.decoder
        return {
            "format": FORMAT,
            "patch": self.patch,
            "codebook_size": int(self.codebook.shape[0]),
            "decoder_channels": dec.inp.out_channels if dec is not None else 0,
            "decoder_blocks": len(dec.blocks) if dec is not None else 0,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "PatchVQ":
        return cls(patch=config["patch"], codebook_size=config["codebook_size"],
                   decoder_channels=config["decoder_channels"], decoder_blocks=config["decoder_blocks"])

    def blocks(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, D, H/p, W/p]`` (each column one flattened block)."""
        return F.pixel_unshuffle(pixels, self.patch)

    def encode(self, pixels: torch.Tensor, packed: PackedCodebook | None = None) -> torch.Tensor:
        """``[B, 3, H, W]`` in [-1, 1] -> int64 codes ``[B, H/p, W/p]``.

        ``packed``: this model's codebook already packed (a codec's cache), else packed per call.
        """
        blocks = self.blocks(pixels).permute(0, 2, 3, 1)
        return vq_search(blocks, self.codebook) if packed is None else packed.search(blocks)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes ``[B, h, w]`` -> looked-up blocks ``[B, D, h, w]``."""
        return F.embedding(codes, self.codebook).permute(0, 3, 1, 2)

    def decode_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        """looked-up blocks ``[B, D, h, w]`` -> pixels ``[B, 3, h*p, w*p]``."""
        if self.decoder is not None:
            blocks = blocks + self.decoder(blocks)
        return F.pixel_shuffle(blocks, self.patch)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode_blocks(self.lookup(codes))


def save_model(model: PatchVQ, directory: str | Path, *, name: str, extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (float16) into ``directory`` (atomically per file)."""
    return save_model_dir(model, directory, fmt=FORMAT, name=name, extra=extra)


def load_model(directory: str | Path) -> tuple[PatchVQ, dict[str, Any]]:
    """Read a ``lumo-vq`` directory -> (float32 model in eval mode, config)."""
    return load_model_dir(directory, fmt=FORMAT, from_config=PatchVQ.from_config, keys=CONFIG_KEYS)


class LumoVQCodec(ImageCodec):
    """``lumo-vq``: see the module docstring. Option ``max_side`` (default 512)."""

    kind = "lumo-vq"
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self, directory: str | Path, *, device: str | torch.device = "cpu", **options: Any):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CodecError(f"codec directory not found: {self.directory}")
        max_side = options.pop("max_side", 512)
        if options:
            raise CodecError(f"lumo-vq: unknown options {sorted(options)} (known: max_side)")
        if isinstance(max_side, bool) or not isinstance(max_side, numbers.Integral) or not 1 <= max_side <= MAX_SIDE_LIMIT:
            raise CodecError(f"lumo-vq: option max_side must be an integer in [1, {MAX_SIDE_LIMIT}], got {max_side!r}")
        max_side = int(max_side)
        self.model, self.config = load_model(self.directory)
        self.model.to(device)
        self.downsample = self.model.patch
        if max_side < self.downsample:
            raise CodecError(f"lumo-vq: max_side must be >= {self.downsample}, got {max_side}")
        self.max_side = max_side
        self.codebook_size, self.num_codebooks = int(self.model.codebook.shape[0]), 1
        self._codebook = CodebookCache()  # packed once, not in every encode
        self._identity = directory_identity(self.directory, self.kind, {"max_side": max_side})

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    @property
    def device(self) -> torch.device:
        return self.model.codebook.device

    def to(self, device):
        self.model.to(device)
        return self

    def pixel_size(self, width: int, height: int) -> tuple[int, int]:
        p = self.downsample
        w, h = max(p, round(width / p) * p), max(p, round(height / p) * p)
        if max(w, h) > self.max_side:
            scale = self.max_side / max(w, h)
            w, h = max(p, int(w * scale / p) * p), max(p, int(h * scale / p) * p)
        return w, h

    @torch.inference_mode()
    def encode_tensor(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"lumo-vq: expected pixel values [B, 3, H, W], got {tuple(pixel_values.shape)}")
        h, w = pixel_values.shape[-2:]
        if h % self.downsample or w % self.downsample or h == 0 or w == 0:
            raise ValueError(f"lumo-vq: height and width must be positive multiples of {self.downsample}, got {h}x{w}")
        return self.model.encode(pixel_values.float(), self._codebook(self.model.codebook))

    @torch.inference_mode()
    def decode_tensor(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.dim() != 3:
            raise ValueError(f"lumo-vq: expected codes [B, H', W'], got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"lumo-vq: codes must lie in [0, {self.codebook_size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        return self.model.decode(codes.long())
