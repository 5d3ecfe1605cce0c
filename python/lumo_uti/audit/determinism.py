"""Determinism: the same inputs must give bit-identical codes.

Pairs compared, each through the codec's media API (``codec.encode``):

- ``repeat``: two runs over all samples;
- ``batch``: all samples in one call (batched by shape) vs one call per
  sample; audio clips are first cut to their common length so that they really
  share a batch;
- ``threads``: ``torch.set_num_threads(1)`` vs ``max(2, default)`` threads
  (the setting is restored afterwards);
- ``cpu_vs_cuda``: the codec on CPU vs on CUDA, when CUDA is available
  (else skipped: no CUDA).

Each check reports the agreement rate (equal codes / all codes) and the first
differing position (sample, index).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from .results import FAIL, PASS, SKIPPED, Check


def _codes(codec, items: list[Any]) -> list[np.ndarray]:
    return [np.asarray(c.codes) for c in codec.encode(items)]


def compare(a: list[np.ndarray], b: list[np.ndarray], names: list[str]) -> dict[str, Any]:
    """Agreement rate and the first difference between two runs over the same samples."""
    total = same = 0
    first = None
    for name, x, y in zip(names, a, b):
        if x.shape != y.shape:
            total += max(x.size, y.size)
            first = first or {"sample": name, "reason": f"shape {list(x.shape)} vs {list(y.shape)}"}
            continue
        eq = x == y
        total += x.size
        same += int(eq.sum())
        if first is None and not eq.all():
            index = np.unravel_index(int(np.argmin(eq.reshape(-1))), x.shape)
            first = {"sample": name, "index": [int(i) for i in index],
                     "values": [int(x[index]), int(y[index])]}
    rate = same / total if total else 1.0
    return {"agreement": rate, "codes_compared": total, "first_difference": first}


def _check(modality: str, pair: str, what: str, a, b, names) -> Check:
    result = compare(a, b, names)
    name = f"determinism.{modality}.{pair}"
    if result["first_difference"] is None:
        return Check(name, "determinism", PASS, f"{what}: {result['codes_compared']} codes identical",
                     value=1.0, details=result)
    diff = result["first_difference"]
    where = diff.get("reason") or f"index {diff['index']} ({diff['values'][0]} vs {diff['values'][1]})"
    return Check(name, "determinism", FAIL,
                 f"{what}: agreement {result['agreement']:.4%}; first difference in {diff['sample']} at {where}",
                 value=result["agreement"], details=result)


def _common_length(items: list[Any]) -> list[Any]:
    from ..media import Audio

    n = min(a.num_samples for a in items)
    return [Audio(a.waveform[:, :n], a.sample_rate) for a in items]


def check_determinism(
    modality: str, codec, items: list[Any], names: list[str], progress: Callable[[str], None] = lambda s: None
) -> list[Check]:
    """The four determinism checks for one codec on its samples."""
    checks = []
    progress(f"determinism ({modality}): repeat")
    first = _codes(codec, items)
    checks.append(_check(modality, "repeat", "repeated encode", first, _codes(codec, items), names))

    progress(f"determinism ({modality}): batch vs one at a time")
    batch_items = _common_length(items) if modality == "audio" else items
    batched = _codes(codec, batch_items)
    single = [_codes(codec, [item])[0] for item in batch_items]
    what = f"batch of {len(items)} vs one at a time"
    if modality == "audio":
        what += " (clips cut to a common length)"
    checks.append(_check(modality, "batch", what, batched, single, names))

    progress(f"determinism ({modality}): thread counts")
    default = torch.get_num_threads()
    many = max(2, default)
    try:
        torch.set_num_threads(1)
        one = _codes(codec, items)
        torch.set_num_threads(many)
        multi = _codes(codec, items)
    finally:
        torch.set_num_threads(default)
    checks.append(_check(modality, "threads", f"1 vs {many} threads", one, multi, names))

    name = f"determinism.{modality}.cpu_vs_cuda"
    if not torch.cuda.is_available():
        checks.append(Check(name, "determinism", SKIPPED, "skipped: no CUDA"))
        return checks
    progress(f"determinism ({modality}): CPU vs CUDA")
    home = codec.device
    try:
        cpu = _codes(codec.to("cpu"), items)
        cuda = _codes(codec.to("cuda"), items)
    finally:
        codec.to(home)
    checks.append(_check(modality, "cpu_vs_cuda", "CPU vs CUDA kernels", cpu, cuda, names))
    return checks
