"""``lumo-vq``: the project's own image tokenizer (patch VQ, learned context decoder and refiner).

Encoding: the image (RGB in [-1, 1]) is cut into ``patch x patch`` blocks and
each block (``3 * patch * patch`` values) goes to its nearest codebook vector
(squared L2, ``lumo_uti.ops.vq_search``): one code per block, so a 256 x 256
image is 32 x 32 = 1024 codes with the default 8 x 8 patch. The codebook is a
k-means codebook of real image blocks (``lumo train-codec image``). A codec
with a learned encoder (``encoder_blocks > 0``) searches ``blocks + E(blocks)``
instead, ``E`` a small convolutional stack over the grid of blocks, computed in
float64 and rounded to multiples of ``ENCODER_GRID``, so that the codes are the
same at any thread count and batch size.

With block prediction (``predict: 1``; ``block_prediction.py``) each block is
first predicted, linearly, from the already decoded pixels of its neighbours
above and to the left, and its code is the nearest codebook entry to the
prediction error (the codebook is a k-means codebook of such errors); blocks
are coded in anti-diagonal order, and the decoded block, prediction plus
entry, is what the decoder below receives as the block's "looked-up" value.

Decoding: the looked-up blocks plus a residual from a convolutional decoder
that sees the 3 x 3 (and, stacked, wider) neighbourhood of codes; with a
refiner (``refine_blocks > 0``) the resulting image, with ``refine_extra``
feature planes from the same decoder, then goes through a small convolutional
stack at full resolution whose output is added to it. The refiner's
convolutions straddle block boundaries, which removes most of the block grid;
a codec with ``deblock_taps > 0`` then spreads what step is left at each
block boundary over a few pixels on either side, with learned weights
(``BlockEdgeBlend``). With no decoder weights (``decoder_blocks == 0``)
decoding is the plain lookup (then deblocked, if configured). The codec
option ``decode_views`` (2, 4 or 8) decodes as the mean of that many mirrored
/ transposed runs of the decoder network: the same codes, a little sharper,
that many times the work. ``PatchVQ.decode`` is the exact definition.

Size policy (``pixel_size``): each side is rounded to the nearest multiple of
``patch`` (halves to even, at least one patch); if the longer side then exceeds ``max_side``
(default 512) both are scaled down, keeping the aspect ratio, and rounded
again. So an image whose sides are multiples of 8 and at most 512 is encoded
at, and decodes to, exactly its own size.

Files: ``config.json`` (format ``lumo-vq``) and ``model.safetensors``
(``codebook`` [K, D], ``predictor`` [6p + 6, D] with prediction, and the
``decoder.*``, ``encoder.*``, ``refiner.*`` and ``deblock.taps`` tensors; stored
in float16, run in float32). The encoder, refiner, deblocking and ``predict``
keys of ``config.json`` are optional (absent means none).
"""

from __future__ import annotations

import copy
import numbers
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import PackedCodebook, vq_search
from .base import ImageCodec
from .block_prediction import code_blocks, feature_count, reconstruct
from .codebook_cache import CodebookCache
from .hf_common import CodecError, directory_identity
from .model_files import check_config, config_keys, load_model_dir, save_model_dir

