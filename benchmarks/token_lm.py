"""Benchmark Track B trainable rows against dense resize_token_embeddings and PEFT trainable tokens.

Prints one JSON object per case. Two kinds of case:

``kernel``: the embedding backward alone, ``lumo_uti.ops.rowmask_embedding_backward``
  ([new_rows, D] gradient) vs ``aten.embedding_dense_backward`` (the full
  [vocab, D] gradient that F.embedding produces), tokens per step T.

``step``: one training step of the embedding + LM head (untied) on T tokens:
  ids -> embedding -> LM head -> cross entropy -> backward -> AdamW step.
  Variants, timed interleaved (random order per rep) in the same process:

  lumo    TrainableRowsEmbedding / TrainableRowsLMHead: frozen base tables,
          trainable [new_rows, D] tables (what lumo_model.token_lm.expand installs)
  dense   nn.Embedding / nn.Linear of the resized vocabulary, all trainable
          (what resize_token_embeddings + ordinary training does)
  peft    PEFT TrainableTokensLayer (the layer behind trainable_token_indices)
          on the resized tables, wrapping embedding and head; skipped with a
          note when peft is not importable (it is a benchmark-only package)

  For each variant: median step time, bytes of trainable parameters, of
  gradients and of optimizer state after a step (counted from the tensors),
  and peak memory of a step (CUDA: max_memory_allocated above the memory before
  the step; CPU: peak RSS of a fresh process running only that variant, during
  its second step, above its RSS before the variant was built: the variant's
  own tables, grads and optimizer state plus the step's temporaries).

Usage: python benchmarks/token_lm.py [--quick] [--dims 1024] [--tokens 512,2048] [--kernel-dims 1024,4096]
       [--reps N] [--device cpu|cuda] [--no-peak]
Sizes default to what fits a 24 GiB CPU machine; the GPU check runs
--dims 1024,4096 --tokens 8192 (Qwen3-8B: hidden 4096, 8k tokens per step).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from lumo_model.token_lm.layers import TrainableRowsEmbedding, TrainableRowsLMHead
from lumo_uti.ops import backends, rowmask_embedding_backward

BASE_ROWS = 151936
NEW_ROWS = 24576 + 384  # the 24576 new rows, padded to a multiple of 128 like the token space


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_interleaved(fns: dict[str, Callable[[], Any]], reps: int, device: str) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(reps):
        order = list(fns)
        random.shuffle(order)
        for name in order:
            _sync(device)
            t0 = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


# ---------------------------------------------------------------------------
# Variants of the embedding + head step
# ---------------------------------------------------------------------------


class Step:
    """One variant: modules, optimizer and a step function on fixed (ids, targets)."""

    def __init__(self, name: str, emb: nn.Module, head: nn.Module, ids: torch.Tensor, targets: torch.Tensor):
        self.name = name
        self.emb, self.head = emb, head
        self.params = [p for m in (emb, head) for p in m.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=1e-4)
        self.ids, self.targets = ids, targets

    def __call__(self) -> float:
        logits = self.head(self.emb(self.ids))
        loss = F.cross_entropy(logits.float(), self.targets)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=False)  # keep grads allocated, as a training loop does
        return loss.item()

    def bytes(self) -> dict[str, int]:
        def size(t: torch.Tensor) -> int:
            return t.numel() * t.element_size()

        grads = sum(size(p.grad) for p in self.params if p.grad is not None)
        state = sum(size(t) for s in self.opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim())
        return {"trainable_param_bytes": sum(size(p) for p in self.params), "grad_bytes": grads, "optimizer_state_bytes": state}


def _tables(dim: int, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)
    total = BASE_ROWS + NEW_ROWS
    e = (torch.randn(total, dim, generator=g) * 0.02).to(device, dtype)
    h = (torch.randn(total, dim, generator=g) * 0.02).to(device, dtype)
    return e, h


def build(name: str, dim: int, tokens: int, device: str, dtype: torch.dtype, shared: tuple[torch.Tensor, torch.Tensor] | None = None) -> Step | None:
    e, h = shared if shared is not None else _tables(dim, device, dtype)
    total = BASE_ROWS + NEW_ROWS
    g = torch.Generator(device="cpu").manual_seed(1)
    # Half the tokens are new IDs (image/audio codes), as in an interleaved batch.
    ids = torch.where(torch.rand(tokens, generator=g) < 0.5, torch.randint(0, BASE_ROWS, (tokens,), generator=g),
                      torch.randint(BASE_ROWS, total, (tokens,), generator=g)).to(device)
    targets = torch.roll(ids, -1)
    if name == "lumo":
        new_e = nn.Parameter(e[BASE_ROWS:].clone())
        new_h = nn.Parameter(h[BASE_ROWS:].clone())
        # The base tables are views of the shared full tables: frozen, never copied.
        emb = TrainableRowsEmbedding(nn.Parameter(e[:BASE_ROWS], requires_grad=False), new_e)
        head = TrainableRowsLMHead(nn.Parameter(h[:BASE_ROWS], requires_grad=False), new_h)
        return Step(name, emb, head, ids, targets)
    if name == "dense":
        emb = nn.Embedding(total, dim, device="meta")
        emb.weight = nn.Parameter(e.clone())
        head = nn.Linear(dim, total, bias=False, device="meta")
        head.weight = nn.Parameter(h.clone())
        return Step(name, emb, head, ids, targets)
    if name == "peft":
        try:
            from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
        except ImportError:
            return None
        base_e = nn.Embedding(total, dim, device="meta")
        base_e.weight = nn.Parameter(e, requires_grad=False)
        base_h = nn.Linear(dim, total, bias=False, device="meta")
        base_h.weight = nn.Parameter(h, requires_grad=False)
        indices = list(range(BASE_ROWS, total))
        emb = TrainableTokensLayer(base_e, "default", token_indices=indices)
        emb.update_layer("default", token_indices=indices)
        head = TrainableTokensLayer(base_h, "default", token_indices=indices)
        head.update_layer("default", token_indices=indices)
        for m in (emb, head):
            m.base_layer.weight.requires_grad_(False)
        return Step(name, emb, head, ids, targets)
    raise ValueError(f"unknown variant {name!r}")


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_cpu(name: str, dim: int, tokens: int, dtype: str) -> int | None:
    """Peak RSS (bytes) of a variant's second step above the RSS before the variant was built.

    Run in a fresh process per variant; the shared base tables are built first
    and not counted. The peak is reset by writing 5 to /proc/self/clear_refs
    (Linux), so it covers the step, not the set-up.
    """
    tables = _tables(dim, "cpu", getattr(torch, dtype))
    before = _rss("VmRSS")
    step = build(name, dim, tokens, "cpu", getattr(torch, dtype), tables)
    if step is None:
        return None
    step()  # first step allocates grads and optimizer state
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step()
    return _rss("VmHWM") - before


def _peak_subprocess(name: str, dim: int, tokens: int, dtype: str) -> int | None:
    code = (
        "import sys, json; sys.path.insert(0, 'benchmarks'); import token_lm as b;"
        f"print(json.dumps(b.peak_cpu({name!r}, {dim}, {tokens}, {dtype!r})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def step_case(dim: int, tokens: int, device: str, dtype: torch.dtype, reps: int, peak: bool) -> dict[str, Any]:
    shared = _tables(dim, device, dtype)
    steps = {n: build(n, dim, tokens, device, dtype, shared) for n in ("lumo", "dense", "peft")}
    notes = []
    if steps["peft"] is None:
        notes.append("peft not importable: PEFT baseline skipped (pip install peft to include it)")
    steps = {k: v for k, v in steps.items() if v is not None}
    med = _time_interleaved(dict(steps), reps, device)
    out: dict[str, Any] = {
        "case": "step", "vocab": BASE_ROWS + NEW_ROWS, "new_rows": NEW_ROWS, "hidden": dim, "tokens": tokens,
        "dtype": str(dtype).removeprefix("torch."), "device": device, "reps": reps,
        "median_ms": med, "bytes": {k: s.bytes() for k, s in steps.items()},
        "speedup_vs": {k: med[k] / med["lumo"] for k in med if k != "lumo"},
    }
    if peak:
        if device == "cuda":
            peaks = {}
            for k, s in steps.items():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                s()
                torch.cuda.synchronize()
                peaks[k] = torch.cuda.max_memory_allocated() - base
            out["peak_step_bytes"] = peaks
        else:
            del steps, shared
            out["peak_rss_bytes"] = {k: _peak_subprocess(k, dim, tokens, str(dtype).removeprefix("torch.")) for k in med}
    if notes:
        out["notes"] = notes
    return out


def kernel_case(dim: int, tokens: int, device: str, dtype: torch.dtype, reps: int) -> dict[str, Any]:
    total = BASE_ROWS + NEW_ROWS
    g = torch.Generator().manual_seed(2)
    ids = torch.where(torch.rand(tokens, generator=g) < 0.5, torch.randint(0, BASE_ROWS, (tokens,), generator=g),
                      torch.randint(BASE_ROWS, total, (tokens,), generator=g)).to(device)
    grad = torch.randn(tokens, dim, generator=g).to(device, dtype)
    fns = {
        "rowmask": lambda: rowmask_embedding_backward(ids, grad, BASE_ROWS, NEW_ROWS),
        "dense_embedding_backward": lambda: torch.ops.aten.embedding_dense_backward(grad, ids, total, -1, False)[BASE_ROWS:],
    }
    med = _time_interleaved(fns, reps, device)
    return {
        "case": "kernel", "vocab": total, "new_rows": NEW_ROWS, "hidden": dim, "tokens": tokens,
        "dtype": str(dtype).removeprefix("torch."), "device": device, "reps": reps, "median_ms": med,
        "speedup_vs_dense": med["dense_embedding_backward"] / med["rowmask"],
        "output_bytes": {"rowmask": NEW_ROWS * dim * 4, "dense_embedding_backward": total * dim * grad.element_size()},
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one small case of each kind")
    p.add_argument("--dims", default="1024", help="hidden sizes, comma-separated (default 1024)")
    p.add_argument("--tokens", default="512,2048", help="tokens per step, comma-separated (default 512,2048)")
    p.add_argument("--kernel-tokens", default="8192", help="tokens for the kernel cases (default 8192)")
    p.add_argument("--kernel-dims", default="1024,4096", help="hidden sizes of the kernel cases (default 1024,4096)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--no-peak", action="store_true", help="skip the peak-memory measurement")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    dims = [int(x) for x in args.dims.split(",")]
    tokens = [int(x) for x in args.tokens.split(",")]
    ktokens = [int(x) for x in args.kernel_tokens.split(",")]
    kdims = [int(x) for x in args.kernel_dims.split(",")]
    if args.quick:
        dims, kdims, tokens, ktokens, args.reps = [256], [256], [256], [2048], 3
    print(json.dumps({"backends": {k: v for k, v in backends().items() if k != "build_info"}, "threads": torch.get_num_threads()}), flush=True)
    for d in kdims:
        for t in ktokens:
            print(json.dumps(kernel_case(d, t, args.device, dtype, max(args.reps, 5))), flush=True)
    for d in dims:
        for t in tokens:
            print(json.dumps(step_case(d, t, args.device, dtype, args.reps, not args.no_peak)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
