"""Token-range and decode-sanity checks on the round trips.

Token range (per modality): every sample's codes are in ``[0, K)``; its span
is ``start marker [grid H, grid W] body end marker`` with the body in the
modality's block, each code ID in the codebook its position calls for, image
bodies exactly ``H * W * L`` IDs and audio bodies a multiple of Q; over the
whole stream of all samples, markers are balanced and no ID is a padding row,
a reserved slot or out of range.

Decode sanity (per modality): strict decoding of that stream never fails and
gives back exactly the codes; the decoder's output is a finite floating-point
tensor of the input's shape (images: ``[3, H, W]`` at the model size, and the
media-level decode is an RGB image of that size; audio: the codec's channel
count, length within one codec frame of the input's, and the media-level
decode is ``Audio`` at the codec's sample rate).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..grammar.layout import INVALID_ID_RULES, Kind
from ..segments import AudioCodes, ImageCodes
from .results import FAIL, PASS, Check
from .roundtrip import Roundtrip

_START = {"image": Kind.IMAGE_START, "audio": Kind.AUDIO_START}
_END = {"image": Kind.IMAGE_END, "audio": Kind.AUDIO_END}
_CODE = {"image": Kind.IMAGE_CODE, "audio": Kind.AUDIO_CODE}


def _segment(modality: str, codes) -> Any:
    arr = codes.numpy() if hasattr(codes, "numpy") else np.asarray(codes)
    return ImageCodes(arr) if modality == "image" else AudioCodes(arr)


def _span_problems(modality: str, layout, seg, ids: np.ndarray) -> list[str]:
    """Why one sample's span is malformed (empty list: it is fine)."""
    block = layout.image if modality == "image" else layout.audio
    kinds = layout.kinds(ids)
    problems = []
    if kinds[0] != _START[modality] or kinds[-1] != _END[modality]:
        problems.append(f"span does not start/end with the {modality} markers")
    head = 3 if modality == "image" else 1
    body, body_kinds = ids[head:-1], kinds[head:-1]
    if modality == "image":
        if not (kinds[1] == Kind.GRID and kinds[2] == Kind.GRID):
            problems.append("image span lacks its two grid tokens")
        elif (layout.grid_value(ids[1]), layout.grid_value(ids[2])) != (seg.height, seg.width):
            problems.append(f"grid tokens say {layout.grid_value(ids[1])}x{layout.grid_value(ids[2])}, "
                            f"codes are {seg.height}x{seg.width}")
        expected = seg.height * seg.width * seg.num_layers
        if body.size != expected:
            problems.append(f"image body has {body.size} IDs, expected H*W*L = {expected}")
        per_position = seg.num_layers
    else:
        if body.size % block.num_codebooks:
            problems.append(f"audio body has {body.size} IDs, not a multiple of Q = {block.num_codebooks}")
        per_position = block.num_codebooks
    outside = np.nonzero(body_kinds != _CODE[modality])[0]
    if outside.size:
        p = int(outside[0]) + head
        problems.append(f"ID {int(ids[p])} at span position {p} is outside the {block.name!r} block")
    elif body.size:
        want = np.arange(body.size) % per_position
        got = layout.codebook_of(body, _CODE[modality])
        bad = np.nonzero(got != want)[0]
        if bad.size:
            p = int(bad[0])
            problems.append(f"ID {int(body[p])} at body position {p} is in codebook {int(got[p])}, "
                            f"expected {int(want[p])}")
    return problems


