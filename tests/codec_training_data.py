"""Tiny image folders for the lumo-vq training tests: drawn images plus one file named ``photo_*``."""

from __future__ import annotations


def training_images(root, n: int, seed: int):
    """``n`` drawn 64-pixel images (``drawn_*``) and one more as ``photo_x.png`` in ``root``; returns ``root``."""
    from lumo_model.codec import corpus

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        corpus.procedural_image(seed + i, 64).save(root / f"drawn_{i}.png")
    corpus.procedural_image(seed + 99, 64).save(root / "photo_x.png")
    return root
