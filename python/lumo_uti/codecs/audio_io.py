"""Waveforms in and out of codec space: channels, sample rate, checks.

Policy (``prepare``): non-finite samples and empty waveforms are errors; a mono
codec gets the channel mean; a stereo codec gets a mono input duplicated and a
>2-channel input mixed down to mono then duplicated; the sample rate is
converted with a windowed-sinc resampler (Hann window, 6 zero crossings,
rolloff 0.99). Decoding returns audio at the codec's rate, trimmed to the
length the input had at that rate (no added delay).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..media import Audio


def prepare(audio: Audio, sample_rate: int, channels: int, where: str = "audio") -> torch.Tensor:
    """``Audio`` -> float32 ``[channels, T]`` at ``sample_rate``."""
    if not isinstance(audio, Audio):
        raise TypeError(f"{where}: expected lumo_uti.Audio, got {type(audio).__name__}")
    wave = audio.waveform
    if wave.shape[1] == 0:
        raise ValueError(f"{where}: zero-length audio")
    if not torch.isfinite(wave).all():
        bad = (~torch.isfinite(wave)).nonzero()[0].tolist()
        raise ValueError(f"{where}: non-finite sample at channel {bad[0]}, index {bad[1]}")
    if wave.shape[0] != channels:
        mono = wave.mean(dim=0, keepdim=True)
        wave = mono if channels == 1 else mono.expand(channels, -1)
    if audio.sample_rate != sample_rate:
        wave = resample(wave, audio.sample_rate, sample_rate)
    return wave.contiguous()


def resample(wave: torch.Tensor, orig_freq: int, new_freq: int, zero_crossings: int = 6, rolloff: float = 0.99):
    """Band-limited resampling of ``[C, T]`` -> ``[C, ceil(T * new / orig)]`` (polyphase conv)."""
    g = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // g, new_freq // g
    if orig == new:
        return wave
    cutoff = min(orig, new) * rolloff
    width = math.ceil(zero_crossings * orig / cutoff)
    taps = torch.arange(-width, width + orig, dtype=torch.float64)[None] / orig  # [1, L]
    phases = -torch.arange(new, dtype=torch.float64)[:, None] / new  # [new, 1]
    t = ((phases + taps) * cutoff).clamp(-zero_crossings, zero_crossings)  # [new, L]
    window = torch.cos(t * math.pi / (2 * zero_crossings)) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    kernels = (sinc * window * (cutoff / orig)).to(wave.dtype)[:, None]  # [new, 1, L]
    channels, length = wave.shape
    x = F.pad(wave[:, None], (width, width + orig))
    y = F.conv1d(x, kernels.to(wave.device), stride=orig)  # [C, new, frames]
    y = y.transpose(1, 2).reshape(channels, -1)
    return y[:, : math.ceil(new * length / orig)]
