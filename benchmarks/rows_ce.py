"""Rows-only linear cross-entropy: fused op vs the materialised path (and GPU anchors), loss + backward.

Each configuration runs the methods interleaved in one process (``--repeats``
rounds) and prints one JSON line: median seconds per method, peak extra
memory of one call (``peak_memory.py``), the ratios fused / materialised, the
relative loss difference, and the machine (``machine.py``). The materialised
path is today's trainer loss: ``F.linear`` over the base rows and the new
rows, ``cat``, ``F.cross_entropy``, backward with the base rows frozen. On
CUDA, ``liger-kernel``'s fused linear cross-entropy and ``cut-cross-entropy``
run too when importable (over the concatenated head: they also compute the
gradient of every row, so they bound the work from above).

``--step`` measures a whole ``lumo tokenlm train`` step instead (a one-layer
Qwen3 of width ``--dim`` over the real vocabulary, ``RowsLossModel`` forward +
backward), fused vs materialised: peak RSS rise and loss.

    python benchmarks/rows_ce.py --tokens 2048 8192
    LUMO_ROWS_CE_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
        python benchmarks/rows_ce.py --tokens 2048

(the AVX2 run forces PyTorch's ATen, MKL and oneDNN kernels to AVX2 too, so
the materialised baseline runs on the same ISA; ``machine.isa_forced`` records it).
``--isas best avx2`` does both in one command: one child process per ISA
("best": nothing forced; "avx2": the four variables above), each row with its
``isa`` and ``isa_forced`` (``benchmarks/report.py``'s ``rows_ce`` suite):

    python benchmarks/rows_ce.py --tokens 2048 --repeats 2 --isas best avx2
    python benchmarks/rows_ce.py --device cuda --dim 4096 --tokens 8192 --dtype bfloat16
    python benchmarks/rows_ce.py --step --tokens 2048
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402
from peak_memory import peak_bytes  # noqa: E402

from lumo_uti.ops import rows_linear_cross_entropy  # noqa: E402

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _methods(h, base, new, targets, masked, device) -> dict[str, Callable[[], float]]:
    def fused() -> float:
        hh = h.detach().requires_grad_(True)
        ww = new.detach().requires_grad_(True)
        loss = rows_linear_cross_entropy(hh, base, ww, targets, masked_columns=masked)
        loss.backward()
        return float(loss.detach())

    def materialized() -> float:
        hh = h.detach().requires_grad_(True)
        ww = new.detach().requires_grad_(True)
        logits = torch.cat([F.linear(hh, base), F.linear(hh, ww)], dim=-1).float()
        for a, b in masked:
            logits[:, a:b] = float("-inf")
        loss = F.cross_entropy(logits, targets)
        del logits
        loss.backward()
        return float(loss.detach())

    methods = {"fused": fused, "materialized": materialized}
    if device.startswith("cuda"):
        head = torch.cat([base, new])
        try:
            from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

            def liger() -> float:
                hh = h.detach().requires_grad_(True)
                ww = head.detach().requires_grad_(True)
                loss = LigerFusedLinearCrossEntropyFunction.apply(hh, ww, targets)
                loss = loss[0] if isinstance(loss, tuple) else loss
                loss.backward()
                return float(loss.detach())

            methods["liger"] = liger
        except ImportError:
            pass
        try:
            from cut_cross_entropy import linear_cross_entropy

            def cce() -> float:
                hh = h.detach().requires_grad_(True)
                ww = head.detach().requires_grad_(True)
                loss = linear_cross_entropy(hh, ww, targets)
                loss.backward()
                return float(loss.detach())

            methods["cut_cross_entropy"] = cce
        except ImportError:
            pass
    return methods


def bench_op(args: argparse.Namespace, tokens: int) -> dict[str, object]:
    device, dtype = args.device, _DTYPES[args.dtype]
    g = torch.Generator().manual_seed(0)
    r, n, d = args.base_rows, args.new_rows, args.dim
    h = (torch.randn(tokens, d, generator=g)).to(device, dtype)
    base = (torch.randn(r, d, generator=g) * d**-0.5).to(device, dtype)
    new = (torch.randn(n, d, generator=g) * d**-0.5).to(device, dtype)
    targets = torch.randint(0, r + n, (tokens,), generator=g).to(device)
    masked = [(r - 267, r)] if r > 267 else []  # Qwen3's padding rows
    if masked:
        targets[(targets >= masked[0][0]) & (targets < masked[0][1])] = 0
    # One untimed call of each on a few tokens: first-call costs (op registration, lazy module loads).
    for fn in _methods(h[:8], base, new, targets[:8], masked, device).values():
        fn()
    methods = _methods(h, base, new, targets, masked, device)
    times: dict[str, list[float]] = {k: [] for k in methods}
    losses: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            _sync(device)
            t0 = time.perf_counter()
            losses[name] = fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    peaks = {name: peak_bytes(fn, device) for name, fn in methods.items()} if not args.no_memory else {}
    med = {k: statistics.median(v) for k, v in times.items()}
    rec: dict[str, object] = {
        "bench": "rows_ce", "device": device, "dtype": args.dtype, "tokens": tokens, "dim": d,
        "base_rows": r, "new_rows": n, "repeats": args.repeats,
        "seconds": med, "seconds_all": times, "peak_extra_bytes": peaks,
        "time_ratio_vs_materialized": {k: med[k] / med["materialized"] for k in med},
        "loss": losses,
        "loss_rel_diff": abs(losses["fused"] - losses["materialized"]) / abs(losses["materialized"]),
        "rows_ce_isa": os.environ.get("LUMO_ROWS_CE_ISA") or "auto",
        "machine": machine(),
    }
    rec["isa_forced"] = rec["machine"]["isa_forced"]
    if peaks.get("fused") is not None and peaks.get("materialized"):
        rec["memory_ratio_vs_materialized"] = peaks["fused"] / peaks["materialized"]
    return rec


def bench_step(args: argparse.Namespace, tokens: int) -> dict[str, object]:
    """One trainer step (forward + backward of RowsLossModel) per loss kind: peak RSS rise, loss."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_token_lm_helpers import tiny_qwen3

    import lumo_uti
    from lumo_model.token_lm.expansion import expand, expansion_of, trainable_parameters
    from lumo_model.token_lm.training import RowsLossModel, forbidden_columns

    ts = lumo_uti.load().token_space
    model = expand(tiny_qwen3(False, hidden=args.dim), ts, init="mean", noise_std=0.1)
    for p in trainable_parameters(model):
        p.requires_grad_(True)
    forbidden = forbidden_columns(ts, expansion_of(model).total_rows)
    seq = min(tokens, 2048)
    batch = max(1, tokens // seq)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, ts.text_vocab_size, (batch, seq), generator=g)
    new_ids = torch.randint(ts.base_rows, ts.vocab_size, (batch, seq), generator=g)
    ids = torch.where(torch.rand(batch, seq, generator=g) < 0.5, ids, new_ids)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    out: dict[str, object] = {"bench": "rows_ce_trainer_step", "tokens": batch * seq, "dim": args.dim,
                              "vocab": expansion_of(model).total_rows, "machine": machine()}
    for kind in ("fused", "materialized"):
        net = RowsLossModel(model, kind, forbidden).train()
        loss_box: list[float] = []

        def step() -> None:
            per_tok = net(**inputs)
            loss = per_tok.sum() / (inputs["labels"][:, 1:] != -100).sum()
            loss.backward()
            loss_box.append(float(loss.detach()))
            model.zero_grad(set_to_none=True)

        t0 = time.perf_counter()
        peak = peak_bytes(step, "cpu")
        out[f"{kind}_seconds"] = time.perf_counter() - t0
        out[f"{kind}_peak_rss_rise_bytes"] = peak
        out[f"{kind}_loss"] = loss_box[-1]
    out["loss_rel_diff"] = abs(out["fused_loss"] - out["materialized_loss"]) / abs(out["materialized_loss"])
    if out["fused_peak_rss_rise_bytes"] is not None and out["materialized_peak_rss_rise_bytes"]:
        out["peak_ratio"] = out["fused_peak_rss_rise_bytes"] / out["materialized_peak_rss_rise_bytes"]
    return out


# The environment of each --isas child: "best" forces nothing; "avx2" forces
# the fused kernel and PyTorch's ATen, MKL and oneDNN kernels (the baseline) to AVX2.
_ISA_ENV = {
    "best": {},
    "avx2": {"LUMO_ROWS_CE_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
_FORCING = ("LUMO_ROWS_CE_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def run_isas(isas: list[str], argv: list[str]) -> None:
    """This script once per ISA in a child process (the forcing variables act at start-up), each row tagged."""
    for isa in isas:
        env = {k: v for k, v in os.environ.items() if k not in _FORCING}
        env.update(_ISA_ENV[isa])
        proc = subprocess.run([sys.executable, __file__, *argv], env=env, text=True, stdout=subprocess.PIPE)
        if proc.returncode != 0:
            raise SystemExit(f"rows_ce.py: the {isa} run exited with status {proc.returncode}")
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                rec["isa"] = isa if isa != "best" else rec.get("machine", {}).get("isa", isa)
                print(json.dumps(rec), flush=True)


def _without_isas(argv: list[str]) -> list[str]:
    """argv less ``--isas`` and its values (the children's command line)."""
    out, skip = [], False
    for a in argv:
        if a.startswith("--isas="):
            continue
        if a == "--isas":
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--dim", type=int, default=None, help="hidden size (default 1024 on CPU, 4096 on CUDA)")
    p.add_argument("--base-rows", type=int, default=151936)
    p.add_argument("--new-rows", type=int, default=24960)
    p.add_argument("--dtype", choices=sorted(_DTYPES), default=None,
                   help="default float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory calls")
    p.add_argument("--step", action="store_true", help="measure a whole trainer step instead of the op")
    p.add_argument("--isas", nargs="+", choices=sorted(_ISA_ENV), default=None,
                   help="run once per ISA in a child process (best: nothing forced; avx2: the fused kernel "
                        "and PyTorch forced to AVX2)")
    args = p.parse_args()
    if args.isas:
        run_isas(args.isas, _without_isas(sys.argv[1:]))
        return
    cuda = args.device.startswith("cuda")
    args.dim = args.dim or (4096 if cuda else 1024)
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    if cuda and not torch.cuda.is_available():
        print(json.dumps({"bench": "rows_ce", "skipped": "no CUDA device"}))
        return
    for tokens in args.tokens:
        rec = bench_step(args, tokens) if args.step else bench_op(args, tokens)
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
