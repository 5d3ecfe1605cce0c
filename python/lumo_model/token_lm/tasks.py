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
where an output stops. ``loss_id_mask`` narrows the loss further by the target
token's ID (``--loss-on``), for JSONL examples and token shards alike.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from lumo_uti.docjson import document_from_json
from lumo_uti.errors import TokenSpaceLookupError
from lumo_uti.segments import AudioCodes, ImageCodes

if TYPE_CHECKING:
    import torch

__all__ = ["TASKS", "TEMPLATES", "LOSS_ON", "Example", "render_task", "example_from_record", "read_examples",
           "loss_id_mask"]

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

# --loss-on choices; "all" keeps every target (the default).
LOSS_ON = ("all", "new", "image", "audio", "text")


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


def loss_id_mask(token_space: Any, which: str) -> torch.Tensor:
    """``[padded_vocab_size]`` bool: True for the IDs that may be targets under ``--loss-on which``.

    - ``all``: every ID.
    - ``text``: the base tokenizer's IDs ``[0, text_vocab_size)`` (``<|endoftext|>`` included).
    - ``new``: the new rows ``[base_rows, vocab_size)``: every UTI block.
    - ``image``: the tokens of image spans: ``<|image_start|>``, the grid tokens (they
      occur only in image headers), the image codes, ``<|image_end|>``; the same IDs a
      T2I target holds, without its ``<|endoftext|>``.
    - ``audio``: ``<|audio_start|>``, the audio codes, ``<|audio_end|>``.

    Raises:
        ValueError: an unknown choice, or ``image`` / ``audio`` with a token space
            that has no such codes block.
    """
    import torch  # here: ``lumo --help`` reads LOSS_ON from this module without torch

    if which not in LOSS_ON:
        raise ValueError(f"loss_on: expected one of {LOSS_ON}, got {which!r}")
    mask = torch.zeros(token_space.padded_vocab_size, dtype=torch.bool)
    if which == "all":
        mask[:] = True
    elif which == "text":
        mask[: token_space.text_vocab_size] = True
    elif which == "new":
        mask[token_space.base_rows : token_space.vocab_size] = True
    else:
        block = token_space.codes_block(which)
        if block is None:
            raise TokenSpaceLookupError("block", f"loss_on {which!r}: token space {token_space.name!r} has no {which} codes block")
        mask[block.offset : block.end] = True
        if which == "image" and token_space.has_block("grid"):
            grid = token_space.block("grid")
            mask[grid.offset : grid.end] = True
        for marker in (f"<|{which}_start|>", f"<|{which}_end|>"):
            if marker in token_space.special_tokens:
                mask[token_space.special_tokens[marker]] = True
    return mask
