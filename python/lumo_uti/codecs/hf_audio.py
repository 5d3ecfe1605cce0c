"""Audio codecs over Hugging Face models: ``hf-encodec``, ``hf-dac``, ``hf-mimi``.

Each runs the model's own encoder/decoder; the residual quantiser's search is
replaced by lumo ops:

- EnCodec and Mimi: the model's RVQ ``encode`` becomes one ``rvq_encode`` call
  over the stacked codebooks (Mimi: once for the semantic RVQ and once for the
  acoustic RVQ, after each one's input projection, as the model does).
- DAC: per stage, project in, ``vq_search(metric="cosine")`` (DAC searches
  l2-normalised latents against the l2-normalised codebook but gathers the raw
  codebook vectors), project out, subtract; the arithmetic of the model's
  straight-through step is kept so later stages see the same residual.

Codes are ``[B, T', Q]``. The models are copies owned by the codec: patching
their quantiser does not touch any other instance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .base import AudioCodec
from .codebook_cache import CodebookCache, StackedCodebookCache
from .hf_common import CodecError, directory_identity, load_hf_model, reduce_by_directory


class _HFAudioCodec(AudioCodec):
    model_class: str

    def __init__(self, directory: str | Path, *, device: str | torch.device = "cpu", **options: Any):
        self.model, self.directory = load_hf_model(self.model_class, directory, device)
        self._options = self._setup(dict(options))
        self._identity = directory_identity(self.directory, self.kind, self._options)

    def __reduce__(self) -> tuple:
        return reduce_by_directory(self)  # by reference: see hf_common

    def _setup(self, options: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device):
        self.model.to(device)
        return self


def _rvq_encode_module(rvq, project_in=None):
    """A replacement for an HF RVQ module's ``encode(embeddings [B, D, T], n) -> [n, B, T]``."""

    packed = StackedCodebookCache()  # the [Q, K, D] stack, packed once per codebook state and device

    def encode(embeddings: torch.Tensor, num_quantizers: int | None = None) -> torch.Tensor:
        if project_in is not None:
            embeddings = project_in(embeddings)
        codebooks = packed([layer.codebook.embed for layer in rvq.layers], embeddings.device)
        codes = codebooks.rvq_encode(embeddings.transpose(1, 2), n_q=num_quantizers)  # [B, T, n]
        return codes.permute(2, 0, 1)

    return encode


def _num_quantizers_option(kind: str, options: dict[str, Any], low: int, high: int) -> int:
    """The ``num_quantizers`` option (default ``high``), checked to lie in [low, high]."""
    n = int(options.pop("num_quantizers", high))
    if options:
        raise CodecError(f"{kind}: unknown options {sorted(options)} (known: num_quantizers)")
    if not low <= n <= high:
        raise CodecError(f"{kind}: num_quantizers must be in [{low}, {high}], got {n}")
    return n


