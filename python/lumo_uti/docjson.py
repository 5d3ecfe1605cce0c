"""The JSON form of documents, used by the ``lumo`` command.

A document is a JSON list; each item is one segment::

    "plain text"                          text (also {"text": "..."})
    {"image_codes": [[...], ...]}         ImageCodes, [H][W] or [L][H][W]
    {"audio_codes": [[q0, .., qQ-1], ..]} AudioCodes, [T][Q]
    {"image_placeholder": 64}             ImagePlaceholder (n x <|image_patch|>)

A single item (not in a list) is a one-segment document. ``lumo decode --json``
writes this same form, so its output can be encoded again.
"""

from __future__ import annotations

from typing import Any

from .segments import AudioCodes, ImageCodes, ImagePlaceholder

_KEYS = ("text", "image_codes", "audio_codes", "image_placeholder")


def document_from_json(obj: Any) -> list[Any]:
    """Parsed JSON -> list of segments; ValueError naming the bad item."""
    items = obj if isinstance(obj, list) else [obj]
    out = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            out.append(item)
            continue
        if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in _KEYS:
            raise ValueError(f"document item {index}: expected a string or an object with one key of {_KEYS}, got {item!r:.80}")
        key, value = next(iter(item.items()))
        try:
            if key == "text":
                if not isinstance(value, str):
                    raise ValueError(f"text must be a string, got {type(value).__name__}")
                out.append(value)
            elif key == "image_codes":
                out.append(ImageCodes(value))
            elif key == "audio_codes":
                out.append(AudioCodes(value))
            else:
                out.append(ImagePlaceholder(value))
        except (TypeError, ValueError) as e:
            raise ValueError(f"document item {index} ({key}): {e}") from None
    return out


def segment_to_json(segment: Any) -> Any:
    """One segment -> its JSON form."""
    if isinstance(segment, str):
        return segment
    if isinstance(segment, ImageCodes):
        return {"image_codes": segment.codes.tolist()}
    if isinstance(segment, AudioCodes):
        return {"audio_codes": segment.codes.tolist()}
    if isinstance(segment, ImagePlaceholder):
        return {"image_placeholder": segment.num_tokens}
    raise TypeError(f"cannot write {type(segment).__name__} as JSON")


def describe_segment(segment: Any) -> str:
    """A one-line human description of a segment."""
    if isinstance(segment, str):
        text = segment if len(segment) <= 44 else segment[:41] + "..."
        return f"text {text!r}"
    if isinstance(segment, ImageCodes):
        layers = f", {segment.num_layers} layers" if segment.num_layers > 1 else ""
        return f"image codes {segment.height}x{segment.width}{layers}"
    if isinstance(segment, AudioCodes):
        return f"audio codes {segment.num_frames} frames x {segment.num_codebooks} codebooks"
    if isinstance(segment, ImagePlaceholder):
        return f"image placeholder x{segment.num_tokens}"
    return type(segment).__name__
