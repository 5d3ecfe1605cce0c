"""Peak extra memory of one call, for the benchmarks (imported by vq.py and resampler.py).

CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated before the
call. CPU: the rise of the process's peak resident set (VmHWM, reset through
``/proc/self/clear_refs``) over its resident set before the call, after
``malloc_trim`` has handed freed heap pages back (so that reusing them shows).
The CPU figure is page-granular and includes allocator slack: compare methods
measured the same way, not absolute bytes. None where it cannot be measured
(no /proc, or clear_refs not permitted).
"""

from __future__ import annotations

from typing import Callable

import torch


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_bytes(fn: Callable[[], object], device: str | torch.device) -> int | None:
    """Extra bytes at the peak of one call of ``fn`` on ``device``."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    base = _rss_kb("VmRSS:")
    fn()
    return max(0, _rss_kb("VmHWM:") - base) * 1024
