"""MkDocs hooks: the pages that are generated from code and from measured results.

- ``<!-- lumo:cli -->`` in a page becomes the reference of every ``lumo``
  command, walked from the argument parsers themselves (``lumo_uti.cli``).
- ``<!-- lumo:api PACKAGE -->`` becomes one mkdocstrings block per public
  name of the package (its ``__all__``, or the lazy ``_EXPORTS`` table),
  read from the source without importing it.
- ``<!-- lumo:bundle -->`` becomes the table of the embedded default
  bundle's files (size, SHA-256) and the identities its
  ``token_space.json`` records.
- ``<!-- lumo:formats -->`` becomes the table of file formats and the
  schema names and versions the code writes and reads (its constants).
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
# A marker may be indented (inside an admonition or a list): the text it becomes gets the same indent.
_MARKER = re.compile(r"^([ \t]*)<!--\s*lumo:(cli|results|api|bundle|formats)\s*([\w.]*)\s*-->", re.M)
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
        out.extend(f"| [`{' '.join([*path, n])}`](#{'-'.join([*path, n])}) | {_escape(h)} |" for n, _, h in subs)
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
# The home page's picture: a document, its segments and where their IDs lie, drawn from the code
# ---------------------------------------------------------------------------

_COLOURS = {"text": "#4C72B0", "base_padding": "#BBBBBB", "special": "#DD8452", "grid": "#937860",
            "image": "#55A868", "audio": "#C44E52", "padding": "#DDDDDD"}


def token_stream_svg() -> bytes:
    """A small document encoded with the default token space: the stream, its segments, the ID layout."""
    import numpy as np

    import lumo_uti

    report = _report()
    plt = report._figure()
    from matplotlib.patches import ConnectionPatch, Rectangle

    uti = lumo_uti.load()
    ts = uti.token_space
    doc = ["A photo:", lumo_uti.ImageCodes(np.arange(6).reshape(2, 3)), "then a sound:",
           lumo_uti.AudioCodes(np.arange(16).reshape(2, 8) * 3)]
    labels = ["text\n\"A photo:\"", "image: 2 x 3 codes", "text\n\"then a sound:\"", "audio: 2 frames x 8 codebooks"]
    lengths = [len(uti.encode([seg])) for seg in doc]
    ids = uti.encode(doc)
    regions = ts.regions
    kinds = [regions[i].name for i in ts.classify(np.asarray(ids))]
    fig = plt.figure(figsize=(10, 3.9))
    top = fig.add_axes((0.02, 0.55, 0.96, 0.38))
    bottom = fig.add_axes((0.02, 0.06, 0.96, 0.16))
    n = len(ids)
    for i, (tid, kind) in enumerate(zip(ids, kinds)):
        top.add_patch(Rectangle((i, 0), 0.92, 1, color=_COLOURS[kind]))
        top.text(i + 0.46, 0.5, str(tid), rotation=90, ha="center", va="center", fontsize=6.5, color="white")
    start = 0
    for length, label in zip(lengths, labels):
        top.annotate("", xy=(start, 1.12), xytext=(start + length - 0.08, 1.12),
                     arrowprops={"arrowstyle": "|-|", "lw": 0.8, "color": "0.3", "shrinkA": 0, "shrinkB": 0})
        top.text(start + (length - 0.08) / 2, 1.22, label, ha="center", va="bottom", fontsize=8)
        start += length
    top.set_xlim(-0.2, n + 0.2)
    top.set_ylim(0, 1.6)
    top.axis("off")
    top.set_title("uti.encode(document): one flat list of global token IDs", fontsize=9, loc="left")
    # The ID space: each region gets a width that grows with the log of its size, so small blocks stay visible.
    widths = [max(0.6, np.log10(max(r.end - r.start, 1))) for r in regions]
    x, spans = 0.0, {}
    for r, w in zip(regions, widths):
        bottom.add_patch(Rectangle((x, 0), w * 0.97, 1, color=_COLOURS.get(r.name, "#999999")))
        bottom.text(x + w / 2, 1.15, r.name.replace("_", " "), ha="center", va="bottom", fontsize=7.5)
        bottom.text(x + w / 2, -0.2, f"[{r.start}, {r.end})", ha="center", va="top", fontsize=6.5, color="0.3")
        spans[r.name] = (x, w * 0.97, r)
        x += w
    bottom.set_xlim(0, x)
    bottom.set_ylim(-1, 2.2)
    bottom.axis("off")
    bottom.text(0, 2.3, f"token space {ts.name!r}: {ts.padded_vocab_size} rows", fontsize=8, va="bottom")
    for i, (tid, kind) in enumerate(zip(ids, kinds)):
        x0, w, r = spans[kind]
        xb = x0 + w * (tid - r.start + 0.5) / max(r.end - r.start, 1)
        fig.add_artist(ConnectionPatch((i + 0.46, 0), (xb, 1), "data", "data", axesA=top, axesB=bottom,
                                       color=_COLOURS[kind], lw=0.5, alpha=0.6))
    return report._svg(fig)


# ---------------------------------------------------------------------------
# File formats: the schema constants, read from the source
# ---------------------------------------------------------------------------

# (file, what it is, source file, schema-name constant, version constant or None)
FORMATS = (
    ("token_space.json", "the token space (the ABI)", "python/lumo_uti/token_space.py", "SCHEMA", "SCHEMA_VERSION"),
    ("shards/manifest.json", "token shards written by `lumo tokenize-dataset`", "python/lumo_uti/datasets/writer.py",
     "SCHEMA", "SCHEMA_VERSION"),
    ("adapter/manifest.json", "a rows-only adapter (Track B)", "python/lumo_model/token_lm/packaging.py",
     "MANIFEST_SCHEMA", "MANIFEST_VERSION"),
    ("gates.json", "quality gates of the audit", "python/lumo_uti/audit/gates.py", "FORMAT", "VERSION"),
    ("audit.json", "the audit's report", "python/lumo_uti/audit/report.py", "FORMAT", "VERSION"),
    ("codecs/image/config.json", "a `lumo-vq` image codec", "python/lumo_uti/codecs/lumo_vq.py", "FORMAT", None),
    ("codecs/audio/config.json", "a `lumo-rvq` audio codec", "python/lumo_uti/codecs/lumo_rvq.py", "FORMAT", None),
    ("docs/results/*.json", "a benchmark's results (this site's tables)", "benchmarks/report.py", "FORMAT", "VERSION"),
)


def _constant(source: str, name: str) -> Any:
    tree = ast.parse((ROOT / source).read_text(), source)
    node = _literal(tree, name)
    if node is None:
        raise PluginError(f"lumo:formats: {source} no longer defines {name}")
    return ast.literal_eval(node)


def formats_markdown() -> str:
    rows = ["| file | what | schema | version | defined in |", "| --- | --- | --- | --- | --- |"]
    for file, what, source, schema, version in FORMATS:
        v = _constant(source, version) if version else "–"
        v = ".".join(map(str, v)) if isinstance(v, (tuple, list)) else v
        rows.append(f"| `{file}` | {what} | `{_constant(source, schema)}` | {v} | `{source}` |")
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------
# The shipped bundle: its files and recorded hashes
# ---------------------------------------------------------------------------


def bundle_markdown() -> str:
    import hashlib
    import json

    from lumo_uti.bundle import default_bundle_dir

    root = default_bundle_dir()
    ts = json.loads((root / "token_space.json").read_text())
    rows = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        rows.append(f"| `{path.relative_to(root).as_posix()}` | {path.stat().st_size:,} | `sha256:{digest[:16]}…` |")
    out = ["| file | bytes | SHA-256 |", "| --- | ---: | --- |", *rows, "",
           "| recorded in `token_space.json` | value |", "| --- | --- |",
           f"| token space | `{ts['name']}`, schema {ts['schema_version'][0]}.{ts['schema_version'][1]} |",
           f"| fingerprint | `{ts['fingerprint']}` |",
           f"| tokenizer | {ts['base']['tokenizer']['kind']} `{ts['base']['tokenizer']['name']}`, "
           f"`{ts['base']['tokenizer']['hash']}` |"]
    for modality, c in sorted(ts.get("codecs", {}).items()):
        out.append(f"| {modality} codec | `{c['kind']}` {c.get('options', {})}: weights `{c['weights_hash']}`, "
                   f"config `{c['config_hash']}` |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------


def on_config(config, **kwargs):
    _state.clear()
    return config


def on_files(files, config, **kwargs):
    files.append(File.generated(config, "assets/token_stream.svg", content=token_stream_svg()))
    for name, svg in _report().plots().items():
        files.append(File.generated(config, f"results/plots/{name}", content=svg))
    return files


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    if "lumo:" not in markdown:
        return markdown

    def replace(match: re.Match) -> str:
        indent = match.group(1)
        text = generate(match.group(2), match.group(3))
        return "\n".join(indent + line if line else line for line in text.split("\n"))

    def generate(kind: str, name: str) -> str:
        if kind == "formats":
            return formats_markdown()
        if kind == "bundle":
            return bundle_markdown()
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
