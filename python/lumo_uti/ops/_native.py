"""Lazy loading of the native modules ``lumo_uti._C`` and ``lumo_uti._C_cuda``.

Importing ``lumo_uti`` never fails because a native module is missing or
broken: the first use loads it, and the reason it is unusable is recorded for
``lumo_uti.ops.backends()``. Callers then fall back to the reference.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_CPU_NAME = "lumo_uti._C"
_CUDA_NAME = "lumo_uti._C_cuda"
_TRUE = frozenset({"1", "true", "yes", "on"})

_lock = threading.Lock()
_cpu_loaded = False
_cpu_module: ModuleType | None = None
_cpu_reason: str | None = None
_cuda_loaded = False
_cuda_module: ModuleType | None = None  # imported, whether or not usable
_cuda_usable = False
_cuda_reason: str | None = None


def reference_forced() -> bool:
    """True when the environment variable ``LUMO_FORCE_REFERENCE`` is 1/true/yes/on."""
    return os.environ.get("LUMO_FORCE_REFERENCE", "").strip().lower() in _TRUE


def _import(name: str) -> tuple[ModuleType | None, str | None]:
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError) as exc:  # parent package broken or odd sys.path
        return None, f"cannot look for {name}: {type(exc).__name__}: {exc}"
    if not found:
        return None, None
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # noqa: BLE001 - an unloadable .so may raise anything
        return None, f"import error: {type(exc).__name__}: {exc}"


def _load_cpu() -> None:
    global _cpu_loaded, _cpu_module, _cpu_reason
    with _lock:
        if _cpu_loaded:
            return
        module, error = _import(_CPU_NAME)
        if module is None:
            _cpu_reason = error or (
                f"not built: {_CPU_NAME} is not installed next to lumo_uti/__init__.py "
                "(a source checkout on sys.path instead of the installed package? "
                "run `pip install .`)"
            )
        _cpu_module = module
        _cpu_loaded = True


def _load_cuda() -> None:
    global _cuda_loaded, _cuda_module, _cuda_usable, _cuda_reason
    cpu()  # _C records why the build left _C_cuda out
    with _lock:
        if _cuda_loaded:
            return
        module, error = _import(_CUDA_NAME)
        _cuda_module = module
        if module is None:
            _cuda_reason = error or f"not built: {_cuda_build_status()}"
        else:
            _cuda_reason = _cuda_device_problem(module)
            _cuda_usable = _cuda_reason is None
        _cuda_loaded = True


def _cuda_build_status() -> str:
    """Why the build left out ``_C_cuda``, as recorded by CMake in ``_C``."""
    if _cpu_module is not None:
        status = str(_cpu_module.build_info().get("cuda_status", ""))
        if status.startswith("not built: "):
            return status[len("not built: ") :]
        if status.startswith("built"):
            return f"{_CUDA_NAME} is missing although this build compiled it ({status})"
    return f"{_CUDA_NAME} is not installed (build with a CUDA toolkit and LUMO_CUDA=auto/on)"


def _cuda_device_problem(module: ModuleType) -> str | None:
    import torch

    if torch.version.cuda is None:
        return f"torch without CUDA (torch {torch.__version__} is a CPU-only build)"
    if not torch.cuda.is_available():
        try:
            detail = f"the CUDA runtime of {_CUDA_NAME} sees {module.device_count()} device(s)"
        except RuntimeError as exc:
            detail = str(exc)
        return f"no CUDA device (torch.cuda.is_available() is False; {detail})"
    # _C_cuda links its own (static) CUDA runtime, which may need a newer
    # driver than the one torch's runtime accepts.
    try:
        count = module.device_count()
    except RuntimeError as exc:
        return (
            f"no CUDA device usable by {_CUDA_NAME}: {exc} (its CUDA runtime is "
            f"{_version(module.runtime_version())}, the driver supports {_version(module.driver_version())})"
        )
    if count == 0:
        return f"no CUDA device (torch sees {torch.cuda.device_count()}, {_CUDA_NAME} sees none)"
    return None


def _version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}" if v else "none"


def cpu() -> ModuleType | None:
    """The CPU module, or None (see ``cpu_reason()``)."""
    if not _cpu_loaded:
        _load_cpu()
    return _cpu_module


def cuda() -> ModuleType | None:
    """The CUDA module if it loaded and a CUDA device is usable from torch, else None."""
    if not _cuda_loaded:
        _load_cuda()
    return _cuda_module if _cuda_usable else None


def queue(device: torch.device) -> tuple[int, int]:
    """(stream handle, device index) a ``_C_cuda`` call enqueues on: the current stream.

    Every op front asks here, so the tests can run the CUDA paths on host
    memory through the SIMT emulator (tests/test_cuda_simt.py).
    """
    import torch

    return torch.cuda.current_stream(device).cuda_stream, device.index


def buffer(t: torch.Tensor | None) -> tuple[int, int]:
    """``(address, extent)`` of a tensor for the native modules; ``(0, 0)`` for None.

    The extent counts the elements the tensor covers from its address (its
    numel when contiguous, 0 when empty). The bindings check it against the
    sizes they are given, so a buffer that does not match them raises instead
    of being read out of bounds (csrc/abi/buffer.h).
    """
    if t is None:
        return (0, 0)
    numel = t.numel()
    if numel == 0:
        return (0, 0)
    if t.is_contiguous():
        return (t.data_ptr(), numel)
    return (t.data_ptr(), 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride())))


def cpu_reason() -> str | None:
    cpu()
    return _cpu_reason


def cuda_reason() -> str | None:
    cuda()
    return _cuda_reason


def cuda_module_loaded() -> bool:
    """True when ``_C_cuda`` imported, even if no device can run it."""
    cuda()
    return _cuda_module is not None


def build_info() -> dict[str, Any]:
    """``build_info()`` of each loaded module (None for a missing one)."""
    info: dict[str, Any] = {"cpu": None, "cuda": None}
    module = cpu()
    if module is not None:
        info["cpu"] = dict(module.build_info())
    cuda()
    if _cuda_module is not None:
        cuda_info = dict(_cuda_module.build_info())
        cuda_info["runtime_version"] = _cuda_module.runtime_version()
        cuda_info["driver_version"] = _cuda_module.driver_version()
        cuda_info["path"] = _cuda_module.__file__
        from ._fatbin import embedded_archs

        # What the module carries (read from its file), next to what CMake was asked for.
        cuda_info["embedded_archs"] = embedded_archs(cuda_info["path"])
        info["cuda"] = cuda_info
    if module is not None:
        info["cpu"]["path"] = module.__file__
    return info
