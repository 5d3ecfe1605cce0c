"""Stage-1 ablation: does the text model use the image through the connector?

Teacher-forced loss (mean CE over supervised tokens) on the same batches with
four versions of the image features, at one of two levels: ``"tokens"``
(default: the connector's output, the visual tokens injected into the text
model) or ``"vision"`` (the vision tower's features fed to the connector):

- ``correct``: the image's own features;
- ``shuffled``: another sample's features (the batch rolled by one, so no
  sample keeps its own image; batches need at least 2 images);
- ``zero``: all-zero features;
- ``noise``: Gaussian noise matching the per-channel mean and std of the
  batch's real features (seeded).

A connector that carries the image gives ``correct < shuffled < min(zero, noise)``.
Why ``"tokens"`` is the default: shuffled tokens keep everything the
connector conveys that does not depend on the image (the prompt-like part),
zero/noise tokens remove it too, which is what the criterion's second
inequality asks. At the ``"vision"`` level a zero input still passes through
the trained connector, which then emits an "average image", so a confident
connector can make ``shuffled`` (a wrong but definite image) cost more than
``zero``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from lumo_uti._io import atomic_write_text

from .collator import VLMCollator, VLMExample
from .model import LumoVLM
from .train import to_device

__all__ = ["LEVELS", "MODES", "ablate", "feature_transform", "write_report"]

MODES = ("correct", "shuffled", "zero", "noise")
LEVELS = ("tokens", "vision")


def feature_transform(mode: str, generator: Optional[torch.Generator] = None) -> Optional[Callable]:
    """The ``LumoVLM`` feature transform of an ablation mode (None for ``correct``)."""
    if mode == "correct":
        return None
    if mode == "shuffled":
        def shuffled(f: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
            if f.shape[0] < 2:
                raise ValueError("ablate: shuffled features need batches of at least 2 images")
            # Same-size images in a batch share the mask, so rolling f alone is safe;
            # with NaFlex padding the rolled features may see another image's mask.
            return f.roll(1, dims=0)
        return shuffled
    if mode == "zero":
        return lambda f, mask: torch.zeros_like(f)
    if mode == "noise":
        def noise(f: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
            real = f.reshape(-1, f.shape[-1]) if mask is None else f[mask]
            mean, std = real.float().mean(0), real.float().std(0, unbiased=False)
            z = torch.randn(f.shape, generator=generator, dtype=torch.float32, device="cpu").to(f.device)
            return (mean + std * z).to(f.dtype)
        return noise
    raise ValueError(f"ablate: expected a mode in {MODES}, got {mode!r}")


@torch.no_grad()
def ablate(model: LumoVLM, examples: Sequence[VLMExample], collator: VLMCollator, *, batch_size: int = 8,
           seed: int = 0, level: str = "tokens", device: Optional[torch.device | str] = None,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """Token-weighted mean loss per mode, deltas against ``correct`` and the pass flag.

    Returns ``{"losses": {mode: float}, "deltas": {mode: float}, "pass": bool,
    "criterion": str, "level": str, "tokens": int, "batches": int}``.
    """
    if level not in LEVELS:
        raise ValueError(f"ablate: expected level in {LEVELS}, got {level!r}")
    hook = "token_transform" if level == "tokens" else "feature_transform"
    if batch_size < 2:
        raise ValueError(f"ablate: expected batch_size >= 2 (shuffled features), got {batch_size}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    totals = {m: 0.0 for m in MODES}
    tokens, batches = 0, 0
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start:start + batch_size])
        if len(chunk) < 2:
            continue  # a trailing single example cannot be shuffled
        batch = to_device(collator(chunk), device)
        n = None
        for mode in MODES:
            out = model(**batch, **{hook: feature_transform(mode, gen)})
            n = out.num_tokens
            totals[mode] += float(out.loss) * n
        tokens += n or 0
        batches += 1
        log(f"ablate: batch {batches}: " + ", ".join(f"{m} {totals[m] / max(tokens, 1):.4f}" for m in MODES))
    if tokens == 0:
        raise ValueError("ablate: no supervised tokens (need at least 2 examples with captions)")
    losses = {m: totals[m] / tokens for m in MODES}
    ok = losses["correct"] < losses["shuffled"] < min(losses["zero"], losses["noise"])
    return {
        "losses": losses,
        "deltas": {m: losses[m] - losses["correct"] for m in MODES},
        "pass": bool(ok),
        "criterion": "correct < shuffled < min(zero, noise)",
        "level": level,
        "tokens": tokens,
        "batches": batches,
    }


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``ablation.json`` and ``ablation.md`` under ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out_dir / "ablation.json", out_dir / "ablation.md"
    atomic_write_text(jpath, json.dumps(report, indent=1, sort_keys=True) + "\n")
    lines = [
        "# Stage-1 ablation", "",
        f"Criterion: `{report['criterion']}`: **{'PASS' if report['pass'] else 'FAIL'}**", "",
        f"{report['tokens']} supervised tokens in {report['batches']} batches; "
        f"features ablated at the `{report['level']}` level.", "",
        "| features | loss | delta vs correct |", "| --- | ---: | ---: |",
    ]
    lines += [f"| {m} | {report['losses'][m]:.4f} | {report['deltas'][m]:+.4f} |" for m in MODES]
    atomic_write_text(mpath, "\n".join(lines) + "\n")
    return jpath, mpath
