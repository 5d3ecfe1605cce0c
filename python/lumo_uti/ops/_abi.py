"""The Python side of the native op ABI, shared by every op front.

One table of element type codes (mirrors ``csrc/abi/dtype.h``), the CPU
instruction-set codes (``csrc/runtime/isa.h``), the thread count passed to the
CPU kernels, the choice of native module for a device, and the text of the
value errors the kernels report (``csrc/abi/status.h``) for the paths that
check values in Python.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

from . import _native

# Element type codes across the binding: csrc/abi/dtype.h, enum class DType.
DTYPE_CODES: dict[torch.dtype, int] = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
FLOAT_DTYPES_TEXT = "float32, float16 or bfloat16"

# CPU instruction sets: csrc/runtime/isa.h, enum Isa. Every one gives the same bits.
ISA_CODES = {"": 0, "auto": 0, "scalar": 1, "avx2": 2, "avx512": 3}


def dtype_code(dtype: torch.dtype) -> int:
    """The code of a float dtype the kernels take (KeyError for any other)."""
    return DTYPE_CODES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``, for error messages."""
    return str(dtype).removeprefix("torch.")


def isa(env: str) -> int:
    """The instruction set forced by the environment variable ``env`` (0: the best this CPU runs)."""
    value = os.environ.get(env, "").strip().lower()
    if value not in ISA_CODES:
        raise ValueError(f"{env}: expected one of auto, scalar, avx2, avx512, got {value!r}")
    return ISA_CODES[value]


def threads() -> int:
    """Threads a CPU kernel may use: PyTorch's intra-op setting, so one knob sets both."""
    return torch.get_num_threads()


def cpu_module() -> ModuleType | None:
    """``lumo_uti._C``, or None when it is missing or the reference is forced."""
    return None if _native.reference_forced() else _native.cpu()


def cuda_module() -> ModuleType | None:
    """``lumo_uti._C_cuda`` when a device can run it, or None (missing, no device, reference forced)."""
    return None if _native.reference_forced() else _native.cuda()


def module(device: torch.device) -> ModuleType | None:
    """The native module that runs ops on ``device``, or None (use the reference)."""
    if device.type == "cpu":
        return cpu_module()
    if device.type == "cuda":
        return cuda_module()
    return None


def queue(device: torch.device) -> dict[str, int]:
    """The ``stream=`` and ``device=`` keyword arguments of a ``_C_cuda`` call on ``device``."""
    stream, index = _native.queue(device)
    return {"stream": stream, "device": index}


def is_cpu(mod: ModuleType | None) -> bool:
    """True for ``_C`` (synchronous, host memory); False for ``_C_cuda`` and its emulator.

    Fronts branch on the module rather than the tensor's device, so the tests
    can run the CUDA paths on host memory (tests/test_cuda_simt.py).
    """
    return mod is not None and mod is _native.cpu()


def non_finite_error(op: str, what: str, row: int) -> ValueError:
    """The error of an inf/NaN in row ``row`` of input ``what`` (csrc/abi/status.h)."""
    return ValueError(f"{op}: expected finite values, got inf/NaN in {what} row {row}")


def overflow_error(op: str, what: str, row: int) -> ValueError:
    """The error of finite inputs whose arithmetic overflowed fp32 (csrc/abi/status.h)."""
    return ValueError(f"{op}: {what} overflow fp32 for row {row} (values too large for fp32 arithmetic)")
