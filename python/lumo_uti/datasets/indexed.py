"""Megatron-LM's indexed dataset format: one ``.bin`` of token IDs plus one ``.idx``.

The ``.idx`` file (all little-endian)::

    b"MMIDIDX\\x00\\x00"   magic (9 bytes)
    u64  version = 1
    u8   dtype code (4 = int32)
    u64  sequence count S
    u64  document count S + 1   (length of the document-index array)
    i32  [S] sequence lengths (tokens)
    i64  [S] byte offset of each sequence in the .bin
    i64  [S + 1] document indices: 0, 1, ..., S (one sequence per document)

The ``.bin`` file is the sequences' IDs back to back. This is the layout that
``megatron.core.datasets.indexed_dataset.IndexedDataset`` reads (non-multimodal
mode), and a flat ``int32`` token file for any framework that reads one
(``numpy.memmap(bin, int32)``; document boundaries are the pointers).
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import IndexedFormatError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16}
INT32_CODE = 4
_HEADER = struct.Struct("<9sQBQQ")


def index_bytes(lengths: np.ndarray) -> bytes:
    """The ``.idx`` contents for int32 sequences of ``lengths`` (int [S]), one per document."""
    lengths = np.asarray(lengths, dtype=np.int64)
    pointers = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths):
        np.cumsum(lengths[:-1] * 4, out=pointers[1:])
    count = len(lengths)
    return b"".join((
        _HEADER.pack(MAGIC, VERSION, INT32_CODE, count, count + 1),
        lengths.astype("<i4").tobytes(),
        pointers.astype("<i8").tobytes(),
        np.arange(count + 1, dtype="<i8").tobytes(),
    ))


class IndexedShard:
    """One ``.bin`` + ``.idx`` pair, memory-mapped; ``shard[i]`` is document ``i`` as int32 IDs.

    Raises ``IndexedFormatError`` naming the file when the header, the sizes or
    the pointers do not describe the ``.bin`` exactly.
    """

    def __init__(self, bin_path: str | os.PathLike, idx_path: str | os.PathLike):
        self.bin_path, self.idx_path = Path(bin_path), Path(idx_path)
        raw = self.idx_path.read_bytes()
        if len(raw) < _HEADER.size:
            raise IndexedFormatError(f"{self.idx_path}: too short for an indexed-dataset header ({len(raw)} bytes)")
        magic, version, code, count, doc_count = _HEADER.unpack_from(raw)
        if magic != MAGIC or version != VERSION:
            raise IndexedFormatError(f"{self.idx_path}: not a Megatron indexed-dataset index (magic {magic!r}, version {version})")
        if code != INT32_CODE:
            raise IndexedFormatError(f"{self.idx_path}: expected int32 tokens (dtype code 4), got code {code}")
        want = _HEADER.size + count * 4 + count * 8 + doc_count * 8
        if doc_count != count + 1 or len(raw) != want:
            raise IndexedFormatError(
                f"{self.idx_path}: {count} sequences and {doc_count} document indices need {want} bytes, file has {len(raw)}"
            )
        off = _HEADER.size
        self.lengths = np.frombuffer(raw, "<i4", count, off)
        self.pointers = np.frombuffer(raw, "<i8", count, off + 4 * count)
        bin_size = self.bin_path.stat().st_size
        total = int(self.lengths.sum(dtype=np.int64))
        if (self.lengths < 0).any() or total * 4 != bin_size or (
                count and (self.pointers[0] != 0 or (np.diff(self.pointers) != self.lengths[:-1].astype(np.int64) * 4).any())):
            raise IndexedFormatError(f"{self.idx_path}: sizes/pointers do not match {self.bin_path.name} ({bin_size} bytes)")
        self._tokens = _map_int32(self.bin_path, total)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        return len(self._tokens)

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self.lengths)
        if not -n <= i < n:
            raise IndexError(f"document {i} out of range for a shard of {n}")
        i %= n
        start = int(self.pointers[i]) // 4
        return self._tokens[start : start + int(self.lengths[i])]

    @property
    def tokens(self) -> np.ndarray:
        """All IDs of the shard, documents back to back (read-only int32 [T])."""
        return self._tokens


def _map_int32(path: Path, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=np.int32)
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(mapped, dtype="<i4", count=count)