class EncodecCodec(_HFAudioCodec):
    """``hf-encodec``: EncodecModel (24 kHz-style, unchunked). Option ``bandwidth`` (kbps)."""

    kind = "hf-encodec"
    model_class = "EncodecModel"

    def _setup(self, options):
        config = self.model.config
        if config.normalize or config.chunk_length_s is not None:
            raise CodecError(
                "hf-encodec: chunked / normalised EnCodec models (the 48 kHz one) need per-chunk scales that "
                "token codes do not carry; use an unchunked model such as the 24 kHz one"
            )
        bandwidth = float(options.pop("bandwidth", config.target_bandwidths[-1]))
        if options:
            raise CodecError(f"hf-encodec: unknown options {sorted(options)} (known: bandwidth)")
        if bandwidth not in config.target_bandwidths:
            raise CodecError(f"hf-encodec: bandwidth {bandwidth} is not one of {config.target_bandwidths}")
        self.bandwidth = bandwidth
        quantizer = self.model.quantizer
        self.num_codebooks = quantizer.get_num_quantizers_for_bandwidth(bandwidth)
        self.codebook_size = config.codebook_size
        self.sample_rate, self.channels = config.sampling_rate, config.audio_channels
        self.frame_rate = config.frame_rate
        lumo_encode = _rvq_encode_module(quantizer)
        quantizer.encode = lambda emb, bw=None: lumo_encode(emb, quantizer.get_num_quantizers_for_bandwidth(bw))
        return {"bandwidth": bandwidth}

    @torch.inference_mode()
    def encode_tensor(self, waveforms: torch.Tensor) -> torch.Tensor:
        out = self.model.encode(waveforms.to(self.model.dtype), bandwidth=self.bandwidth)
        return out.audio_codes[0].transpose(1, 2)  # [1, B, Q, T'] -> [B, T', Q]

    @torch.inference_mode()
    def decode_tensor(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decode(codes.transpose(1, 2)[None], [None]).audio_values


class MimiCodec(_HFAudioCodec):
    """``hf-mimi``: MimiModel; option ``num_quantizers`` (default: all)."""

    kind = "hf-mimi"
    model_class = "MimiModel"

    def _setup(self, options):
        config = self.model.config
        n = _num_quantizers_option(self.kind, options, config.num_semantic_quantizers, config.num_quantizers)
        self.num_codebooks, self.codebook_size = n, config.codebook_size
        self.sample_rate, self.channels = config.sampling_rate, config.audio_channels
        self.frame_rate = config.frame_rate
        split = self.model.quantizer
        for rvq in (split.semantic_residual_vector_quantizer, split.acoustic_residual_vector_quantizer):
            rvq.encode = _rvq_encode_module(rvq, rvq.input_proj)
        return {"num_quantizers": n}

    @torch.inference_mode()
    def encode_tensor(self, waveforms: torch.Tensor) -> torch.Tensor:
        out = self.model.encode(waveforms.to(self.model.dtype), num_quantizers=self.num_codebooks)
        return out.audio_codes.transpose(1, 2)  # [B, Q, T'] -> [B, T', Q]

    @torch.inference_mode()
    def decode_tensor(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decode(codes.transpose(1, 2)).audio_values


class DacCodec(_HFAudioCodec):
    """``hf-dac``: DacModel; option ``num_quantizers`` (default: all)."""

    kind = "hf-dac"
    model_class = "DacModel"

    def _setup(self, options):
        config = self.model.config
        n = _num_quantizers_option(self.kind, options, 1, config.n_codebooks)
        self.num_codebooks, self.codebook_size = n, config.codebook_size
        self.sample_rate, self.channels = config.sampling_rate, 1
        self.frame_rate = config.sampling_rate / config.hop_length
        # DAC searches l2-normalised codes: each stage's normalised codebook, packed once.
        self._stage_codebooks = [CodebookCache(metric="cosine") for _ in range(n)]
        return {"num_quantizers": n}

    @torch.inference_mode()
    def encode_tensor(self, waveforms: torch.Tensor) -> torch.Tensor:
        residual = self.model.encoder(waveforms.to(self.model.dtype))  # [B, H, T']
        codes = []
        stages = self.model.quantizer.quantizers[: self.num_codebooks]
        for stage, cache in zip(stages, self._stage_codebooks):
            projected = stage.in_proj(residual)  # [B, D, T']
            index = cache(stage.codebook.weight).search(projected.transpose(1, 2))  # [B, T'], cosine
            raw = stage.codebook(index).transpose(1, 2)
            # The model's straight-through step, kept for bit-identical residuals.
            quantized = stage.out_proj(projected + (raw - projected))
            residual = residual - quantized
            codes.append(index)
        return torch.stack(codes, dim=-1)

    @torch.inference_mode()
    def decode_tensor(self, codes: torch.Tensor) -> torch.Tensor:
        audio = self.model.decode(audio_codes=codes.transpose(1, 2)).audio_values  # [B, T]
        return audio[:, None] if audio.dim() == 2 else audio

