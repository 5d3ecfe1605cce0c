"""``TokenShards``: a folder of token shards as one random-access sequence of documents."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .._hashing import PREFIX, sha256_file
from .indexed import IndexedShard
from .writer import JOURNAL, MANIFEST, SCHEMA, ShardFolderError


class TokenShards:
    """Memory-mapped documents of a finished ``tokenize_dataset`` folder.

    ``len(shards)`` documents; ``shards[i]`` is document ``i`` (in input order,
    failed documents left out) as a read-only ``np.int32`` array.

    Args:
        path: the folder (with ``manifest.json``).
        verify: also check every file's sha256 against the manifest (reads all data).

    Raises ``ShardFolderError`` for a missing/unfinished folder or files that do
    not match the manifest, ``IndexedFormatError`` for a malformed shard.
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool = False):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            why = "an unfinished run (resume it first)" if (self.path / JOURNAL).is_file() else "no manifest.json"
            raise ShardFolderError(f"{self.path}: not a finished token-shard folder ({why})")
        try:
            self.manifest: dict[str, Any] = json.loads(manifest.read_text())
        except json.JSONDecodeError as e:
            raise ShardFolderError(f"{manifest}: not JSON ({e})") from None
        if self.manifest.get("schema") != SCHEMA:
            raise ShardFolderError(f"{manifest}: expected schema {SCHEMA!r}, got {self.manifest.get('schema')!r}")
        self.shards: list[IndexedShard] = []
        for entry in self.manifest["shards"]:
            if not entry["documents"]:
                continue
            if verify:
                for key in ("bin", "idx"):
                    got = _sha256(self.path / entry[key])
                    if got != entry[f"{key}_sha256"]:
                        raise ShardFolderError(f"{self.path / entry[key]}: sha256 {got} does not match the manifest")
            shard = IndexedShard(self.path / entry["bin"], self.path / entry["idx"])
            if len(shard) != entry["documents"] or shard.num_tokens != entry["tokens"]:
                raise ShardFolderError(f"{self.path / entry['idx']}: {len(shard)} documents / {shard.num_tokens} "
                                       f"tokens, the manifest says {entry['documents']} / {entry['tokens']}")
            self.shards.append(shard)
        self._ends = np.cumsum([len(s) for s in self.shards], dtype=np.int64)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"TokenShards: expected an integer index, got {type(i).__name__}")
        if not -n <= i < n:
            raise IndexError(f"TokenShards: document {i} out of range for {n} documents")
        i = int(i) % n
        k = int(np.searchsorted(self._ends, i, side="right"))
        first = int(self._ends[k - 1]) if k else 0
        return self.shards[k][i - first]

    def __iter__(self) -> Iterator[np.ndarray]:
        for shard in self.shards:
            for j in range(len(shard)):
                yield shard[j]

    @property
    def lengths(self) -> np.ndarray:
        """Tokens of every document (int64 [len(self)])."""
        return np.concatenate([s.lengths.astype(np.int64) for s in self.shards]) if self.shards else np.zeros(0, np.int64)

    @property
    def num_tokens(self) -> int:
        return int(self.manifest["totals"]["tokens"])

    @property
    def fingerprint(self) -> str:
        """The token space's fingerprint the shards were made with."""
        return self.manifest["identity"]["token_space"]["fingerprint"]

    def __repr__(self) -> str:
        return f"TokenShards({str(self.path)!r}, documents={len(self)}, tokens={self.num_tokens}, shards={len(self.shards)})"


def _sha256(path: Path) -> str:
    """The plain hex digest the shard manifest records."""
    return sha256_file(path).removeprefix(PREFIX)
