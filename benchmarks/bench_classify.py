"""Benchmark lumo_uti.ops.classify_ids against torch.searchsorted and numpy.searchsorted.

Prints one JSON object per case (shape, dtype, device, number of boundaries,
median time of each variant in microseconds, speed-ups, kernel bandwidth).
Variants, timed interleaved (random order per rep) in the same process:

  lumo          classify_ids(tensor, tensor): end to end through torch.library
  lumo_numpy    classify_ids(ndarray, ndarray): the decoder's hot path (CPU only)
  kernel        the native kernel alone, on prepared buffers (kernel time)
  reference     lumo_uti.ops.reference (torch.searchsorted + masking)
  numpy         numpy.searchsorted + masking, the same result (CPU only)

Usage: python benchmarks/bench_classify.py [--quick] [--reps N] [--peak-gbps X]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from typing import Callable

import numpy as np
import torch

from lumo_uti.ops import _native, backends, classify_ids
from lumo_uti.ops.reference import classify_ids_reference

TOKEN_SPACE = [0, 151936, 152064, 168448, 176640]


def _numpy_baseline(ids: np.ndarray, b: np.ndarray) -> np.ndarray:
    r = np.searchsorted(b, ids, side="right") - 1
    inside = (ids >= b[0]) & (ids < b[-1])
    return np.where(inside, r, -1).astype(np.int32)


def _kernel_fn(ids: torch.Tensor, b: torch.Tensor) -> Callable[[], None] | None:
    """The native kernel on prepared contiguous buffers, or None if not loaded."""
    out = torch.empty(ids.shape, dtype=torch.int32, device=ids.device)
    if ids.device.type == "cpu":
        module = _native.cpu()
        if module is None:
            return None
        threads = torch.get_num_threads()
        return lambda: module.classify_ids(
            ids_ptr=ids.data_ptr(), ids_itemsize=ids.element_size(), n=ids.numel(),
            bounds_ptr=b.data_ptr(), num_bounds=b.numel(), out_ptr=out.data_ptr(), num_threads=threads,
        )
    module = _native.cuda()
    if module is None:
        return None
    stream = torch.cuda.current_stream(ids.device).cuda_stream
    index = ids.device.index
    return lambda: module.classify_ids(
        ids_ptr=ids.data_ptr(), ids_itemsize=ids.element_size(), n=ids.numel(),
        bounds_ptr=b.data_ptr(), num_bounds=b.numel(), out_ptr=out.data_ptr(), stream=stream, device=index,
    )


def _timer(fn: Callable[[], object], device: str, inner: int) -> float:
    """Seconds per call over `inner` back-to-back calls."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / inner


def bench_case(shape: tuple[int, ...], dtype: torch.dtype, device: str, bounds: list[int],
               reps: int, peak_gbps: float | None) -> dict:
    hi = bounds[-1] + 1000 if bounds else 1000
    ids = torch.randint(-1000, hi, shape, dtype=torch.int64).to(dtype).to(device)
    b = torch.tensor(bounds, dtype=torch.int64, device=device)
    fns: dict[str, Callable[[], object]] = {
        "lumo": lambda: classify_ids(ids, b),
        "reference": lambda: classify_ids_reference(ids, b),
    }
    kernel = _kernel_fn(ids, b)
    if kernel is not None:
        fns["kernel"] = kernel
    if device == "cpu":
        ids_np, b_np = ids.numpy(), b.numpy()
        fns["lumo_numpy"] = lambda: classify_ids(ids_np, b_np)
        fns["numpy"] = lambda: _numpy_baseline(ids_np, b_np)

    # Same results before timing anything.
    want = classify_ids_reference(ids, b).cpu().numpy()
    assert np.array_equal(classify_ids(ids, b).cpu().numpy(), want)
    if device == "cpu":
        assert np.array_equal(fns["lumo_numpy"](), want)
        assert np.array_equal(fns["numpy"](), want)

    # Calibrate: enough back-to-back calls per sample for ~1 ms of the fastest variant.
    for fn in fns.values():
        fn()
    fastest = min(_timer(fn, device, 3) for fn in fns.values())
    inner = int(min(1000, max(1, math.ceil(1e-3 / max(fastest, 1e-9)))))

    # A fresh random order each rep: no variant always runs first, or always
    # right after a torch op whose OpenMP workers are still spinning (on a
    # machine with few cores they slow down whatever threads run next).
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    order_rng = random.Random(0)
    for _ in range(reps):
        order_rng.shuffle(names)
        for name in names:
            samples[name].append(_timer(fns[name], device, inner))
    median_us = {name: statistics.median(v) * 1e6 for name, v in samples.items()}

    speedup = {"lumo_vs_reference": median_us["reference"] / median_us["lumo"]}
    if device == "cpu":
        speedup["lumo_numpy_vs_numpy"] = median_us["numpy"] / median_us["lumo_numpy"]
        speedup["lumo_numpy_vs_reference"] = median_us["reference"] / median_us["lumo_numpy"]
    n = ids.numel()
    result = {
        "op": "classify_ids",
        "shape": list(shape),
        "dtype": str(dtype).removeprefix("torch."),
        "device": device,
        "num_bounds": len(bounds),
        "threads": torch.get_num_threads() if device == "cpu" else None,
        "reps": reps,
        "calls_per_sample": inner,
        "median_us": {k: round(v, 3) for k, v in median_us.items()},
        "speedup": {k: round(v, 3) for k, v in speedup.items()},
    }
    if "kernel" in median_us:
        gbps = n * (ids.element_size() + 4) / (median_us["kernel"] * 1e-6) / 1e9
        result["kernel_gbps"] = round(gbps, 3)
        if peak_gbps:
            result["kernel_fraction_of_peak_bw"] = round(gbps / peak_gbps, 4)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=31, help="samples per variant (median)")
    parser.add_argument("--quick", action="store_true", help="few cases, few reps")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--peak-gbps", type=float, default=None,
                        help="memory bandwidth of the machine, to report the kernel's fraction of it")
    args = parser.parse_args(argv)

    info = backends()
    print(json.dumps({"backends": {k: info[k] for k in ("cpu", "cuda", "cpu_reason", "cuda_reason", "reference_forced")}}))
    devices = ["cpu"] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and info["cuda"]:
        devices.append("cuda")
    shapes = [(16,), (1024,), (65536,), (64, 16384)]
    bounds_sets = [TOKEN_SPACE, list(range(0, 1_048_576, 1024))]
    reps = args.reps
    if args.quick:
        shapes, bounds_sets, reps = [(16,), (65536,)], [TOKEN_SPACE], min(reps, 7)
    for device in devices:
        for bounds in bounds_sets:
            for shape in shapes:
                for dtype in (torch.int32, torch.int64):
                    print(json.dumps(bench_case(shape, dtype, device, bounds, reps, args.peak_gbps)))
                    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
