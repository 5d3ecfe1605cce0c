"""Throughput and memory of ``lumo tokenize-dataset`` (the local engine) on this machine.

Cases (one JSON object each on stdout; CPU model, ISA, cores and threads in every one):

  text     ~``--text-mb`` MB of text documents (JSONL). Ours: ``tokenize_dataset`` with
           ``--workers`` processes, shards written. Baseline: bare ``tiktoken`` (the same
           Qwen3 ranks, ``encode_ordinary``) over the same texts in the same number of
           processes. Interleaved repeats, medians; ratio = our documents/s over tiktoken's.
  images   ``--images`` documents of a caption and a 256 x 256 PNG on the default bundle:
           1 worker vs 2 workers (interleaved), images/s per worker, the 2-worker speed-up,
           and what starting the 2 workers costs (a 2-document run), apart.
  gpu      (``--cases gpu``, on a CUDA machine) images/s with ``--device cuda`` for the default
           image codec and a Janus-Pro-shaped VQ (random weights), with the GPU's utilisation
           sampled from nvidia-smi.
  memory   peak RSS of a fresh process running ``tokenize_dataset`` (1 worker, in process)
           on N and on 10 N mixed documents (text + image codes): the ratio should be ~1.

    python benchmarks/tokenize_dataset.py [--cases text images memory] [--repeats 3]
    python benchmarks/tokenize_dataset.py --cases gpu --images 256        # benchmarks/gpu_check.sh
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402

WORDS = ("the of and a to in is was for on that with as by at from his an were are which this be "
         "photograph river mountain sound voice caption image audio token model data train quickly "
         "Zürich naïve 東京 42 3.14 #tag https://example.org/x?y=1 don't it's").split()


def _text(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n_words))


def _tiktoken_chunk(texts: list[str]) -> int:
    from lumo_uti.text import qwen3_tokenizer

    enc = qwen3_tokenizer()._enc  # the bare tiktoken Encoding of the Qwen3 ranks (loaded once per process)
    return sum(len(enc.encode_ordinary(t)) for t in texts)


def _tiktoken_baseline(texts: list[str], workers: int) -> float:
    """Seconds to encode ``texts``; one process: the Encoding is loaded before the clock starts, as
    ours has its bundle loaded (steady state); several: both sides pay their workers' start-up."""
    if workers == 1:
        _tiktoken_chunk(texts[:1])
    start = time.perf_counter()
    if workers == 1:
        _tiktoken_chunk(texts)
    else:
        chunks = [texts[i::workers] for i in range(workers)]
        with multiprocessing.get_context("forkserver").Pool(workers) as pool:
            pool.map(_tiktoken_chunk, chunks)
    return time.perf_counter() - start


def _ours(corpus: Path, out: Path, workers: int, **kw) -> tuple[float, dict]:
    import lumo_uti
    from lumo_uti.datasets import tokenize_dataset

    lumo_uti.load().encode("warm up")  # the embedded bundle, loaded once per process (workers load their own)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    manifest = tokenize_dataset(corpus, out=out, workers=workers, progress=False, **kw)
    return time.perf_counter() - start, manifest


def case_text(args, tmp: Path) -> dict:
    rng = np.random.default_rng(0)
    texts, size = [], 0
    while size < args.text_mb * 1e6:
        t = _text(rng, int(rng.integers(100, 600)))
        texts.append(t)
        size += len(t.encode())
    corpus = tmp / "text.jsonl"
    corpus.write_text("".join(json.dumps([t]) + "\n" for t in texts))
    ours, base = [], []
    for _ in range(args.repeats):  # interleaved
        seconds, manifest = _ours(corpus, tmp / "text_out", args.workers, shard_docs=5000)
        ours.append(seconds)
        base.append(_tiktoken_baseline(texts, args.workers))
    o, b = statistics.median(ours), statistics.median(base)
    return {"case": "text", "documents": len(texts), "mb": round(size / 1e6, 1), "tokens": manifest["totals"]["tokens"],
            "workers": args.workers, "ours_s": round(o, 3), "tiktoken_s": round(b, 3),
            "ours_docs_per_s": round(len(texts) / o, 1), "tiktoken_docs_per_s": round(len(texts) / b, 1),
            "ours_tokens_per_s": round(manifest["totals"]["tokens"] / o), "ratio_vs_tiktoken": round(b / o, 3),
            "goal": ">= 0.8"}


def case_images(args, tmp: Path) -> dict:
    from PIL import Image

    rng = np.random.default_rng(1)
    media = tmp / "img"
    media.mkdir(exist_ok=True)
    lines = []
    for i in range(args.images):
        yy, xx = np.mgrid[0:256, 0:256]
        phase = rng.uniform(0, 6.28, 3)
        freq = rng.uniform(0.01, 0.1, 3)
        pixels = np.stack([127 + 120 * np.sin(freq[c] * (xx + (c + 1) * yy) + phase[c]) for c in range(3)], -1)
        pixels += rng.normal(0, 8, pixels.shape)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(media / f"{i}.png")
        lines.append(json.dumps([f"picture {i}", {"image": f"img/{i}.png"}]))
    corpus = tmp / "images.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    one, two, start = [], [], []
    if args.repeats == 0:  # only the corpus (for the gpu case)
        return {}
    tiny = tmp / "images_tiny.jsonl"  # 2 documents: what starting 2 workers costs
    tiny.write_text("\n".join(lines[:2]) + "\n")
    for _ in range(args.repeats):
        one.append(_ours(corpus, tmp / "img_out1", 1, shard_docs=64)[0])
        two.append(_ours(corpus, tmp / "img_out2", 2, shard_docs=64)[0])
        start.append(_ours(tiny, tmp / "img_tiny", 2)[0])
    a, b, c = statistics.median(one), statistics.median(two), statistics.median(start)
    same = all((tmp / "img_out1" / p.name).read_bytes() == p.read_bytes() for p in (tmp / "img_out2").glob("shard_*"))
    return {"case": "images_256", "documents": args.images, "w1_s": round(a, 3), "w2_s": round(b, 3),
            "images_per_s_w1": round(args.images / a, 2), "images_per_s_w2": round(args.images / b, 2),
            "images_per_s_per_worker_w2": round(args.images / b / 2, 2), "speedup_w2_vs_w1": round(a / b, 3),
            "w2_startup_s": round(c, 3), "speedup_w2_vs_w1_after_startup": round(a / max(b - c, 1e-9), 3),
            "same_bytes": same, "goal": ">= 1.7"}


