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
them from the JSON (``tools/docs_hooks.py`` calls :func:`tables` and
:func:`plots`), so a page can never disagree with its data.

The settings below are modest, so that a run fits a shared 2-core machine
(about half an hour in all on 2 busy cores). For fuller sweeps, or the GPU
figures, run the benchmark scripts with their own defaults (their docstrings).
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
    "codecs": ["benchmarks/codecs.py", "--backends", "hf-janus,hf-encodec,hf-dac", "--repeats", "3", "--budget-s", "5",
               "--quantizer-repeats", "5"],
    # 2048 tokens once per ISA (the best one, then AVX2 with PyTorch forced to AVX2 too): about 3 minutes.
    "rows_ce": ["benchmarks/rows_ce.py", "--tokens", "2048", "--repeats", "2", "--isas", "best", "avx2"],
    "audit": ["-m", "lumo_uti.cli", "audit"],  # plus --out; its audit.json becomes the rows
}


# The audit's pictures that the results pages show (all of them would be ~6 MB in the repository).
AUDIT_PICTURES = ("image_reconstructions.png", "image_codebook_usage.png", "audio_00.png", "audio_01.png",
                  "audio_codebook_usage.png")

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
    for name in ("lumoomni", "torch", "numpy", "faiss-cpu", "transformers", "tiktoken", "peft"):
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
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a results file is for everyone to read
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
                if png.name in AUDIT_PICTURES:
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
    """One table per op (vq_search, rvq_encode): each has its own baselines."""
    out = []
    for op in dict.fromkeys(r.get("op") for r in d["rows"]):
        rows_of_op = [r for r in d["rows"] if r.get("op") == op]
        names = sorted({n for r in rows_of_op for n in r.get("baselines", {})})
        rows = []
        for r in rows_of_op:
            b = r.get("baselines", {})
            shape = " ".join(f"{k}={v}" for k, v in r.get("shape", {}).items())
            rows.append([f"`{r['case']}`", shape, _num(r.get("ours_ms"), 3), _num(r.get("ours_packed_ms"), 3)]
                        + [_num(b[n]["speedup"]) + ("" if b[n].get("agree") in (None, 1.0) else
                                                    f" (agree {b[n]['agree']})") if n in b else "–" for n in names])
        out.append(f"`{op}`:\n\n" + _table(["case", "shape", "ours ms", "packed ms"] + [f"x {n}" for n in names],
                                              rows))
    return "\n".join(out)


def _resampler_table(d: dict[str, Any]) -> str:
    rows = []
    for r in d["rows"]:
        if r.get("bench") != "resampler_attention":
            continue
        sh, peak = r["shape"], r.get("peak_bytes", {})
        rows.append([f"{r['setting']} ({sh['Hq']}x{sh['D']}, {sh['Hkv']} kv) B={sh['B']}", r["mode"],
                     _num(r["lumo_s"] * 1e3), _num(r["sdpa_concat_s"] * 1e3), _num(r["speedup_vs_sdpa"]),
                     _mib(peak.get("lumo")), _mib(peak.get("sdpa_concat")), _mib(r.get("concat_kv_bytes_avoided"))])
    return _table(["setting", "pass", "ours ms", "SDPA ms", "speed-up", "ours peak MiB", "SDPA peak MiB",
                   "K/V concat avoided MiB"], rows)


def _connector_table(d: dict[str, Any]) -> str:
    rows = [[r["shape"]["B"], r["shape"]["text_dim"], r["dtype"], _num(r["fused_s"], 3), _num(r["reference_s"], 3),
             _num(r["speedup_vs_reference"])] for r in d["rows"] if r.get("bench") == "connector_step"]
    return _table(["B", "text dim", "dtype", "fused attention s", "reference attention s", "speed-up"], rows)