def check_token_range(modality: str, grammar, roundtrips: list[Roundtrip]) -> tuple[Check, np.ndarray | None]:
    """The token-range check; also returns the stream of all samples' spans (None if it could not be built)."""
    layout, ts = grammar.layout, grammar.token_space
    block = ts.codes_block(modality)
    name = f"token_range.{modality}"
    problems: list[str] = []
    spans = []
    for rt in roundtrips:
        codes = rt.codes.numpy()
        if codes.size and (codes.min() < 0 or codes.max() >= block.codebook_size):
            bad = int(codes.min()) if codes.min() < 0 else int(codes.max())
            problems.append(f"{rt.name}: code {bad} outside [0, {block.codebook_size})")
            continue
        try:
            seg = _segment(modality, codes)
            ids = np.asarray(grammar.encode([seg]), dtype=np.int64)
        except (ValueError, TypeError) as e:
            problems.append(f"{rt.name}: cannot encode the codes: {e}")
            continue
        problems += [f"{rt.name}: {p}" for p in _span_problems(modality, layout, seg, ids)]
        spans.append(ids)
    stream = np.concatenate(spans) if spans else np.zeros(0, dtype=np.int64)
    kinds = layout.kinds(stream)
    invalid = np.nonzero(np.isin(kinds, [int(k) for k in INVALID_ID_RULES]))[0]
    if invalid.size:
        p = int(invalid[0])
        problems.append(f"stream position {p}: ID {int(stream[p])} is a {INVALID_ID_RULES[Kind(int(kinds[p]))][1]}")
    depth, unbalanced = 0, False
    for k in kinds:
        if k == _START[modality]:
            unbalanced |= depth != 0
            depth += 1
        elif k == _END[modality]:
            depth -= 1
            unbalanced |= depth != 0
    if unbalanced or depth:
        problems.append(f"{modality} start/end markers are not balanced over the stream")
    details = {"samples": len(roundtrips), "ids": int(stream.size), "block": [block.offset, block.end]}
    if problems:
        return Check(name, "token_range", FAIL, "; ".join(problems[:5]), details=dict(details, problems=problems)), None
    return Check(name, "token_range", PASS,
                 f"{stream.size} IDs from {len(roundtrips)} samples in range and well formed",
                 details=details), stream


def check_decode(modality: str, codec, grammar, roundtrips: list[Roundtrip], stream: np.ndarray | None) -> Check:
    """The decode-sanity check for one modality."""
    name = f"decode.{modality}"
    problems: list[str] = []
    if stream is not None:
        try:
            segments = grammar.decode(stream, strict=True).segments
            expected = [_segment(modality, rt.codes) for rt in roundtrips]
            if segments != expected:
                problems.append("strict decode of the stream does not give back the encoded codes")
        except ValueError as e:
            problems.append(f"strict decode of the encoded stream failed: {e}")
    for rt in roundtrips:
        raw = rt.raw
        if not raw.is_floating_point():
            problems.append(f"{rt.name}: decoder returned dtype {raw.dtype}, expected floating point")
        elif not bool(raw.isfinite().all()):
            problems.append(f"{rt.name}: decoder output has non-finite values")
        media_problems = _image_problems if modality == "image" else _audio_problems
        problems += [f"{rt.name}: {p}" for p in media_problems(codec, rt)]
    details = {"samples": len(roundtrips)}
    if problems:
        return Check(name, "decode", FAIL, "; ".join(problems[:5]), details=dict(details, problems=problems))
    return Check(name, "decode", PASS, f"{len(roundtrips)} samples decode to finite {modality} of the right shape",
                 details=details)


def _image_problems(codec, rt: Roundtrip) -> list[str]:
    out = []
    if tuple(rt.raw.shape) != tuple(rt.reference.shape):
        out.append(f"decoded shape {list(rt.raw.shape)}, input {list(rt.reference.shape)}")
    image = codec.decode(_segment("image", rt.codes))[0]
    w, h = rt.info["model_size"]
    if image.mode != "RGB" or image.size != (w, h):
        out.append(f"decoded image is {image.mode} {image.size[0]}x{image.size[1]}, expected RGB {w}x{h}")
    return out


def _audio_problems(codec, rt: Roundtrip) -> list[str]:
    out = []
    channels, length = rt.raw.shape[0], rt.raw.shape[-1]
    if rt.raw.dim() != 2 or channels != codec.channels:
        out.append(f"decoded shape {list(rt.raw.shape)}, expected [{codec.channels}, T]")
    frame = math.ceil(codec.sample_rate / codec.frame_rate)
    if abs(length - rt.reference.shape[-1]) > frame:
        out.append(f"decoded {length} samples for {rt.reference.shape[-1]} input samples "
                   f"(more than one {frame}-sample frame apart)")
    audio = codec.decode(_segment("audio", rt.codes))[0]
    if audio.sample_rate != codec.sample_rate:
        out.append(f"decoded sample rate {audio.sample_rate}, expected {codec.sample_rate}")
    return out
