"""Crash-safe file and folder writes: a failed or killed write never leaves a half-written result.

``atomic_write_bytes`` / ``atomic_write_text`` write a file through a temporary
sibling and a rename; ``atomic_dir`` builds a folder under a temporary sibling
name and swaps it in. Results get the permissions a plain ``open`` /
``mkdir`` would give (``0o666`` / ``0o777`` less the umask), not the private
``0o600`` / ``0o700`` of ``tempfile``. Temporary siblings are named
``.NAME.<pid>.<random>.tmp`` (``.old`` for a folder being replaced); those of
a killed process are removed by the next ``atomic_dir`` on the same path.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import Iterator

# Temp folders left by versions that used ``tempfile.mkdtemp`` have no pid in
# their name; they are removed once older than this (seconds).
_LEGACY_STALE_AFTER = 3600.0


def _temp_sibling(path: Path, suffix: str) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}"


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory + rename.

    The previous file (if any) stays intact until the new one is complete and
    flushed to disk; on any error the temp file is removed. The file gets mode
    ``0o666 & ~umask``, as ``open(path, "wb")`` would give it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_sibling(path, ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:  # pragma: no cover - a 32-bit random name taken
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``atomic_write_bytes`` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _remove(path: Path) -> None:
    """Remove a file, a link or a folder tree (never following links out of it)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # pragma: no cover - os.kill(pid, 0) would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``path`` that killed writers left; returns them.

    A sibling ``.NAME.<pid>.<hex>.tmp`` / ``.old`` is removed when process
    ``pid`` is gone; a folder of the older pid-less form
    ``.NAME.<random>[.tmp|.old]`` when it is over an hour old. Those of live writers are left alone.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    ours = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]+\.(tmp|old)")
    legacy = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}(\.tmp|\.old)?")
    removed = []
    for entry in path.parent.iterdir():
        m = ours.fullmatch(entry.name)
        if m:
            stale = int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1)))
        elif legacy.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            try:
                stale = time.time() - entry.lstat().st_mtime > _LEGACY_STALE_AFTER
            except FileNotFoundError:
                continue
        else:
            continue
        if stale:
            _remove(entry)
            removed.append(entry)
    return removed


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            p = os.path.join(directory, name)
            if stat.S_ISREG(os.lstat(p).st_mode):
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(Path(directory))


def usual_modes(root: str | os.PathLike) -> None:
    """Give the files and folders under ``root`` the modes ``open`` / ``mkdir`` would (``0o666`` /
    ``0o777`` less the umask; executable files keep their execute bits, as far as the umask allows).

    For writers that leave private ``0o600`` files, such as Hugging Face's
    ``save_pretrained`` (it writes through temporary files). The umask is read
    by creating a probe file and folder in ``root``, never by changing it.
    """
    root = Path(root)
    probe = _temp_sibling(root / "probe", ".tmp")
    os.mkdir(probe, 0o777)
    try:
        dir_mode = stat.S_IMODE(os.stat(probe).st_mode)
        fd = os.open(probe / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
        file_mode = stat.S_IMODE(os.stat(probe / "f").st_mode)
    finally:
        _remove(probe)
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            p = os.path.join(directory, name)
            if not os.path.islink(p):
                os.chmod(p, dir_mode)
        for name in files:
            p = os.path.join(directory, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                os.chmod(p, file_mode | (dir_mode & 0o111 if st.st_mode & 0o111 else 0))


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temp folder beside ``out_dir``; when the block succeeds it replaces ``out_dir``.

    The swap: the temp folder's files are flushed to disk, an existing
    ``out_dir`` is renamed aside, the new folder is renamed in, then the old
    one is deleted. So ``out_dir`` is at every moment either the complete old
    folder, the complete new one or (between two renames) absent, never half
    deleted. On error the temp folder is removed and ``out_dir`` is untouched.
    Temp folders of earlier killed runs on the same path are removed first.
    The new folder gets mode ``0o777 & ~umask``, as ``mkdir`` would give it.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
    """
    out = Path(out_dir)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    while True:
        tmp = _temp_sibling(out, ".tmp")
        try:
            os.mkdir(tmp, 0o777)
            break
        except FileExistsError:  # pragma: no cover - a 32-bit random name taken
            continue
    try:
        yield tmp
        _fsync_tree(tmp)
        old = None
        if out.exists() or out.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{out} exists (pass overwrite=True to replace it)")
            old = _temp_sibling(out, ".old")
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None and not (out.exists() or out.is_symlink()):
                os.replace(old, out)  # put the previous folder back
            raise
        _fsync_dir(out.parent)
    except BaseException:
        _remove(tmp)
        raise
    if old is not None:
        _remove(old)
