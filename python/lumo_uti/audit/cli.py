"""``lumo audit``: the command-line front of ``run_audit`` (docs/audit.md).

Exit status: 0 every check and gate passed, 1 one failed (stderr names each
failed gate or check with its value and threshold), 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``audit`` to the ``lumo`` command."""
    p = subparsers.add_parser(
        "audit",
        help="audit a bundle: determinism, token range, decode sanity, ABI, metrics_v2 against gates",
        description="Run every audit check on a bundle and write audit.json, audit.md and pictures "
        "(docs/audit.md). Exit 0 all pass, 1 a check or gate fails, 2 bad usage.",
    )
    p.set_defaults(func=_cmd_audit)
    p.add_argument("--bundle", metavar="DIR", help="bundle directory (default: the embedded default bundle)")
    p.add_argument("--gates", metavar="FILE", help="gates file (default: gates.json in the bundle, if any)")
    p.add_argument("--data", metavar="DIR", help="evaluation samples: images and/or audio files "
                   "(default: the bundled samples in lumo_uti/data/eval)")
    p.add_argument("--out", default="lumo_audit_out", metavar="DIR", help="output folder (default: ./lumo_audit_out)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the codecs run (default: cpu)")
    p.add_argument("--update-gates", action="store_true",
                   help="write gates from this run's metrics with margins, to --gates FILE or OUT/gates.json")
    p.add_argument("--margin-db", type=float, default=0.5, metavar="DB",
                   help="with --update-gates: dB metrics get min = value - DB (default 0.5)")
    p.add_argument("--margin-frac", type=float, default=0.9, metavar="F",
                   help="with --update-gates: fractions, SSIM, perplexity get min = value * F (default 0.9)")
    p.add_argument("--margin-dist", type=float, default=1.1, metavar="F",
                   help="with --update-gates: distances get max = value * F (default 1.1)")


def _cmd_audit(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from .runner import Margins, describe_failure, run_audit

    margins_given = (args.margin_db, args.margin_frac, args.margin_dist) != (0.5, 0.9, 1.1)
    if margins_given and not args.update_gates:
        raise UsageError("--margin-db/--margin-frac/--margin-dist need --update-gates")
    result = run_audit(  # an AuditUsageError is one line and exit 2, as every library error
        args.bundle,
        data=args.data,
        gates=args.gates,
        out=args.out,
        device=args.device,
        update_gates=args.update_gates,
        margins=Margins(args.margin_db, args.margin_frac, args.margin_dist),
    )
    for check in result.failures:
        print(f"lumo audit: {describe_failure(check)}", file=sys.stderr)
    s = result.summary()
    verdict = "true" if result.metrics_v2_pass else "false"
    print(f"metrics_v2_pass: {verdict} ({s['fail']} failed, {s['pass']} passed, {s['skipped']} skipped, "
          f"{s['no gate']} without a gate)")
    print(f"wrote {args.out}/audit.json, audit.md" + (f", {len(result.pictures)} pictures" if result.pictures else ""))
    if result.gates_written:
        print(f"wrote gates {result.gates_written}")
    return 0 if result.metrics_v2_pass else 1