_MEMORY_CHILD = """
import json, resource, sys
from lumo_uti.datasets import tokenize_dataset
tokenize_dataset(sys.argv[1], out=sys.argv[2], shard_docs=2000, progress=False)
print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def case_memory(args, tmp: Path) -> dict:
    rng = np.random.default_rng(2)
    peaks = {}
    for scale in (1, 10):
        n = args.memory_docs * scale
        corpus = tmp / f"mem_{scale}.jsonl"
        with open(corpus, "w") as f:
            for i in range(n):
                grid = rng.integers(0, 16384, (8, 8)).tolist()
                f.write(json.dumps([_text(rng, 60), {"image_codes": grid}, _text(rng, 20)]) + "\n")
        shutil.rmtree(tmp / "mem_out", ignore_errors=True)
        run = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(corpus), str(tmp / "mem_out")],
                             capture_output=True, text=True, check=True)
        peaks[n] = json.loads(run.stdout.strip().splitlines()[-1])["maxrss_kb"] / 1024
    (small, a), (big, b) = sorted(peaks.items())
    return {"case": "memory", "documents": [small, big], "peak_rss_mb": [round(a, 1), round(b, 1)],
            "ratio_10x": round(b / a, 3), "goal": "<= 1.10"}


def _gpu_utilisation_sampler():
    """Start sampling ``nvidia-smi`` GPU utilisation every 0.2 s; returns a stop() giving (mean, max) %."""
    import threading

    samples, stop = [], threading.Event()

    def loop():
        while not stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]],
                                     capture_output=True, text=True, timeout=5).stdout.strip()
                samples.append(float(out.splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return
            stop.wait(0.2)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()

    def finish():
        stop.set()
        thread.join()
        return (round(statistics.mean(samples), 1), max(samples)) if samples else (None, None)

    return finish


def _janus_bundle(root: Path) -> Path:
    """A bundle whose image codec is a Janus-Pro-shaped VQ (HF JanusVQVAE default config, 24 x 24 codes, random weights)."""
    import torch
    import transformers as hf

    import lumo_uti

    config = hf.JanusVQVAEConfig()
    config.num_patches = 24
    torch.manual_seed(0)
    hf.JanusVQVAE(config).eval().save_pretrained(root / "janus_model", safe_serialization=True)
    return lumo_uti.create_bundle(root / "janus_bundle", image=f"hf-janus:{root / 'janus_model'}")


def case_gpu(args, tmp: Path) -> list[dict]:
    """Images/s with the codecs on the GPU (default bundle, Janus-shaped VQ) and the GPU's utilisation."""
    import torch

    import lumo_uti
    from lumo_uti.datasets import tokenize_dataset

    if not torch.cuda.is_available():
        return [{"case": "gpu", "skipped": "no CUDA device"}]
    if not (tmp / "images.jsonl").is_file():
        case_images(argparse.Namespace(**{**vars(args), "repeats": 0}), tmp)
    results = []
    for name, bundle in (("default", None), ("janus_384", _janus_bundle(tmp))):
        uti = lumo_uti.load(bundle, device="cuda")
        for device_run in range(2):  # the first run warms up CUDA and the kernels
            shutil.rmtree(tmp / "gpu_out", ignore_errors=True)
            finish = _gpu_utilisation_sampler()
            start = time.perf_counter()
            tokenize_dataset(tmp / "images.jsonl", uti, out=tmp / "gpu_out", device="cuda", batch_size=args.gpu_batch,
                             shard_docs=64, progress=False)
            seconds = time.perf_counter() - start
            mean_util, max_util = finish()
        results.append({"case": f"gpu_images_{name}", "documents": args.images, "batch_size": args.gpu_batch,
                        "seconds": round(seconds, 3), "images_per_s": round(args.images / seconds, 2),
                        "gpu_util_mean_pct": mean_util, "gpu_util_max_pct": max_util,
                        "gpu": torch.cuda.get_device_name()})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["text", "images", "memory"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="text case: processes for ours and for tiktoken")
    parser.add_argument("--text-mb", type=float, default=20.0)
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--memory-docs", type=int, default=10_000)
    parser.add_argument("--gpu-batch", type=int, default=64, help="gpu case: documents per encode call")
    args = parser.parse_args()
    info = machine()
    cases = {"text": case_text, "images": case_images, "memory": case_memory, "gpu": case_gpu}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases:
            results = cases[name](args, Path(tmp))
            for result in results if isinstance(results, list) else [results]:
                print(json.dumps({**result, "machine": info}), flush=True)


if __name__ == "__main__":
    main()
