"""lumo_uti.metrics against known values and invariants."""

from __future__ import annotations

import math

import pytest
import torch

from lumo_uti import metrics


def test_psnr_identical_is_inf():
    x = torch.rand(3, 16, 16)
    assert metrics.psnr(x, x) == float("inf")


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.1])
def test_psnr_known_noise_level(sigma):
    # Gaussian noise of std sigma has MSE ~ sigma^2, so PSNR ~ -20 log10(sigma).
    x = torch.rand(4, 3, 64, 64, dtype=torch.float64)
    y = x + sigma * torch.randn_like(x)
    assert metrics.psnr(x, y) == pytest.approx(-20 * math.log10(sigma), abs=0.1)


def test_psnr_max_value_and_layouts():
    x = torch.rand(8, 8, 3)
    y = (x + 0.1).clamp(0, 1)
    p = metrics.psnr(x, y)
    assert metrics.psnr(x * 255, y * 255, max_value=255.0) == pytest.approx(p)
    assert metrics.psnr(x.permute(2, 0, 1), y.permute(2, 0, 1)) == pytest.approx(p)


def test_psnr_shape_mismatch_message():
    with pytest.raises(ValueError, match=r"psnr: expected reference and test of the same shape"):
        metrics.psnr(torch.rand(3, 8, 8), torch.rand(3, 8, 9))


def test_ssim_identical_and_degrades_with_noise():
    x = torch.rand(3, 32, 32)
    assert metrics.ssim(x, x) == 1.0
    small = metrics.ssim(x, (x + 0.02 * torch.randn_like(x)).clamp(0, 1))
    large = metrics.ssim(x, (x + 0.2 * torch.randn_like(x)).clamp(0, 1))
    assert 1.0 > small > large > -1.0


def test_ssim_layout_invariant_and_small_images():
    x, y = torch.rand(3, 20, 20), torch.rand(3, 20, 20)
    assert metrics.ssim(x, y) == pytest.approx(metrics.ssim(x.permute(1, 2, 0), y.permute(1, 2, 0)))
    # smaller than the 11x11 window: uses the largest odd window that fits
    assert -1.0 <= metrics.ssim(torch.rand(3, 4, 4), torch.rand(3, 4, 4)) <= 1.0


def test_ssim_constant_shift_known_value():
    # Constant images a, b: SSIM = (2ab + C1) / (a^2 + b^2 + C1) (variance terms cancel).
    a, b = 0.5, 0.6
    c1 = (0.01) ** 2
    x, y = torch.full((1, 16, 16), a), torch.full((1, 16, 16), b)
    assert metrics.ssim(x, y) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-6)


def test_si_snr_identical_very_high_and_scale_invariant():
    s = torch.randn(8000)
    assert metrics.si_snr(s, s) > 100
    est = s + 0.1 * torch.randn_like(s)
    base = metrics.si_snr(s, est)
    assert metrics.si_snr(s, 7.5 * est) == pytest.approx(base, abs=1e-6)
    assert metrics.si_snr(s, est + 3.0) == pytest.approx(base, abs=1e-6)  # zero-mean
    assert base == pytest.approx(20.0, abs=0.5)  # noise 1/10 of a unit-variance signal


def test_si_snr_multichannel_and_length_mismatch():
    s = torch.randn(2, 4000)
    assert metrics.si_snr(s, s) > 100
    with pytest.raises(ValueError, match=r"si_snr: expected reference and estimate of the same shape"):
        metrics.si_snr(torch.randn(100), torch.randn(99))


def test_stft_sizes_scale_with_rate():
    assert metrics.stft_sizes(24000) == [512, 1024, 2048]
    assert metrics.stft_sizes(16000) == [256, 512, 1024]
    assert metrics.stft_sizes(48000) == [1024, 2048, 4096]
    assert metrics.stft_sizes(24000, num_samples=600) == [512]


def test_spectral_distances_zero_for_identical_and_monotone():
    sr = 16000
    t = torch.arange(sr) / sr
    s = torch.sin(2 * math.pi * 440 * t) + 0.1 * torch.randn(sr)
    assert metrics.multi_resolution_stft_distance(s, s, sr) == 0.0
    assert metrics.mel_distance(s, s, sr) == 0.0
    small, large = s + 0.01 * torch.randn(sr), s + 0.5 * torch.randn(sr)
    stft = metrics.multi_resolution_stft_distance
    assert 0 < stft(s, small, sr) < stft(s, large, sr)
    assert 0 < metrics.mel_distance(s, small, sr) < metrics.mel_distance(s, large, sr)


def test_mel_distance_of_scaled_signal():
    # Scaling by g shifts every log-mel value by ln(g) where the signal dominates eps.
    sr = 16000
    s = torch.randn(sr)
    assert metrics.mel_distance(s, 2.0 * s, sr) == pytest.approx(math.log(2.0), rel=0.02)


def test_mel_filterbank_shape_and_peaks():
    fb = metrics.mel_filterbank(16000, 512, 40)
    assert fb.shape == (40, 257)
    assert float(fb.min()) >= 0.0 and float(fb.max()) <= 1.0
    assert bool((fb.sum(dim=1) > 0).all())
    peaks = fb.argmax(dim=1)
    assert bool((peaks[1:] >= peaks[:-1]).all())


def test_codebook_usage_uniform_and_one_hot():
    k = 16
    uniform = metrics.codebook_usage(torch.arange(k).repeat(5), k)
    assert uniform["used"] == k and uniform["fraction"] == 1.0
    assert uniform["perplexity"] == pytest.approx(k)
    assert uniform["histogram"] == [5] * k
    one = metrics.codebook_usage(torch.full((30,), 3), k)
    assert one["used"] == 1 and one["fraction"] == pytest.approx(1 / k)
    assert one["perplexity"] == pytest.approx(1.0)
    half = metrics.codebook_usage(torch.tensor([0, 1] * 10), k)
    assert half["perplexity"] == pytest.approx(2.0)


def test_codebook_usage_errors():
    with pytest.raises(ValueError, match=r"codebook_usage: expected codes in \[0, 4\), got 4"):
        metrics.codebook_usage(torch.tensor([0, 4]), 4)
    with pytest.raises(TypeError, match="expected integer codes"):
        metrics.codebook_usage(torch.tensor([0.5]), 4)
    assert metrics.codebook_usage(torch.zeros(0, dtype=torch.long), 4)["perplexity"] == 0.0
