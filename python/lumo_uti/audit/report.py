"""Writing an audit: ``audit.json`` (everything) and ``audit.md`` (failures first).

Both are written atomically. Numbers that are not finite (which JSON cannot
hold) are written as the strings ``"inf"``, ``"-inf"`` or ``"nan"``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .._io import atomic_write_text
from .results import FAIL, GROUPS, NO_GATE, PASS, SKIPPED, AuditResult, Check

FORMAT = "lumo-audit"
VERSION = 1


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json(result: AuditResult) -> dict[str, Any]:
    """The ``audit.json`` object."""
    return _finite({
        "format": FORMAT,
        "version": VERSION,
        "metrics_v2_pass": result.metrics_v2_pass,
        "summary": result.summary(),
        "failures": [c.name for c in result.failures],
        **result.info,
        "metrics": result.metrics,
        "checks": [c.to_json() for c in result.ordered_checks()],
        "samples": result.samples,
        "codebooks": result.codebooks,
        "pictures": result.pictures,
        "gates_written": result.gates_written,
    })


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _value(check: Check) -> str:
    if check.value is None:
        return ""
    return f"{check.value:.6g}" if isinstance(check.value, float) else _cell(check.value)[:24]


def _sample_value(value: Any) -> str:
    # None: not measurable for that sample (e.g. an image too small for two blocks of the grid).
    return "–" if value is None else f"{value:.4g}"


def _threshold(check: Check) -> str:
    return ", ".join(f"{k} {v:.6g}" for k, v in (check.threshold or {}).items())


def to_markdown(result: AuditResult) -> str:
    """The ``audit.md`` text: verdict, failures, then every check by group, metrics, pictures."""
    info = result.info
    verdict = "PASS" if result.metrics_v2_pass else "FAIL"
    s = result.summary()
    lines = [
        f"# lumo audit: {verdict}",
        "",
        f"- metrics_v2_pass: **{str(result.metrics_v2_pass).lower()}** "
        f"({s[FAIL]} failed, {s[PASS]} passed, {s[SKIPPED]} skipped, {s[NO_GATE]} without a gate)",
        f"- bundle: `{info.get('bundle', {}).get('dir')}` ({info.get('bundle', {}).get('name')})",
        f"- token space fingerprint: `{info.get('token_space_fingerprint')}`",
        f"- gates: {('`' + str(info['gates']['file']) + '`') if info.get('gates', {}).get('file') else 'none'}",
        f"- data: `{info.get('data', {}).get('dir')}`; device: {info.get('device')}; "
        f"lumo_uti {info.get('library_version')}",
        "",
    ]
    if info.get("gates", {}).get("note"):
        lines += [f"> {info['gates']['note']}", ""]
    failures = result.failures
    if failures:
        lines += ["## Failures", "", "| check | value | threshold | message |", "| --- | --- | --- | --- |"]
        lines += [f"| {c.name} | {_value(c)} | {_threshold(c)} | {_cell(c.message)} |" for c in failures]
        lines.append("")
    lines += ["## Checks", "", "| check | verdict | value | threshold | message |", "| --- | --- | --- | --- | --- |"]
    for group in GROUPS:
        for c in result.ordered_checks():
            if c.group == group:
                lines.append(f"| {c.name} | {c.verdict} | {_value(c)} | {_threshold(c)} | {_cell(c.message)} |")
    lines.append("")
    for modality, rows in result.samples.items():
        if not rows:
            continue
        keys = (["psnr_db", "ssim", "block_edge_ratio", "block_edge_ratio_reference"] if modality == "image"
                else ["si_snr_db", "stft_distance", "mel_distance"])
        lines += [f"## {modality} samples", "", "| sample | " + " | ".join(keys) + " |",
                  "| --- |" + " --- |" * len(keys)]
        lines += [f"| {_cell(r['name'])} | " + " | ".join(_sample_value(r.get(k)) for k in keys) + " |" for r in rows]
        lines.append("")
    for modality, books in result.codebooks.items():
        lines += [f"## {modality} codebooks", "", "| codebook | used | fraction | perplexity |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {b['codebook']} | {b['used']}/{len(b['histogram'])} | {b['fraction']:.4f} "
                  f"| {b['perplexity']:.2f} |" for b in books]
        lines.append("")
    if result.pictures:
        lines += ["## Pictures", ""] + [f"![{p}]({p})" for p in result.pictures] + [""]
    if result.gates_written:
        lines += [f"Gates written to `{result.gates_written}`.", ""]
    return "\n".join(lines)


def write_report(result: AuditResult, out: Path) -> tuple[Path, Path]:
    """Write ``audit.json`` and ``audit.md`` into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "audit.json", out / "audit.md"
    atomic_write_text(json_path, json.dumps(to_json(result), indent=2, allow_nan=False, default=str) + "\n")
    atomic_write_text(md_path, to_markdown(result))
    return json_path, md_path
