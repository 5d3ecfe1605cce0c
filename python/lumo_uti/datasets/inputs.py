"""Streaming corpus readers: JSONL, Parquet and Hugging Face ``datasets``.

``open_input`` gives a ``DatasetInput`` whose ``records(start)`` yields
``(position, record)`` in input order from ``start`` on, holding one batch of
rows at a time, so memory does not grow with the corpus. Positions count
documents: non-blank JSONL lines, Parquet rows, dataset rows. JSONL records
are the raw line (parsed by the worker that encodes it: a malformed line is
that document's error, not the run's).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterator

PARQUET_BATCH_ROWS = 256


class DatasetInput:
    """One corpus. ``kind``: ``jsonl`` | ``parquet`` | ``hf``; ``base_dir``: where relative media paths start."""

    kind: str
    base_dir: Path | None
    identity: dict[str, Any]

    def records(self, start: int = 0) -> Iterator[tuple[int, Any]]:
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - overridden where known
        raise TypeError(f"{self.kind} input: length unknown before reading")

    def known_length(self) -> int | None:
        """Number of documents when the input knows it without reading (Parquet metadata, datasets)."""
        return None


class JsonlInput(DatasetInput):
    kind = "jsonl"

    def __init__(self, path: Path):
        self.path = path
        self.base_dir = path.parent.resolve()
        self.identity = {"kind": "jsonl", **_file_identity(path)}

    def records(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        """Raw line bytes: the worker decodes them (a line that is not UTF-8 is that document's error)."""
        position = 0
        with open(self.path, "rb") as f:
            for raw in f:
                if not raw.strip():
                    continue  # blank lines are not documents
                if position >= start:
                    yield position, raw
                position += 1


class ParquetInput(DatasetInput):
    kind = "parquet"

    def __init__(self, path: Path):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError("reading Parquet needs pyarrow: pip install pyarrow") from None
        self.path = path
        self.files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        if not self.files:
            raise ValueError(f"{path}: no *.parquet files in this folder")
        self.base_dir = (path if path.is_dir() else path.parent).resolve()
        try:
            self._meta = [pq.ParquetFile(f).metadata for f in self.files]
        except Exception as e:  # pyarrow.ArrowInvalid and friends
            raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
        self.identity = {"kind": "parquet", "files": [_file_identity(f) for f in self.files],
                         "rows": self.known_length()}

    def known_length(self) -> int:
        return sum(m.num_rows for m in self._meta)

    def __len__(self) -> int:
        return self.known_length()

    def records(self, start: int = 0) -> Iterator[tuple[int, dict]]:
        import pyarrow.parquet as pq

        position = 0
        for file, meta in zip(self.files, self._meta):
            pf = pq.ParquetFile(file)
            for group in range(meta.num_row_groups):
                rows = meta.row_group(group).num_rows
                if position + rows <= start:  # resume: skip whole row groups unread
                    position += rows
                    continue
                for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group]):
                    for row in batch.to_pylist():
                        if position >= start:
                            yield position, row
                        position += 1


class HFInput(DatasetInput):
    """A Hugging Face ``datasets.Dataset`` (object, or a ``save_to_disk`` folder); media stay undecoded."""

    kind = "hf"

    def __init__(self, dataset: Any, base_dir: Path | None, origin: str):
        import datasets

        if isinstance(dataset, datasets.DatasetDict):
            raise ValueError(f"{origin}: a DatasetDict; pass one split (dataset['train'])")
        if isinstance(dataset, datasets.IterableDataset):
            raise ValueError(f"{origin}: an IterableDataset; pass a map-style Dataset (positions must be stable)")
        dataset = dataset.with_format(None)  # plain Python values, whatever format the caller set
        for name, feature in dataset.features.items():  # bytes to the workers, not decoded in this process
            if isinstance(feature, (datasets.Image, datasets.Audio)) and getattr(feature, "decode", False):
                dataset = dataset.cast_column(name, type(feature)(decode=False))
        self.dataset = dataset
        self.base_dir = base_dir
        self.identity = {"kind": "hf", "origin": origin, "fingerprint": dataset._fingerprint, "rows": len(dataset)}

    def known_length(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def records(self, start: int = 0) -> Iterator[tuple[int, dict]]:
        n = len(self.dataset)
        for first in range(start, n, PARQUET_BATCH_ROWS):
            batch = self.dataset[first : min(first + PARQUET_BATCH_ROWS, n)]  # columns -> lists
            names = list(batch)
            for j in range(len(batch[names[0]]) if names else 0):
                yield first + j, {k: batch[k][j] for k in names}


def open_input(source: Any) -> DatasetInput:
    """A path (``.jsonl``/``.json`` lines, ``.parquet`` or a folder of them, a ``save_to_disk`` folder)
    or a ``datasets.Dataset`` -> ``DatasetInput``. ``ValueError`` naming the source when unreadable."""
    if not isinstance(source, (str, os.PathLike)):
        if type(source).__module__.startswith("datasets"):
            return HFInput(source, None, f"datasets.Dataset {getattr(source, '_fingerprint', '')}")
        raise TypeError(f"tokenize_dataset: expected a path or a datasets.Dataset, got {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise ValueError(f"input not found: {path}")
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            import datasets

            return HFInput(datasets.load_from_disk(str(path)), path.resolve(), str(path.resolve()))
        if any(path.glob("*.parquet")):
            return ParquetInput(path)
        raise ValueError(f"{path}: a folder with neither *.parquet files nor a datasets save_to_disk layout")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return JsonlInput(path)
    if suffix == ".parquet":
        return ParquetInput(path)
    raise ValueError(f"{path}: unknown input format {suffix!r}; expected .jsonl, .parquet or a datasets folder")


def _file_identity(path: Path) -> dict[str, Any]:
    """Path, size and a hash of the first and last MiB: cheap, and enough to notice another file."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            digest.update(f.read())
    return {"path": str(path.resolve()), "bytes": size, "sha256_head_tail": digest.hexdigest()}
