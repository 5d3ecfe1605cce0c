"""Throughput of the UTI grammar on the default bundle: encode, strict and lenient
decode, allowed_next, and one LogitsProcessor step.

Prints one JSON object per case: tokens, median seconds over the repeats, tokens/s.
The baseline for decoding is a plain per-token Python state machine over the same
stream (``constraints.state_after`` without the vectorised fast paths is what a
naive decoder does), measured in the same process, interleaved.

    python benchmarks/grammar.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import lumo_uti
from lumo_uti.grammar.layout import Kind


def _document(rng: np.random.Generator) -> list:
    doc = []
    for i in range(40):
        doc.append(f"Segment {i}: a caption about a picture and a sound, with some words. " * 3)
        doc.append(lumo_uti.ImageCodes(rng.integers(0, 16384, size=(32, 32))))
        doc.append(lumo_uti.AudioCodes(rng.integers(0, 1024, size=(150, 8))))
    return doc


def _naive_decode(constraints, ids: np.ndarray) -> None:
    """Per-token reference: one Python step per token (what the fast paths avoid)."""
    kinds = constraints.layout.kinds(ids)
    state = lumo_uti.grammar.constraints.TEXT
    for kind, tid in zip(kinds.tolist(), ids.tolist()):
        state = constraints.step(state, Kind(kind), tid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    uti = lumo_uti.load()
    doc = _document(np.random.default_rng(0))
    ids = uti.encode(doc)
    arr = np.asarray(ids, dtype=np.int64)
    processor = uti.logits_processor()
    import torch

    scores = torch.zeros(1, uti.token_space.padded_vocab_size)
    prefix = torch.tensor([ids[:-1]])
    cases = {
        "encode": lambda: uti.encode(doc),
        "decode_strict": lambda: uti.decode(arr),
        "decode_lenient": lambda: uti.decode(arr, strict=False),
        "decode_naive_per_token_baseline": lambda: _naive_decode(uti.grammar.constraints, arr),
        "allowed_next_full_prefix": lambda: uti.allowed_next(arr[:-1]),
        "logits_processor_first_call": lambda: (processor.reset(), processor(prefix, scores)),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved: each round runs every case once
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    naive = float(np.median(times["decode_naive_per_token_baseline"]))
    for name, ts in times.items():
        med = float(np.median(ts))
        print(json.dumps({
            "case": name, "tokens": len(ids), "median_s": round(med, 6),
            "tokens_per_s": round(len(ids) / med), "speedup_vs_naive_per_token": round(naive / med, 2),
        }))


if __name__ == "__main__":
    main()
