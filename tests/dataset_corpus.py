"""A small mixed corpus for the dataset tests: text, images of several sizes, audio, codes, and bad records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image


def make_corpus(root: Path, *, copies: int = 1, images: bool = True, audio: bool = True) -> tuple[Path, list[object]]:
    """Write ``root/corpus.jsonl`` (+ media); returns its path and each line's parsed JSON (None: malformed)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    media = root / "media"
    media.mkdir(exist_ok=True)
    for i, (w, h) in enumerate([(32, 32), (48, 40), (40, 64)]):
        yy, xx = np.mgrid[0:h, 0:w]
        pixels = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], -1) + rng.integers(0, 20, (h, w, 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(media / f"img_{i}.png")
    (media / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    t = np.arange(8000) / 16000
    soundfile.write(media / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    records: list[object] = []
    for c in range(copies):
        records += [
            [f"Document {c}: plain text with a literal <|endoftext|> inside."],
            {"document": ["caption", {"image_codes": [[1, 2], [3, 4]]}], "meta": {"id": c}},
            "a bare string document",
        ]
        if images:
            records += [
                [f"photo {c}", {"image": "media/img_0.png"}],
                [{"image": "media/img_1.png"}, "then", {"image": str((media / "img_2.png").resolve())}],
                ["missing", {"image": "media/nope.png"}],
                [{"image": "media/corrupt.png"}],
            ]
        if audio:
            records += [["speech:", {"audio": "media/tone.wav"}]]
        records += [
            [],  # empty document
            None,  # malformed line
            [{"bogus": 1}],  # bad segment
            ["after the errors", {"audio_codes": [[1, 2, 3, 4, 5, 6, 7, 8]]}],
        ]
    path = root / "corpus.jsonl"
    with open(path, "w") as f:
        for r in records:
            f.write("{not json\n" if r is None else json.dumps(r) + "\n")
        f.write("\n")  # a trailing blank line is not a document
    return path, records
