"""Builds ``lumo_uti._C`` with sanitizers (default: AddressSanitizer + UBSan) into a cache folder.

CMake is run directly (not pip) with ``-DLUMO_SANITIZE=address,undefined,float-cast-overflow``
(GCC's ``undefined`` leaves out float-to-int conversions out of range) and
``LUMO_CUDA=off``, in a build folder that is kept between runs (so a change to
one kernel recompiles that file only). The module is then copied to
``<cache>/<hash of the sources and flags>/_C<suffix>``, atomically, and a run
whose hash is already there builds nothing. The cache is ``$LUMO_SANITIZE_CACHE``
(default: ``<tmp>/lumo_sanitize``); builds are serialised by a lock file.

    python tests/sanitize/build.py            # prints the module's path
    LUMO_SANITIZE=address python tests/sanitize/build.py
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SANITIZE = "address,undefined,float-cast-overflow"


class BuildError(RuntimeError):
    """The sanitizer build failed or cannot run here (the message says why)."""


def _tool(name: str) -> str | None:
    """``name`` on PATH, or the copy of the PyPI package of that name (cmake, ninja)."""
    found = shutil.which(name)
    if found is None:
        try:
            module = __import__(name)
        except ImportError:
            return None
        bin_dir = getattr(module, f"{name.upper()}_BIN_DIR", None) or getattr(module, "BIN_DIR", None)
        found = shutil.which(name, path=bin_dir) if bin_dir else None
    return found


def _inputs() -> list[Path]:
    """Every file whose change must rebuild the module."""
    files = [ROOT / "CMakeLists.txt"]
    files += sorted(p for p in (ROOT / "csrc").rglob("*") if p.is_file())
    return files


def _configure_args(build_dir: Path, sanitize: str) -> list[str]:
    import pybind11

    args = [
        "-S", str(ROOT), "-B", str(build_dir),
        "-DLUMO_CUDA=off",
        f"-DLUMO_SANITIZE={sanitize}",
        "-DCMAKE_BUILD_TYPE=Release",
        "-DCMAKE_CXX_FLAGS=-g1",  # line tables for the reports
        f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        f"-DPython_EXECUTABLE={sys.executable}",
    ]
    if _tool("ninja"):
        args += ["-G", "Ninja"]
    return args


def build(sanitize: str = DEFAULT_SANITIZE, verbose: bool = False) -> Path:
    """Compile (or find in the cache) the sanitizer build of ``_C`` and return its path."""
    cmake = _tool("cmake")
    if cmake is None:
        raise BuildError("sanitizer build: cmake is not on PATH (pip install cmake ninja)")
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    cxx = os.environ.get("CXX") or _tool("c++") or "c++"
    digest = hashlib.sha256()
    for p in _inputs():
        digest.update(str(p.relative_to(ROOT)).encode())
        digest.update(p.read_bytes())
    digest.update(" ".join([sanitize, cxx, suffix, sys.version]).encode())
    cache = Path(os.environ.get("LUMO_SANITIZE_CACHE") or Path(tempfile.gettempdir()) / "lumo_sanitize")
    target = cache / digest.hexdigest()[:16] / f"_C{suffix}"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time in the shared build folder
        if target.exists():
            return target
        # One CMake build folder per checkout: a CMake cache refuses a second source folder (CI builds a
        # fresh clone elsewhere on a machine whose cache a developer's checkout already filled).
        checkout = hashlib.sha256(str(ROOT.resolve()).encode()).hexdigest()[:8]
        build_dir = cache / f"build-{sanitize.replace(',', '-')}-{checkout}"
        out = None if verbose else subprocess.PIPE
        for cmd in (
            [cmake, *_configure_args(build_dir, sanitize)],
            [cmake, "--build", str(build_dir), "--target", "_C", "--parallel", str(os.cpu_count() or 1)],
        ):
            run = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
            if run.returncode != 0:
                raise BuildError(f"sanitizer build failed: {' '.join(cmd)}\n{run.stdout or ''}")
        built = sorted(build_dir.glob(f"_C{suffix}"))
        if not built:
            raise BuildError(f"sanitizer build produced no _C{suffix} in {build_dir}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        shutil.copy2(built[0], tmp)
        os.replace(tmp, target)  # atomic: a concurrent run sees all or nothing
    return target


if __name__ == "__main__":
    try:
        print(build(os.environ.get("LUMO_SANITIZE") or DEFAULT_SANITIZE, verbose="-v" in sys.argv[1:]))
    except BuildError as e:
        sys.exit(str(e))
