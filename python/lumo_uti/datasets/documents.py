"""Dataset records -> UTI documents (media loaded), with errors that say what is wrong.

A record is what an input yields for one document:

* a JSON document in the form ``lumo encode --doc`` reads (a list of items or
  one item), where an item may also be ``{"image": REF}`` or ``{"audio": REF}``;
* an object ``{"document": [...], ...}`` (the other keys are metadata, ignored);
* with ``columns`` (tables: Parquet, Hugging Face datasets): a row, whose listed
  columns become the document's items in the listed order.

A media ``REF`` is a path (relative to the input's folder unless absolute),
raw file bytes, ``{"bytes": ..., "path": ...}`` (the Arrow form of Hugging
Face ``Image``/``Audio`` features), ``{"array": ..., "sampling_rate": ...}``
(a decoded Hugging Face audio), a ``PIL.Image.Image`` or a ``lumo_uti.Audio``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..docjson import document_from_json
from ..errors import DocumentError
from ..media import Audio

MEDIA_KEYS = ("image", "audio")
COLUMN_KINDS = ("text", "image", "audio", "document")


def parse_columns(spec: str | Sequence[str] | None) -> list[tuple[str, str]] | None:
    """``"image:jpg,text:caption"`` (or a list of ``KIND:COLUMN``) -> ``[(kind, column), ...]``."""
    if spec is None:
        return None
    parts = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec) if p.strip()]
    out = []
    for part in parts:
        kind, sep, column = part.partition(":")
        if not sep or kind not in COLUMN_KINDS or not column:
            raise ValueError(f"columns: expected KIND:COLUMN with KIND in {COLUMN_KINDS}, got {part!r}")
        out.append((kind, column))
    if not out:
        raise ValueError("columns: expected at least one KIND:COLUMN")
    return out


def to_document(record: Any, base_dir: Path | None, columns: list[tuple[str, str]] | None = None) -> list[Any]:
    """One record -> a list of UTI items (text, codes, ``PIL`` images, ``Audio``); ``DocumentError`` if bad."""
    if columns is not None:
        if not isinstance(record, dict):
            raise DocumentError(f"expected a row (object), got {type(record).__name__}")
        items: list[Any] = []
        for kind, column in columns:
            if column not in record:
                raise DocumentError(f"row has no column {column!r} (it has {sorted(record)[:12]})")
            value = record[column]
            if kind == "document":
                items.extend(to_document(_json_value(value, column), base_dir))
            elif kind == "text":
                if not isinstance(value, str):
                    raise DocumentError(f"column {column!r}: expected text, got {type(value).__name__}")
                items.append(value)
            else:
                items.append(_media(kind, value, base_dir, f"column {column!r}"))
        return items
    if isinstance(record, dict) and "document" in record:
        record = _json_value(record["document"], "document")
    items = record if isinstance(record, list) else [record]
    out = []
    for index, item in enumerate(items):
        if isinstance(item, dict) and len(item) == 1 and next(iter(item)) in MEDIA_KEYS:
            kind, value = next(iter(item.items()))
            out.append(_media(kind, value, base_dir, f"item {index} ({kind})"))
            continue
        try:
            out.extend(document_from_json([item]))
        except ValueError as e:
            raise DocumentError(str(e).replace("document item 0", f"item {index}", 1)) from None
    return out


def _json_value(value: Any, where: str) -> Any:
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise DocumentError(f"{where}: not JSON ({e})") from None
    return value


def _media(kind: str, ref: Any, base_dir: Path | None, where: str) -> Any:
    """Load one image (``PIL``, fully decoded) or one ``Audio`` from any ``REF`` form."""
    if kind == "image":
        from PIL import Image

        if isinstance(ref, Image.Image):
            return ref
    elif isinstance(ref, Audio):
        return ref
    if isinstance(ref, dict):
        if kind == "audio" and ref.get("array") is not None:
            try:
                return Audio(np.asarray(ref["array"], dtype=np.float32), int(ref["sampling_rate"]))
            except (KeyError, TypeError, ValueError) as e:
                raise DocumentError(f"{where}: bad decoded audio ({e})") from None
        ref = ref.get("bytes") if ref.get("bytes") is not None else ref.get("path")
    if isinstance(ref, (bytes, bytearray, memoryview)):
        name = f"{where} ({len(ref)} bytes)"
        source: Any = _MediaBytes(bytes(ref), name)
    elif isinstance(ref, str) and ref:
        path = Path(ref)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise DocumentError(f"{where}: {kind} file not found: {path}")
        source, name = path, str(path)
    else:
        raise DocumentError(f"{where}: expected a path, bytes or a media object, got {type(ref).__name__}")
    return _load_image(source, name) if kind == "image" else _load_audio(source, name)


class _MediaBytes(io.BytesIO):
    """In-memory media whose repr, which PIL and soundfile quote in their errors, names it instead of an address
    (errors.jsonl must not depend on the process)."""

    def __init__(self, data: bytes, label: str):
        super().__init__(data)
        self.label = label

    def __repr__(self) -> str:
        return f"<{self.label}>"


def _load_image(source: Any, name: str) -> Any:
    from PIL import Image

    try:
        with Image.open(source) as im:
            im.load()  # decode now: a truncated file fails here, in the worker, not in the codec
            return im.copy()
    except Exception as e:  # PIL raises many types (incl. DecompressionBombError) for bad files
        raise DocumentError(f"cannot read image {name}: {type(e).__name__}: {e}") from None


def _load_audio(source: Any, name: str) -> Audio:
    import soundfile

    try:
        data, rate = soundfile.read(source, dtype="float32", always_2d=True)  # [T, C]
    except Exception as e:  # libsndfile errors, format errors
        raise DocumentError(f"cannot read audio {name}: {type(e).__name__}: {e}") from None
    if data.shape[0] == 0:
        raise DocumentError(f"audio {name} has no samples")
    return Audio(np.ascontiguousarray(data.T), rate)
