"""lumo_uti: the Unified Token Interface.

A versioned, hashed token space and a sequence grammar that map text (the
Qwen3 tokenizer by default), image codes and audio codes to one stream of
global token IDs and back::

    import lumo_uti
    uti = lumo_uti.load()                          # the embedded default bundle
    ids = uti.encode(["a caption", lumo_uti.ImageCodes(grid)])
    segments = uti.decode(ids)                     # strict; UTIDecodeError on bad streams
    segments = uti.decode(ids, strict=False)
    repairs = segments.repairs

Submodules: ``token_space`` (the ABI), ``grammar`` (layout, encode, decode,
constraints), ``text`` (tokenizers), ``codecs`` (media <-> codes), ``media``
(``Audio``), ``ops`` (compiled kernels), ``cli``.
"""

from __future__ import annotations

from typing import Any

from .bundle import build_default_token_space, create_bundle, default_bundle_dir, load
from .errors import (
    BundleError,
    BundleHashMismatchError,
    BundleTokenizerMismatchError,
    CodecError,
    TokenizerMismatchError,
    TokenSpaceError,
    TokenSpaceLookupError,
    UTIDecodeError,
    UTIError,
)
from .grammar import DecodeResult, Repair
from .media import Audio
from .segments import AudioCodes, ImageCodes, ImagePlaceholder
from .token_space import Block, TokenSpace
from .uti import UTI

__version__ = "0.1.0"

__all__ = [
    "UTI",
    "Audio",
    "AudioCodes",
    "Block",
    "BundleError",
    "BundleHashMismatchError",
    "BundleTokenizerMismatchError",
    "CodecError",
    "DecodeResult",
    "ImageCodes",
    "ImagePlaceholder",
    "Repair",
    "TokenSpace",
    "TokenSpaceError",
    "TokenSpaceLookupError",
    "TokenizerMismatchError",
    "UTIDecodeError",
    "UTIError",
    "build_default_token_space",
    "create_bundle",
    "decode",
    "default_bundle_dir",
    "encode",
    "load",
]


def encode(document: Any, **kwargs: Any) -> list[int]:
    """``load().encode(document)`` on the embedded default bundle."""
    return load().encode(document, **kwargs)


def decode(ids: Any, **kwargs: Any):
    """``load().decode(ids)`` on the embedded default bundle."""
    return load().decode(ids, **kwargs)


def __getattr__(name: str) -> Any:
    # Subpackages that pull in torch (``ops``) load on first attribute access,
    # so ``import lumo_uti; lumo_uti.ops.backends()`` works without importing them here.
    if name in ("ops", "codecs", "datasets", "audit", "cli"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
