"""The ``lumo`` command. ``lumo --help`` lists the commands; docs/cli.md has examples.

Exit status: 0 success, 1 the input was read but is invalid (e.g. strict
decoding failed), 2 a user error, reported as one line on stderr (unknown
option, unreadable or malformed file, unusable bundle or codec, unwritable
output).
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .docjson import describe_segment, document_from_json, segment_to_json
from .errors import UsageError, UTIDecodeError, UTIError


# The entry-point group through which installed packages add command groups
# (pyproject.toml, [project.entry-points."lumo.commands"]): each entry names a
# ``register(subparsers)`` function. A registering module must import heavy
# dependencies (torch models, transformers) inside its commands only, so that
# ``lumo --help`` stays fast. Gathering commands this way keeps this package
# free of imports of the packages built on it.
COMMAND_GROUP = "lumo.commands"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except BrokenPipeError:  # e.g. `lumo encode ... | head`
        return 0
    except UTIDecodeError as e:
        print(f"lumo {args.command}: invalid token stream: {_one_line(e)}", file=sys.stderr)
        return 1
    except (UTIError, OSError) as e:  # the user's, not bugs: bad input, bundle, codec or file, unwritable output
        print(f"lumo {args.command}: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(error: BaseException) -> str:
    """An error's message on one line (a user error is one line on stderr)."""
    return " ".join(str(error).split()) or type(error).__name__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lumo", description="LumoOmni: the Unified Token Interface and its tools.")
    p.add_argument("--version", action="version", version=f"lumo {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def add(name: str, help: str, func) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        return sp

    sp = add("demo", "encode and decode a bundled document (text, a photo, speech) with the default bundle: "
                     "the quick tour", _cmd_demo)
    sp.add_argument("--out", default="lumo_demo_out", help="output folder (default: ./lumo_demo_out)")
    sp.add_argument("--bundle", help="another bundle with an image and an audio codec (default: embedded bundle)")

    sp = add("inspect", "show a bundle's token space: blocks, sizes, fingerprint", _cmd_inspect)
    sp.add_argument("bundle", nargs="?", help="bundle directory or token_space.json (default: embedded bundle)")
    sp.add_argument("--json", action="store_true", help="print the token space JSON")

    sp = add("encode", "encode text, images, audio or a JSON document to global token IDs", _cmd_encode)
    sp.add_argument("--text", action=_Ordered, help="text (repeatable; items keep their command-line order)")
    sp.add_argument("--image", action=_Ordered, metavar="FILE", help="an image file (needs a bundle with an image codec)")
    sp.add_argument("--audio", action=_Ordered, metavar="FILE", help="an audio file (needs a bundle with an audio codec)")
    sp.add_argument("--doc", metavar="FILE", help="a JSON document file (see docs/cli.md), - for stdin")
    sp.add_argument("--bundle", help="bundle directory (default: embedded bundle)")
    sp.add_argument("--no-special", action="store_true", help="encode special-token text such as <|im_start|> as plain text")
    sp.add_argument("--json", action="store_true", help="print a JSON object with ids, counts and fingerprint")
    sp.add_argument("--out", metavar="FILE", help="also write the IDs as JSON to FILE")

    sp = add("decode", "decode a JSON file of token IDs back to segments", _cmd_decode)
    sp.add_argument("ids_file", metavar="IDS_FILE", help='JSON list of IDs, {"ids": [...]}, or whitespace-separated; - for stdin')
    sp.add_argument("--bundle", help="bundle directory (default: embedded bundle)")
    sp.add_argument("--lenient", action="store_true", help="repair malformed streams and report each repair")
    sp.add_argument("--json", action="store_true", help="print the segments (and repairs) as JSON")
    sp.add_argument("--out", metavar="DIR", help="write each segment to DIR (text .txt, images .png, audio .wav, codes .json)")

    sp = add("bundle", "create a bundle from a tokenizer and codec model directories, or export one", _cmd_bundle)
    sp.add_argument("action", choices=["create", "export"],
                    help="create: write a new bundle directory (--out DIR); export DIR: copy a bundle to DIR")
    sp.add_argument("dir", nargs="?", metavar="DIR", help="export: the directory to write")
    sp.add_argument("--bundle", metavar="SRC", help="export: the bundle to copy (default: the embedded one)")
    sp.add_argument("--text", default="qwen3", help="qwen3 (built in, default) or hf:DIR (a local tokenizer.json)")
    sp.add_argument("--image", metavar="KIND:DIR", help="image codec, e.g. hf-janus:/models/janus-vq")
    sp.add_argument("--audio", metavar="KIND:DIR", help="audio codec, e.g. hf-encodec:/models/encodec_24khz")
    sp.add_argument("--image-option", action="append", default=[], metavar="KEY=VALUE", help="image codec option")
    sp.add_argument("--audio-option", action="append", default=[], metavar="KEY=VALUE", help="audio codec option, e.g. bandwidth=6.0")
    sp.add_argument("--name", help="token space name (default: the output folder's name)")
    sp.add_argument("--out", metavar="DIR", help="create: the bundle directory to write")
    sp.add_argument("--force", action="store_true", help="replace an existing bundle directory")

    add("backends", "show which compiled kernel backends loaded (cpu, cuda) and why not", _cmd_backends)
    for register in command_registrars():
        register(sub)
    return p


def command_registrars() -> list:
    """The ``register(subparsers)`` functions of the installed command groups, in declaration order."""
    return [entry.load() for entry in entry_points(group=COMMAND_GROUP)]


# -- commands -------------------------------------------------------------------------
def _cmd_inspect(args) -> int:
    from .bundle import default_bundle_dir
    from .token_space import TokenSpace

    ts = TokenSpace.load(args.bundle or default_bundle_dir())
    if args.json:
        print(ts.to_json_bytes().decode("utf-8"), end="")
        return 0
    tok = ts.tokenizer
    print(f"token space   {ts.name}  (schema {ts.schema_version[0]}.{ts.schema_version[1]})")
    print(f"fingerprint   {ts.fingerprint}")
    print(f"tokenizer     {tok.get('kind')} {tok.get('name', '')}  {tok.get('hash')}")
    print(f"vocab         {ts.vocab_size} IDs, padded to {ts.padded_vocab_size}")
    print(f"{'region':<14}{'IDs':>20}{'size':>9}  details")
    for region in ts.regions:
        details = ""
        if ts.has_block(region.name):
            blk = ts.block(region.name)
            if blk.kind == "codes":
                details = f"{blk.modality}: {blk.num_codebooks} x {blk.codebook_size} codes, {blk.layout}"
            elif blk.kind == "special":
                details = f"{len(blk.tokens)} named ({', '.join(blk.tokens)}), {blk.size - len(blk.tokens)} reserved"
            else:
                details = f"image sides 1..{blk.size}"
        elif region.name == "text":
            details = f"base tokenizer, {len(ts.special_tokens) - sum(len(b.tokens) for b in ts.blocks)} specials"
        else:
            details = "never emitted"
        ids = f"{region.start}..{region.end - 1}"
        print(f"{region.name:<14}{ids:>20}{region.end - region.start:>9}  {details}")
    codecs = ts.codecs
    if not codecs:
        print("codecs        none (codes only)")
    for modality, c in codecs.items():
        options = ", ".join(f"{k}={v}" for k, v in c.get("options", {}).items())
        print(f"codec {modality:<7} {c.get('kind')} {c.get('name', '')} ({c.get('path', '?')}{', ' + options if options else ''})")
        print(f"              weights {c.get('weights_hash')}")
    return 0


class _Ordered(argparse.Action):
    """Collects --text/--image/--audio into one list that keeps their order."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, "items", None) or [])
        items.append((self.dest, values))
        namespace.items = items


def _cmd_encode(args) -> int:
    uti = _load(args.bundle)
    items = getattr(args, "items", None) or []
    if bool(items) == bool(args.doc):
        raise UsageError("give either --doc FILE or --text/--image/--audio items")
    if args.doc:
        try:
            document: Any = document_from_json(_read_json(args.doc))
        except ValueError as e:
            raise UsageError(str(e)) from None
    else:
        document = [_read_media(kind, value) for kind, value in items]
    try:
        ids = uti.encode(document, allow_special=not args.no_special)
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None
    if args.out:
        from ._io import atomic_write_text

        atomic_write_text(args.out, json.dumps(ids) + "\n")
    if args.json:
        counts = [len(uti.encode([seg], allow_special=not args.no_special)) for seg in document]
        print(json.dumps({"ids": ids, "num_tokens": len(ids), "segment_tokens": counts, "fingerprint": uti.token_space.fingerprint}))
    else:
        print(json.dumps(ids))
    return 0


def _cmd_decode(args) -> int:
    uti = _load(args.bundle)
    ids = _read_ids(args.ids_file)
    decode = uti.decode if args.out else uti.decode_codes
    segments = decode(ids, strict=not args.lenient)
    repairs = segments.repairs
    if args.out:
        written = _write_segments(Path(args.out), segments, repairs)
        for line in written:
            print(line)
        return 0
    if args.json:
        out = {"segments": [segment_to_json(s) for s in segments]}
        if args.lenient:
            out["repairs"] = [r.__dict__ for r in repairs]
        print(json.dumps(out, ensure_ascii=False))
        return 0
    for seg in segments:
        print(describe_segment(seg))
    for rep in repairs:
        print(f"repaired {rep}", file=sys.stderr)
    return 0


def _cmd_backends(args) -> int:
    from .ops import backends

    print(json.dumps(backends(), indent=2, default=str))
    return 0


def _cmd_demo(args) -> int:
    from .demo import run

    uti = _load(args.bundle) if args.bundle else None
    if uti is not None and (uti.image_codec is None or uti.audio_codec is None):
        raise UsageError(f"--bundle {args.bundle}: the demo needs a bundle with an image and an audio codec")
    lines, ok = run(args.out, uti)
    print("\n".join(lines))
    return 0 if ok else 1


def _cmd_bundle(args) -> int:
    from .bundle import create_bundle

    if args.action == "export":
        return _cmd_bundle_export(args)
    if args.dir is not None or args.bundle is not None:
        raise UsageError("bundle create takes --out DIR (DIR and --bundle are for bundle export)")
    if not args.out:
        raise UsageError("bundle create needs --out DIR")
    out = create_bundle(
        args.out,
        text=args.text,
        image=args.image,
        audio=args.audio,
        image_options=_options(args.image_option),
        audio_options=_options(args.audio_option),
        name=args.name,
        force=args.force,
    )
    print(f"wrote bundle {out}")
    return _cmd_inspect(argparse.Namespace(bundle=str(out), json=False))


def _cmd_bundle_export(args) -> int:
    from .bundle import export_bundle

    create_only = [f"--{k}" for k in ("image", "audio", "name") if getattr(args, k)] + (
        ["--text"] if args.text != "qwen3" else []) + (["--image-option"] if args.image_option else []) + (
        ["--audio-option"] if args.audio_option else [])
    if create_only:
        raise UsageError(f"bundle export does not take {', '.join(create_only)} (those are for bundle create)")
    target = args.dir or args.out
    if not target:
        raise UsageError("bundle export needs the directory to write: lumo bundle export DIR")
    if args.dir and args.out:
        raise UsageError("give the export directory once (DIR or --out DIR)")
    source = args.bundle
    if source is not None and not (Path(source) / "token_space.json").is_file():
        raise UsageError(f"--bundle {source}: not a bundle directory (no token_space.json)")
    out = export_bundle(target, source=source, force=args.force)
    print(f"exported bundle {source or 'default'} to {out}")
    return 0


# -- helpers --------------------------------------------------------------------------
def _options(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE strings -> dict, values parsed as JSON when they parse (6.0 -> float)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"expected KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _read_media(kind: str, value: str) -> Any:
    if kind == "text":
        return value
    if kind == "audio":
        from .media import Audio

        try:
            return Audio.load(value)
        except ValueError as e:
            raise UsageError(str(e)) from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(value) as img:
            img.load()
            return img.copy()
    except Image.DecompressionBombError as e:  # more pixels than PIL's limit: refused before decoding
        raise UsageError(f"image file {value} is too large to decode: {e}") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError) as e:  # PIL's ways to say "broken"
        raise UsageError(f"cannot read image file {value}: {e}") from None


def _write_segments(out: Path, segments: list[Any], repairs: list[Any]) -> list[str]:
    """Write one file per segment plus index.json; returns human lines."""
    from ._io import atomic_write_bytes, atomic_write_text
    from .media import Audio

    out.mkdir(parents=True, exist_ok=True)
    index, lines = [], []
    for i, seg in enumerate(segments):
        if isinstance(seg, str):
            name = f"{i:03d}.txt"
            atomic_write_text(out / name, seg)
            entry = {"type": "text", "file": name}
        elif isinstance(seg, Audio):
            name = f"{i:03d}.wav"
            seg.save(out / name)
            entry = {"type": "audio", "file": name, "sample_rate": seg.sample_rate, "seconds": round(seg.duration, 3)}
        elif hasattr(seg, "save") and hasattr(seg, "size"):  # PIL image
            import io

            buf = io.BytesIO()
            seg.save(buf, format="PNG")
            name = f"{i:03d}.png"
            atomic_write_bytes(out / name, buf.getvalue())
            entry = {"type": "image", "file": name, "size": list(seg.size)}
        else:
            name = f"{i:03d}.json"
            atomic_write_text(out / name, json.dumps(segment_to_json(seg)) + "\n")
            entry = {"type": type(seg).__name__, "file": name}
        index.append(entry)
        lines.append(f"wrote {out / name}")
    report = {"segments": index, "repairs": [r.__dict__ for r in repairs]}
    atomic_write_text(out / "index.json", json.dumps(report, indent=2) + "\n")
    lines.append(f"wrote {out / 'index.json'}")
    return lines


def _load(bundle: str | None):
    from .bundle import load

    return load(bundle)


def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None


def _read_json(path: str) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None


def _read_ids(path: str) -> list[int]:
    """IDs from JSON (a list or {"ids": [...]}) or whitespace-separated integers."""
    text = _read_text(path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        try:
            return [int(tok) for tok in text.split()]
        except ValueError:
            raise UsageError(f"{path}: expected a JSON list of IDs or whitespace-separated integers") from None
    if isinstance(obj, dict):
        obj = obj.get("ids")
    if not isinstance(obj, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in obj):
        raise UsageError(f'{path}: expected a JSON list of integer IDs or {{"ids": [...]}}')
    return obj


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
