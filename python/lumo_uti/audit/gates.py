"""The gates file: thresholds on metrics_v2, and writing one from a run with margins.

Format (JSON)::

    {"format": "lumo-gates", "version": 1,
     "bundle_fingerprint": "sha256:...",        # the bundle the gates were pinned on (informational)
     "gates": {"image.psnr_db": {"min": 22.0}, "audio.mel_distance": {"max": 1.2}, ...}}

Each gate has ``min`` and/or ``max``; a value passes when ``min <= value <= max``.
Metric names are those of ``GATE_METRICS``; an unknown name is an error that
names it (a typo must not silently disable a gate).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .._io import atomic_write_text
from ..errors import GatesError
from .results import FAIL, NO_GATE, PASS, SKIPPED, Check

FORMAT = "lumo-gates"
VERSION = 1


@dataclass(frozen=True)
class Metric:
    """A gateable metric: which way is better and which margin applies on update."""

    direction: str  # "min": higher is better (gate is a lower bound); "max": lower is better
    margin: str  # "db", "frac" or "dist": which --margin-* option applies
    description: str


GATE_METRICS: dict[str, Metric] = {
    "image.psnr_db": Metric("min", "db", "PSNR (dB) of the pooled MSE over all images, capped at 100"),
    "image.ssim": Metric("min", "frac", "mean SSIM over images (per channel, 11x11 Gaussian)"),
    "image.block_edge_ratio": Metric("max", "dist", "mean block-edge ratio of reconstructions (~1.0: no block grid)"),
    "image.codebook_usage": Metric("min", "frac", "fraction of codebook entries used (worst layer)"),
    "image.codebook_perplexity": Metric("min", "frac", "exp(entropy) of code frequencies (worst layer)"),
    "audio.si_snr_db": Metric("min", "db", "mean SI-SNR (dB) over clips"),
    "audio.stft_distance": Metric("max", "dist", "mean multi-resolution STFT distance over clips"),
    "audio.mel_distance": Metric("max", "dist", "mean multi-resolution log-mel L1 distance over clips"),
    "audio.codebook_usage": Metric("min", "frac", "fraction of entries used (worst codebook)"),
    "audio.codebook_perplexity": Metric("min", "frac", "exp(entropy) of code frequencies (worst codebook)"),
}


@dataclass
class Gates:
    """A validated gates file."""

    gates: dict[str, dict[str, float]] = field(default_factory=dict)
    bundle_fingerprint: str | None = None
    path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "bundle_fingerprint": self.bundle_fingerprint,
            "gates": {k: dict(v) for k, v in sorted(self.gates.items())},
        }


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_gates(obj: Any, where: str = "gates") -> Gates:
    """Validate a parsed gates object. Raises ``GatesError`` naming the problem."""
    if not isinstance(obj, Mapping):
        raise GatesError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if obj.get("format") != FORMAT:
        raise GatesError(f"{where}: expected format {FORMAT!r}, got {obj.get('format')!r}")
    if obj.get("version") != VERSION:
        raise GatesError(f"{where}: expected version {VERSION}, got {obj.get('version')!r}")
    unknown_fields = sorted(set(obj) - {"format", "version", "bundle_fingerprint", "gates"})
    if unknown_fields:
        raise GatesError(f"{where}: unknown fields {unknown_fields}")
    fingerprint = obj.get("bundle_fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise GatesError(f"{where}: bundle_fingerprint must be a string or null, got {fingerprint!r}")
    gates = obj.get("gates")
    if not isinstance(gates, Mapping):
        raise GatesError(f"{where}: 'gates' must be an object metric -> {{min/max}}, got {type(gates).__name__}")
    unknown = sorted(set(gates) - set(GATE_METRICS))
    if unknown:
        raise GatesError(f"{where}: unknown metric names {unknown} (known: {sorted(GATE_METRICS)})")
    out: dict[str, dict[str, float]] = {}
    for name, bounds in gates.items():
        if not isinstance(bounds, Mapping) or not bounds or set(bounds) - {"min", "max"}:
            raise GatesError(f"{where}: gate {name!r} must be an object with 'min' and/or 'max', got {bounds!r}")
        for key, value in bounds.items():
            if not _number(value):
                raise GatesError(f"{where}: gate {name!r} {key} must be a finite number, got {value!r}")
        if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
            raise GatesError(f"{where}: gate {name!r} has min {bounds['min']} > max {bounds['max']}")
        out[name] = {k: float(v) for k, v in bounds.items()}
    return Gates(out, fingerprint)


def load_gates(path: str | os.PathLike) -> Gates:
    """Read and validate a gates file. Raises ``GatesError``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GatesError(f"gates file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GatesError(f"cannot read gates file {path}: {e}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise GatesError(f"{path} is not valid JSON: {e}") from None
    gates = parse_gates(obj, str(path))
    gates.path = path
    return gates


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def evaluate(gates: Gates | None, metrics: Mapping[str, float | None]) -> list[Check]:
    """One ``Check`` (group ``"metrics"``) per measured metric and per gate.

    A measured metric without a gate gets verdict ``"no gate"``; a gate whose
    metric was not measured (no codec or no data for its modality) gets
    ``"skipped"``; a NaN value fails any gate.
    """
    table = gates.gates if gates is not None else {}
    checks = []
    for name in GATE_METRICS:
        value, bounds = metrics.get(name), table.get(name)
        if value is None:
            if bounds is not None:
                checks.append(Check(name, "metrics", SKIPPED, "gate not evaluated: metric not measured",
                                    threshold=bounds))
            continue
        if bounds is None:
            checks.append(Check(name, "metrics", NO_GATE, f"{name} = {_fmt(value)} (no gate)", value=value))
            continue
        problems = []
        if "min" in bounds and not value >= bounds["min"]:
            problems.append(f"{_fmt(value)} < min {_fmt(bounds['min'])}")
        if "max" in bounds and not value <= bounds["max"]:
            problems.append(f"{_fmt(value)} > max {_fmt(bounds['max'])}")
        rule = ", ".join(f"{k} {_fmt(v)}" for k, v in bounds.items())
        if problems:
            message = f"gate {name} failed: value {'; '.join(problems)}"
            checks.append(Check(name, "metrics", FAIL, message, value, bounds))
        else:
            checks.append(Check(name, "metrics", PASS, f"{name} = {_fmt(value)} ({rule})", value, bounds))
    return checks


def validate_margins(margin_db: float, margin_frac: float, margin_dist: float) -> None:
    """Raise ``ValueError`` unless ``margin_db >= 0``, ``0 < margin_frac <= 1`` and ``margin_dist >= 1``."""
    if not margin_db >= 0:
        raise ValueError(f"--margin-db: expected a value >= 0, got {margin_db}")
    if not 0 < margin_frac <= 1:
        raise ValueError(f"--margin-frac: expected a value in (0, 1], got {margin_frac}")
    if not margin_dist >= 1:
        raise ValueError(f"--margin-dist: expected a value >= 1, got {margin_dist}")


def gates_from_metrics(
    metrics: Mapping[str, float | None],
    *,
    margin_db: float = 0.5,
    margin_frac: float = 0.9,
    margin_dist: float = 1.1,
    bundle_fingerprint: str | None = None,
) -> Gates:
    """Gates that today's measurements pass with room to spare.

    dB metrics: ``min = value - margin_db``; other higher-is-better metrics:
    ``min = value - (1 - margin_frac) * |value|`` (``value * margin_frac`` when
    positive); distances: ``max = value + (margin_dist - 1) * |value|``
    (``value * margin_dist``). Thresholds are rounded to 4 decimals on the
    safe side (down for ``min``, up for ``max``).
    """
    validate_margins(margin_db, margin_frac, margin_dist)
    out: dict[str, dict[str, float]] = {}
    for name, metric in GATE_METRICS.items():
        value = metrics.get(name)
        if value is None or not math.isfinite(value):
            continue
        if metric.margin == "db":
            bound = value - margin_db
        elif metric.margin == "frac":
            bound = value - (1 - margin_frac) * abs(value)
        else:
            bound = value + (margin_dist - 1) * abs(value)
        if metric.direction == "min":
            out[name] = {"min": math.floor(bound * 1e4) / 1e4}
        else:
            out[name] = {"max": math.ceil(bound * 1e4) / 1e4}
    return Gates(out, bundle_fingerprint)


def save_gates(path: str | os.PathLike, gates: Gates) -> Path:
    """Write a gates file atomically; returns the path."""
    path = Path(path)
    atomic_write_text(path, json.dumps(gates.to_json(), indent=2) + "\n")
    return path
