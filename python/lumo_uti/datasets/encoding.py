"""The worker side of ``tokenize_dataset``: a batch of records -> IDs or a reason per document.

The same ``BatchEncoder`` runs in-process, in each process of the local pool
and in each Ray actor, so every route gives the same IDs: those of
``uti.encode(document, allow_special=...)`` (plus ``<|endoftext|>`` when
``append_eos``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import TokenSpaceLookupError
from .documents import DocumentError, to_document

EOS_TOKEN = "<|endoftext|>"


@dataclass(frozen=True)
class EncodeSettings:
    """What decides the bytes of the shards (all of it is recorded in the manifest)."""

    allow_special: bool = False
    append_eos: bool = False
    columns: tuple[tuple[str, str], ...] | None = None
    max_doc_tokens: int = 1 << 24

    def to_json(self) -> dict[str, Any]:
        return {"allow_special": self.allow_special, "append_eos": self.append_eos,
                "columns": [list(c) for c in self.columns] if self.columns else None,
                "max_doc_tokens": self.max_doc_tokens}


class Encoded(NamedTuple):
    """One document's outcome: ``ids`` (int32 [T]) or ``error``; media counted for progress."""

    position: int
    ids: np.ndarray | None
    error: str | None
    images: int = 0
    audio_seconds: float = 0.0
    regions: np.ndarray | None = None  # tokens per token-space region (int64 [R]), counted in the worker


class BatchEncoder:
    """Encodes batches of ``(position, record)`` with one UTI.

    Args:
        uti: the bundle's ``UTI``.
        settings: ``EncodeSettings``.
        input_kind: ``jsonl`` records are raw lines (parsed here); others are rows/objects.
        base_dir: folder that relative media paths start from.
    """

    def __init__(self, uti: Any, settings: EncodeSettings, input_kind: str, base_dir: str | Path | None):
        self.uti = uti
        self.settings = settings
        self.input_kind = input_kind
        self.base_dir = Path(base_dir) if base_dir is not None else None
        ts = uti.token_space
        self.eos = ts.special_tokens.get(EOS_TOKEN) if settings.append_eos else None
        from PIL import Image

        self._image_type = Image.Image
        self._region_starts = np.array([r.start for r in ts.regions], dtype=np.int64)
        if settings.append_eos and self.eos is None:
            raise TokenSpaceLookupError("special", f"append_eos: the base tokenizer of {ts.name!r} has no {EOS_TOKEN}")

    def __call__(self, batch: list[tuple[int, Any]]) -> list[Encoded]:
        from ..media import Audio

        docs: list[tuple[int, list[Any]]] = []
        out: dict[int, Encoded] = {}
        for position, record in batch:
            try:
                docs.append((position, self._document(record)))
            except DocumentError as e:
                out[position] = Encoded(position, None, str(e))
        try:
            encoded = self.uti.encode_batch([d for _, d in docs], allow_special=self.settings.allow_special)
        except Exception:  # one bad document fails the batch: encode one by one to find it
            encoded = [self._encode_one(doc) for _, doc in docs]
        for (position, doc), ids in zip(docs, encoded):
            if isinstance(ids, Exception):
                out[position] = Encoded(position, None, _reason(ids))
                continue
            out[position] = self._finish(position, ids, doc, Audio)
        return [out[p] for p, _ in batch]

    def _document(self, record: Any) -> list[Any]:
        if self.input_kind == "jsonl":
            try:
                record = json.loads(record.decode("utf-8") if isinstance(record, bytes) else record)
            except UnicodeDecodeError as e:
                raise DocumentError(f"not UTF-8: {e}") from None
            except json.JSONDecodeError as e:
                raise DocumentError(f"not JSON: {e}") from None
        return to_document(record, self.base_dir, list(self.settings.columns) if self.settings.columns else None)

    def _encode_one(self, doc: list[Any]) -> Any:
        try:
            return self.uti.encode(doc, allow_special=self.settings.allow_special)
        except Exception as e:  # codec and segment errors of every kind: recorded, not fatal
            return e

    def _finish(self, position: int, ids: list[int], doc: list[Any], audio_type: type) -> Encoded:
        if not ids:
            return Encoded(position, None, "empty document: it encodes to no tokens")
        if self.eos is not None:
            ids = ids + [self.eos]
        if len(ids) > self.settings.max_doc_tokens:
            return Encoded(position, None, f"document has {len(ids)} tokens, more than max_doc_tokens "
                                           f"{self.settings.max_doc_tokens}")
        images, seconds = 0, 0.0
        for item in doc:
            if not isinstance(item, str):
                if isinstance(item, audio_type):
                    seconds += item.duration
                elif isinstance(item, self._image_type):
                    images += 1
        arr = np.fromiter(ids, dtype=np.int32, count=len(ids))
        regions = np.bincount(np.searchsorted(self._region_starts, arr, side="right") - 1,
                              minlength=len(self._region_starts))
        return Encoded(position, arr, None, images, seconds, regions)


def _reason(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"
