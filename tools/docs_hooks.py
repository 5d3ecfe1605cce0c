"""MkDocs hooks: the pages that are generated from code and from measured results.

- ``<!-- lumo:cli -->`` in a page becomes the reference of every ``lumo``
  command, walked from the argument parsers themselves (``lumo_uti.cli``).
- ``<!-- lumo:api PACKAGE -->`` becomes one mkdocstrings block per public
  name of the package (its ``__all__``, or the lazy ``_EXPORTS`` table),
  read from the source without importing it.
- ``<!-- lumo:results NAME -->`` becomes a table rendered by
  ``benchmarks/report.py`` from ``docs/results/*.json`` (``NAME`` such as
  ``vq.speed`` or ``vq.machine``); the plots it draws are added to the site
  as ``results/plots/*.svg``.

An unknown marker name fails the build, so a renamed table cannot vanish
silently from a page.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
_MARKER = re.compile(r"<!--\s*lumo:(cli|results|api)\s*([\w.]*)\s*-->")
_state: dict[str, Any] = {}


def _report():
    if "report" not in _state:
        spec = importlib.util.spec_from_file_location("lumo_bench_report", ROOT / "benchmarks" / "report.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _state["report"] = module
    return _state["report"]


# ---------------------------------------------------------------------------
# CLI reference
# ---------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    for action in parser._actions:  # argparse keeps the tree here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            return [(name, sub, helps.get(name) or "") for name, sub in action.choices.items()]
    return []


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _option_rows(parser: argparse.ArgumentParser) -> list[list[str]]:
    rows = []
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if a.option_strings:
            metavar = ""
            if a.nargs != 0:
                metavar = a.metavar or (a.dest.upper() if not a.choices else "{" + ",".join(map(str, a.choices)) + "}")
                metavar = " " + (metavar if isinstance(metavar, str) else " ".join(metavar))
            names = ", ".join(f"`{s}{metavar}`" for s in a.option_strings)
        else:
            names = f"`{a.metavar or a.dest}`"
            if a.choices:
                names += " (" + " \\| ".join(f"`{c}`" for c in a.choices) + ")"
        help_text = (a.help or "").replace("%(default)s", str(a.default)).replace("%%", "%")
        default = a.default
        show_default = (default not in (None, False, argparse.SUPPRESS) and a.nargs != 0
                        and "default" not in help_text.lower() and not isinstance(a, argparse._VersionAction))
        if show_default:
            help_text += f" (default: `{default}`)"
        rows.append([names, _escape(help_text) or " "])
    return rows


def _command_markdown(path: list[str], parser: argparse.ArgumentParser, summary: str, out: list[str]) -> None:
    subs = _subparsers(parser)
    level = min(2 + len(path) - 1, 4)
    title = " ".join(path)
    out.append(f"{'#' * level} `{title}`\n")
    description = parser.description or summary
    if description and len(path) > 1:
        out.append(_escape(description) + "\n")
    usage = " ".join(parser.format_usage().split())
    out.append(f"```text\n{usage.removeprefix('usage: ')}\n```\n")
    rows = _option_rows(parser)
    if rows:
        out.append("| argument | meaning |\n| --- | --- |")
        out.extend(f"| {name} | {text} |" for name, text in rows)
        out.append("")
    if subs:
        out.append("| command | what it does |\n| --- | --- |")
        out.extend(f"| `{' '.join([*path, n])}` | {_escape(h)} |" for n, _, h in subs)
        out.append("")
        for name, sub, help_text in subs:
            _command_markdown([*path, name], sub, help_text, out)


def cli_markdown() -> str:
    """The reference of every ``lumo`` command and option, from the parsers."""
    from lumo_uti import cli

    out: list[str] = []
    _command_markdown(["lumo"], cli._parser(), "", out)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# Python API: the public names of a package, read with ast (no import, no compiled module needed)
# ---------------------------------------------------------------------------


def _literal(tree: ast.Module, name: str) -> Any:
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets) and node.value is not None:
            return node.value
    return None


def public_names(package: str) -> list[str]:
    """``package``'s public objects as mkdocstrings identifiers, in ``__all__`` order."""
    base = ROOT / "python" / package.replace(".", "/")
    init = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    if not init.is_file():
        raise PluginError(f"lumo:api {package}: no source at {init}")
    tree = ast.parse(init.read_text(), str(init))
    lazy_node = _literal(tree, "_EXPORTS")
    lazy = ast.literal_eval(lazy_node) if lazy_node is not None else {}
    all_node = _literal(tree, "__all__")
    if isinstance(all_node, (ast.List, ast.Tuple)):
        names = ast.literal_eval(all_node)
    elif lazy:
        names = sorted(lazy)
    else:  # a module without __all__: the classes and functions it defines
        names = [n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))
                 and not n.name.startswith("_")]
        if not names:
            raise PluginError(f"lumo:api {package}: {init} has no __all__ list and defines no public name")
    return [f"{package}.{lazy[n].lstrip('.')}.{n}" if n in lazy else f"{package}.{n}" for n in names]


def api_markdown(package: str) -> str:
    return "\n".join(f"::: {ident}\n    options:\n      heading_level: 3\n" for ident in public_names(package))


# ---------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------


def on_config(config, **kwargs):
    _state.clear()
    return config


def on_files(files, config, **kwargs):
    for name, svg in _report().plots().items():
        files.append(File.generated(config, f"results/plots/{name}", content=svg))
    return files


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    if "lumo:" not in markdown:
        return markdown

    def replace(match: re.Match) -> str:
        kind, name = match.group(1), match.group(2)
        if kind == "api":
            return api_markdown(name)
        if kind == "cli":
            if "cli" not in _state:
                _state["cli"] = cli_markdown()
            return _state["cli"]
        if "tables" not in _state:
            _state["tables"] = _report().tables()
        if name not in _state["tables"]:
            known = ", ".join(sorted(_state["tables"]))
            raise PluginError(f"{page.file.src_uri}: unknown results table {name!r} (known: {known})")
        return _state["tables"][name]

    return _MARKER.sub(replace, markdown)


if __name__ == "__main__":  # print the CLI reference (a quick look without mkdocs)
    sys.stdout.write(cli_markdown())
