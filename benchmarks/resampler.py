"""Benchmark: the fused resampler attention vs SDPA on concatenated keys, and the connector step.

Cases: vision features [B, 729, 1152], 64 latents; an Idefics2-like setting
(16 query heads x 96, 4 KV heads) and a lighter one (8 x 64, 2 KV heads).
For each case, forward and forward+backward of
``lumo_uti.ops.resampler_attention`` against what users would write:
``torch.cat`` of context and latent keys/values, then
``F.scaled_dot_product_attention(..., enable_gqa=True)`` with a key-padding
mask; timed in the same process, interleaved, medians. Memory: the bytes of
the concatenated K/V the baseline builds (ours builds none), and the measured
peak extra memory of one call of each (CUDA: the allocator's peak; CPU: the
peak resident set, see benchmarks/peak_memory.py). Finally the whole connector step
(Connector(1152, text_dim) forward+backward, fused vs reference attention).

One JSON object per line. Run on a quiet machine, under the bench lock::

    flock /tmp/lumo_bench.lock python benchmarks/resampler.py --device cpu --batch 1,4
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from machine import machine
from peak_memory import peak_bytes

from lumo_uti.ops import backends, resampler_attention

SETTINGS = {"idefics2": (16, 4, 96), "light": (8, 2, 64)}  # (Hq, Hkv, head_dim)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device):
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def interleaved(fns: dict, reps: int, device) -> dict:
    for fn in fns.values():  # warm-up
        fn()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            times[k].append(_time(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}


def sdpa_concat(q, kc, vc, kl, vl, mask):
    k = torch.cat([kc, kl], 2)
    v = torch.cat([vc, vl], 2)
    keep = torch.cat([mask, mask.new_ones(mask.shape[0], kl.shape[2])], 1)[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, enable_gqa=True)


def attention_cases(device, dtype, batches, reps, N=729, L=64):
    for name, (Hq, Hkv, D) in SETTINGS.items():
        for B in batches:
            g = torch.Generator(device="cpu").manual_seed(0)
            mk = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
            q, kc, vc, kl, vl = mk(B, Hq, L, D), mk(B, Hkv, N, D), mk(B, Hkv, N, D), mk(B, Hkv, L, D), mk(B, Hkv, L, D)
            mask = torch.ones(B, N, dtype=torch.bool, device=device)
            mask[B // 2:, N - 100:] = False  # some samples padded
            ins = [x.requires_grad_(True) for x in (q, kc, vc, kl, vl)]
            go = torch.randn_like(q)

            def fwd(f):
                def run():
                    with torch.no_grad():
                        f(*ins, mask)
                return run

            def fwd_bwd(f):
                def run():
                    out = f(*ins, mask)
                    torch.autograd.grad(out, ins, go)
                return run

            concat_bytes = 2 * B * Hkv * (N + L) * D * q.element_size()
            for mode, wrap in (("forward", fwd), ("forward+backward", fwd_bwd)):
                med = interleaved({"lumo": wrap(resampler_attention), "sdpa_concat": wrap(sdpa_concat)}, reps, device)
                yield {
                    "bench": "resampler_attention", "setting": name, "mode": mode,
                    "shape": {"B": B, "Hq": Hq, "Hkv": Hkv, "L": L, "N": N, "D": D},
                    "dtype": str(dtype).removeprefix("torch."), "device": str(device),
                    "lumo_s": med["lumo"], "sdpa_concat_s": med["sdpa_concat"],
                    "speedup_vs_sdpa": med["sdpa_concat"] / med["lumo"],
                    "concat_kv_bytes_avoided": concat_bytes,
                    "peak_bytes": {"lumo": peak_bytes(wrap(resampler_attention), device),
                                   "sdpa_concat": peak_bytes(wrap(sdpa_concat), device)},
                }


def connector_cases(device, dtype, batches, reps, text_dim, N=729):
    from lumo_model.vlm import Connector

    for B in batches:
        torch.manual_seed(0)
        conn = Connector(1152, text_dim, num_latents=64, depth=3, heads=16, kv_heads=4, head_dim=96).to(device, dtype)
        feats = torch.randn(B, N, 1152, device=device, dtype=dtype)
        mask = torch.ones(B, N, dtype=torch.bool, device=device)

        def step(impl):
            def run():
                conn.resampler.set_attn_impl(impl)
                conn.zero_grad(set_to_none=True)
                conn(feats, mask).float().square().mean().backward()
            return run

        med = interleaved({"fused": step("fused"), "reference": step("reference")}, reps, device)
        yield {
            "bench": "connector_step", "shape": {"B": B, "N": N, "vision_dim": 1152, "text_dim": text_dim,
                                                 "latents": 64, "depth": 3, "heads": "16x96, 4 kv"},
            "dtype": str(dtype).removeprefix("torch."), "device": str(device),
            "fused_s": med["fused"], "reference_s": med["reference"], "speedup_vs_reference": med["reference"] / med["fused"],
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--batch", default="1,4", help="comma-separated batch sizes (the issue: 1..32)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--text-dim", type=int, default=4096)
    ap.add_argument("--skip-connector", action="store_true")
    args = ap.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    batches = [int(b) for b in args.batch.split(",")]
    be = backends()
    info = machine()
    print(json.dumps({"bench": "info", "device": str(device), "threads": torch.get_num_threads(),
                      "cpu_kernel": be["cpu"], "cuda_kernel": be["cuda"], "reference_forced": be["reference_forced"],
                      "machine": info}),
          flush=True)
    for row in attention_cases(device, dtype, batches, args.reps):
        print(json.dumps({**row, "machine": info}), flush=True)
    if not args.skip_connector:
        for row in connector_cases(device, dtype, batches, args.reps, args.text_dim):
            print(json.dumps({**row, "machine": info}), flush=True)


if __name__ == "__main__":
    main()
