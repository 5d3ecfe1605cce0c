"""Encode document segments (text, code grids, placeholders) to global IDs.

Layout::

    image:  <|image_start|> <grid H> <grid W> codes <|image_end|>
            codes row-major over the H x W cells; with L layers, the L codes of
            a cell follow each other (layer l uses codebook l)
    audio:  <|audio_start|> frames <|audio_end|>
            frame-major: q0 .. q(Q-1) of frame 0, then frame 1, ...
    text:   the text tokenizer's IDs, as they are
    placeholder: n x <|image_patch|>
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import TokenSpaceError, TokenSpaceLookupError
from ..segments import AudioCodes, ImageCodes, ImagePlaceholder, segment_kind, segment_type_names
from .layout import Kind, Layout, grid_id, interleaved_code_ids


def encode_image_codes(layout: Layout, image: ImageCodes) -> np.ndarray:
    """``ImageCodes`` -> int64 IDs of the whole image span."""
    blk = layout.image
    if blk is None:
        raise TokenSpaceLookupError("block", f"{_name(layout)} has no image block; cannot encode ImageCodes")
    codes = image.layers  # [L, H, W]
    num_layers, height, width = codes.shape
    if num_layers != blk.num_codebooks:
        raise TokenSpaceError(
            "range", f"ImageCodes has {num_layers} code layer(s) but block {blk.name!r} has {blk.num_codebooks} codebook(s)"
        )
    _check_code_range(codes, blk.codebook_size, "ImageCodes")
    for side, what in ((height, "height"), (width, "width")):
        if side > layout.grid.size:
            raise TokenSpaceError("range", f"ImageCodes {what} {side} exceeds the grid block's maximum {layout.grid.size}")
    body = interleaved_code_ids(blk, codes.transpose(1, 2, 0))  # [H, W, L]: layers innermost
    head = [layout.marker_id[Kind.IMAGE_START], grid_id(layout.grid, height), grid_id(layout.grid, width)]
    return np.concatenate([np.array(head, dtype=np.int64), body, [layout.marker_id[Kind.IMAGE_END]]])


def encode_audio_codes(layout: Layout, audio: AudioCodes) -> np.ndarray:
    """``AudioCodes`` [T, Q] -> int64 IDs of the whole audio span."""
    blk = layout.audio
    if blk is None:
        raise TokenSpaceLookupError("block", f"{_name(layout)} has no audio block; cannot encode AudioCodes")
    codes = audio.codes
    if codes.shape[1] != blk.num_codebooks:
        raise TokenSpaceError(
            "range", f"AudioCodes has Q={codes.shape[1]} codebooks but block {blk.name!r} has {blk.num_codebooks}"
        )
    _check_code_range(codes, blk.codebook_size, "AudioCodes")
    body = interleaved_code_ids(blk, codes)  # frame-major: the Q codes of a frame in codebook order
    start, end = layout.marker_id[Kind.AUDIO_START], layout.marker_id[Kind.AUDIO_END]
    return np.concatenate([np.array([start], dtype=np.int64), body, np.array([end], dtype=np.int64)])


def encode_placeholder(layout: Layout, placeholder: ImagePlaceholder) -> np.ndarray:
    if Kind.IMAGE_PATCH not in layout.marker_id:
        raise TokenSpaceLookupError("special", f"{_name(layout)} has no <|image_patch|> token")
    return np.full(placeholder.num_tokens, layout.marker_id[Kind.IMAGE_PATCH], dtype=np.int64)


def encode_segments(layout: Layout, segments: list[Any], encode_text: Callable[[str], list[int]]) -> list[int]:
    """Encode a list of segments to one flat list of IDs."""
    out: list[int] = []
    for index, seg in enumerate(segments):
        kind = segment_kind(seg)
        if kind == "text":
            out.extend(encode_text(seg))
        elif kind is not None:
            out.extend(_ENCODERS[kind](layout, seg).tolist())
        else:
            raise TypeError(
                f"segment {index}: cannot encode {type(seg).__name__}; expected {segment_type_names()} "
                "(media needs a bundle with a codec for its modality)"
            )
    return out


_ENCODERS = {"image_codes": encode_image_codes, "audio_codes": encode_audio_codes,
             "image_placeholder": encode_placeholder}


def _check_code_range(codes: np.ndarray, codebook_size: int, what: str) -> None:
    if codes.size and int(codes.max()) >= codebook_size:
        raise TokenSpaceError("range", f"{what}: code {int(codes.max())} is out of range for codebook size {codebook_size}")


def _name(layout: Layout) -> str:
    return f"token space {layout.token_space.name!r}"
