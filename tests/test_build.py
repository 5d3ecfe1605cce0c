"""The installed build: what loaded, and that the extension modules stay torch-free."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lumo_uti
from lumo_uti.ops import _native, backends
from lumo_uti.ops._fatbin import embedded_archs

# All folders of the package: one for a regular install; site-packages and
# python/ for an editable (scikit-build-core redirect) install.
PACKAGE_DIRS = [Path(p).resolve() for p in lumo_uti.__path__]


def _needed(path: Path) -> list[str]:
    """DT_NEEDED entries of a shared object (readelf or objdump)."""
    if shutil.which("readelf"):
        text = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
        return [line.split("[", 1)[1].split("]", 1)[0] for line in text.splitlines() if "(NEEDED)" in line]
    if shutil.which("objdump"):
        text = subprocess.run(["objdump", "-p", str(path)], capture_output=True, text=True, check=True).stdout
        return [line.split()[1] for line in text.splitlines() if line.strip().startswith("NEEDED")]
    pytest.skip("neither readelf nor objdump is installed")


def _modules(name: str) -> list[Path]:
    """Files of the extension module ``lumo_uti.<name>`` found in the package folders."""
    return sorted(
        p for d in PACKAGE_DIRS for p in d.glob(f"{name}.*") if p.suffix in (".so", ".pyd", ".dylib")
    )


def test_backends_shape() -> None:
    info = backends()
    assert set(info) >= {"cpu", "cuda", "cpu_reason", "cuda_reason", "cuda_module_loaded", "reference_forced", "build_info"}
    assert isinstance(info["cpu"], bool) and isinstance(info["cuda"], bool)
    assert (info["cpu_reason"] is None) == info["cpu"]
    assert (info["cuda_reason"] is None) == info["cuda"]


def test_cpu_module_loaded() -> None:
    info = backends()
    assert info["cpu"] is True, info["cpu_reason"]
    cpu = info["build_info"]["cpu"]
    assert cpu["module"] == "lumo_uti._C"
    assert cpu["links_libtorch"] is False
    assert cpu["version"] == importlib.metadata.version("lumoomni")
    assert cpu["cxx_standard"] == 17
    assert "-O3" in cpu["cxx_flags"] and "-Wall" in cpu["cxx_flags"]
    assert cpu["cuda_status"].startswith(("built", "not built"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-machine report")
def test_cuda_reports_why_not_here() -> None:
    info = backends()
    assert info["cuda"] is False
    reason = info["cuda_reason"]
    assert isinstance(reason, str) and reason
    assert reason.startswith(("not built:", "import error:", "torch without CUDA", "no CUDA device")), reason
    if not _modules("_C_cuda"):
        assert reason.startswith("not built:")
    elif torch.version.cuda is None:
        assert reason.startswith("torch without CUDA")


def test_cuda_module_matches_build_record() -> None:
    """_C records whether CMake built _C_cuda; the package must hold it exactly then."""
    cpu = backends()["build_info"]["cpu"]
    assert bool(_modules("_C_cuda")) == cpu["cuda_built"], cpu["cuda_status"]


def test_cpu_module_does_not_link_libtorch() -> None:
    (so,) = _modules("_C")
    needed = _needed(so)
    assert needed, f"no DT_NEEDED entries read from {so}"
    assert not [n for n in needed if "torch" in n or "c10" in n], needed


def _expected_archs(cmake_archs: str) -> set[str]:
    """CMake CUDA_ARCHITECTURES ("80-real;90-virtual;86") as sm_XY / compute_XY names."""
    out: set[str] = set()
    for entry in cmake_archs.split(";"):
        arch, _, kind = entry.partition("-")
        if kind in ("", "real"):
            out.add(f"sm_{arch}")
        if kind in ("", "virtual"):
            out.add(f"compute_{arch}")
    return out


def test_cuda_module_if_built() -> None:
    """_C_cuda: no libtorch, static cudart, the machine code and PTX its build reports."""
    found = _modules("_C_cuda")
    if not found:
        pytest.skip(f"CUDA kernels not built ({_native.cuda_reason()})")
    (so,) = found
    needed = _needed(so)
    assert not [n for n in needed if "torch" in n or "c10" in n], needed
    assert not [n for n in needed if n.startswith("libcudart")], f"cudart should be static: {needed}"
    assert _native.cuda_module_loaded(), _native.cuda_reason()
    info = backends()["build_info"]["cuda"]
    assert info["module"] == "lumo_uti._C_cuda"
    assert set(embedded_archs(so)) == _expected_archs(info["cuda_archs"])
    if info["cuda_archs_source"] == "default":  # what PyTorch's wheels cover, T4 included
        assert set(embedded_archs(so)) == {"sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "compute_90"}
    assert info["runtime_version"] >= 11000
    module = _native._cuda_module
    try:
        count = module.device_count()
    except RuntimeError as exc:  # no driver on this machine
        assert "cudaGetDeviceCount" in str(exc)
    else:
        assert count >= 0


def test_package_data_ships() -> None:
    source_data = Path(__file__).resolve().parents[1] / "python" / "lumo_uti" / "data"
    if not source_data.is_dir():
        pytest.skip("the source tree has no python/lumo_uti/data")
    shipped = [p for d in PACKAGE_DIRS for p in (d / "data").rglob("*.json")]
    assert shipped, f"no JSON under data/ in {PACKAGE_DIRS}"


class _FakeCudaModule:
    """Stands in for _C_cuda to exercise the reasons a GPU machine can give."""

    def __init__(self, count: int | None) -> None:
        self.count = count

    def device_count(self) -> int:
        if self.count is None:
            raise RuntimeError("device_count: cudaGetDeviceCount failed: cudaErrorInsufficientDriver: ...")
        return self.count

    def runtime_version(self) -> int:
        return 13000

    def driver_version(self) -> int:
        return 12020


@pytest.mark.parametrize(
    ("torch_cuda", "available", "count", "expected"),
    [
        (None, False, 1, "torch without CUDA"),
        ("12.4", False, 0, "no CUDA device (torch.cuda.is_available() is False"),
        ("12.4", True, None, "no CUDA device usable by lumo_uti._C_cuda: device_count: cudaGetDeviceCount failed"),
        ("12.4", True, 0, "no CUDA device (torch sees"),
        ("12.4", True, 1, None),
    ],
    ids=["cpu-torch", "no-gpu", "old-driver", "runtime-sees-none", "usable"],
)
def test_cuda_reasons(monkeypatch: pytest.MonkeyPatch, torch_cuda, available, count, expected) -> None:
    monkeypatch.setattr(torch.version, "cuda", torch_cuda)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1 if available else 0)
    reason = _native._cuda_device_problem(_FakeCudaModule(count))
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and reason.startswith(expected), reason
    if count is None:
        assert "its CUDA runtime is 13.0, the driver supports 12.2" in reason


_BROKEN_NATIVE = r"""
import importlib.abc, json, sys