FORMAT = "lumo-vq"
# config.json's hyper-parameters and the ranges loading accepts (checked before anything is built).
CONFIG_KEYS = config_keys({
    "patch": (1, 64),
    "codebook_size": (1, 1 << 20),
    "decoder_channels": (0, 4096),
    "decoder_blocks": (0, 64),
})
# Keys added with the learned encoder and the full-resolution refiner; absent means 0 (none).
OPTIONAL_KEYS = config_keys({
    "encoder_channels": (0, 4096),
    "encoder_blocks": (0, 64),
    "refine_channels": (0, 1024),
    "refine_blocks": (0, 64),
    "refine_extra": (0, 64),
    "deblock_taps": (0, 32),
    "predict": (0, 1),
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
    """Blocks ``[B, D, h, w]`` -> a residual ``[B, out_dim, h, w]`` (zero at init; ``out_dim`` defaults to D)."""

    def __init__(self, dim: int, channels: int, blocks: int, out_dim: int | None = None):
        super().__init__()
        self.inp = nn.Conv2d(dim, channels, 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(channels) for _ in range(blocks))
        self.out = nn.Conv2d(channels, out_dim or dim, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        h = self.inp(blocks)
        for block in self.blocks:
            h = block(h)
        return self.out(F.gelu(h))


class Refiner(nn.Module):
    """Full-resolution refinement: ``[B, 3 + extra, H, W]`` -> a pixel residual ``[B, 3, H, W]`` (zero at init).

    Its 3 x 3 convolutions straddle the block boundaries, which a per-block
    output cannot: this is what removes the block grid.
    """

    def __init__(self, in_channels: int, channels: int, blocks: int):
        super().__init__()
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(channels) for _ in range(blocks))
        self.out = nn.Conv2d(channels, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.out(F.gelu(h))


class BlockEdgeBlend(nn.Module):
    """Learned deblocking: spreads the step at every internal block boundary over ``taps`` pixels per side.

    Along each axis in turn (width, then height), with ``s`` the step from the last pixel of a
    block to the first of the next (``s = x[b] - x[b - 1]``, ``b`` a multiple of ``patch``), pixel
    ``b - 1 - k`` gains ``w_k * s`` and pixel ``b + k`` loses ``w_k * s``, for ``k < taps``. The
    weights ``w`` are learned (zero at init: the identity); ``taps <= patch / 2`` so that the
    corrections of neighbouring boundaries never touch the same pixel. Image borders are left as
    they are. A linear, local function of the decoded image: cheap (a few elementwise passes),
    and it moves a pixel only where the block grid put a step.
    """

    def __init__(self, taps: int, patch: int):
        super().__init__()
        if not 1 <= taps <= patch // 2:
            raise ValueError(f"deblock taps must be in [1, {patch // 2}] for {patch}-pixel blocks, got {taps}")
        self.patch = patch
        self.taps = nn.Parameter(torch.zeros(taps))

    def _along_last(self, x: torch.Tensor) -> torch.Tensor:
        p, n = self.patch, x.shape[-1]
        if n < 2 * p:
            return x  # no internal boundary
        blocks = n // p
        grid = x[..., :blocks * p].unflatten(-1, (blocks, p))  # [..., nb, p]
        step = grid[..., 1:, 0] - grid[..., :-1, p - 1]  # [..., nb - 1]
        k = self.taps.numel()
        ramp = self.taps.to(x.dtype)
        delta = torch.zeros_like(grid)
        # the left block's last k pixels (nearest the boundary last), the right block's first k
        delta[..., :-1, p - k:] += step[..., None] * ramp.flip(0)
        delta[..., 1:, :k] -= step[..., None] * ramp
        out = grid + delta
        return torch.cat([out.flatten(-2), x[..., blocks * p:]], -1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self._along_last(self._along_last(image).transpose(-1, -2)).transpose(-1, -2)


# Encoder outputs are rounded to this grid (float64 arithmetic first), so that the codes do not depend
# on the thread count or batch size: float32 convolutions sum in an order that depends on both.
ENCODER_GRID = 2.0 ** -12


# The eight mirrored / transposed views of an image, in the order decode_views takes them, each as
# (transpose, mirror left-right, flip top-bottom). The first 2, 4 and 8 are each closed under
# composition (a group), so the mean over them is exactly symmetric under those views.
DIHEDRAL_VIEWS = ((False, False, False), (False, True, False), (False, False, True), (False, True, True),
                  (True, False, False), (True, True, False), (True, False, True), (True, True, True))
DIHEDRAL_VIEW_COUNTS = (1, 2, 4, 8)


def _is_view_count(views: Any) -> bool:
    return not isinstance(views, bool) and isinstance(views, numbers.Integral) and views in DIHEDRAL_VIEW_COUNTS


def _view(image: torch.Tensor, view: tuple[bool, bool, bool]) -> torch.Tensor:
    """``image`` ``[..., H, W]`` transposed, then mirrored, then flipped, as ``view`` says."""
    transpose, mirror, flip = view
    if transpose:
        image = image.transpose(-1, -2)
    if mirror:
        image = image.flip(-1)
    return image.flip(-2) if flip else image


def _unview(image: torch.Tensor, view: tuple[bool, bool, bool]) -> torch.Tensor:
    """The inverse of ``_view``."""
    transpose, mirror, flip = view
    if flip:
        image = image.flip(-2)
    if mirror:
        image = image.flip(-1)
    return image.transpose(-1, -2) if transpose else image


class PatchVQ(nn.Module):
    """The model: codebook, optional learned encoder, context decoder and full-resolution refiner.

    Encoder (when ``encoder_blocks > 0``): ``z = blocks + E(blocks)``, ``E`` a
    3 x 3 convolutional stack over the grid of flattened blocks (zero at
    initialisation, so an untrained encoder is the nearest-block search);
    codes are the nearest codebook vectors to ``z``.
    Decoder: looked-up blocks ``q``; ``q + C(q)[:D]`` pixel-shuffled to an image
    ``y``, then ``y + R(cat(y, C(q)[D:] pixel-shuffled))`` when a refiner is
    configured (``refine_blocks > 0``; ``refine_extra`` feature planes per pixel); last, with
    ``deblock_taps > 0``, the learned deblocking ``BlockEdgeBlend``.
    """

    def __init__(self, *, patch: int = 8, codebook_size: int = 16384, decoder_channels: int = 128,
                 decoder_blocks: int = 2, encoder_channels: int = 0, encoder_blocks: int = 0,
                 refine_channels: int = 0, refine_blocks: int = 0, refine_extra: int = 0,
                 deblock_taps: int = 0, predict: int = 0):
        super().__init__()
        if predict and encoder_blocks:
            raise CodecError(f"{FORMAT}: block prediction and a learned encoder cannot be combined")
        self.patch = patch
        self.dim = 3 * patch * patch
        self.register_buffer("codebook", torch.zeros(codebook_size, self.dim))
        # Block prediction (block_prediction.py): codes quantise what the neighbours do not predict.
        self.predictor: torch.Tensor | None
        if predict:
            self.register_buffer("predictor", torch.zeros(feature_count(patch), self.dim))
        else:
            self.predictor = None
        self.refine_extra = refine_extra if refine_blocks > 0 else 0
        out_dim = self.dim + self.refine_extra * patch * patch
        self.decoder = (ContextDecoder(self.dim, decoder_channels, decoder_blocks, out_dim)
                        if decoder_blocks > 0 else None)
        self.encoder = ContextDecoder(self.dim, encoder_channels, encoder_blocks) if encoder_blocks > 0 else None
        self.refiner = Refiner(3 + self.refine_extra, refine_channels, refine_blocks) if refine_blocks > 0 else None
        self.deblock = BlockEdgeBlend(deblock_taps, patch) if deblock_taps > 0 else None

    def config(self) -> dict[str, Any]:
        dec, enc, ref = self.decoder, self.encoder, self.refiner
        return {
            "format": FORMAT,
            "patch": self.patch,
            "codebook_size": int(self.codebook.shape[0]),
            "decoder_channels": dec.inp.out_channels if dec is not None else 0,
            "decoder_blocks": len(dec.blocks) if dec is not None else 0,
            "encoder_channels": enc.inp.out_channels if enc is not None else 0,
            "encoder_blocks": len(enc.blocks) if enc is not None else 0,
            "refine_channels": ref.inp.out_channels if ref is not None else 0,
            "refine_blocks": len(ref.blocks) if ref is not None else 0,
            "refine_extra": self.refine_extra,
            "deblock_taps": self.deblock.taps.numel() if self.deblock is not None else 0,
        } | ({"predict": 1} if self.predictor is not None else {})  # absent = none: older files unchanged

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "PatchVQ":
        # The encoder/refiner keys are optional (codecs written before they existed have neither).
        present = tuple(k for k in OPTIONAL_KEYS if k.name in config)
        check_config(config, present, f"{FORMAT}: config")
        if config.get("deblock_taps", 0) > config["patch"] // 2:
            raise CodecError(f"{FORMAT}: config: key 'deblock_taps' must be at most patch / 2 = "
                             f"{config['patch'] // 2}, got {config['deblock_taps']}")
        return cls(patch=config["patch"], codebook_size=config["codebook_size"],
                   decoder_channels=config["decoder_channels"], decoder_blocks=config["decoder_blocks"],
                   **{k.name: config[k.name] for k in present})

    def blocks(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, D, H/p, W/p]`` (each column one flattened block)."""
        if pixels.shape[0] == 0:  # pixel_unshuffle returns an empty batch unchanged
            b, c, h, w = pixels.shape
            return pixels.new_zeros(0, c * self.patch ** 2, h // self.patch, w // self.patch)
        return F.pixel_unshuffle(pixels, self.patch)

    def latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the codebook search sees, ``[B, D, H/p, W/p]``: the blocks, plus the encoder's residual.

        Differentiable (training); ``encode`` computes the same in float64 and rounds it.
        """
        blocks = self.blocks(pixels)
        return blocks if self.encoder is None else blocks + self.encoder(blocks)

    @torch.no_grad()
    def search_latents(self, pixels: torch.Tensor, encoder64: nn.Module | None = None) -> torch.Tensor:
        """The latents ``encode`` searches, ``[B, H/p, W/p, D]`` float32: exact blocks without an encoder;
        with one, computed in float64 and rounded to ``ENCODER_GRID`` (the same codes at any thread
        count or batch size). ``encoder64``: this model's encoder in float64 (a codec's cache)."""
        blocks = self.blocks(pixels)
        if self.encoder is not None:
            enc = encoder64 if encoder64 is not None else copy.deepcopy(self.encoder).double()
            b64 = blocks.double()
            blocks = (torch.round((b64 + enc(b64)) / ENCODER_GRID) * ENCODER_GRID).float()
        return blocks.permute(0, 2, 3, 1)

    def encode(self, pixels: torch.Tensor, packed: PackedCodebook | None = None,
               encoder64: nn.Module | None = None) -> torch.Tensor:
        """``[B, 3, H, W]`` in [-1, 1] -> int64 codes ``[B, H/p, W/p]``.

        ``packed``: this model's codebook already packed (a codec's cache), else packed per call.
        """
        z = self.search_latents(pixels, encoder64)
        search = (lambda v: vq_search(v, self.codebook)) if packed is None else packed.search
        if self.predictor is not None:
            return code_blocks(z.contiguous(), self.codebook, self.predictor, search, packed=packed)[0]
        return search(z)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes ``[B, h, w]`` -> looked-up blocks ``[B, D, h, w]``: the codebook entries, or with block
        prediction each block's prediction plus its entry."""
        if self.predictor is not None:
            return reconstruct(codes, self.codebook, self.predictor).permute(0, 3, 1, 2)
        return F.embedding(codes, self.codebook).permute(0, 3, 1, 2)

    def _decode_network(self, blocks: torch.Tensor) -> torch.Tensor:
        """looked-up blocks ``[B, D, h, w]`` -> pixels ``[B, 3, h*p, w*p]``, before the deblocking."""
        if self.decoder is None:
            return F.pixel_shuffle(blocks, self.patch)
        residual = self.decoder(blocks)
        image = F.pixel_shuffle(blocks + residual[:, :self.dim], self.patch)
        if self.refiner is not None:
            features = F.pixel_shuffle(residual[:, self.dim:], self.patch)
            image = image + self.refiner(torch.cat([image, features], 1))
        return image

    def decode_blocks(self, blocks: torch.Tensor, views: int = 1) -> torch.Tensor:
        """looked-up blocks ``[B, D, h, w]`` -> pixels ``[B, 3, h*p, w*p]``.

        ``views`` (1, 2, 4 or 8): the decoder network runs on the first ``views`` of the eight
        mirrored / transposed versions of the looked-up image (``DIHEDRAL_VIEWS``), each output is
        turned back, and their mean is deblocked. One view is the plain decoder. The network is
        trained on mirrored and turned crops but is not exactly symmetric, so the mean of the views
        is a better estimate (about +0.09 dB on photos at 8 views) for ``views`` times the work.
        The deblocking commutes with every view (a linear filter, the same at each boundary on
        either side, width and height passes independent), so it runs once, after the mean.
        """
        if not _is_view_count(views):
            raise ValueError(f"views must be one of {DIHEDRAL_VIEW_COUNTS}, got {views!r}")
        if views == 1 or blocks.numel() == 0:  # (pixel_unshuffle returns an empty batch unchanged)
            image = self._decode_network(blocks)
        else:
            looked_up = F.pixel_shuffle(blocks, self.patch)
            image = sum(_unview(self._decode_network(F.pixel_unshuffle(_view(looked_up, v), self.patch)), v)
                        for v in DIHEDRAL_VIEWS[:views]) / views
        return image if self.deblock is None else self.deblock(image)

    def decode(self, codes: torch.Tensor, views: int = 1) -> torch.Tensor:
        return self.decode_blocks(self.lookup(codes), views)


def save_model(model: PatchVQ, directory: str | Path, *, name: str, extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (float16) into ``directory`` (atomically per file)."""
    return save_model_dir(model, directory, fmt=FORMAT, name=name, extra=extra)


def load_model(directory: str | Path) -> tuple[PatchVQ, dict[str, Any]]:
    """Read a ``lumo-vq`` directory -> (float32 model in eval mode, config)."""
    return load_model_dir(directory, fmt=FORMAT, from_config=PatchVQ.from_config, keys=CONFIG_KEYS)


class LumoVQCodec(ImageCodec):
    """``lumo-vq``: see the module docstring.

    Options: ``max_side`` (default 512); ``decode_views`` (1, 2, 4 or 8; default 1): decode as the
    mean of that many mirrored / transposed runs of the decoder network (``PatchVQ.decode_blocks``),
    a little sharper for that many times the decoding work. It changes only the decoder: the codes,
    weights and token space are the same.
    """

    kind = "lumo-vq"
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self, directory: str | Path, *, device: str | torch.device = "cpu", **options: Any):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CodecError(f"codec directory not found: {self.directory}")
        max_side = options.pop("max_side", 512)
        decode_views = options.pop("decode_views", 1)
        if options:
            raise CodecError(f"lumo-vq: unknown options {sorted(options)} (known: decode_views, max_side)")
        if not _is_view_count(decode_views):
            raise CodecError(f"lumo-vq: option decode_views must be one of {DIHEDRAL_VIEW_COUNTS}, "
                             f"got {decode_views!r}")
        self.decode_views = int(decode_views)
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
        # The encoder's float64 copy (see ENCODER_GRID), made once, not in every encode.
        self._encoder64 = copy.deepcopy(self.model.encoder).double() if self.model.encoder is not None else None
        # decode_views is recorded only when set, so that identities (and bundles) made before the
        # option existed stay the same.
        recorded = {"max_side": max_side} | ({"decode_views": self.decode_views} if self.decode_views > 1 else {})
        self._identity = directory_identity(self.directory, self.kind, recorded)

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    @property
    def device(self) -> torch.device:
        return self.model.codebook.device

    def to(self, device):
        self.model.to(device)
        if self._encoder64 is not None:
            self._encoder64.to(device)
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
        return self.model.encode(pixel_values.float(), self._codebook(self.model.codebook), self._encoder64)

    @torch.inference_mode()
    def decode_tensor(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.dim() != 3:
            raise ValueError(f"lumo-vq: expected codes [B, H', W'], got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"lumo-vq: codes must lie in [0, {self.codebook_size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        return self.model.decode(codes.long(), self.decode_views)
