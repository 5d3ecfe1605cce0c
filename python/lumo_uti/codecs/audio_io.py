"""Waveforms in and out of codec space: channels, sample rate, checks.

Policy (``prepare``): non-finite samples and empty waveforms are errors; a mono
codec gets the channel mean; a stereo codec gets a mono input duplicated and a
>2-channel input mixed down to mono then duplicated; the sample rate is
converted with a polyphase windowed-sinc resampler (Hann window, 6 zero
crossings, rolloff 0.99; rates from 1 Hz to 768 kHz, in bounded memory).
Decoding returns audio at the codec's rate, trimmed to the length the input
had at that rate (no added delay).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

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
    rate = check_sample_rate(audio.sample_rate, f"{where}: sample rate")
    if rate != sample_rate:
        wave = resample(wave, rate, sample_rate)
    return wave.contiguous()


# Sample rates ``resample`` accepts, in Hz: anything a WAV header can name is
# checked against these before any work is done.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1, 768_000
# Filter-bank entries (phases x taps) up to which the bank is precomputed; past
# it (rates with a huge reduced ratio, e.g. 48001 / 16000) each output's taps
# are evaluated from its fractional position instead.
_MAX_BANK = 1 << 20
# Frame-kernel entries (phases x (orig + 2 * half)) up to which one strided
# conv1d over frames is used (the usual rates: 48k, 44.1k, 24k, 22.05k <-> 16k).
_MAX_FRAME_KERNEL = 1 << 18
# Gathered input values (outputs x taps, per channel) in one step.
_CHUNK_ELEMENTS = 1 << 20


def check_sample_rate(rate: Any, what: str = "sample rate") -> int:
    """``rate`` as an int in [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]; ValueError otherwise."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Integral):
        raise ValueError(f"{what}: expected an integer number of Hz, got {rate!r}")
    if not MIN_SAMPLE_RATE <= int(rate) <= MAX_SAMPLE_RATE:
        raise ValueError(f"{what}: expected {MIN_SAMPLE_RATE} .. {MAX_SAMPLE_RATE} Hz, got {int(rate)} Hz")
    return int(rate)


def _windowed_sinc(d: torch.Tensor, ratio: float, zero_crossings: int) -> torch.Tensor:
    """Filter taps at input-sample offsets ``d`` (float64): Hann-windowed sinc, cutoff ``ratio``."""
    u = d * ratio
    inside = u.abs() < zero_crossings
    u = u.clamp(-zero_crossings, zero_crossings)
    window = torch.cos(u * (math.pi / (2 * zero_crossings))) ** 2
    t = u * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, torch.ones_like(t), t))
    return torch.where(inside, sinc * window * ratio, torch.zeros_like(u))


