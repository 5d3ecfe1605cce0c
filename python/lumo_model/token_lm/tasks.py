"""Training examples for the token LM: documents and the I2T / A2T / T2I / T2A task templates.

Every prompt template lives here, in ``TEMPLATES``. A data file is JSONL; each
line is one of::

    ["text", {"image_codes": [[...]]}, ...]           a document (docjson form):
    {"document": [...]}                                 loss on every token
    {"task": "I2T", "image_codes": [[..]], "text": ".."}   image -> caption
    {"task": "A2T", "audio_codes": [[..]], "text": ".."}   audio -> transcript
    {"task": "T2I", "text": "..", "image_codes": [[..]]}   caption -> image
    {"task": "T2A", "text": "..", "audio_codes": [[..]]}   transcript -> audio

Task examples put the loss on the target only (the prompt is context). Every
example ends with ``<|endoftext|>`` (a target token), so the model learns
where an output stops.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from lumo_uti.docjson import document_from_json
from lumo_uti.segments import AudioCodes, ImageCodes

__all__ = ["TASKS", "TEMPLATES", "Example", "render_task", "example_from_record", "read_examples"]

EOS = "<|endoftext|>"

# task -> (prompt parts, target parts); "{image}" / "{audio}" stand for the
# codes segment, "{text}" is substituted. One place for every template.
TEMPLATES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "I2T": (("Image:", "{image}", "\nCaption:"), (" {text}",)),
    "A2T": (("Audio:", "{audio}", "\nTranscript:"), (" {text}",)),
    "T2I": (("Caption: {text}\nImage:",), ("{image}",)),
    "T2A": (("Transcript: {text}\nAudio:",), ("{audio}",)),
}
TASKS = tuple(TEMPLATES)
_NEEDS = {"I2T": "image_codes", "A2T": "audio_codes", "T2I": "image_codes", "T2A": "audio_codes"}


@dataclass(frozen=True)
class Example:
    """``ids``: [L] global token IDs; ``target``: [L] bools, True where the loss applies."""

    ids: tuple[int, ...]
    target: tuple[bool, ...]
    task: str


def render_task(task: str, *, text: str, image: ImageCodes | None = None, audio: AudioCodes | None = None) -> tuple[list[Any], list[Any]]:
    """(prompt segments, target segments) of a task from ``TEMPLATES``.

    Raises:
        ValueError: unknown task, or the codes the task needs are missing.
    """
    if task not in TEMPLATES:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    media = {"{image}": image, "{audio}": audio}

    def fill(parts: tuple[str, ...]) -> list[Any]:
        out: list[Any] = []
        for part in parts:
            if part in media:
                if media[part] is None:
                    raise ValueError(f"task {task}: needs {_NEEDS[task]}")
                out.append(media[part])
            else:
                out.append(part.replace("{text}", text))
        return out

    prompt_parts, target_parts = TEMPLATES[task]
    return fill(prompt_parts), fill(target_parts)


def example_from_record(record: Any, uti: Any) -> Example:
    """One parsed JSONL record -> ``Example`` (IDs from ``uti.encode``).

    Raises:
        ValueError: the record is neither a document nor a known task record.
    """
    eos = uti.token_space.special_tokens.get(EOS)
    tail = [eos] if eos is not None else []
    if isinstance(record, dict) and "task" in record:
        task = record["task"]
        if task not in TEMPLATES:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        text = record.get("text")
        if not isinstance(text, str):
            raise ValueError(f"task {task}: expected a string 'text', got {type(text).__name__}")
        key = _NEEDS[task]
        if key not in record:
            raise ValueError(f"task {task}: needs {key!r}")
        codes = ImageCodes(record[key]) if key == "image_codes" else AudioCodes(record[key])
        kw = {"image": codes} if key == "image_codes" else {"audio": codes}
        prompt, target = render_task(task, text=text, **kw)
        # Encoded apart, so the prompt's IDs are those a caller gets at inference.
        p, t = uti.encode(prompt), uti.encode(target) + tail
        return Example(tuple(p + t), (False,) * len(p) + (True,) * len(t), task)
    if isinstance(record, dict) and set(record) == {"document"}:
        record = record["document"]
    if isinstance(record, dict) and "task" not in record and not set(record) & {"text", "image_codes", "audio_codes", "image_placeholder"}:
        raise ValueError(f"expected a document or a task record, got an object with keys {sorted(record)}")
    ids = uti.encode(document_from_json(record)) + tail
    return Example(tuple(ids), (True,) * len(ids), "document")


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not valid JSON: {e}") from None


def read_examples(path: str | os.PathLike, uti: Any) -> list[Example]:
    """Every line of a JSONL data file as an ``Example``; ValueError names file and line."""
    path = Path(path)
    out = []
    for lineno, record in _records(path):
        try:
            out.append(example_from_record(record, uti))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None
    if not out:
        raise ValueError(f"{path}: no examples")
    return out
