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

from .segments import SEGMENT_TYPES, AudioCodes, ImageCodes, ImagePlaceholder, segment_kind

_KEYS = tuple(SEGMENT_TYPES)


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


_TO_JSON = {
    "text": lambda s: s,
    "image_codes": lambda s: {"image_codes": s.codes.tolist()},
    "audio_codes": lambda s: {"audio_codes": s.codes.tolist()},
    "image_placeholder": lambda s: {"image_placeholder": s.num_tokens},
}

_DESCRIBE = {
    "text": lambda s: f"text {s if len(s) <= 44 else s[:41] + '...'!r}",
    "image_codes": lambda s: f"image codes {s.height}x{s.width}" + (f", {s.num_layers} layers" if s.num_layers > 1 else ""),
    "audio_codes": lambda s: f"audio codes {s.num_frames} frames x {s.num_codebooks} codebooks",
    "image_placeholder": lambda s: f"image placeholder x{s.num_tokens}",
}


def segment_to_json(segment: Any) -> Any:
    """One segment -> its JSON form."""
    kind = segment_kind(segment)
    if kind is None:
        raise TypeError(f"cannot write {type(segment).__name__} as JSON")
    return _TO_JSON[kind](segment)


def describe_segment(segment: Any) -> str:
    """A one-line human description of a segment."""
    kind = segment_kind(segment)
    return _DESCRIBE[kind](segment) if kind is not None else type(segment).__name__
