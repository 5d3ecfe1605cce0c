"""Shared hypothesis strategies and helpers for the token-space and grammar tests."""

from __future__ import annotations

import unicodedata

import numpy as np
from hypothesis import strategies as st

import lumo_uti
from lumo_uti.grammar import Grammar
from lumo_uti.text import qwen3_tokenizer
from lumo_uti.token_space import (
    BaseSpec,
    DEFAULT_SPECIALS,
    TokenSpace,
    codes_block,
    grid_block,
    special_block,
)


def qwen_base() -> BaseSpec:
    tok = qwen3_tokenizer()
    return BaseSpec(tok.identity, tok.vocab_size, 151936, tok.special_tokens)


def small_space(
    image: tuple[int, int] | None = (7, 1),
    audio: tuple[int, int] | None = (5, 3),
    grid_max: int = 4,
    special_size: int = 8,
    pad_to: int = 128,
) -> TokenSpace:
    """A Qwen-based token space with tiny code blocks (codebook_size, num_codebooks)."""
    blocks = [special_block(DEFAULT_SPECIALS, size=special_size)]
    if image is not None:
        blocks += [grid_block(grid_max), codes_block("image", *image)]
    if audio is not None:
        blocks.append(codes_block("audio", *audio))
    return TokenSpace.build(qwen_base(), blocks, name="small", pad_to_multiple_of=pad_to)


def grammar_for(ts: TokenSpace) -> Grammar:
    tok = qwen3_tokenizer()
    return Grammar(ts, tok.encode, tok.decode)


@st.composite
def token_spaces(draw) -> TokenSpace:
    image = draw(st.one_of(st.none(), st.tuples(st.integers(1, 12), st.integers(1, 3))))
    audio = draw(st.one_of(st.none(), st.tuples(st.integers(1, 12), st.integers(1, 4))))
    return small_space(
        image=image,
        audio=audio,
        grid_max=draw(st.integers(1, 6)),
        special_size=draw(st.integers(len(DEFAULT_SPECIALS), 12)),
        pad_to=draw(st.sampled_from([1, 7, 64, 128])),
    )


texts = st.text(max_size=24)


@st.composite
def documents(draw, ts: TokenSpace, max_segments: int = 6) -> list:
    """Random documents valid for ``ts``."""
    options = ["text", "placeholder"]
    image, audio = ts.codes_block("image"), ts.codes_block("audio")
    if image is not None:
        options.append("image")
    if audio is not None:
        options.append("audio")
    grid_max = ts.block("grid").size if image is not None else 0
    doc = []
    for _ in range(draw(st.integers(0, max_segments))):
        kind = draw(st.sampled_from(options))
        if kind == "text":
            doc.append(draw(texts))
        elif kind == "placeholder":
            doc.append(lumo_uti.ImagePlaceholder(draw(st.integers(1, 5))))
        elif kind == "image":
            h, w = draw(st.integers(1, grid_max)), draw(st.integers(1, grid_max))
            seed = draw(st.integers(0, 2**32 - 1))
            codes = np.random.default_rng(seed).integers(0, image.codebook_size, size=(image.num_codebooks, h, w))
            doc.append(lumo_uti.ImageCodes(codes))
        else:
            t = draw(st.integers(0, 6))
            seed = draw(st.integers(0, 2**32 - 1))
            codes = np.random.default_rng(seed).integers(0, audio.codebook_size, size=(t, audio.num_codebooks))
            doc.append(lumo_uti.AudioCodes(codes))
    return doc


def normalize(doc: list) -> list:
    """What a document decodes to: adjacent text joined (NFC, as Qwen normalises),
    empty text dropped, adjacent placeholders merged."""
    out: list = []
    for seg in doc:
        if isinstance(seg, str):
            seg = unicodedata.normalize("NFC", seg)
            if not seg:
                continue
            if out and isinstance(out[-1], str):
                out[-1] += seg
                continue
        elif isinstance(seg, lumo_uti.ImagePlaceholder) and out and isinstance(out[-1], lumo_uti.ImagePlaceholder):
            out[-1] = lumo_uti.ImagePlaceholder(out[-1].num_tokens + seg.num_tokens)
            continue
        out.append(seg)
    return out
