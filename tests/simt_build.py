"""Builds ``_C_simt``: the CUDA sources of every op run by a CPU emulator.

The real ``csrc/ops/*/cuda*.cu`` kernels and ``csrc/ops/*/bind_cuda.cpp``
bindings (the sources of ``lumo_uti._C_cuda``) are compiled as C++ by the host compiler against ``tests/simt``
(a stand-in ``<cuda_runtime.h>`` over the SIMT emulator ``simt.h``), giving a
module with the API of ``lumo_uti._C_cuda`` whose "device pointers" are host
pointers. Tests pass it CPU tensors' ``data_ptr()`` and compare the results
with the references, so the kernels' indexing, tiling, barriers and shuffles
are checked on machines without a GPU (see tests/test_cuda_simt.py).

The build is cached by a hash of every source and flag under
``$LUMO_SIMT_CACHE`` (default: ``<tmp>/lumo_simt``) and written atomically, so
concurrent test runs never load a half-written module.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
SIMT = ROOT / "tests" / "simt"
MODULE = "_C_simt"

_BUILD_INFO = """#pragma once
#define LUMO_BI_VERSION "simt"
#define LUMO_BI_BUILD_TYPE "simt"
#define LUMO_BI_CXX_COMPILER "{cxx}"
#define LUMO_BI_CXX_FLAGS "{flags}"
#define LUMO_BI_CUDA_MODE "simt"
#define LUMO_BI_CUDA_STATUS "built: SIMT emulator (tests/simt)"
#define LUMO_BI_CUDA_BUILT 1
#define LUMO_BI_CUDA_COMPILER "{cxx}"
#define LUMO_BI_CUDA_FLAGS "{flags}"
#define LUMO_BI_CUDA_ARCHS "simt"
#define LUMO_BI_CUDA_ARCHS_SOURCE "simt"
#define LUMO_BI_CUDA_TOOLKIT "none"
"""


class SimtUnavailable(RuntimeError):
    """The emulator cannot be built here (no C++ compiler, pybind11 or ucontext)."""


def _sources() -> list[Path]:
    """The sources CMakeLists.txt puts into ``_C_cuda``, plus the emulator's own."""
    csrc = ROOT / "csrc"
    kernels = sorted(csrc.glob("ops/*/cuda*.cu"))
    bindings = sorted(csrc.glob("ops/*/bind_cuda.cpp"))
    runtime = [csrc / "runtime" / "cuda_runtime.cu", csrc / "runtime" / "module_cuda.cpp"]
    return kernels + bindings + runtime + [SIMT / "simt_bindings.cpp", SIMT / "simt_selftest.cu"]


def _inputs() -> list[Path]:
    """Every file whose change must rebuild the module."""
    files = set(_sources())
    for folder in (ROOT / "csrc", SIMT):
        files.update(p for p in folder.rglob("*") if p.suffix in {".h", ".cuh", ".cu", ".cpp"})
    return sorted(files)


def _flags(include_dirs: list[str]) -> list[str]:
    return [
        "-std=c++17",
        "-O1",
        "-fPIC",
        "-fvisibility=hidden",
        # One IEEE rounding per operator, as __fadd_rn/__fmul_rn on a GPU.
        "-ffp-contract=off",
        "-Wall",
        "-Wno-unknown-pragmas",  # #pragma unroll
        f"-DLUMO_CUDA_MODULE_NAME={MODULE}",
        *(f"-I{d}" for d in include_dirs),
    ]


def build(verbose: bool = False) -> Path:
    """Compile (or find in the cache) the module and return its path."""
    if not sys.platform.startswith("linux"):
        raise SimtUnavailable("the SIMT emulator uses ucontext fibers (Linux only)")
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        raise SimtUnavailable("no C++ compiler (set CXX)")
    try:
        import pybind11
    except ImportError as e:  # the test extra installs it
        raise SimtUnavailable("pybind11 is not installed (pip install '.[test]')") from e
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    base_includes = [str(SIMT / "include"), str(SIMT), str(ROOT / "csrc"), pybind11.get_include(),
                     sysconfig.get_paths()["include"]]
    digest = hashlib.sha256()
    for p in _inputs():
        digest.update(str(p.relative_to(ROOT)).encode())
        digest.update(p.read_bytes())
    digest.update(" ".join([cxx, suffix, *_flags(base_includes)]).encode())
    cache = Path(os.environ.get("LUMO_SIMT_CACHE") or Path(tempfile.gettempdir()) / "lumo_simt")
    target = cache / digest.hexdigest()[:16] / f"{MODULE}{suffix}"
    if target.exists():
        return target

    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=cache))
    try:
        flags = _flags([str(work), *base_includes])
        (work / "lumo_build_info.h").write_text(_BUILD_INFO.format(cxx=cxx, flags="simt"))

        def compile_one(src: Path) -> Path:
            # Every op's kernel is named cuda.cu: name objects by their path.
            obj = work / ("_".join(src.relative_to(ROOT).parts) + ".o")
            lang = ["-x", "c++"] if src.suffix == ".cu" else []
            cmd = [cxx, *flags, *lang, "-c", str(src), "-o", str(obj)]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                raise RuntimeError(f"SIMT build failed: {' '.join(cmd)}\n{run.stdout}{run.stderr}")
            if verbose and run.stderr:
                print(run.stderr, file=sys.stderr)
            return obj

        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            objects = list(pool.map(compile_one, _sources()))
        out = work / f"{MODULE}{suffix}"
        link = subprocess.run([cxx, "-shared", "-o", str(out), *map(str, objects)],
                              capture_output=True, text=True)
        if link.returncode != 0:
            raise RuntimeError(f"SIMT link failed:\n{link.stdout}{link.stderr}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(out, target)  # atomic: a concurrent run sees all or nothing
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def load(verbose: bool = False) -> ModuleType:
    """Build if needed and import ``_C_simt``."""
    path = build(verbose)
    spec = importlib.util.spec_from_file_location(MODULE, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    print(build(verbose=True))
