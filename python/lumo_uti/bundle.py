"""Bundles: a directory with ``token_space.json`` (+ tokenizer, codecs), and the default one.

A bundle directory holds ``token_space.json`` and whatever its tokenizer
identity points at (an ``hf-tokenizer`` identity names a sub-directory with
``tokenizer.json``; the built-in Qwen3 tokenizer needs no file). The default
bundle ships inside the package (``lumo_uti/data/default``).
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path

from .errors import BundleError
from .text import load_text_tokenizer, qwen3_tokenizer
from .token_space import BaseSpec, TokenSpace, default_blocks
from .uti import UTI

DEFAULT_NAME = "lumo-default"


def default_bundle_dir() -> Path:
    """The directory of the embedded default bundle."""
    return Path(str(resources.files("lumo_uti") / "data" / "default"))


def build_default_token_space() -> TokenSpace:
    """The default token space, built from code (the shipped JSON must equal it)."""
    tok = qwen3_tokenizer()
    base = BaseSpec(
        tokenizer=tok.identity,
        text_vocab_size=tok.vocab_size,
        base_rows=151936,  # Qwen3-8B-Base embedding rows; 151669.. are padding
        special_tokens=tok.special_tokens,
    )
    return TokenSpace.build(base, default_blocks(), name=DEFAULT_NAME, pad_to_multiple_of=128)


def load(path: str | os.PathLike | None = None) -> UTI:
    """Load a bundle: ``None`` for the embedded default, else a bundle directory
    or a ``token_space.json`` file. The tokenizer's hash is checked against the
    token space (``TokenizerMismatchError`` on a mismatch)."""
    if path is None:
        return _default()
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle not found: {path}")
    ts_file = path / "token_space.json" if path.is_dir() else path
    if not ts_file.is_file():
        raise BundleError(f"{path} is not a bundle: no token_space.json in it")
    token_space = TokenSpace.load(ts_file)
    return UTI(token_space, load_text_tokenizer(token_space.tokenizer, ts_file.parent))


@functools.lru_cache(maxsize=1)
def _default() -> UTI:
    return load(default_bundle_dir())
