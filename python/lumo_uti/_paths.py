"""The one rule for a path that a bundle file records (a tokenizer or codec folder)."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import BundleError


def path_inside(folder: str | os.PathLike, rel: Any, what: str) -> Path:
    """``folder / rel``, where ``rel`` must stay inside ``folder``.

    ``rel`` must be a non-empty relative POSIX path (``/`` separators) with no
    ``..`` part and no backslash, so that it means the same folder on every
    system and a bundle cannot point a loader at files outside itself.
    ``BundleError`` naming ``what`` otherwise.
    """
    if not isinstance(rel, str) or not rel or "\\" in rel:
        raise BundleError(f"{what}: path must be relative and inside the bundle, got {rel!r}")
    parts = PurePosixPath(rel)
    if parts.is_absolute() or ".." in parts.parts:
        raise BundleError(f"{what}: path must be relative and inside the bundle, got {rel!r}")
    return Path(folder) / parts