def resample(wave: torch.Tensor, orig_freq: int, new_freq: int, zero_crossings: int = 6,
             rolloff: float = 0.99) -> torch.Tensor:
    """Band-limited resampling of ``[C, T]`` -> ``[C, ceil(T * new / orig)]`` (polyphase).

    Output sample ``n`` sits at input position ``p = n * orig / new`` and is
    ``sum_i x[i] * h(i - p)`` over the zero-padded input, with ``h`` a Hann-windowed
    sinc of ``zero_crossings`` zero crossings each side and cutoff ``rolloff``
    times the lower Nyquist rate. The rates are reduced by their gcd to
    ``orig / new``; the usual rates run one strided conv1d over frames of
    ``orig`` inputs (a ``new`` x ``orig + taps`` kernel), any other pair gathers
    each output's taps (from a ``new`` x taps phase bank, or evaluated at the
    output's fractional position when ``new`` is huge, e.g. 48001 -> 16000).
    Work is done in chunks, so memory is O(kernel + chunk + output) whatever
    the rates.

    Raises:
        ValueError: a rate outside [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE] Hz, or
            ``wave`` is not a float ``[C, T]`` tensor.
    """
    orig_freq = check_sample_rate(orig_freq, "resample: orig_freq")
    new_freq = check_sample_rate(new_freq, "resample: new_freq")
    if not isinstance(wave, torch.Tensor) or wave.dim() != 2 or not wave.is_floating_point():
        got = f"{wave.dtype} {tuple(wave.shape)}" if isinstance(wave, torch.Tensor) else type(wave).__name__
        raise ValueError(f"resample: expected a float waveform [C, T], got {got}")
    if isinstance(zero_crossings, bool) or not isinstance(zero_crossings, int) or zero_crossings < 1:
        raise ValueError(f"resample: zero_crossings must be a positive integer, got {zero_crossings!r}")
    if not 0.0 < float(rolloff) <= 1.0:
        raise ValueError(f"resample: rolloff must be in (0, 1], got {rolloff!r}")
    g = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // g, new_freq // g
    if orig == new:
        return wave
    channels, length = wave.shape
    out_len = -(-new * length // orig)
    if out_len == 0:
        return wave.new_zeros(channels, 0)
    ratio = min(1.0, new / orig) * float(rolloff)  # cutoff in cycles per input sample, times 2
    half = math.ceil(zero_crossings / ratio)
    if new * (orig + 2 * half) <= _MAX_FRAME_KERNEL:
        return _resample_frames(wave, orig, new, out_len, half, ratio, zero_crossings)
    return _resample_gather(wave, orig, new, out_len, half, ratio, zero_crossings)


def _resample_frames(wave, orig, new, out_len, half, ratio, zero_crossings):
    """Common rates (small reduced ratio): frame ``f`` (``orig`` inputs) -> ``new`` outputs, one conv1d.

    The kernel ``[new, 1, orig + 2 * half]`` holds every phase's taps relative to
    the frame start; the input is processed in chunks of frames.
    """
    channels, length = wave.shape
    width = orig + 2 * half
    k = torch.arange(-half, half + orig, dtype=torch.float64, device=wave.device)
    j = torch.arange(new, dtype=torch.float64, device=wave.device)
    kernels = _windowed_sinc(k[None] - j[:, None] * (orig / new), ratio, zero_crossings)
    kernels = kernels.to(wave.dtype)[:, None]  # [new, 1, width]
    frames = -(-out_len // new)
    x = F.pad(wave, (half, max(0, frames * orig + width - orig - half - length)))[:, None]  # [C, 1, T']
    step = max(1, _CHUNK_ELEMENTS // width)
    pieces = []
    for f0 in range(0, frames, step):
        f1 = min(frames, f0 + step)
        y = F.conv1d(x[..., f0 * orig: (f1 - 1) * orig + width], kernels, stride=orig)  # [C, new, f1 - f0]
        pieces.append(y.transpose(1, 2).reshape(channels, -1))
    return torch.cat(pieces, dim=1)[:, :out_len]


def _resample_gather(wave, orig, new, out_len, half, ratio, zero_crossings):
    """Any rates: each output gathers the ``2 * half + 2`` inputs around its position.

    The taps come from a precomputed ``[new, taps]`` phase bank when it is small,
    else are evaluated from each output's fractional position; outputs (and, for
    extreme downsampling, taps) are processed in chunks.
    """
    channels, length = wave.shape
    offsets = torch.arange(-half, half + 2, device=wave.device)  # taps around floor(p): [taps]
    taps = offsets.numel()
    x = F.pad(wave, (half, half + 2))
    bank = None
    if new * taps <= _MAX_BANK:
        phase = torch.arange(new, dtype=torch.float64, device=wave.device)[:, None] / new
        bank = _windowed_sinc(offsets.double()[None] - phase, ratio, zero_crossings).to(wave.dtype)  # [new, taps]
    out = wave.new_zeros(channels, out_len)
    # Outputs per step and taps per step: a step gathers at most _CHUNK_ELEMENTS
    # input values per channel (taps alone exceed it only for extreme downsampling).
    tap_step = min(taps, _CHUNK_ELEMENTS)
    step = max(1, _CHUNK_ELEMENTS // taps)
    for first in range(0, out_len, step):
        n = torch.arange(first, min(first + step, out_len), dtype=torch.int64, device=wave.device)
        position = n * orig  # p * new, exact
        base, phase = position // new, position % new
        for t0 in range(0, taps, tap_step):
            off = offsets[t0: t0 + tap_step]
            if bank is not None:
                h = bank[phase, t0: t0 + tap_step]  # [chunk, taps in this step]
            else:
                h = _windowed_sinc(off.double()[None] - (phase.double() / new)[:, None], ratio,
                                   zero_crossings).to(wave.dtype)
            index = base[:, None] + (off + half)[None]  # into the padded input
            out[:, first: first + n.numel()] += (x[:, index] * h).sum(-1)
    return out
