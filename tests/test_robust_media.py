"""Media inputs that used to be misread silently: [T, C] audio, NaN pixels, premultiplied La."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lumo_uti import Audio
from lumo_uti.codecs import image_io


# -- audio layout --------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [np.zeros, torch.zeros], ids=["numpy", "torch"])
@pytest.mark.parametrize("shape", [(48000, 2), (16000, 1), (1000, 17)], ids=str)
def test_audio_given_t_c_is_refused_naming_the_layout(make, shape):
    with pytest.raises(ValueError) as info:
        Audio(make(shape, dtype=np.float32 if make is np.zeros else torch.float32), 16000)
    message = str(info.value)
    assert "expected a waveform of shape [C, T]" in message and f"got {shape}" in message
    assert "looks like [T, C]: pass waveform.T" in message


@pytest.mark.parametrize("shape", [(2, 48000), (16, 10), (32, 48000), (1, 1)], ids=str)
def test_plausible_channel_counts_are_kept(shape):
    audio = Audio(np.zeros(shape, dtype=np.float32), 16000)
    assert (audio.num_channels, audio.num_samples) == shape


def test_mono_1d_is_still_one_channel():
    assert Audio(np.zeros(48000, dtype=np.float32), 48000).num_channels == 1


# -- images --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_float_pixels_are_refused(bad):
    pixels = np.full((3, 4), 100.0, dtype=np.float32)
    pixels[1, 2] = bad
    with pytest.raises(ValueError, match=r"photo: float image has 1 NaN or infinite pixel\(s\), the first at x=2, y=1"):
        image_io.to_rgb(Image.fromarray(pixels, "F"), "photo")


def test_finite_float_pixels_are_clipped_as_documented():
    pixels = np.array([[-5.0, 100.4, 300.0]], dtype=np.float32)
    out = np.asarray(image_io.to_rgb(Image.fromarray(pixels, "F")))
    assert out[0, :, 0].tolist() == [0, 100, 255]


def test_premultiplied_la_is_composited_like_la():
    la = Image.new("LA", (3, 2), (200, 128))
    premultiplied = la.convert("La")
    assert premultiplied.mode == "La"
    out = image_io.to_rgb(premultiplied)
    assert out.mode == "RGB" and out.size == (3, 2)
    assert np.array_equal(np.asarray(out), np.asarray(image_io.to_rgb(la)))
    # 200 at alpha 128 over white: about 200 * 0.5 + 255 * 0.5
    assert abs(int(np.asarray(out)[0, 0, 0]) - 227) <= 1
