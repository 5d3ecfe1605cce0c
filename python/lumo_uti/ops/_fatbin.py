"""List the GPU code embedded in a CUDA module (no cuobjdump needed).

Reads the ``.nv_fatbin`` ELF section of a shared object and returns the
architectures it holds: ``sm_XY`` for SASS (cubin) and ``compute_XY`` for PTX.
Used by the build tests and ``python -m lumo_uti.ops`` to show that the CUDA
build compiled what CMakeLists.txt asks for.
"""

from __future__ import annotations

import struct
from pathlib import Path

_FATBIN_MAGIC = 0xBA55ED50
_KIND_PTX = 1
_KIND_ELF = 2


def _section(data: bytes, wanted: str) -> bytes | None:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("fatbin: expected a little-endian ELF64 file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    str_off, str_size = headers[shstrndx][4], headers[shstrndx][5]
    names = data[str_off : str_off + str_size]
    for name_off, _type, _flags, _addr, off, size in headers:
        end = names.index(b"\0", name_off)
        if names[name_off:end].decode() == wanted:
            return data[off : off + size]
    return None


def embedded_archs(path: str | Path) -> list[str]:
    """Sorted ``sm_XY`` / ``compute_XY`` entries in the fat binaries of ``path`` ([] if none)."""
    blob = _section(Path(path).read_bytes(), ".nv_fatbin")
    if blob is None:
        return []
    found: set[str] = set()
    off = 0
    while off + 16 <= len(blob):
        magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", blob, off)
        if magic != _FATBIN_MAGIC:
            break
        entry, end = off + header_size, off + header_size + fat_size
        while entry + 32 <= end:
            kind, _ver, entry_header, padded_size = struct.unpack_from("<HHII", blob, entry)
            (sm,) = struct.unpack_from("<I", blob, entry + 28)
            if kind == _KIND_ELF:
                found.add(f"sm_{sm}")
            elif kind == _KIND_PTX:
                found.add(f"compute_{sm}")
            entry += entry_header + padded_size
        # Fat binaries of several translation units are laid out back to back,
        # each aligned to 8 bytes.
        off = (end + 7) // 8 * 8
    return sorted(found, key=lambda s: (int(s.split("_")[1]), s))
