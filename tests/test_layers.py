"""Layers point down: lumo_uti (the interface) never imports lumo_model (the models built on it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UTI = ROOT / "python" / "lumo_uti"


def _imported_modules(path: Path) -> list[str]:
    """Every module a file imports, by absolute name (relative imports resolve inside lumo_uti)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module", "__import__"
        ):
            out += [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return out


def test_lumo_uti_never_imports_lumo_model():
    files = sorted(UTI.rglob("*.py"))
    assert len(files) > 20  # the scan saw the package
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        for name in _imported_modules(path)
        if name == "lumo_model" or name.startswith("lumo_model.")
    ]
    assert offenders == []


def test_lumo_uti_names_no_lumo_model_module_in_code():
    """No module path as a string either (e.g. a table of modules to load by name)."""
    offenders = []
    for path in sorted(UTI.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("lumo_model."):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert offenders == []


def test_the_scan_catches_an_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import importlib\nfrom lumo_model.vlm import cli\nimportlib.import_module('lumo_model.codec')\n")
    assert _imported_modules(bad) == ["importlib", "lumo_model.vlm", "lumo_model.codec"]


def test_every_command_group_is_installed():
    """The lumo command gathers its groups through the entry-point group of both packages."""
    from lumo_uti.cli import COMMAND_GROUP, command_registrars

    from importlib.metadata import entry_points

    modules = {e.value.partition(":")[0] for e in entry_points(group=COMMAND_GROUP)}
    if not modules:
        pytest.fail("no lumo.commands entry points: reinstall the package (pip install -e .)")
    assert {"lumo_model.token_lm.cli", "lumo_model.vlm.cli", "lumo_model.codec.cli",
            "lumo_uti.audit.cli", "lumo_uti.datasets.cli"} <= modules
    assert all(callable(r) for r in command_registrars())
