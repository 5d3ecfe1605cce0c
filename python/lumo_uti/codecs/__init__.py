"""Codecs: media <-> codes.

``load("KIND:DIR", device=..., **options)`` returns a codec; kinds:

======================  =====================================  ==================
kind                    model (local Hugging Face directory)   options
======================  =====================================  ==================
``hf-janus``            JanusVQVAE                             -
``hf-chameleon``        ChameleonVQVAE (encode only)           -
``hf-emu3``             Emu3VQVAE (single frame)               max_pixels
``hf-encodec``          EncodecModel (unchunked)               bandwidth
``hf-dac``              DacModel                               num_quantizers
``hf-mimi``             MimiModel                              num_quantizers
======================  =====================================  ==================

Every codec has ``encode(media) / decode(codes)`` and, in the model's own
space, ``encode_tensor(x) / decode_tensor(codes)``; see ``base``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import AudioCodec, Codec, ImageCodec
from .hf_common import CodecError

BACKENDS = {
    "hf-janus": ("lumo_uti.codecs.hf_image", "JanusCodec"),
    "hf-chameleon": ("lumo_uti.codecs.hf_image", "ChameleonCodec"),
    "hf-emu3": ("lumo_uti.codecs.hf_image", "Emu3Codec"),
    "hf-encodec": ("lumo_uti.codecs.hf_audio", "EncodecCodec"),
    "hf-dac": ("lumo_uti.codecs.hf_audio", "DacCodec"),
    "hf-mimi": ("lumo_uti.codecs.hf_audio", "MimiCodec"),
    "lumo-vq": ("lumo_uti.codecs.lumo_vq", "LumoVQCodec"),
    "lumo-rvq": ("lumo_uti.codecs.lumo_rvq", "LumoRVQCodec"),
}

__all__ = ["AudioCodec", "BACKENDS", "Codec", "CodecError", "ImageCodec", "load", "parse_spec"]


def parse_spec(spec: str) -> tuple[str, str]:
    """``"KIND:DIR"`` -> (kind, dir); CodecError naming the known kinds otherwise."""
    kind, sep, directory = spec.partition(":")
    if not sep or not directory:
        raise CodecError(f"codec spec must be KIND:DIR, got {spec!r} (kinds: {sorted(BACKENDS)})")
    if kind not in BACKENDS:
        raise CodecError(f"unknown codec kind {kind!r} (kinds: {sorted(BACKENDS)})")
    return kind, directory


def load(spec: str, *, device: Any = "cpu", **options: Any) -> Codec:
    """Load a codec from ``"KIND:DIR"`` (see the module docstring for kinds and options)."""
    kind, directory = parse_spec(spec)
    module_name, class_name = BACKENDS[kind]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(directory, device=device, **options)
