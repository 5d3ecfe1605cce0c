"""The documentation site's generators: CLI reference, API pages, results tables, and the browser check.

The site itself is built by CI (tools/docs_ci.sh: mkdocs build --strict, then
headless Chromium); these tests keep the generators honest without a build.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hooks():
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install .[docs])")
    return _load("lumo_docs_hooks", ROOT / "tools" / "docs_hooks.py")


@pytest.fixture(scope="module")
def report():
    return _load("lumo_bench_report", ROOT / "benchmarks" / "report.py")


@pytest.fixture(scope="module")
def browser_check():
    return _load("lumo_docs_browser_check", ROOT / "tools" / "docs_browser_check.py")


def _walk(parser: argparse.ArgumentParser, path: list[str]):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, [*path, name])


# -- CLI reference ---------------------------------------------------------------------


def test_cli_reference_has_every_command_and_option(hooks):
    from lumo_uti import cli

    text = hooks.cli_markdown()
    commands = list(_walk(cli._parser(), ["lumo"]))
    assert len(commands) > 10  # the group commands (tokenlm, vlm, shards, ...) are registered
    headings = set(re.findall(r"^#+ `([^`]+)`$", text, flags=re.M))
    for path, parser in commands:
        assert " ".join(path) in headings, f"no section for {' '.join(path)}"
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in text, f"{' '.join(path)}: option {option} missing"


def test_cli_reference_escapes_table_cells(hooks):
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--mode", choices=["a", "b"], help="a|b, the mode")
    rows = hooks._option_rows(parser)
    assert rows == [["`--mode {a,b}`", "a\\|b, the mode"]]


# -- API pages --------------------------------------------------------------------------


def test_api_pages_name_every_public_object(hooks):
    import lumo_model.token_lm
    import lumo_uti.ops

    names = hooks.public_names("lumo_uti.ops")
    assert names == [f"lumo_uti.ops.{n}" for n in lumo_uti.ops.__all__]
    lazy = hooks.public_names("lumo_model.token_lm")  # lazy exports: pointed at their defining module
    assert len(lazy) == len(lumo_model.token_lm.__all__)
    for ident in lazy:
        module, _, name = ident.rpartition(".")
        assert hasattr(importlib.import_module(module), name), ident


def test_every_marker_in_the_docs_resolves(hooks, report):
    tables = report.tables()
    seen = 0
    for page in DOCS.rglob("*.md"):
        for kind, name in re.findall(r"<!--\s*lumo:(\w+)\s*([\w.]*)\s*-->", page.read_text()):
            seen += 1
            assert kind in ("cli", "results", "api", "bundle", "formats"), f"{page}: unknown marker {kind}"
            if kind == "results":
                assert name in tables, f"{page}: unknown results table {name}"
            elif kind == "api":
                assert hooks.public_names(name), f"{page}: {name} has no public names"
    assert seen > 10


def test_formats_table_reads_the_schema_constants(hooks):
    from lumo_uti import token_space
    from lumo_uti.datasets import writer

    text = hooks.formats_markdown()
    assert f"`{token_space.SCHEMA}` | {'.'.join(map(str, token_space.SCHEMA_VERSION))} |" in text
    assert f"`{writer.SCHEMA}` | {writer.SCHEMA_VERSION} |" in text


# -- results ----------------------------------------------------------------------------


def _results_file(tmp: Path, suite: str, rows: list[dict]) -> None:
    (tmp / f"{suite}.json").write_text(json.dumps({
        "format": "lumo-results", "version": 1, "suite": suite, "command": f"python benchmarks/{suite}.py",
        "date": "2026-01-02T03:04:05Z", "libraries": {"torch": "9.9"},
        "machine": {"cpu": "Test CPU", "isa": "avx2", "isa_forced": None, "cores": 4, "torch_threads": 3},
        "rows": rows}))


def test_results_tables_render_from_json(tmp_path, report):
    _results_file(tmp_path, "vq", [{
        "case": "tiny_d8", "op": "vq_search", "shape": {"N": 4096, "K": 16384, "D": 8}, "ours_ms": 1.25,
        "ours_packed_ms": 1.0, "baselines": {"faiss": {"speedup": 7.5, "agree": 1.0},
                                             "cdist": {"speedup": 3.0, "agree": 0.999}}}])
    tables = report.tables(tmp_path)
    assert "| `tiny_d8` | N=4096 K=16384 D=8 | 1.250 | 1.000 | 3.00 (agree 0.999) | 7.50 |" in tables["vq.speed"]
    assert tables["vq.speed"].startswith("`vq_search`:")
    assert "Test CPU (avx2, 4 cores, 3 torch threads, no GPU)" in tables["vq.machine"]
    assert "2026-01-02T03:04:05Z" in tables["vq.machine"] and "torch 9.9" in tables["vq.machine"]
    assert "Not measured yet" in tables["resampler.attention"]  # no file: the page says how to measure it
    plots = report.plots(tmp_path)
    assert plots["vq_speedup.svg"].startswith(b"<?xml") and b"tiny_d8" in plots["vq_speedup.svg"]
    assert b"not measured yet" in plots["resampler.svg"]


def test_results_file_of_another_format_is_refused(tmp_path, report):
    (tmp_path / "vq.json").write_text(json.dumps({"format": "something", "rows": []}))
    with pytest.raises(ValueError, match="lumo-results"):
        report.load("vq", tmp_path)


def test_committed_results_record_their_machine(report):
    files = sorted((DOCS / "results").glob("*.json"))
    assert files, "no results under docs/results"
    for path in files:
        data = report.load(path.stem)
        assert path.stem in report.SUITES, f"{path.name}: no suite of that name in benchmarks/report.py"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["date"]), path.name
        for key in ("cpu", "isa", "cores", "torch_threads", "torch"):
            assert data["machine"].get(key) is not None, f"{path.name}: machine.{key} missing"
        assert data["libraries"].get("torch"), path.name
        assert data["rows"], f"{path.name}: no rows"


# -- browser check ----------------------------------------------------------------------


def test_browser_check_without_browser_skips_locally_and_fails_in_ci(tmp_path, browser_check, monkeypatch, capsys):
    (tmp_path / "index.html").write_text("<html><body>hi</body></html>")
    monkeypatch.setattr(browser_check, "find_browser", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    assert browser_check.main([str(tmp_path), "--out", str(tmp_path / "shots")]) == 0
    assert "SKIPPED: no Chromium found" in capsys.readouterr().out
    monkeypatch.setenv("CI", "true")
    assert browser_check.main([str(tmp_path), "--out", str(tmp_path / "shots")]) == 2
    assert "may not be skipped" in capsys.readouterr().err


def test_browser_check_finds_broken_images_and_console_errors(tmp_path, browser_check):
    if browser_check.find_browser() is None:
        # CI installs Chromium in its docs step, after the tests, and that step fails without one.
        pytest.skip("no Chromium installed (apt-get install chromium)")
    site = tmp_path / "site"
    (site / "bad").mkdir(parents=True)
    png = (ROOT / "docs" / "results" / "audit" / "image_codebook_usage.png").read_bytes()
    (site / "ok.png").write_bytes(png)
    head = '<head><title>{}</title><link rel="icon" href="data:,"></head>'  # no favicon request
    (site / "index.html").write_text(f'<html>{head.format("good")}<body><img src="ok.png"></body></html>')
    (site / "bad" / "index.html").write_text(
        f'<html>{head.format("bad")}<body><img src="missing.png"><img src="../ok.png">'
        '<script>console.error("boom"); undefined_function();</script></body></html>')
    out = tmp_path / "shots"
    status = browser_check.main([str(site), "--out", str(out), "--page", "good=:1", "--page", "bad=bad/:2"])
    result = json.loads((out / "report.json").read_text())
    good, bad = result["pages"]
    assert good["pass"] and good["images"] == 1 and good["title"] == "good"
    problems = "\n".join(bad["problems"])
    assert status == 1 and not bad["pass"]
    assert "missing.png" in problems and "console error: boom" in problems
    assert "undefined_function" in problems and "expected at least 2 image(s)" in problems
    assert (out / "good.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_audit_results_of_another_bundle_are_flagged(tmp_path, report):
    audit = json.loads((DOCS / "results" / "audit.json").read_text())
    audit["rows"][0]["token_space_fingerprint"] = "sha256:" + "0" * 64
    (tmp_path / "audit.json").write_text(json.dumps(audit))
    assert "Measured on another bundle" in report.tables(tmp_path)["audit.metrics"]
