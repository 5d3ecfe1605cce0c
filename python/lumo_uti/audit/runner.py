"""``run_audit``: open the bundle, run every check, compare with the gates, write the report."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import AuditUsageError
from .abi import open_bundle
from .data import DataError, EvalSamples, default_data_dir, discover, load_sample
from .determinism import check_determinism
from .gates import Gates, GatesError, evaluate, gates_from_metrics, load_gates, save_gates, validate_margins
from .quality import measure_audio, measure_images
from .results import FAIL, SKIPPED, AuditResult, Check
from .roundtrip import roundtrip
from .sanity import check_decode, check_token_range

MODALITIES = ("image", "audio")


@dataclass(frozen=True)
class Margins:
    """Margins for ``--update-gates`` (see ``gates.gates_from_metrics``)."""

    db: float = 0.5
    frac: float = 0.9
    dist: float = 1.1


def _stderr(message: str) -> None:
    print(f"lumo audit: {message}", file=sys.stderr, flush=True)


def _resolve_inputs(bundle, data, gates, device, update) -> tuple[Path, Path | None, bool, Gates | None]:
    from ..bundle import default_bundle_dir

    bundle_dir = Path(bundle) if bundle is not None else default_bundle_dir()
    if not bundle_dir.is_dir():
        raise AuditUsageError(f"bundle directory not found: {bundle_dir}")
    if not (bundle_dir / "token_space.json").is_file():
        raise AuditUsageError(f"{bundle_dir} is not a bundle: no token_space.json in it")
    if device not in ("cpu", "cuda"):
        raise AuditUsageError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise AuditUsageError("--device cuda: CUDA is not available on this machine")
    explicit_data = data is not None
    data_dir = Path(data) if explicit_data else default_data_dir()
    if explicit_data and not data_dir.is_dir():
        raise AuditUsageError(f"evaluation data directory not found: {data_dir}")
    gates_path = Path(gates) if gates is not None else (bundle_dir / "gates.json")
    loaded = None
    # With --update-gates the gates file is the output: the run is compared with the new gates.
    if not update and (gates is not None or gates_path.is_file()):
        try:
            loaded = load_gates(gates_path)
        except GatesError as e:
            raise AuditUsageError(str(e)) from None
    return bundle_dir, (data_dir if data_dir.is_dir() else None), explicit_data, loaded


def run_audit(
    bundle: str | Path | None = None,
    *,
    data: str | Path | None = None,
    gates: str | Path | None = None,
    out: str | Path = "lumo_audit_out",
    device: str = "cpu",
    update_gates: bool = False,
    margins: Margins = Margins(),
    progress: Callable[[str], None] | None = _stderr,
) -> AuditResult:
    """Audit a bundle and write ``audit.json``, ``audit.md`` and pictures into ``out``.

    Args:
        bundle: bundle directory (default: the embedded default bundle).
        data: evaluation samples directory (default: ``lumo_uti/data/eval``).
        gates: gates file (default: ``gates.json`` in the bundle, if present).
        out: output directory.
        device: ``"cpu"`` or ``"cuda"``: where the codecs run.
        update_gates: write gates from this run's metrics (with ``margins``) to
            ``gates`` or ``out/gates.json``, and compare against them.
        progress: called with one line per long step (default: stderr).

    Returns:
        The ``AuditResult``; ``result.metrics_v2_pass`` is the verdict.

    Raises:
        AuditUsageError: the inputs cannot be audited (see the class).
    """
    say = progress or (lambda s: None)
    try:
        validate_margins(margins.db, margins.frac, margins.dist)
    except ValueError as e:
        raise AuditUsageError(str(e)) from None
    bundle_dir, data_dir, explicit_data, gate_table = _resolve_inputs(bundle, data, gates, device, update_gates)
    out = Path(out)
    result = AuditResult()
    from .. import __version__
    from ..ops import backends

    result.info = {
        "bundle": {"dir": str(bundle_dir)},
        "token_space_fingerprint": None,
        "library_version": __version__,
        "torch_version": torch.__version__,
        "device": device,
        "backends": backends(),
        "data": {"dir": str(data_dir) if data_dir else None},
        "gates": {"file": str(gate_table.path) if gate_table else None},
    }

    say(f"opening {bundle_dir} (ABI checks)")
    opened, abi_checks = open_bundle(bundle_dir, device)
    result.add(abi_checks)
    ts = opened.token_space
    if ts is None:
        result.add(Check("audit", "abi", SKIPPED, "other checks skipped: the token space did not load"))
        return _finish(result, out, say)
    result.info["bundle"].update(name=ts.name, codecs=ts.codecs)
    result.info["token_space_fingerprint"] = ts.fingerprint
    if gate_table is not None:
        pinned = gate_table.bundle_fingerprint
        result.info["gates"].update(bundle_fingerprint=pinned, matches_bundle=pinned == ts.fingerprint)
        if pinned is not None and pinned != ts.fingerprint:
            result.info["gates"]["note"] = (f"the gates were pinned on bundle {pinned}, not this one "
                                            f"({ts.fingerprint}); they are applied as they are")

    samples = _samples(ts, opened, data_dir, explicit_data)
    result.info["data"].update(images=len(samples.images) if samples else 0, audio=len(samples.audio) if samples else 0)
    for modality in MODALITIES:
        if modality not in ts.codecs:
            continue
        codec = opened.codecs.get(modality)
        files = samples.of(modality) if samples else []
        if codec is None or not files:
            why = opened.codec_problems.get(modality) if codec is None else f"no {modality} samples in the data"
            for group in ("determinism", "token_range", "decode"):
                result.add(Check(f"{group}.{modality}", group, SKIPPED, f"skipped: {why}"))
            continue
        _audit_modality(result, modality, codec, opened.grammar, samples, files, out, say)

    if update_gates:
        gate_table = _update_gates(result, gate_table, gates, out, margins, ts.fingerprint, say)
    result.add(evaluate(gate_table, result.metrics))
    return _finish(result, out, say)


def _samples(ts, opened, data_dir: Path | None, explicit: bool) -> EvalSamples | None:
    if data_dir is None:
        if ts.codecs:
            raise AuditUsageError(
                f"no evaluation samples: the bundled ones ({default_data_dir()}) are missing; pass --data DIR "
                "(a folder of images and/or audio files)"
            )
        return None
    try:
        samples = discover(data_dir)
    except DataError as e:
        raise AuditUsageError(str(e)) from None
    for modality in MODALITIES:
        n = len(samples.of(modality))
        if n and modality not in ts.codecs:
            raise AuditUsageError(
                f"the data in {data_dir} has {n} {modality} sample(s) but the bundle has no {modality} codec"
            )
    if explicit and not samples.images and not samples.audio:
        raise AuditUsageError(f"no image or audio samples in {data_dir}")
    return samples


def _audit_modality(result: AuditResult, modality, codec, grammar, samples, files, out: Path, say) -> None:
    from . import pictures

    names = [samples.name(p) for p in files]
    try:
        items = [load_sample(modality, p) for p in files]
    except DataError as e:
        raise AuditUsageError(str(e)) from None
    result.add(check_determinism(modality, codec, items, names, say))
    say(f"{modality}: encode + decode of {len(items)} sample(s)")
    try:
        trips = [roundtrip(modality, codec, n, item) for n, item in zip(names, items)]
    except Exception as e:  # noqa: BLE001 - a codec that cannot round-trip is a finding
        result.add(Check(f"decode.{modality}", "decode", FAIL, f"encode/decode failed: {type(e).__name__}: {e}"))
        return
    token_check, stream = check_token_range(modality, grammar, trips)
    result.add([token_check, check_decode(modality, codec, grammar, trips, stream)])
    say(f"{modality}: metrics")
    if modality == "image":
        values, rows, books = measure_images(trips, codec.codebook_size)
    else:
        values, rows, books = measure_audio(trips, codec.codebook_size, codec.sample_rate)
    result.metrics.update(values)
    result.samples[modality] = rows
    result.codebooks[modality] = books
    say(f"{modality}: pictures")
    out.mkdir(parents=True, exist_ok=True)
    if modality == "image":
        result.pictures.append(pictures.image_grid(trips, rows, out / "image_reconstructions.png"))
    else:
        for i, (rt, row) in enumerate(zip(trips[:8], rows)):
            result.pictures.append(pictures.audio_comparison(rt, row, codec.sample_rate, out / f"audio_{i:02d}.png"))
    result.pictures.append(pictures.codebook_histogram(modality, books, out / f"{modality}_codebook_usage.png"))


def _update_gates(result, old: Gates | None, gates_arg, out: Path, margins: Margins, fingerprint, say) -> Gates | None:
    hard = [c for c in result.checks if c.failed]
    if hard:
        result.add(Check("gates.update", "metrics", FAIL,
                         f"gates not written: {len(hard)} hard check(s) failed ({', '.join(c.name for c in hard)})"))
        return old
    if not result.metrics:
        result.add(Check("gates.update", "metrics", FAIL, "gates not written: no metric was measured"))
        return old
    new = gates_from_metrics(result.metrics, margin_db=margins.db, margin_frac=margins.frac,
                             margin_dist=margins.dist, bundle_fingerprint=fingerprint)
    path = Path(gates_arg) if gates_arg is not None else out / "gates.json"
    new.path = save_gates(path, new)
    result.gates_written = str(path)
    result.info["gates"] = {"file": str(path), "bundle_fingerprint": fingerprint, "matches_bundle": True,
                            "updated": True}
    say(f"wrote gates {path}")
    return new


def _finish(result: AuditResult, out: Path, say) -> AuditResult:
    from .report import write_report

    json_path, md_path = write_report(result, out)
    say(f"wrote {json_path} and {md_path.name}")
    return result


def describe_failure(check: Check) -> str:
    """One stderr line for a failed check (names the gate/check, value and threshold)."""
    return f"FAIL {check.name}: {check.message}"


__all__ = ["AuditUsageError", "Margins", "describe_failure", "run_audit"]
