"""``lumo-rvq``: the project's own audio codec (MDCT + residual VQ + a learned post-filter).

Encoding: the mono waveform is cut into MDCT frames (sine window of ``2 * hop``
samples, hop ``hop``; the MDCT is an orthogonal lapped transform, so squared
error on coefficients equals squared error on samples) and each frame's ``hop``
coefficients are quantised by ``Q`` residual codebooks in one
``lumo_uti.ops.rvq_encode`` call. The codebooks are trained stage by stage with
k-means on the residuals, then refined jointly (``lumo train-codec audio``);
the trainer keeps entry 0 of every codebook at zero, so that digital silence
encodes to code 0 at every stage and decodes to exact silence (a rule of the
training, not of the format: any codebooks load).

Decoding: the sum of the looked-up vectors (``rvq_decode``), plus a residual
from a small 1-D convolutional post-filter over neighbouring frames (optional;
``postfilter_blocks == 0`` disables it), then the inverse MDCT with
overlap-add.

Option ``beam`` (default 1): with ``beam = N > 1`` the encoder keeps the ``N``
best partial code sequences after each stage (``rvq_beam_encode``) instead of
the single greedy one, and returns the sequence with the smallest total squared
error; the codes decode with the same decoder (same token space), at about
``N`` times the encoding arithmetic.

Timing: an input of ``T`` samples gives ``ceil(T / hop) + 1`` frames (the
first frame is centred on sample 0, which is what makes the reconstruction
exact at the edges) and a code sequence of ``F`` frames decodes to
``(F - 1) * hop`` samples starting at input sample 0: no delay. ``Audio``
decodes are trimmed by the caller only if it knows the original length.

Files: ``config.json`` (format ``lumo-rvq``) and ``model.safetensors``
(``codebooks`` [Q, K, hop] and ``postfilter.*``; stored in float16, run in
float32).
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import PackedCodebook, rvq_decode, rvq_encode
from .base import AudioCodec
from .codebook_cache import CodebookCache
from .hf_common import CodecError, directory_identity
from .model_files import config_keys, load_model_dir, save_model_dir

FORMAT = "lumo-rvq"
# config.json's hyper-parameters and the ranges loading accepts (checked before anything is built).
CONFIG_KEYS = config_keys({
    "sample_rate": (1, 768_000),
    "hop": (1, 4096),
    "num_codebooks": (1, 64),
    "codebook_size": (1, 1 << 20),
    "postfilter_channels": (0, 4096),
    "postfilter_blocks": (0, 64),
})


# Largest beam option a codec accepts.
MAX_BEAM = 256
# Beam-search errors are rounded to multiples of this (float64 first), and equal ones are ordered by
# code, so that the codes do not depend on the thread count or batch size.
BEAM_GRID = 2.0 ** -32
# Elements of one chunk's float64 score array in the beam search (2^24: 128 MiB).
BEAM_CHUNK_ELEMENTS = 1 << 24


def rvq_beam_encode(coefficients: torch.Tensor, codebooks: torch.Tensor, beam: int, *,
                    screen: bool = True) -> torch.Tensor:
    """Residual VQ codes ``[..., Q]`` of ``coefficients`` ``[..., D]`` by beam search over ``codebooks``
    ``[Q, K, D]``: after each stage the ``beam`` lowest-error partial sequences survive (ties: lower
    previous beam rank, then lower code). ``beam == 1`` is the greedy encoder.

    Scores are float64, rounded to ``BEAM_GRID``. ``screen`` (default): each stage first scores every
    pair in float32 with a proven error bound and re-scores in float64 only the few pairs that can be
    among the best (``_screened_stage``): the same codes, 1.6-1.8 times faster on 10 s of speech
    (benchmarks/lumo_codecs.py); False scores every pair in float64 (the reference the screen is
    tested against).
    """
    q_count, k, d = codebooks.shape
    lead = coefficients.shape[:-1]
    x = coefficients.reshape(-1, d).double()
    cb = codebooks.double()
    stages = [_Stage(cb[q]) for q in range(q_count)]
    # Rows are independent: search them in chunks, so the [rows, beam, K] scores of one chunk
    # stay near 128 MiB whatever the input's length.
    rows = max(1, BEAM_CHUNK_ELEMENTS // (beam * k))
    codes = [_beam_search(x[i:i + rows], stages, beam, screen) for i in range(0, x.shape[0], rows)]
    return (torch.cat(codes) if codes else x.new_zeros(0, q_count, dtype=torch.long)).reshape(*lead, q_count)


# The float32 screen's error bound: |float32 score - float64 score| <= SCREEN_SLACK * (D + 8) *
# (u (err + 2 |r| |c| + |c|^2) + eta) for float32's unit roundoff u = 2^-24 and smallest subnormal
# eta = 2^-149, whatever the summation order (the inputs' rounding, D + 2 products and their sums,
# underflow); SCREEN_SLACK = 2 for safety.
SCREEN_SLACK = 2.0


class _Stage:
    """One codebook of the beam search: float64 entries and norms, and the float32 screen's operands."""

    def __init__(self, cb: torch.Tensor):
        self.cb = cb  # [K, D] float64
        self.norms = (cb * cb).sum(-1)  # [K]
        self.kappa = SCREEN_SLACK * (cb.shape[1] + 8) * 2.0 ** -24
        self.floor = SCREEN_SLACK * (cb.shape[1] + 8) * 2.0 ** -149
        # One float32 product gives each pair's lower bound err - 2 <r, c> + |c|^2 - E:
        # [r, 1, |r|] @ [-2 c, (1 - kappa) |c|^2, -2 kappa |c|]^T, plus (1 - kappa) err - floor.
        self.screen = torch.cat([-2 * cb, (1 - self.kappa) * self.norms[:, None],
                                 -2 * self.kappa * self.norms.sqrt()[:, None]], 1).float().T.contiguous()

    def lower_bounds(self, res: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        """float32 ``[N, B, K]``: at most the float64 score ``err - 2 <r, c> + |c|^2`` of every pair."""
        norm = res.norm(dim=-1, keepdim=True)
        lower = torch.cat([res, torch.ones_like(norm), norm], 2).float() @ self.screen
        lower += ((1 - self.kappa) * err - self.floor).float()[:, :, None]
        return lower


def _beam_search(x: torch.Tensor, stages: list[_Stage], beam: int, screen: bool) -> torch.Tensor:
    """``rvq_beam_encode`` of float64 rows ``x`` ``[N, D]`` -> codes ``[N, Q]``."""
    n, d = x.shape
    res = x[:, None, :]  # [N, B, D]: the residual of each surviving sequence
    err = (x * x).sum(-1)[:, None]  # [N, B]
    codes = torch.zeros(n, 1, 0, dtype=torch.long, device=x.device)
    for stage in stages:
        k = stage.cb.shape[0]
        picked = _screened_stage(res, err, stage, beam) if screen else None
        if picked is None:  # the screen could not narrow the choice: score every candidate exactly
            dist = (err[:, :, None] - 2 * (res @ stage.cb.T) + stage.norms).reshape(n, -1)  # [N, B * K]
            order = _smallest(torch.round(dist / BEAM_GRID), beam)
            picked = order, torch.gather(dist, 1, order)
        order, err = picked
        src, code = order // k, order % k
        res = torch.gather(res, 1, src[:, :, None].expand(-1, -1, d)) - stage.cb[code]
        codes = torch.cat([torch.gather(codes, 1, src[:, :, None].expand(-1, -1, codes.shape[2])),
                           code[:, :, None]], 2)
    return codes[:, 0]


def _screened_stage(res: torch.Tensor, err: torch.Tensor, stage: _Stage,
                    beam: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The ``beam`` best (sequence, code) pairs of one stage as (flat indices ``[N, beam]``, float64
    errors), the same as scoring all ``B * K`` pairs in float64; or None where the screen cannot tell.

    One float32 product gives every pair a lower bound of its float64 score (about half the float64
    product's time). The ``beam`` pairs with the lowest bounds are scored in float64: the worst of
    them bounds the ``beam``-th best score from above, so only the pairs whose lower bound is under it
    can be among the best; those few are scored in float64 and chosen exactly as without the screen.
    """
    n, b, d = res.shape
    k = stage.cb.shape[0]
    width = b * k
    if n == 0 or beam > width // 4 or not _float32_products_are_exact_rounding(res.device):
        return None  # nothing to narrow down (or a product the bound does not hold for)
    lower = stage.lower_bounds(res, err).reshape(n, width)

    def exact(index: torch.Tensor) -> torch.Tensor:  # float64 scores of the flat pairs ``index``
        src, code = index // k, index % k
        chosen = torch.gather(res, 1, src[:, :, None].expand(-1, -1, d))
        return torch.gather(err, 1, src) - 2 * (chosen * stage.cb[code]).sum(-1) + stage.norms[code]

    # The beam-th best score is at most the worst of any beam pairs' scores (plus the rounding grid);
    # rounding it to float32 upwards keeps every pair of the exact best at or under the cut.
    cut = exact(torch.topk(lower, beam, dim=1, largest=False).indices).max(1).values + 2 * BEAM_GRID
    cut = (cut + cut.abs() * 2.0 ** -20).float()[:, None]
    take = int((lower <= cut).sum(1).max())  # NaN and infinite scores are never <= cut
    if not beam <= take <= width // 4:  # too many close calls (or non-finite scores): score all exactly
        return None
    index = torch.topk(lower, take, dim=1, largest=False).indices  # [N, take], flat b * K + k
    scores = exact(index)
    keys = torch.round(scores / BEAM_GRID)
    if not float(keys.abs().max()) < 2.0 ** 62 / width - width:
        return None
    # Ties by flat index, as the stable sort over all B * K pairs orders them.
    best = torch.topk(keys.long() * width + index, beam, dim=1, largest=False, sorted=True).indices
    return torch.gather(index, 1, best), torch.gather(scores, 1, best)


def _float32_products_are_exact_rounding(device: torch.device) -> bool:
    """Whether float32 matrix products on ``device`` round each operation to float32 (the screen's
    error bound assumes it): not with TF32 on CUDA, nor with reduced-precision float32 products."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    return device.type == "cpu" or (device.type == "cuda" and not torch.backends.cuda.matmul.allow_tf32)


def _smallest(values: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` smallest of each row of integer-valued float64 ``values``, ties by index:
    the first ``n`` of a stable sort. Done as a top-k of exact int64 keys ``value * width + index``
    (about 7 times faster than the sort at a beam of 4 over 1024 codes), or by the sort itself when
    the values are too large for such keys."""
    width = values.shape[1]
    if values.numel() and float(values.abs().max()) < 2.0 ** 62 / width - width:
        keys = values.long() * width + torch.arange(width, device=values.device)
        return torch.topk(keys, min(n, width), dim=1, largest=False, sorted=True).indices
    return torch.sort(values, dim=1, stable=True).indices[:, :n]


def mdct_basis(hop: int) -> torch.Tensor:
    """``[2 * hop, hop]`` windowed MDCT basis (sine window; orthonormal TDAC)."""
    n = torch.arange(2 * hop, dtype=torch.float64)
    k = torch.arange(hop, dtype=torch.float64)
    window = torch.sin(math.pi * (n + 0.5) / (2 * hop))
    cos = torch.cos(math.pi / hop * (n[:, None] + 0.5 + hop / 2) * (k[None] + 0.5))
    return (math.sqrt(2.0 / hop) * cos * window[:, None]).float()


def num_frames(num_samples: int, hop: int) -> int:
    return math.ceil(num_samples / hop) + 1


def mdct(wave: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` -> coefficients ``[B, F, hop]`` with ``F = ceil(T / hop) + 1``."""
    hop = basis.shape[1]
    frames = num_frames(wave.shape[-1], hop)
    padded = F.pad(wave, (hop, (frames + 1) * hop - wave.shape[-1] - hop))
    return padded.unfold(-1, 2 * hop, hop)[:, :frames] @ basis


def imdct(coefficients: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``[B, F, hop]`` -> ``[B, (F - 1) * hop]`` (overlap-add, first ``hop`` samples dropped)."""
    hop = basis.shape[1]
    batch, frames = coefficients.shape[:2]
    pieces = (coefficients @ basis.T).transpose(1, 2)  # [B, 2 * hop, F]
    out = F.fold(pieces, output_size=(1, (frames + 1) * hop), kernel_size=(1, 2 * hop), stride=(1, hop))
    return out.reshape(batch, -1)[:, hop: frames * hop]


class PostFilter(nn.Module):
    """Decoded coefficients ``[B, hop, F]`` -> a residual of the same shape (zero at init)."""

    def __init__(self, hop: int, channels: int, blocks: int):
        super().__init__()
        self.inp = nn.Conv1d(hop, channels, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GELU(), nn.Conv1d(channels, channels, 3, padding=1), nn.GELU(),
                          nn.Conv1d(channels, channels, 3, padding=1))
            for _ in range(blocks)
        )
        self.out = nn.Conv1d(channels, hop, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, coefficients: torch.Tensor) -> torch.Tensor:
        h = self.inp(coefficients)
        for block in self.blocks:
            h = h + block(h)
        return self.out(F.gelu(h))


class MdctRVQ(nn.Module):
    """The model: MDCT basis, Q residual codebooks, optional post-filter."""

    def __init__(self, *, sample_rate: int = 16000, hop: int = 256, num_codebooks: int = 8,
                 codebook_size: int = 1024, postfilter_channels: int = 256, postfilter_blocks: int = 2):
        super().__init__()
        self.sample_rate, self.hop = sample_rate, hop
        # Built on the meta device to learn its shapes (the config check), the basis is a placeholder: a
        # meta arange would import torch's decompositions, ~2 s of every process's first load.
        on_meta = torch.empty(0).device.type == "meta"
        basis = torch.empty(2 * hop, hop, device="meta") if on_meta else mdct_basis(hop)
        self.register_buffer("basis", basis, persistent=False)
        self.register_buffer("codebooks", torch.zeros(num_codebooks, codebook_size, hop))
        self.postfilter = PostFilter(hop, postfilter_channels, postfilter_blocks) if postfilter_blocks > 0 else None

    def config(self) -> dict[str, Any]:
        pf = self.postfilter
        q, k, _ = self.codebooks.shape
        return {
            "format": FORMAT,
            "sample_rate": self.sample_rate,
            "hop": self.hop,
            "num_codebooks": int(q),
            "codebook_size": int(k),
            "postfilter_channels": pf.inp.out_channels if pf is not None else 0,
            "postfilter_blocks": len(pf.blocks) if pf is not None else 0,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "MdctRVQ":
        keys = ("sample_rate", "hop", "num_codebooks", "codebook_size", "postfilter_channels", "postfilter_blocks")
        return cls(**{k: config[k] for k in keys})

    def analyse(self, wave: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` -> MDCT coefficients ``[B, F, hop]``."""
        return mdct(wave, self.basis)

    def encode(self, wave: torch.Tensor, n_q: int | None = None,
               packed: PackedCodebook | None = None, beam: int = 1) -> torch.Tensor:
        """``[B, T]`` -> int64 codes ``[B, F, n_q]``.

        ``packed``: this model's codebooks already packed (a codec's cache), else packed per call.
        ``beam > 1``: beam search (``rvq_beam_encode``).
        """
        coefficients = self.analyse(wave)
        if beam > 1:
            n = self.codebooks.shape[0] if n_q is None else n_q
            return rvq_beam_encode(coefficients, self.codebooks[:n], beam)
        if packed is None:
            return rvq_encode(coefficients, self.codebooks, n_q=n_q)
        return packed.rvq_encode(coefficients, n_q=n_q)

    def refine(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Decoded coefficients ``[B, F, hop]`` -> post-filtered coefficients."""
        if self.postfilter is None:
            return coefficients
        return coefficients + self.postfilter(coefficients.transpose(1, 2)).transpose(1, 2)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes ``[B, F, q]`` -> ``[B, (F - 1) * hop]``."""
        return imdct(self.refine(rvq_decode(codes, self.codebooks)), self.basis)


def save_model(model: MdctRVQ, directory: str | Path, *, name: str, extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (float16) into ``directory`` (atomically per file)."""
    return save_model_dir(model, directory, fmt=FORMAT, name=name, extra=extra)


def load_model(directory: str | Path) -> tuple[MdctRVQ, dict[str, Any]]:
    """Read a ``lumo-rvq`` directory -> (float32 model in eval mode, config)."""
    return load_model_dir(directory, fmt=FORMAT, from_config=MdctRVQ.from_config, keys=CONFIG_KEYS)


class LumoRVQCodec(AudioCodec):
    """``lumo-rvq``: see the module docstring. Options ``num_quantizers`` (default all), ``beam`` (default 1)."""

    kind = "lumo-rvq"
    channels = 1

    def __init__(self, directory: str | Path, *, device: str | torch.device = "cpu", **options: Any):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CodecError(f"codec directory not found: {self.directory}")
        self.model, self.config = load_model(self.directory)
        self.model.to(device)
        q, k, _ = self.model.codebooks.shape
        n = options.pop("num_quantizers", int(q))
        beam = options.pop("beam", 1)
        if options:
            raise CodecError(f"lumo-rvq: unknown options {sorted(options)} (known: beam, num_quantizers)")
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= q:
            raise CodecError(f"lumo-rvq: num_quantizers must be an integer in [1, {q}], got {n!r}")
        if isinstance(beam, bool) or not isinstance(beam, numbers.Integral) or not 1 <= beam <= MAX_BEAM:
            raise CodecError(f"lumo-rvq: beam must be an integer in [1, {MAX_BEAM}], got {beam!r}")
        self.beam = int(beam)
        self.num_codebooks, self.codebook_size = int(n), int(k)
        self._codebooks = CodebookCache()  # packed once, not in every encode
        self.sample_rate = self.model.sample_rate
        self.frame_rate = self.sample_rate / self.model.hop
        # beam 1 (the greedy encoder) is left out, so codecs without the option keep their identity.
        ident = {"num_quantizers": n} | ({"beam": self.beam} if self.beam > 1 else {})
        self._identity = directory_identity(self.directory, self.kind, ident)

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    @property
    def device(self) -> torch.device:
        return self.model.codebooks.device

    def to(self, device):
        self.model.to(device)
        return self

    @torch.inference_mode()
    def encode_tensor(self, waveforms: torch.Tensor) -> torch.Tensor:
        if waveforms.dim() != 3 or waveforms.shape[1] != 1:
            raise ValueError(f"lumo-rvq: expected mono waveforms [B, 1, T], got {tuple(waveforms.shape)}")
        if waveforms.shape[-1] == 0:
            raise ValueError("lumo-rvq: zero-length waveform")
        return self.model.encode(waveforms[:, 0].float(), n_q=self.num_codebooks,
                                 packed=self._codebooks(self.model.codebooks), beam=self.beam)

    @torch.inference_mode()
    def decode_tensor(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.dim() != 3 or codes.shape[-1] != self.num_codebooks:
            raise ValueError(f"lumo-rvq: expected codes [B, T', {self.num_codebooks}], got {tuple(codes.shape)}")
        return self.model.decode(codes.long())[:, None]
