"""What every benchmark JSON records about the machine: CPU model, the ISA the kernels run, threads, GPU.

Imported by the benchmark scripts (they run from this folder). The ISA is the
best one the CPU offers unless ``LUMO_VQ_ISA`` / ``LUMO_RESAMPLER_ISA`` /
``LUMO_ROWS_CE_ISA`` force another, and PyTorch's kernels likewise unless
``ATEN_CPU_CAPABILITY`` / ``MKL_ENABLE_INSTRUCTIONS`` / ``ONEDNN_MAX_CPU_ISA``
do (all recorded in ``isa_forced``): a speed claim must hold on AVX2 and on
AVX-512, with the baselines on the same ISA.
"""

from __future__ import annotations

import os
import platform


def machine() -> dict[str, object]:
    import torch

    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    best = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "scalar"
    forced = {k: v for k in ("LUMO_VQ_ISA", "LUMO_RESAMPLER_ISA", "LUMO_ROWS_CE_ISA", "ATEN_CPU_CAPABILITY",
                             "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA") if (v := os.environ.get(k))}
    info: dict[str, object] = {"cpu": model, "isa": best, "isa_forced": forced or None, "cores": os.cpu_count(),
                               "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                               "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
