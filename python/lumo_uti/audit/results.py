"""Audit verdicts: one ``Check`` per thing measured, collected in an ``AuditResult``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PASS = "pass"
FAIL = "fail"
SKIPPED = "skipped"
NO_GATE = "no gate"
VERDICTS = (FAIL, PASS, SKIPPED, NO_GATE)  # report order: failures first

# Check groups; every group but "metrics" holds hard checks (no gates file needed).
GROUPS = ("abi", "determinism", "token_range", "decode", "metrics")


@dataclass
class Check:
    """One verdict.

    Attributes:
        name: dotted, e.g. ``"abi.codec.image"``, ``"determinism.audio.batch"``,
            ``"image.psnr_db"`` (metric gates use the gates file's metric name).
        group: one of ``GROUPS``.
        verdict: ``"pass"``, ``"fail"``, ``"skipped"`` or ``"no gate"``.
        message: one line for people; for failures it names the value and the rule.
        value: the measured value (JSON-able), if any.
        threshold: ``{"min": x}`` / ``{"max": x}`` for metric gates.
        details: anything else worth keeping (JSON-able).
    """

    name: str
    group: str
    verdict: str
    message: str = ""
    value: Any = None
    threshold: dict[str, float] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.verdict == FAIL

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "group": self.group, "verdict": self.verdict, "message": self.message}
        if self.value is not None:
            out["value"] = self.value
        if self.threshold is not None:
            out["threshold"] = dict(self.threshold)
        if self.details:
            out["details"] = self.details
        return out


@dataclass
class AuditResult:
    """Everything one audit found; ``metrics_v2_pass`` is true when no check failed."""

    checks: list[Check] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    codebooks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    pictures: list[str] = field(default_factory=list)
    gates_written: str | None = None

    @property
    def metrics_v2_pass(self) -> bool:
        return not any(c.failed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    def add(self, checks: Check | list[Check]) -> None:
        self.checks.extend([checks] if isinstance(checks, Check) else checks)

    def ordered_checks(self) -> list[Check]:
        """Failures first, then passes, skips and ungated metrics; stable within each."""
        return sorted(self.checks, key=lambda c: VERDICTS.index(c.verdict))

    def summary(self) -> dict[str, int]:
        return {v: sum(c.verdict == v for c in self.checks) for v in VERDICTS}
