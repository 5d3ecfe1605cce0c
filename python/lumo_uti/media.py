"""Media segments: ``Audio`` (a waveform and its sample rate).

Images are ``PIL.Image.Image`` objects; audio has no standard Python type, so
this module defines one.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np


# More channels than this, with fewer samples than channels, is a [T, C] array
# read the wrong way round rather than real audio.
MAX_PLAUSIBLE_CHANNELS = 16


class Audio:
    """A waveform ``[C, T]`` (float32 torch tensor, nominally in [-1, 1]) at ``sample_rate`` Hz.

    Args:
        waveform: ``[C, T]`` or ``[T]`` (mono) array-like or tensor, float.
        sample_rate: samples per second, a positive integer.

    Raises ValueError for a waveform that looks like ``[T, C]``: more than
    ``MAX_PLAUSIBLE_CHANNELS`` channels and fewer samples than channels (pass
    ``waveform.T``; ``soundfile`` and most readers give ``[T, C]``).
    """

    __slots__ = ("waveform", "sample_rate")

    def __init__(self, waveform: Any, sample_rate: int):
        import torch

        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise ValueError(f"Audio: sample_rate must be a positive integer, got {sample_rate!r}")
        wave = waveform if isinstance(waveform, torch.Tensor) else torch.as_tensor(np.asarray(waveform))
        if not wave.is_floating_point():
            raise TypeError(f"Audio: expected a float waveform, got dtype {wave.dtype}")
        if wave.dim() == 1:
            wave = wave[None]
        if wave.dim() != 2 or wave.shape[0] < 1:
            raise ValueError(f"Audio: expected a waveform of shape [C, T] or [T], got {tuple(wave.shape)}")
        channels, samples = wave.shape
        if channels > MAX_PLAUSIBLE_CHANNELS and samples < channels:
            raise ValueError(
                f"Audio: expected a waveform of shape [C, T] (channels first), got {tuple(wave.shape)}, which "
                f"reads as {channels} channels of {samples} samples; this looks like [T, C]: pass waveform.T"
            )
        self.waveform = wave.detach().to(torch.float32)
        self.sample_rate = int(sample_rate)

    @property
    def num_channels(self) -> int:
        return self.waveform.shape[0]

    @property
    def num_samples(self) -> int:
        return self.waveform.shape[1]

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.num_samples / self.sample_rate

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Audio":
        """Read an audio file (WAV, FLAC, OGG ... whatever libsndfile reads)."""
        import soundfile

        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # [T, C]
        except (RuntimeError, soundfile.LibsndfileError) as e:
            raise ValueError(f"cannot read audio file {path}: {e}") from None
        return cls(np.ascontiguousarray(data.T), rate)

    def save(self, path: str | os.PathLike) -> None:
        """Write a 16-bit PCM WAV file atomically."""
        import soundfile

        from ._io import atomic_write_bytes

        buf = io.BytesIO()
        data = self.waveform.clamp(-1, 1).T.cpu().numpy()
        soundfile.write(buf, data, self.sample_rate, format="WAV", subtype="PCM_16")
        atomic_write_bytes(Path(path), buf.getvalue())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Audio):
            return NotImplemented
        return (
            self.sample_rate == other.sample_rate
            and self.waveform.shape == other.waveform.shape
            and bool((self.waveform == other.waveform).all())
        )

    __hash__ = None  # mutable tensor inside

    def __repr__(self) -> str:
        return f"Audio(channels={self.num_channels}, samples={self.num_samples}, sample_rate={self.sample_rate})"