def _token_lm_table(d: dict[str, Any]) -> str:
    rows = []
    for r in d["rows"]:
        if r.get("case") != "step":
            continue
        peaks = r.get("peak_step_bytes") or r.get("peak_rss_bytes") or {}
        for name, ms in r.get("median_ms", {}).items():
            b = r.get("bytes", {}).get(name, {})
            rows.append([f"D={r['hidden']} T={r['tokens']}", name, _num(ms / 1e3, 2),
                         _mib(b.get("trainable_param_bytes")), _mib(b.get("grad_bytes")),
                         _mib(b.get("optimizer_state_bytes")), _mib(peaks.get(name))])
        for note in r.get("notes", []):
            rows.append([f"D={r['hidden']} T={r['tokens']}", "*note*", note, "", "", "", ""])
    return _table(["shape", "variant", "step s", "params MiB", "grads MiB", "optimizer MiB", "peak MiB"], rows)


def _token_lm_kernel_table(d: dict[str, Any]) -> str:
    rows = []
    for r in d["rows"]:
        if r.get("case") != "kernel":
            continue
        ms, out = r["median_ms"], r.get("output_bytes", {})
        rows.append([f"D={r['hidden']} T={r['tokens']}", _num(ms.get("rowmask"), 3),
                     _num(ms.get("dense_embedding_backward"), 3), _num(r.get("speedup_vs_dense")),
                     _mib(out.get("rowmask")), _mib(out.get("dense_embedding_backward"))])
    return _table(["shape", "rowmask ms", "dense ms", "speed-up", "rowmask grad MiB", "dense grad MiB"], rows)


def _rows_ce_rows(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in d["rows"] if r.get("bench") == "rows_ce" and "seconds" in r]


def _rows_ce_isa(r: dict[str, Any]) -> str:
    forced = r.get("isa_forced") or {}
    return f"{r.get('isa', '?')}" + (" (PyTorch forced too)" if "ATEN_CPU_CAPABILITY" in forced else "")


def _rows_ce_table(d: dict[str, Any]) -> str:
    rows = []
    for r in _rows_ce_rows(d):
        sec, peak = r["seconds"], r.get("peak_extra_bytes", {})
        rows.append([_rows_ce_isa(r), r["tokens"], f"{r['dim']} x {r['base_rows']} + {r['new_rows']}", r["dtype"],
                     _num(sec.get("fused")), _num(sec.get("materialized")),
                     _num(r["time_ratio_vs_materialized"].get("fused")), _mib(peak.get("fused")),
                     _mib(peak.get("materialized")), _num(r.get("memory_ratio_vs_materialized"), 3),
                     f"{r['loss_rel_diff']:.1e}"])
    return _table(["ISA", "tokens", "D x rows (base + new)", "dtype", "fused s", "materialised s",
                   "fused / materialised", "fused peak MiB", "materialised peak MiB", "memory ratio",
                   "loss rel. diff"], rows)


def _tokenize_table(d: dict[str, Any]) -> str:
    out = []
    text = [r for r in d["rows"] if r.get("case") == "text"]
    if text:
        out.append(_table(["text: documents", "MB", "tokens", "processes", "ours docs/s", "tiktoken docs/s",
                           "ours / tiktoken", "goal"],
                          [[r["documents"], _num(r["mb"], 1), f"{r['tokens']:,}", r["workers"],
                            _num(r["ours_docs_per_s"]), _num(r["tiktoken_docs_per_s"]), _num(r["ratio_vs_tiktoken"]),
                            r.get("goal", "–")] for r in text]))
    images = [r for r in d["rows"] if r.get("case", "").startswith("images")]
    if images:
        out.append(_table(["images: documents", "1 worker images/s", "2 workers images/s", "speed-up",
                           "2-worker start-up s", "speed-up after start-up", "same bytes", "goal"],
                          [[r["documents"], _num(r["images_per_s_w1"]), _num(r["images_per_s_w2"]),
                            _num(r["speedup_w2_vs_w1"]), _num(r["w2_startup_s"]),
                            _num(r["speedup_w2_vs_w1_after_startup"]), "yes" if r.get("same_bytes") else "**no**",
                            r.get("goal", "–")] for r in images]))
    other = [r for r in d["rows"] if r not in text and r not in images]
    if other:  # memory and GPU cases: their fields as they are
        out.append(_table(["case", "figures"], [[f"`{r.get('case')}`", "; ".join(
            f"{k}: {v}" for k, v in r.items() if k != "case")] for r in other]))
    return "\n".join(out)