import importlib.util

class Broken(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    # Found, but fails to load, like a .so with an undefined symbol.
    def find_spec(self, name, path=None, target=None):
        if name in ("lumo_uti._C", "lumo_uti._C_cuda"):
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        raise ImportError(f"simulated: {spec.name} is broken")

    def exec_module(self, module):
        pass

sys.meta_path.insert(0, Broken())
import numpy as np
import lumo_uti.ops as ops
out = ops.classify_ids(np.array([-1, 0, 5, 10, 99]), [0, 5, 10])
info = ops.backends()
print(json.dumps({"out": out.tolist(), "cpu": info["cpu"], "cpu_reason": info["cpu_reason"],
                  "cuda": info["cuda"], "cuda_reason": info["cuda_reason"]}))
"""


def test_import_survives_broken_native_modules() -> None:
    """A native module that fails to import never breaks `import lumo_uti`; ops use the reference."""
    import json
    import sys

    proc = subprocess.run([sys.executable, "-c", _BROKEN_NATIVE], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["out"] == [-1, 0, 1, -1, -1]
    assert got["cpu"] is False
    assert got["cpu_reason"] == "import error: ImportError: simulated: lumo_uti._C is broken"
    assert got["cuda"] is False
    assert got["cuda_reason"] == "import error: ImportError: simulated: lumo_uti._C_cuda is broken"


@pytest.mark.parametrize(
    ("torch_list", "expected"),
    [
        ("7.5;8.0;8.6+PTX", "75-real;80-real;86-real;86-virtual"),
        ("8.9 9.0a+PTX", "89-real;90a-real;90a-virtual"),
        ("Turing", None),
    ],
)
def test_torch_cuda_arch_list_is_honoured(tmp_path: Path, torch_list: str, expected: str | None) -> None:
    """CMakeLists.txt turns PyTorch's TORCH_CUDA_ARCH_LIST into CMake architectures (configure only)."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not on PATH")
    import pybind11

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TORCH_CUDA_ARCH_LIST": torch_list}
    run = subprocess.run(
        [cmake, "-S", str(root), "-B", str(tmp_path), "-DLUMO_CUDA=off", "-DLUMO_PRINT_CUDA_ARCHS=on",
         f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    if expected is None:
        assert run.returncode != 0 and "TORCH_CUDA_ARCH_LIST: expected entries such as 7.5" in run.stderr
    else:
        assert run.returncode == 0, run.stderr
        assert f"LumoOmni: CUDA architectures {expected} (TORCH_CUDA_ARCH_LIST={torch_list})" in run.stdout


def test_ops_load_on_attribute_access() -> None:
    """``import lumo_uti; lumo_uti.ops.backends()`` works in a fresh process (ops is not imported eagerly)."""
    code = "import sys, lumo_uti; assert 'lumo_uti.ops' not in sys.modules; print(lumo_uti.ops.backends()['cpu'])"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() in ("True", "False")
