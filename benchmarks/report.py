"""The results pages' data: run the benchmarks into docs/results/*.json, and turn that JSON into tables and plots.

    python benchmarks/report.py --measure all          # run every suite below (minutes), then render
    python benchmarks/report.py --measure vq audit     # only some suites
    python benchmarks/report.py                        # render only: tables + plots into --out (a check)

Each suite writes ``docs/results/<suite>.json``: ``{"format": "lumo-results",
"version": 1, "suite", "command", "date", "machine", "libraries", "rows"}``,
where ``machine`` is ``benchmarks/machine.py``'s record (CPU model, ISA,
threads, GPU) and ``rows`` the JSON lines the benchmark printed. ``lumo
audit`` also leaves its pictures under ``docs/results/audit/``. The JSON is
committed; the tables and plots are not: the documentation build renders
them from the JSON (``docs/hooks/results.py`` calls :func:`tables` and
:func:`plots`), so a page can never disagree with its data.

The settings below are modest, so that a run fits a shared 2-core machine
(about 15 minutes in all); on a quiet machine, or to take the GPU figures,
run the benchmark scripts with their own defaults (their docstrings).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
FORMAT = "lumo-results"
VERSION = 1

# suite -> the command that prints its JSON lines (run from the repository root).
SUITES: dict[str, list[str]] = {
    "vq": ["benchmarks/vq.py", "--cases", "tiny_d4", "tiny_d8", "large_d128", "large_d256", "latency_n64",
           "rvq_q8", "rvq_mimi", "--repeat", "3"],
    "resampler": ["benchmarks/resampler.py", "--batch", "1", "--reps", "3"],
    "token_lm": ["benchmarks/token_lm.py", "--dims", "1024", "--tokens", "512", "--kernel-tokens", "4096",
                 "--kernel-dims", "1024", "--reps", "3"],
    "tokenize_dataset": ["benchmarks/tokenize_dataset.py", "--cases", "text", "images", "--repeats", "1",
                         "--text-mb", "2", "--images", "48"],
    "codecs": ["benchmarks/codecs.py", "--backends", "hf-janus", "--repeats", "3", "--budget-s", "10",
               "--quantizer-repeats", "9"],
    "audit": ["-m", "lumo_uti.cli", "audit"],  # plus --out; its audit.json becomes the rows
}


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from machine import machine
    finally:
        sys.path.pop(0)
    return machine()


def _libraries() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in ("lumoomni", "torch", "numpy", "faiss-cpu", "transformers", "tiktoken"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _write_json(path: Path, obj: Any) -> None:
    """Atomic: a temp file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def measure(suite: str, results: Path = RESULTS) -> Path:
    """Run one suite and write ``results/<suite>.json``; raises if the benchmark fails."""
    cmd = [sys.executable, *SUITES[suite]]
    print(f"== {suite}: {' '.join(SUITES[suite])}", file=sys.stderr, flush=True)
    if suite == "audit":
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run([*cmd, "--out", tmp], cwd=ROOT, text=True, stdout=subprocess.DEVNULL)
            if proc.returncode not in (0, 1):  # 1: a gate failed, which the page must show
                raise RuntimeError(f"lumo audit failed with exit status {proc.returncode}")
            audit = json.loads((Path(tmp) / "audit.json").read_text())
            pictures = results / "audit"
            shutil.rmtree(pictures, ignore_errors=True)
            pictures.mkdir(parents=True)
            for png in sorted(Path(tmp).glob("*.png")):
                shutil.copyfile(png, pictures / png.name)
        audit.pop("codebooks", None)  # per-code histograms: the pictures show them
        rows = [audit]
    else:
        proc = subprocess.run(cmd, cwd=ROOT, text=True, stdout=subprocess.PIPE)
        if proc.returncode != 0:
            raise RuntimeError(f"{suite}: {' '.join(cmd)} exited with status {proc.returncode}")
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        for row in rows:
            row.pop("machine", None)  # recorded once, in the file
    out = results / f"{suite}.json"
    _write_json(out, {"format": FORMAT, "version": VERSION, "suite": suite,
                      "command": f"python {' '.join(SUITES[suite])}",
                      "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                      "machine": _machine(), "libraries": _libraries(), "rows": rows})
    return out


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def load(suite: str, results: Path = RESULTS) -> dict[str, Any] | None:
    """The results file of a suite, or None when it was never measured; a malformed file raises ValueError."""
    path = results / f"{suite}.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT or data.get("version") != VERSION or not isinstance(data.get("rows"), list):
        raise ValueError(f"{path}: expected format {FORMAT!r} version {VERSION} with a list of rows")
    return data


def _num(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return str(v)


def _mib(v: Any) -> str:
    return "–" if v is None else f"{v / 2**20:,.1f}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine_line(data: dict[str, Any]) -> str:
    """One sentence: where and when a results file was measured."""
    m = data["machine"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    forced = f" (forced: {m['isa_forced']})" if m.get("isa_forced") else ""
    libs = ", ".join(f"{k} {v}" for k, v in data.get("libraries", {}).items() if v)
    return (f"Measured {data['date']} on {m['cpu']} ({m['isa']}{forced}, {m['cores']} cores, "
            f"{m['torch_threads']} torch threads{gpu}); {libs}. Command: `{data['command']}`.")


# ---------------------------------------------------------------------------
# Tables: name -> Markdown. The results pages include them by name.
# ---------------------------------------------------------------------------


def _vq_table(d: dict[str, Any]) -> str:
    rows = []
    for r in d["rows"]:
        b = r.get("baselines", {})

        def sp(name: str) -> str:
            return _num(b.get(name, {}).get("speedup")) if name in b else "–"

        rows.append([r.get("case"), r.get("kind", "vq"), r.get("N"), r.get("K"), r.get("D"), r.get("Q") or "–",
                     _num(r.get("ours_ms"), 3), _num(r.get("ours_packed_ms"), 3),
                     sp("matmul"), sp("cdist"), sp("faiss"), sp("faiss_blas"), sp("hf")])
    return _table(["case", "kind", "N", "K", "D", "Q", "ours ms", "ours packed ms", "x matmul", "x cdist",
                   "x faiss", "x faiss_blas", "x HF"], rows)


def _resampler_table(d: dict[str, Any]) -> str:
    rows = []
    for r in d["rows"]:
        if "setting" not in r:
            continue
        rows.append([r["setting"], r.get("batch"), r.get("pass"), _num(r.get("ours_ms"), 2), _num(r.get("sdpa_ms"), 2),
                     _num(r.get("speedup")), _mib(r.get("ours_peak_bytes")), _mib(r.get("sdpa_peak_bytes")),
                     _mib(r.get("concat_kv_bytes"))])
    return _table(["setting", "B", "pass", "ours ms", "SDPA ms", "speed-up", "ours peak MiB", "SDPA peak MiB",
                   "concat K/V MiB"], rows)


def _token_lm_table(d: dict[str, Any]) -> str:
    rows = []
    for r in d["rows"]:
        if r.get("case") != "step":
            continue
        for name, v in r.get("variants", {}).items():
            if not isinstance(v, dict) or "ms" not in v:
                rows.append([r["hidden"], r["tokens"], name, "–", "–", "–", "–", v.get("note", "skipped")
                             if isinstance(v, dict) else v])
                continue
            rows.append([r["hidden"], r["tokens"], name, _num(v.get("ms"), 1), _mib(v.get("trainable_bytes")),
                         _mib(v.get("grad_bytes")), _mib(v.get("optimizer_bytes")), _mib(v.get("peak_bytes"))])
    return _table(["hidden", "tokens", "variant", "step ms", "trainable MiB", "grads MiB", "optimizer MiB",
                   "peak MiB"], rows)


def _token_lm_kernel_table(d: dict[str, Any]) -> str:
    rows = [[r["hidden"], r["tokens"], r.get("new_rows"), _num(r.get("ours_ms"), 3), _num(r.get("dense_ms"), 3),
             _num(r.get("speedup"))] for r in d["rows"] if r.get("case") == "kernel"]
    return _table(["hidden", "tokens", "new rows", "ours ms", "dense backward ms", "speed-up"], rows)


def _tokenize_table(d: dict[str, Any]) -> str:
    rows = []
    for r in d["rows"]:
        facts = {k: v for k, v in r.items() if k not in ("case",) and not isinstance(v, (dict, list))}
        rows.append([r.get("case"), "; ".join(f"{k} {_num(v)}" for k, v in facts.items())])
    return _table(["case", "figures"], rows)


def _codecs_table(d: dict[str, Any]) -> str:
    rows = []
    for r in d["rows"]:
        for timing in ("encode", "quantizer"):
            t = r.get(timing)
            if not isinstance(t, dict):
                continue
            ci = t.get("paired_ratio_ci95") or t.get("ci95")
            rows.append([r.get("backend"), timing, _num(t.get("lumo_ms"), 2), _num(t.get("hf_ms"), 2),
                         _num(t.get("ratio_hf_over_lumo"), 3),
                         "–" if not ci else f"{ci[0]:.3f} – {ci[1]:.3f}", t.get("rounds")])
    return _table(["backend", "timing", "lumo ms", "HF ms", "HF / lumo", "95% interval", "rounds"], rows)


def _audit_tables(d: dict[str, Any]) -> dict[str, str]:
    audit = d["rows"][0]
    metrics = audit.get("metrics", {})
    gates = {c["name"]: c for c in audit.get("checks", []) if c.get("group") == "metrics"}
    mrows = []
    for name, value in metrics.items():
        c = gates.get(name, {})
        mrows.append([f"`{name}`", _num(value, 4), _num(c.get("threshold")) if not isinstance(c.get("threshold"), dict)
                      else ", ".join(f"{k} {v}" for k, v in c["threshold"].items()), c.get("verdict", "–")])
    crows = [[f"`{c['name']}`", c.get("group"), c.get("verdict")] for c in audit.get("checks", [])
             if c.get("group") != "metrics"]
    verdict = "**pass**" if audit.get("metrics_v2_pass") else "**fail**"
    head = (f"`metrics_v2_pass`: {verdict} ({', '.join(f'{v} {k}' for k, v in audit.get('summary', {}).items())}); "
            f"token space `{audit.get('token_space_fingerprint', '')[:19]}…`\n\n")
    return {"audit.metrics": head + _table(["metric", "value", "gate", "verdict"], mrows),
            "audit.checks": _table(["check", "group", "verdict"], crows)}


TABLES: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "vq.speed": ("vq", _vq_table),
    "resampler.attention": ("resampler", _resampler_table),
    "token_lm.step": ("token_lm", _token_lm_table),
    "token_lm.kernel": ("token_lm", _token_lm_kernel_table),
    "tokenize_dataset.throughput": ("tokenize_dataset", _tokenize_table),
    "codecs.encode": ("codecs", _codecs_table),
}


def tables(results: Path = RESULTS) -> dict[str, str]:
    """Every table as Markdown, plus ``<suite>.machine``: the measuring machine. Unmeasured suites say so."""
    out: dict[str, str] = {}
    for suite in SUITES:
        data = load(suite, results)
        names = [t for t, (s, _) in TABLES.items() if s == suite] + (["audit.metrics", "audit.checks"]
                                                                       if suite == "audit" else [])
        if data is None:
            missing = (f"!!! warning \"Not measured yet\"\n    `docs/results/{suite}.json` is missing: "
                       f"run `python benchmarks/report.py --measure {suite}`.\n")
            out[f"{suite}.machine"] = missing
            for name in names:
                out[name] = missing
            continue
        out[f"{suite}.machine"] = machine_line(data) + "\n"
        if suite == "audit":
            out.update(_audit_tables(data))
        for name in names:
            if name in TABLES:
                out[name] = TABLES[name][1](data)
    return out


# ---------------------------------------------------------------------------
# Plots: name -> SVG bytes (matplotlib, imported only here).
# ---------------------------------------------------------------------------


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "lumo", "svg.fonttype": "none", "font.size": 9,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _svg(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _bars(title: str, labels: list[str], series: dict[str, list[float | None]], ylabel: str,
          log: bool = False, hline: float | None = None) -> bytes:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(labels) + 2), 3.2))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, [0 if v is None else v for v in values], width, label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    if hline is not None:
        ax.axhline(hline, color="0.3", lw=0.8, ls="--")
    ax.legend(frameon=False, fontsize=8)
    return _svg(fig)


def _vq_plot(d: dict[str, Any]) -> bytes:
    labels, series = [], {}
    for r in d["rows"]:
        labels.append(f"{r.get('case')}\nK={r.get('K')} D={r.get('D')}")
        for name, b in r.get("baselines", {}).items():
            if isinstance(b, dict) and b.get("speedup") is not None:
                series.setdefault(name, [None] * 0)
        for name in series:
            pass
    names = sorted({n for r in d["rows"] for n, b in r.get("baselines", {}).items()
                    if isinstance(b, dict) and b.get("speedup") is not None})
    series = {n: [r.get("baselines", {}).get(n, {}).get("speedup") for r in d["rows"]] for n in names}
    return _bars("vq_search / rvq_encode: speed-up over each baseline (> 1: ours faster)", labels, series,
                 "baseline time / ours", log=True, hline=1.0)


def _resampler_plot(d: dict[str, Any]) -> bytes:
    rows = [r for r in d["rows"] if "setting" in r]
    labels = [f"{r['setting']} B={r.get('batch')} {r.get('pass')}" for r in rows]
    plt = _figure()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    xs = range(len(rows))
    for ax, key, unit, scale in ((a1, "ms", "median ms", 1), (a2, "peak_bytes", "peak extra MiB", 2**20)):
        ours = [(r.get(f"ours_{key}") or 0) / scale for r in rows]
        sdpa = [(r.get(f"sdpa_{key}") or 0) / scale for r in rows]
        ax.bar([x - 0.2 for x in xs], ours, 0.4, label="resampler_attention")
        ax.bar([x + 0.2 for x in xs], sdpa, 0.4, label="cat + SDPA")
        ax.set_xticks(list(xs), labels, rotation=20, ha="right")
        ax.set_ylabel(unit)
    a1.set_title("time")
    a2.set_title("memory")
    a1.legend(frameon=False, fontsize=8)
    return _svg(fig)


def _token_lm_plot(d: dict[str, Any]) -> bytes:
    steps = [r for r in d["rows"] if r.get("case") == "step"]
    names = ["trainable_bytes", "grad_bytes", "optimizer_bytes", "peak_bytes"]
    labels, series = [], {n.replace("_bytes", ""): [] for n in names}
    for r in steps:
        for variant, v in r.get("variants", {}).items():
            if not isinstance(v, dict) or "ms" not in v:
                continue
            labels.append(f"{variant}\nD={r['hidden']} T={r['tokens']}")
            for n in names:
                series[n.replace("_bytes", "")].append((v.get(n) or 0) / 2**20)
    return _bars("Training the new rows: memory per variant", labels, series, "MiB", log=True)


PLOTS: dict[str, tuple[str, Callable[[dict[str, Any]], bytes]]] = {
    "vq_speedup.svg": ("vq", _vq_plot),
    "resampler.svg": ("resampler", _resampler_plot),
    "token_lm_memory.svg": ("token_lm", _token_lm_plot),
}


def plots(results: Path = RESULTS) -> dict[str, bytes]:
    """Every plot whose suite was measured, as ``{file name: SVG bytes}``."""
    out: dict[str, bytes] = {}
    for name, (suite, fn) in PLOTS.items():
        data = load(suite, results)
        if data is not None:
            out[name] = fn(data)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", nargs="+", metavar="SUITE", choices=[*SUITES, "all"],
                        help=f"run these suites first ({', '.join(SUITES)}, or all)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results folder (default docs/results)")
    parser.add_argument("--out", type=Path, default=Path("results_render"),
                        help="where to write the rendered tables and plots (default ./results_render)")
    args = parser.parse_args(argv)
    for suite in (list(SUITES) if args.measure and "all" in args.measure else args.measure or []):
        print(f"wrote {measure(suite, args.results)}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in tables(args.results).items():
        (args.out / f"{name}.md").write_text(text)
    for name, svg in plots(args.results).items():
        (args.out / name).write_bytes(svg)
    print(f"rendered tables and plots into {args.out}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
