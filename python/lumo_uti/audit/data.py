"""Evaluation samples: where they are and how they are read.

A data directory holds images (``*.png *.jpg *.jpeg *.bmp *.webp``) and audio
(``*.wav *.flac *.ogg``), found recursively (conventionally under ``images/``
and ``audio/``); hidden files and folders are ignored and samples are sorted by
relative path so every run sees them in the same order. The package ships a
default set under ``lumo_uti/data/eval``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def default_data_dir() -> Path:
    """The bundled evaluation samples (``lumo_uti/data/eval``); it may not exist."""
    return Path(str(resources.files("lumo_uti") / "data" / "eval"))


@dataclass
class EvalSamples:
    """Sample files of one data directory, by modality."""

    root: Path
    images: list[Path] = field(default_factory=list)
    audio: list[Path] = field(default_factory=list)

    def of(self, modality: str) -> list[Path]:
        return self.images if modality == "image" else self.audio

    def name(self, path: Path) -> str:
        """The sample's path relative to the data directory (its name in reports)."""
        return path.relative_to(self.root).as_posix()


def discover(root: str | Path) -> EvalSamples:
    """Find the samples under ``root``. Raises ``DataError`` if it is not a directory."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"evaluation data directory not found: {root}")
    samples = EvalSamples(root)
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            samples.images.append(path)
        elif suffix in AUDIO_SUFFIXES:
            samples.audio.append(path)
    return samples


def load_sample(modality: str, path: Path) -> Any:
    """A PIL image (``"image"``) or ``lumo_uti.Audio`` (``"audio"``) read from ``path``."""
    if modality == "image":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                img.load()
                return img.copy()
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"cannot read image sample {path}: {e}") from None
    from ..media import Audio

    try:
        return Audio.load(path)
    except ValueError as e:
        raise DataError(f"cannot read audio sample {path}: {e}") from None
