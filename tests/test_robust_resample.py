"""audio_io.resample: bounded memory at any rate pair, same results as before at the usual rates."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import lumo_uti
from lumo_uti.codecs import audio_io


def _frame_conv_resample(wave, orig_freq, new_freq, zero_crossings=6, rolloff=0.99):
    """The previous resampler (one [new, orig + 2 * width] kernel), kept as the reference for the usual rates."""
    g = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // g, new_freq // g
    if orig == new:
        return wave
    cutoff = min(orig, new) * rolloff
    width = math.ceil(zero_crossings * orig / cutoff)
    taps = torch.arange(-width, width + orig, dtype=torch.float64)[None] / orig
    phases = -torch.arange(new, dtype=torch.float64)[:, None] / new
    t = ((phases + taps) * cutoff).clamp(-zero_crossings, zero_crossings)
    window = torch.cos(t * math.pi / (2 * zero_crossings)) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    kernels = (sinc * window * (cutoff / orig)).to(wave.dtype)[:, None]
    channels, length = wave.shape
    x = F.pad(wave[:, None], (width, width + orig))
    y = F.conv1d(x, kernels, stride=orig).transpose(1, 2).reshape(channels, -1)
    return y[:, : math.ceil(new * length / orig)]


def _direct_resample(wave, orig_freq, new_freq, zero_crossings=6, rolloff=0.99):
    """y[n] = sum_i x[i] h(i - n * orig / new), as one dense float64 [out, T] matrix (tiny inputs only)."""
    channels, length = wave.shape
    out_len = math.ceil(new_freq * length / orig_freq)
    r = min(1.0, new_freq / orig_freq) * rolloff
    pos = torch.arange(out_len, dtype=torch.float64)[:, None] * orig_freq / new_freq
    u = (torch.arange(length, dtype=torch.float64)[None] - pos) * r
    h = torch.special.sinc(u) * torch.cos(u * math.pi / (2 * zero_crossings)) ** 2 * r
    h = torch.where(u.abs() < zero_crossings, h, torch.zeros_like(h))
    return (wave.double() @ h.T).float()


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op returns, and fails at once past ``limit`` elements."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.largest = limit, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
                if t.numel() > self.limit:
                    raise MemoryError(f"{func}: a tensor of {t.numel()} elements ({tuple(t.shape)})")
        return out


USUAL = [(48000, 16000), (44100, 16000), (22050, 16000), (24000, 16000), (16000, 24000), (16000, 48000),
         (8000, 16000), (16000, 8000), (16000, 44100)]


@pytest.mark.parametrize("orig, new", USUAL, ids=[f"{a}-{b}" for a, b in USUAL])
def test_usual_rates_match_the_previous_resampler(orig, new):
    wave = torch.randn(2, orig // 10)
    got = audio_io.resample(wave, orig, new)
    want = _frame_conv_resample(wave, orig, new)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


ODD = [(1601, 16000), (8001, 16000), (16000, 8001), (48001, 16000), (16000, 48001), (767999, 768000),
       (44100, 48001)]


@pytest.mark.parametrize("orig, new", ODD, ids=[f"{a}-{b}" for a, b in ODD])
def test_odd_rates_run_in_bounded_memory(orig, new):
    wave = torch.randn(1, orig // 10)  # 0.1 s
    with _LargestTensor(limit=1 << 22) as mode:
        out = audio_io.resample(wave, orig, new)
    assert out.shape == (1, math.ceil(new * wave.shape[1] / orig))
    assert mode.largest <= 1 << 22


@pytest.mark.parametrize("orig, new", [(48001, 16000), (16000, 48001), (8001, 16000), (7, 5), (5, 7), (441, 160),
                                       (3, 1), (1, 3), (1000, 1), (1, 1000)])
@pytest.mark.parametrize("path", ["auto", "gather-bank", "gather-direct", "chunked-taps"])
def test_every_path_equals_the_dense_definition(monkeypatch, orig, new, path):
    if path != "auto":
        monkeypatch.setattr(audio_io, "_MAX_FRAME_KERNEL", 0)
    if path == "gather-direct":
        monkeypatch.setattr(audio_io, "_MAX_BANK", 0)
    if path == "chunked-taps":
        monkeypatch.setattr(audio_io, "_CHUNK_ELEMENTS", 5)
    wave = torch.randn(2, max(3, 300 * orig // max(orig, new)))
    got = audio_io.resample(wave, orig, new)
    want = _direct_resample(wave, orig, new)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


def test_a_tone_survives_an_odd_rate():
    t = torch.arange(48001, dtype=torch.float64) / 48001
    tone = torch.sin(2 * torch.pi * 440 * t).float()[None]
    down = audio_io.resample(tone, 48001, 16000)
    assert down.shape == (1, 16000)
    expected = torch.sin(2 * torch.pi * 440 * torch.arange(16000, dtype=torch.float64) / 16000).float()
    assert (down[0, 100:-100] - expected[100:-100]).abs().max() < 0.01


@pytest.mark.parametrize("rate", [0, -8000, 768001, 10**9, 16000.5, True, "16000"])
def test_rates_out_of_range_are_refused(rate):
    with pytest.raises(ValueError, match=r"orig_freq: expected (1 \.\. 768000 Hz|an integer number of Hz)"):
        audio_io.resample(torch.zeros(1, 10), rate, 16000)
    with pytest.raises(ValueError, match=r"new_freq: expected"):
        audio_io.resample(torch.zeros(1, 10), 16000, rate)


def test_prepare_names_an_unusable_sample_rate():
    audio = lumo_uti.Audio(torch.zeros(1, 100), 10**9)  # what a forged WAV header can ask for
    with pytest.raises(ValueError, match=r"clip 3: sample rate: expected 1 \.\. 768000 Hz, got 1000000000 Hz"):
        audio_io.prepare(audio, 16000, 1, "clip 3")


def test_empty_and_bad_waveforms():
    assert audio_io.resample(torch.zeros(2, 0), 44100, 16000).shape == (2, 0)
    with pytest.raises(ValueError, match=r"expected a float waveform \[C, T\]"):
        audio_io.resample(torch.zeros(10), 44100, 16000)
    with pytest.raises(ValueError, match=r"expected a float waveform \[C, T\]"):
        audio_io.resample(torch.zeros(1, 10, dtype=torch.int64), 44100, 16000)


def test_matches_torchaudio_when_installed():
    torchaudio = pytest.importorskip("torchaudio")
    wave = torch.randn(1, 4410)
    want = torchaudio.functional.resample(wave, 44100, 16000, lowpass_filter_width=6, rolloff=0.99,
                                          resampling_method="sinc_interp_hann")
    torch.testing.assert_close(audio_io.resample(wave, 44100, 16000), want, atol=1e-4, rtol=0)
