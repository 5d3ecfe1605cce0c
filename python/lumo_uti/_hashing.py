"""SHA-256 helpers and the canonical JSON used for every hash in the ABI.

All hashes are spelled ``"sha256:<64 lowercase hex digits>"`` so that a reader of
``token_space.json`` knows the algorithm without a side channel.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

PREFIX = "sha256:"
_CHUNK = 1 << 20


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    """``"sha256:<hex>"`` of ``data``."""
    return PREFIX + hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of a file's bytes, read in 1 MiB chunks (no full copy in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return PREFIX + h.hexdigest()


def canonical_json(obj: Any) -> bytes:
    """The canonical UTF-8 JSON bytes of ``obj``, the input of every ABI hash.

    Keys sorted, no whitespace (separators ``","`` and ``":"``), non-ASCII kept as
    UTF-8 rather than ``\\u`` escapes. NaN and infinities are refused (they are not
    JSON and would make equal objects hash differently across writers).

    Raises:
        ValueError: ``obj`` holds NaN or an infinity.
        TypeError: ``obj`` holds something that is not JSON (e.g. bytes, a set).
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
