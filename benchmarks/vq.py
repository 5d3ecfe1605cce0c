"""Benchmark of lumo_uti.ops.vq_search / rvq_encode against the usual implementations.

One JSON object per case on stdout: shape, dtype, device, threads, our median
time and peak extra memory, and for each baseline its median, peak memory,
``speedup`` (baseline time / ours) and ``agree`` (fraction of equal codes).
Methods run interleaved in one process (round-robin, medians of --repeat).

Ours twice: ``vq_search`` / ``rvq_encode`` (the codebook packed in every call)
and ``PackedCodebook`` (packed once, outside the timing: ``ours_packed_ms``;
each baseline also gets ``speedup_packed``).

Baselines (each skipped with a note when its package is missing):
  cdist     torch.cdist(x, c).argmin(1)
  matmul    (||c||^2 - 2 x c^T).argmin(1)   (GPU: also plain torch.matmul x c^T)
  faiss     faiss.IndexFlatL2(D).search(x, 1) (faiss-cpu; index built outside the timing)
  faiss_blas  the same with faiss.cvar.distance_compute_blas_threshold = 1: FAISS
            (1.15) only takes its BLAS / fused k=1 kernel (AVX-512, FMA, D <= 16)
            from N * D >= 128000 on by default, so below that (e.g. N = 4096 at
            D = 8) ``faiss`` times its much slower exhaustive loop
  vqp       vector-quantize-pytorch VectorQuantize / ResidualVQ forward (eval, no grad)
  hf        Hugging Face EnCodec quantizer (EncodecEuclideanCodebook.quantize /
            EncodecResidualVectorQuantizer.encode)

Peak memory: CPU, the rise of the process's peak RSS (VmHWM, reset through
/proc/self/clear_refs) during one call; CUDA, torch.cuda.max_memory_allocated.

    python benchmarks/vq.py                       # every case, CPU, fp32
    python benchmarks/vq.py --cases tiny_d8 rvq_q8 --repeat 7
    python benchmarks/vq.py --cases tiny_d8 tiny_d4 --baselines faiss faiss_blas
    LUMO_VQ_ISA=avx2 FAISS_OPT_LEVEL=avx2 python benchmarks/vq.py ...   # the AVX2 paths
    python benchmarks/vq.py --threads 1 --clock cpu ...   # CPU time: steadier on a busy machine
    python benchmarks/vq.py --device cuda         # GPU cases (benchmarks/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable

import torch
from machine import machine
from peak_memory import peak_bytes

from lumo_uti.ops import rvq_encode, vq_search
from lumo_uti.ops.vq import PackedCodebook

# name: (kind, N, K, D, Q)
CASES: dict[str, tuple[str, int, int, int, int]] = {
    "tiny_d8": ("vq", 4096, 16384, 8, 0),  # LlamaGen / Janus codebook
    "tiny_d4": ("vq", 4096, 32768, 4, 0),  # Emu3-like
    "large_d256": ("vq", 4096, 8192, 256, 0),
    "large_d128": ("vq", 16384, 1024, 128, 0),
    "latency_n1": ("vq", 1, 16384, 8, 0),
    "latency_n8": ("vq", 8, 16384, 8, 0),
    "latency_n64": ("vq", 64, 16384, 8, 0),
    "janus_batch": ("vq", 64 * 576, 16384, 8, 0),  # the 2.4 GB distance-matrix case
    "rvq_q8": ("rvq", 4500, 1024, 128, 8),  # EnCodec 24 kHz, 6 kbps
    "rvq_q32": ("rvq", 4500, 1024, 128, 32),  # EnCodec 24 kHz, 24 kbps
    "rvq_mimi": ("rvq", 4500, 2048, 256, 8),
    # codec-shaped small batches (benchmarks/codecs.py, 2 clips of 2 s):
    "dac_stage": ("vq", 124, 1024, 8, 0),  # one DAC stage after its projection
    "rvq_mimi_clip": ("rvq", 50, 2048, 256, 31),  # Mimi's acoustic RVQ, 2 x 25 frames
}
DEFAULT_CASES = [c for c in CASES if c != "janus_batch"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Timing and memory.
# ---------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_mb(fn: Callable[[], object], device: str) -> float | None:
    """Extra memory at the peak of one call of fn, in MiB (benchmarks/peak_memory.py)."""
    peak = peak_bytes(fn, device)
    return None if peak is None else peak / 2**20


# The clock of the timings: wall time, or with --clock cpu the process's CPU
# time (steadier on a shared machine; meaningful with --threads 1).
CLOCK: Callable[[], float] = time.perf_counter
# Pause before each timed call (--gap-ms): OpenMP workers (FAISS's, PyTorch's)
# keep spinning for a while after their call, and a method timed right after
# one would share the cores with them.
GAP_S = 0.0


def interleaved(
    methods: dict[str, Callable[[], object]], repeat: int, device: str
) -> dict[str, float]:
    """Median seconds of each method, timed round-robin after one warm-up call each."""
    for fn in methods.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeat):
        for name, fn in methods.items():
            _sync(device)
            if GAP_S:
                time.sleep(GAP_S)
            t0 = CLOCK()
            fn()
            _sync(device)
            times[name].append(CLOCK() - t0)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


# ---------------------------------------------------------------------------
# Baselines.
# ---------------------------------------------------------------------------


def vq_baselines(
    x: torch.Tensor, cb: torch.Tensor, notes: dict[str, str]
) -> dict[str, Callable[[], torch.Tensor]]:
    out: dict[str, Callable[[], torch.Tensor]] = {}
    xf, cf = x.float(), cb.float()
    if x.shape[0] * cb.shape[0] * 4 <= 6 * 2**30:
        out["cdist"] = lambda: torch.cdist(xf, cf).argmin(1)
    else:
        notes["cdist"] = "skipped: N x K matrix over 6 GiB"
    cn = (cf * cf).sum(1)
    out["matmul"] = lambda: (cn[None, :] - 2 * (xf @ cf.t())).argmin(1)
    if x.device.type == "cuda":
        out["torch_matmul_only"] = lambda: x @ cb.t()
    if x.device.type == "cpu":
        try:
            import faiss

            index = faiss.IndexFlatL2(cb.shape[1])
            index.add(cf.numpy())
            xn = xf.numpy()
            out["faiss"] = lambda: torch.from_numpy(index.search(xn, 1)[1][:, 0])

            def faiss_blas() -> torch.Tensor:
                old = faiss.cvar.distance_compute_blas_threshold
                faiss.cvar.distance_compute_blas_threshold = 1
                try:
                    return torch.from_numpy(index.search(xn, 1)[1][:, 0])
                finally:
                    faiss.cvar.distance_compute_blas_threshold = old

            out["faiss_blas"] = faiss_blas
        except ImportError:
            notes["faiss"] = "skipped: faiss not importable (pip install faiss-cpu)"
    try:
        from vector_quantize_pytorch import VectorQuantize

        vq = (
            VectorQuantize(dim=cb.shape[1], codebook_size=cb.shape[0], decay=0.99)
            .to(x.device)
            .eval()
        )
        vq._codebook.embed.data.copy_(cf[None])
        vq._codebook.initted.data.fill_(True)

        def vqp() -> torch.Tensor:
            with torch.no_grad():
                return vq(xf[None])[1][0]

        out["vqp"] = vqp
    except ImportError:
        notes["vqp"] = "skipped: vector_quantize_pytorch not importable"
    try:
        from transformers import EncodecConfig
        from transformers.models.encodec.modeling_encodec import EncodecEuclideanCodebook

        book = EncodecEuclideanCodebook(
            EncodecConfig(codebook_size=cb.shape[0], codebook_dim=cb.shape[1])
        )
        book.embed.copy_(cf)
        book = book.to(x.device)

        def hf() -> torch.Tensor:
            with torch.no_grad():
                return book.quantize(xf)

        out["hf"] = hf
    except ImportError:
        notes["hf"] = "skipped: transformers not importable"
    return out


def rvq_baselines(
    x: torch.Tensor, cbs: torch.Tensor, notes: dict[str, str]
) -> dict[str, Callable[[], torch.Tensor]]:
    out: dict[str, Callable[[], torch.Tensor]] = {}
    xf, cf = x.float(), cbs.float()
    q_total, k, d = cbs.shape
    cns = (cf * cf).sum(2)

    def loop() -> torch.Tensor:
        residual, codes = xf, []
        for q in range(q_total):
            code = (cns[q][None, :] - 2 * (residual @ cf[q].t())).argmin(1)
            residual = residual - cf[q][code]
            codes.append(code)
        return torch.stack(codes, 1)

    out["matmul_loop"] = loop
    if x.device.type == "cpu":
        try:
            import faiss

            indexes = []
            for q in range(q_total):
                index = faiss.IndexFlatL2(d)
                index.add(cf[q].numpy())
                indexes.append(index)

            def faiss_loop() -> torch.Tensor:
                residual, codes = xf.numpy().copy(), []
                for q, index in enumerate(indexes):
                    code = index.search(residual, 1)[1][:, 0]
                    residual -= cf[q].numpy()[code]
                    codes.append(torch.from_numpy(code))
                return torch.stack(codes, 1)

            out["faiss"] = faiss_loop
        except ImportError:
            notes["faiss"] = "skipped: faiss not importable (pip install faiss-cpu)"
    try:
        from vector_quantize_pytorch import ResidualVQ

        rvq = ResidualVQ(dim=d, num_quantizers=q_total, codebook_size=k).to(x.device).eval()
        for q, layer in enumerate(rvq.layers):
            layer._codebook.embed.data.copy_(cf[q][None])
            layer._codebook.initted.data.fill_(True)

        def vqp() -> torch.Tensor:
            with torch.no_grad():
                return rvq(xf[None])[1][0]

        out["vqp"] = vqp
    except ImportError:
        notes["vqp"] = "skipped: vector_quantize_pytorch not importable"
    try:
        from transformers import EncodecConfig
        from transformers.models.encodec.modeling_encodec import EncodecResidualVectorQuantizer

        # frame_rate 100 Hz, log2(K) bits per code: a bandwidth that selects all Q stages.
        bits = k.bit_length() - 1
        config = EncodecConfig(
            codebook_size=k,
            codebook_dim=d,
            hidden_size=d,
            sampling_rate=400,
            upsampling_ratios=[2, 2],
            target_bandwidths=[q_total * bits * 0.1 + 0.01],
        )
        quantizer = EncodecResidualVectorQuantizer(config)
        for q, layer in enumerate(quantizer.layers):
            layer.codebook.embed.copy_(cf[q])
        quantizer = quantizer.to(x.device)
        emb = xf.t()[None].contiguous()  # [1, D, T]

        def hf() -> torch.Tensor:
            with torch.no_grad():
                return quantizer.encode(emb)[:, 0].t()

        out["hf"] = hf
    except ImportError:
        notes["hf"] = "skipped: transformers not importable"
    return out


# ---------------------------------------------------------------------------
# Cases.
# ---------------------------------------------------------------------------


# Cases whose goal is FAISS's best CPU path (the faster of its default and its
# forced fused k=1 path), on AVX2 and on AVX-512 alike.
FAISS_BEST_CASES = {"tiny_d8", "tiny_d4", "large_d256", "large_d128", "janus_batch"}


def target_of(
    name: str, kind: str, d: int, speedups: dict[str, float], device: str
) -> dict[str, object] | None:
    """The speed goal of this case, and whether it was met."""
    if device == "cpu" and name in FAISS_BEST_CASES and "faiss" in speedups:
        best = min(speedups["faiss"], speedups.get("faiss_blas", speedups["faiss"]))
        return {"rule": "at least as fast as FAISS's best path", "met": best >= 1.0}
    if device == "cpu" and kind == "rvq" and d == 128 and "hf" in speedups:
        return {
            "rule": "RVQ EnCodec: >= 2.5x faster than HF quantizer",
            "met": speedups["hf"] >= 2.5,
        }
    if device == "cuda" and kind == "vq":
        rule: dict[str, object] = {}
        if "torch_matmul_only" in speedups:
            rule["within_1.2x_of_matmul"] = speedups["torch_matmul_only"] >= 1 / 1.2
        if d <= 8 and "cdist" in speedups:
            rule["3x_faster_than_cdist"] = speedups["cdist"] >= 3.0
        return {"rule": "GPU: within 1.2x of torch.matmul; tiny D >= 3x cdist+argmin", "met": rule}
    return None


def run_case(
    name: str, dtype_name: str, device: str, repeat: int, only: set[str] | None = None
) -> dict[str, object]:
    kind, n, k, d, q = CASES[name]
    dtype = DTYPES[dtype_name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g).to(device=device, dtype=dtype)
    notes: dict[str, str] = {}
    packed = None
    if kind == "vq":
        cb = torch.randn(k, d, generator=g).to(device=device, dtype=dtype)
        ours: Callable[[], torch.Tensor] = lambda: vq_search(x, cb)  # noqa: E731
        packed = PackedCodebook(cb)
        ours_packed: Callable[[], torch.Tensor] = lambda: packed.search(x)  # noqa: E731
        baselines = vq_baselines(x, cb, notes)
        flops = 2.0 * n * k * d
    else:
        cb = (torch.randn(q, k, d, generator=g) / torch.arange(1, q + 1)[:, None, None]).to(
            device=device, dtype=dtype
        )
        ours = lambda: rvq_encode(x, cb)  # noqa: E731
        packed = PackedCodebook(cb)
        ours_packed = lambda: packed.rvq_encode(x)  # noqa: E731
        baselines = rvq_baselines(x, cb, notes)
        flops = 2.0 * n * k * d * q
    if only is not None:
        baselines = {b: fn for b, fn in baselines.items() if b in only}
    methods = {"ours": ours, "ours_packed": ours_packed, **baselines}
    log(f"{name}: N={n} K={k} D={d} Q={q} {dtype_name} {device}: {', '.join(methods)}")
    want = ours()
    medians = interleaved(methods, repeat, device)
    result: dict[str, object] = {
        "case": name,
        "op": "vq_search" if kind == "vq" else "rvq_encode",
        "shape": {"N": n, "K": k, "D": d, **({"Q": q} if q else {})},
        "dtype": dtype_name,
        "device": device,
        "threads": torch.get_num_threads(),
        "ours_ms": round(medians["ours"] * 1e3, 3),
        "ours_peak_mb": _round(peak_mb(ours, device)),
        "ours_gflops": round(flops / medians["ours"] / 1e9, 1),
        "ours_packed_ms": round(medians["ours_packed"] * 1e3, 3),
        "ours_packed_agree": bool(torch.equal(ours_packed(), want)),
        "baselines": {},
    }
    speedups = {}
    for bname in baselines:
        got = baselines[bname]()
        agree = None
        if bname != "torch_matmul_only":
            agree = round(
                float((got.to(want.device).reshape(want.shape) == want).float().mean()), 6
            )
        speedups[bname] = medians[bname] / medians["ours"]
        peak = peak_mb(baselines[bname], device)
        result["baselines"][bname] = {
            "ms": round(medians[bname] * 1e3, 3),
            "peak_mb": _round(peak),
            "speedup": round(speedups[bname], 2),
            "speedup_packed": round(medians[bname] / medians["ours_packed"], 2),
            "agree": agree,
        }
    faiss_ms = [result["baselines"][b]["ms"] for b in ("faiss", "faiss_blas") if b in result["baselines"]]
    if faiss_ms:
        import faiss

        # FAISS_OPT_LEVEL=avx2 makes FAISS load its AVX2 build (its default is the best one)
        result["faiss"] = {"version": faiss.__version__, "opt_level": os.environ.get("FAISS_OPT_LEVEL") or "auto"}
    if faiss_ms and kind == "vq":
        result["faiss_best_ms"] = min(faiss_ms)
        result["speedup_vs_faiss_best"] = round(min(faiss_ms) / result["ours_ms"], 2)
    if notes:
        result["notes"] = notes
    target = target_of(name, kind, d, speedups, device)
    if target is not None:
        result["target"] = target
    return result


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cases",
        nargs="+",
        default=DEFAULT_CASES,
        choices=list(CASES),
        metavar="CASE",
        help=f"cases to run (default: all but janus_batch): {', '.join(CASES)}",
    )
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds per method (median)")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="wall time (default) or the process's CPU time (use with --threads 1 on a busy machine)",
    )
    parser.add_argument(
        "--gap-ms",
        type=float,
        default=None,
        help="pause before each timed call, so no method runs while the previous one's OpenMP "
        "threads still spin (default: 10 on CPU, 0 on CUDA; 0 times them back to back)",
    )
    parser.add_argument(
        "--baselines",
        nargs="+",
        default=None,
        metavar="NAME",
        help="run only these baselines (e.g. faiss faiss_blas; default: all that import)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        try:
            import faiss

            faiss.omp_set_num_threads(args.threads)
        except ImportError:
            pass
    global CLOCK, GAP_S
    # libgomp's workers spin for about 300k pause instructions after a parallel
    # region (GOMP_SPINCOUNT), about 5 ms on the Zen 4 we measured: a method
    # timed right after FAISS (its own libgomp) or a PyTorch op shared the
    # cores with them (vq_search 7.0 ms after a 10 ms pause, 10.4 ms after 2 ms,
    # about 12 ms back to back). A 10 ms pause starts every method from the
    # same quiet machine.
    if args.gap_ms is None:
        args.gap_ms = 10.0 if args.device == "cpu" else 0.0
    GAP_S = args.gap_ms / 1e3
    if args.clock == "cpu":
        if args.device != "cpu":
            parser.error("--clock cpu: CPU time only measures CPU work")
        CLOCK = time.process_time
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    info = machine()  # after --threads, so it records the threads the cases ran with
    for name in args.cases:
        only = None if args.baselines is None else set(args.baselines)
        result = run_case(name, args.dtype, args.device, args.repeat, only)
        print(json.dumps({**result, "clock": args.clock, "gap_ms": args.gap_ms, "machine": info}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