def _codecs_table(d: dict[str, Any]) -> str:
    rows = []
    for r in d["rows"]:
        for timing in ("encode", "quantizer"):
            t = r.get(timing)
            if not isinstance(t, dict):
                continue
            ci, pr = t.get("ratio_ci95"), t.get("ratio_per_round_ci95")
            rows.append([f"`{r['backend']}`", timing, _num(t.get("lumo_median_ms"), 2), _num(t.get("hf_median_ms"), 2),
                         f"{t['ratio']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""),
                         f"{t['ratio_per_round_median']:.3f}" + (f" [{pr[0]:.3f}, {pr[1]:.3f}]" if pr else ""),
                         t.get("rounds"), "yes" if r.get("codes_identical") else "**no**"])
    return _table(["backend", "timing", "lumo ms", "HF ms", "HF / lumo [95% CI]", "per-round ratio [95% CI]",
                   "rounds", "codes identical"], rows)


def _shipped_fingerprint() -> str | None:
    """The embedded default bundle's fingerprint (None when lumo_uti is not importable)."""
    try:
        from lumo_uti.bundle import default_bundle_dir
    except ImportError:
        return None
    return json.loads((default_bundle_dir() / "token_space.json").read_text()).get("fingerprint")


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
    stale = ""
    shipped = _shipped_fingerprint()
    if shipped and audit.get("token_space_fingerprint") != shipped:
        stale = ('!!! warning "Measured on another bundle"\n    This audit ran on token space '
                 f"`{audit.get('token_space_fingerprint')}`; the package now ships `{shipped}`. "
                 "Run `python benchmarks/report.py --measure audit`.\n\n")
    head = stale + (f"`metrics_v2_pass`: {verdict} ({', '.join(f'{v} {k}' for k, v in audit.get('summary', {}).items())}); "
            f"token space `{audit.get('token_space_fingerprint', '')[:19]}…`\n\n")
    return {"audit.metrics": head + _table(["metric", "value", "gate", "verdict"], mrows),
            "audit.checks": _table(["check", "group", "verdict"], crows)}


TABLES: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "vq.speed": ("vq", _vq_table),
    "resampler.attention": ("resampler", _resampler_table),
    "resampler.connector": ("resampler", _connector_table),
    "token_lm.step": ("token_lm", _token_lm_table),
    "token_lm.kernel": ("token_lm", _token_lm_kernel_table),
    "tokenize_dataset.throughput": ("tokenize_dataset", _tokenize_table),
    "codecs.encode": ("codecs", _codecs_table),
    "rows_ce.time": ("rows_ce", _rows_ce_table),
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
    ax.set_xticks(range(len(labels)), labels, fontsize=7.5, **({} if len(labels) <= 8 else
                                                                {"rotation": 20, "ha": "right"}))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    if hline is not None:
        ax.axhline(hline, color="0.3", lw=0.8, ls="--")
    ax.legend(frameon=False, fontsize=8)
    return _svg(fig)


BASELINE_NAMES = {"hf": "HF EnCodec quantizer", "vqp": "vector-quantize-pytorch", "faiss": "faiss IndexFlatL2",
                  "faiss_blas": "faiss, BLAS path forced", "matmul": "matmul + argmin",
                  "matmul_loop": "matmul + argmin per stage", "cdist": "cdist + argmin"}


def _vq_plot(d: dict[str, Any]) -> bytes:
    rows = d["rows"]
    labels = [f"{r['case']}\nK={r['shape']['K']}\nD={r['shape']['D']}" for r in rows]
    names = sorted({n for r in rows for n, b in r.get("baselines", {}).items() if b.get("speedup") is not None})
    series = {BASELINE_NAMES.get(n, n): [r.get("baselines", {}).get(n, {}).get("speedup") for r in rows]
              for n in names}
    return _bars("vq_search / rvq_encode: speed-up over each baseline (above 1: ours faster)", labels, series,
                 "baseline time / ours (log)", log=True, hline=1.0)


def _resampler_plot(d: dict[str, Any]) -> bytes:
    rows = [r for r in d["rows"] if r.get("bench") == "resampler_attention"]
    labels = [f"{r['setting']} B={r['shape']['B']}\n{r['mode']}" for r in rows]
    plt = _figure()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
    xs = list(range(len(rows)))
    pairs = ((a1, "time", "median ms", lambda r, k: r[f"{k}_s" if k == "lumo" else "sdpa_concat_s"] * 1e3),
             (a2, "peak extra memory", "MiB", lambda r, k: (r.get("peak_bytes", {}).get(
                 "lumo" if k == "lumo" else "sdpa_concat") or 0) / 2**20))
    for ax, title, unit, get in pairs:
        ax.bar([x - 0.2 for x in xs], [get(r, "lumo") for r in rows], 0.4, label="resampler_attention")
        ax.bar([x + 0.2 for x in xs], [get(r, "sdpa") for r in rows], 0.4, label="torch.cat + SDPA")
        ax.set_xticks(xs, labels, rotation=25, ha="right", fontsize=7)
        ax.set_ylabel(unit)
        ax.set_title(title)
    a1.legend(frameon=False, fontsize=8)
    return _svg(fig)


def _token_lm_plot(d: dict[str, Any]) -> bytes:
    kinds = (("trainable_param_bytes", "parameters"), ("grad_bytes", "gradients"),
             ("optimizer_state_bytes", "optimizer state"))
    labels, series = [], {label: [] for _, label in kinds}
    series["peak of a step"] = []
    for r in d["rows"]:
        if r.get("case") != "step":
            continue
        peaks = r.get("peak_step_bytes") or r.get("peak_rss_bytes") or {}
        for variant in r.get("median_ms", {}):
            labels.append(f"{variant}\nD={r['hidden']} T={r['tokens']}")
            b = r["bytes"].get(variant, {})
            for key, label in kinds:
                series[label].append((b.get(key) or 0) / 2**20 or None)
            series["peak of a step"].append((peaks.get(variant) or 0) / 2**20 or None)
    return _bars("Embedding + LM head training step: memory of each variant", labels, series, "MiB")


def _rows_ce_plot(d: dict[str, Any]) -> bytes:
    rows = _rows_ce_rows(d)
    labels = [f"{r.get('isa', '?')}\nT={r['tokens']}" for r in rows]
    series = {"fused (rows_linear_cross_entropy)": [r["seconds"].get("fused") for r in rows],
              "materialised (F.linear + F.cross_entropy)": [r["seconds"].get("materialized") for r in rows]}
    return _bars("Rows-only LM head loss + backward: time", labels, series, "median s")


PLOTS: dict[str, tuple[str, Callable[[dict[str, Any]], bytes]]] = {
    "vq_speedup.svg": ("vq", _vq_plot),
    "resampler.svg": ("resampler", _resampler_plot),
    "token_lm_memory.svg": ("token_lm", _token_lm_plot),
    "rows_ce.svg": ("rows_ce", _rows_ce_plot),
}


def plots(results: Path = RESULTS) -> dict[str, bytes]:
    """Every plot as ``{file name: SVG bytes}`` (a placeholder for a suite not measured yet)."""
    out: dict[str, bytes] = {}
    for name, (suite, fn) in PLOTS.items():
        data = load(suite, results)
        out[name] = fn(data) if data is not None else _placeholder(suite)
    return out


def _placeholder(suite: str) -> bytes:
    """What a page shows while a suite has no results file (so the page still builds)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"not measured yet: python benchmarks/report.py --measure {suite}", ha="center", va="center")
    return _svg(fig)


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
