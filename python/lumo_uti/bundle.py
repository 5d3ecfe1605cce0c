"""Bundles: a directory with ``token_space.json`` (+ tokenizer, codecs), and the default one.

A bundle directory holds ``token_space.json`` and whatever its tokenizer
identity points at (an ``hf-tokenizer`` identity names a sub-directory with
``tokenizer.json``; the built-in Qwen3 tokenizer needs no file). The default
bundle ships inside the package (``lumo_uti/data/default``).
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
from importlib import resources
from pathlib import Path
from typing import Any

from ._io import atomic_dir
from ._paths import path_inside
from .errors import BundleError, BundleHashMismatchError, BundleTokenizerMismatchError, TokenizerMismatchError
from .text import load_text_tokenizer, qwen3_tokenizer
from .token_space import BaseSpec, TokenSpace, default_blocks
from .uti import UTI

DEFAULT_NAME = "lumo-default"


def default_bundle_dir() -> Path:
    """The directory of the embedded default bundle."""
    return Path(str(resources.files("lumo_uti") / "data" / "default"))


def build_default_token_space() -> TokenSpace:
    """The default token space, built from code (the shipped JSON must equal it)."""
    tok = qwen3_tokenizer()
    base = BaseSpec(
        tokenizer=tok.identity,
        text_vocab_size=tok.vocab_size,
        base_rows=151936,  # Qwen3-8B-Base embedding rows; 151669.. are padding
        special_tokens=tok.special_tokens,
    )
    return TokenSpace.build(base, default_blocks(), name=DEFAULT_NAME, pad_to_multiple_of=128,
                            codecs=default_codec_identities())


# The default bundle's codecs: directory (inside the bundle), kind, options. The audio codec encodes
# with a beam of 4: about 0.6 dB SI-SNR over the greedy search on unseen speech, still tens of
# times faster than real time on 2 cores (docs/codec_training.md); the codes decode the same way.
DEFAULT_CODECS = {
    "image": ("codecs/image", "lumo-vq", {"max_side": 512}),
    "audio": ("codecs/audio", "lumo-rvq", {"num_quantizers": 8, "beam": 4}),
}


def default_codec_identities() -> dict[str, Any]:
    """The identities (kind, weights hashes, options, path) of the codecs shipped in the default bundle."""
    from .codecs.hf_common import directory_identity

    root = default_bundle_dir()
    return {
        modality: dict(directory_identity(root / rel, kind, options), path=rel)
        for modality, (rel, kind, options) in DEFAULT_CODECS.items()
    }


def load(path: str | os.PathLike | None = None, *, device: Any = "cpu") -> UTI:
    """Load a bundle: ``None`` for the embedded default, else a bundle directory
    or a ``token_space.json`` file.

    Every hash the token space records is checked before the file is used:
    the tokenizer's (``BundleTokenizerMismatchError``, a ``TokenizerMismatchError``
    and a ``BundleError``), each codec's ``config.json`` (before the model is
    built from it) and weight files (``BundleHashMismatchError``). Each error
    names the file and both hashes. Codecs run on ``device``.
    """
    if path is None and device == "cpu":
        return _default()
    path = Path(path) if path is not None else default_bundle_dir()
    if not path.exists():
        raise BundleError(f"bundle not found: {path}")
    ts_file = path / "token_space.json" if path.is_dir() else path
    if not ts_file.is_file():
        raise BundleError(f"{path} is not a bundle: no token_space.json in it")
    token_space = TokenSpace.load(ts_file)
    text_tokenizer = open_text_tokenizer(ts_file, token_space)  # checked first: cheap, fundamental
    token_space.check_text_tokenizer(text_tokenizer)
    codecs = {m: open_codec(ts_file.parent, m, identity, device) for m, identity in token_space.codecs.items()}
    uti = UTI(
        token_space,
        text_tokenizer,
        image_codec=codecs.get("image"),
        audio_codec=codecs.get("audio"),
    )
    uti._loaded_from(path, device=device)  # pickles as a reference to this bundle
    return uti


@functools.lru_cache(maxsize=1)
def _default() -> UTI:
    return load(default_bundle_dir(), device=None)


def _regular_files(directory: Path, what: str) -> None:
    """Refuse a folder of the bundle that holds a device, pipe or socket where a file is read."""
    if not directory.is_dir():
        raise BundleError(f"{what}: folder {directory} not found")
    for f in directory.iterdir():
        if f.suffix in (".json", ".safetensors", ".txt", ".model") and not f.is_file():
            raise BundleError(f"{what}: {f} is not a regular file")


def open_text_tokenizer(ts_file: Path, token_space: TokenSpace):
    """The text tokenizer ``token_space`` records, its hash checked (``BundleTokenizerMismatchError``)."""
    from .text import HFTextTokenizer

    identity = token_space.tokenizer
    rel = identity.get("path")
    if identity.get("kind") == "hf-tokenizer" and isinstance(rel, str):
        _regular_files(path_inside(ts_file.parent, rel, "tokenizer in token_space.json"), "text tokenizer")
    try:
        tok = load_text_tokenizer(identity, ts_file.parent)
    except TokenizerMismatchError:
        if identity.get("kind") == "hf-tokenizer":
            where, found = ts_file.parent / rel / "tokenizer.json", HFTextTokenizer(ts_file.parent / rel).identity["hash"]
        else:  # the built-in tokenizer (its own file is checked when it loads)
            where, found = f"the built-in {identity.get('kind')} tokenizer", qwen3_tokenizer().identity["hash"]
        raise BundleTokenizerMismatchError(
            f"text tokenizer {where} does not match {ts_file}: hash {identity.get('hash')} recorded, {found} found",
            file=str(where), field="tokenizer.hash", recorded=identity.get("hash"), found=found) from None
    except (ValueError, OSError) as e:  # unknown kind, missing field or file
        raise BundleError(f"text tokenizer in {ts_file}: {e}") from None
    return tok


def open_codec(bundle_dir: Path, modality: str, identity: dict[str, Any], device: Any, *, verify: bool = True):
    """The ``modality`` codec that ``identity`` (from ``token_space.json``) records, loaded from the bundle.

    ``verify``: its ``config.json`` hash is checked before the model is built
    and its weights hash after (``BundleHashMismatchError``). ``verify=False``
    loads it whatever its hashes (the audit reports them with
    ``identity_differences``).
    """
    from . import codecs
    from ._hashing import sha256_file

    ts_file = bundle_dir / "token_space.json"
    directory = path_inside(bundle_dir, identity.get("path"), f"{modality} codec in token_space.json")
    kind = identity.get("kind")
    if kind not in codecs.BACKENDS:
        raise BundleError(f"{modality} codec in {ts_file}: unknown codec kind {kind!r} (kinds: {sorted(codecs.BACKENDS)})")
    _regular_files(directory, f"{modality} codec")
    config = directory / "config.json"
    if not config.is_file():
        raise BundleError(f"{modality} codec: {config} is missing")
    if not verify:
        try:
            return codecs.load(f"{kind}:{directory}", device=device or "cpu", **identity.get("options", {}))
        except codecs.CodecError as e:
            raise BundleError(f"{modality} codec in {directory}: {e}") from None
    for field in ("config_hash", "weights_hash"):
        if not isinstance(identity.get(field), str):
            raise BundleError(f"{modality} codec in {ts_file} records no {field}, so {directory} cannot be verified")
    found = sha256_file(config)  # before the model is built from it
    if found != identity["config_hash"]:
        raise BundleHashMismatchError(
            f"{modality} codec config {config} does not match {ts_file}: config_hash {identity['config_hash']} "
            f"recorded, {found} found", file=str(config), field=f"codecs.{modality}.config_hash",
            recorded=identity["config_hash"], found=found)
    try:
        codec = codecs.load(f"{kind}:{directory}", device=device or "cpu", **identity.get("options", {}))
    except codecs.CodecError as e:
        raise BundleError(f"{modality} codec in {directory}: {e}") from None
    if codec.identity.get("config_hash") != identity["config_hash"]:  # changed while it loaded
        raise BundleHashMismatchError(
            f"{modality} codec config {config} changed while it was read: config_hash {identity['config_hash']} "
            f"recorded, {codec.identity.get('config_hash')} found", file=str(config),
            field=f"codecs.{modality}.config_hash", recorded=identity["config_hash"],
            found=codec.identity.get("config_hash"))
    if codec.weights_hash != identity["weights_hash"]:
        recorded, found_files = identity.get("weight_files") or {}, codec.identity["weight_files"]
        differ = sorted(n for n in set(recorded) | set(found_files) if recorded.get(n) != found_files.get(n))
        detail = "; ".join(f"{directory / n}: {recorded.get(n) or 'not recorded'} recorded, "
                           f"{found_files.get(n) or 'missing'} found" for n in differ)
        raise BundleHashMismatchError(
            f"{modality} codec weights in {directory} do not match {ts_file} "
            f"(weights_hash {identity['weights_hash']} recorded, {codec.weights_hash} found); "
            f"files that differ: {differ}" + (f"; {detail}" if detail else ""),
            file=str(directory / differ[0]) if differ else str(directory),
            field=f"codecs.{modality}.weights_hash", recorded=identity["weights_hash"], found=codec.weights_hash)
    return codec


def identity_differences(recorded: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """Human lines for every codec identity field that differs between the record and a loaded codec."""
    out = []
    rec_files, found_files = recorded.get("weight_files") or {}, found.get("weight_files") or {}
    for name in sorted(set(rec_files) | set(found_files)):
        a, b = rec_files.get(name), found_files.get(name)
        if a != b:
            if a is None:
                out.append(f"weight file {name} is not recorded in token_space.json")
            elif b is None:
                out.append(f"weight file {name} is recorded but missing")
            else:
                out.append(f"weight file {name} has hash {b}, recorded {a}")
    for key in ("weights_hash", "config_hash", "kind"):
        if recorded.get(key) != found.get(key):
            out.append(f"{key} is {found.get(key)}, recorded {recorded.get(key)}")
    return out


def create_bundle(
    out: str | os.PathLike,
    *,
    text: str = "qwen3",
    image: str | None = None,
    audio: str | None = None,
    image_options: dict[str, Any] | None = None,
    audio_options: dict[str, Any] | None = None,
    name: str | None = None,
    base_rows: int | None = None,
    grid_max: int = 256,
    force: bool = False,
) -> Path:
    """Write a bundle directory: token_space.json, tokenizer (if not built in), codec copies.

    Args:
        text: ``"qwen3"`` (built in) or ``"hf:DIR"`` (a local tokenizer.json directory).
        image, audio: codec specs ``"KIND:DIR"`` (``lumo_uti.codecs``); each model
            directory is copied into ``codecs/<modality>`` and its identity and
            weights hash are recorded.
        base_rows: embedding rows of the base model (default: 151936 for Qwen3,
            the tokenizer's vocab size otherwise).
    The bundle is assembled in a temporary sibling directory and swapped into
    place (``lumo_uti._io.atomic_dir``: the old one renamed aside, the new one
    renamed in, then the old one deleted), so a failure or a kill leaves either
    the old bundle or the new one, never a mix; an existing ``out`` is refused
    unless ``force``. Codec and tokenizer files are copied only when they are
    regular files (a link is followed to its file; a device or pipe is refused).
    """
    from . import codecs
    from .text import HFTextTokenizer
    from .token_space import DEFAULT_SPECIALS, codes_block, grid_block, special_block

    out = Path(out)
    if out.exists() and not force:
        raise BundleError(f"{out} exists; pass force=True (--force) to replace it")
    with atomic_dir(out) as tmp:
        if text == "qwen3":
            tok = qwen3_tokenizer()
            identity, rows = tok.identity, base_rows or 151936
        elif text.startswith("hf:"):
            src = Path(text[3:])
            if not (src / "tokenizer.json").is_file():
                raise BundleError(f"text tokenizer: {src} has no tokenizer.json (--text hf:DIR)")
            (tmp / "tokenizer").mkdir()
            for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                if (src / f).is_file():
                    _copy_regular_file(src / f, tmp / "tokenizer" / f)
            tok = HFTextTokenizer(tmp / "tokenizer")
            identity, rows = dict(tok.identity, path="tokenizer"), base_rows or tok.vocab_size
        else:
            raise BundleError(f"text must be 'qwen3' or 'hf:DIR', got {text!r}")
        blocks, recorded = [special_block(DEFAULT_SPECIALS, size=64)], {}
        for modality, spec, options in (("image", image, image_options), ("audio", audio, audio_options)):
            if spec is None:
                continue
            kind, src_dir = codecs.parse_spec(spec)
            if not Path(src_dir).is_dir():
                raise codecs.CodecError(f"codec directory not found: {src_dir}")
            dest = tmp / "codecs" / modality
            dest.mkdir(parents=True)
            for f in sorted(Path(src_dir).iterdir()):
                if f.suffix in (".json", ".safetensors", ".txt", ".model"):
                    if not f.is_file():
                        raise codecs.CodecError(f"{modality} codec: {f} is not a regular file")
                    _copy_regular_file(f, dest / f.name)
            try:
                codec = codecs.load(f"{kind}:{dest}", **(options or {}))
            except codecs.CodecError as e:  # name the source folder, not the temporary copy
                raise codecs.CodecError(str(e).replace(str(dest), str(src_dir))) from None
            if modality == "image":
                blocks.append(grid_block(grid_max))
            blocks.append(codes_block(modality, codec.codebook_size, codec.num_codebooks))
            recorded[modality] = dict(codec.identity, path=f"codecs/{modality}")
        base = BaseSpec(identity, tok.vocab_size, rows, tok.special_tokens)
        token_space = TokenSpace.build(base, blocks, name=name or out.name, codecs=recorded)
        token_space.save(tmp / "token_space.json")
    return out


def export_bundle(
    out: str | os.PathLike, *, source: str | os.PathLike | None = None, force: bool = False
) -> Path:
    """Copy a bundle (default: the embedded one) to the directory ``out``.

    The copy holds token_space.json, the tokenizer (if not built in), the codec
    weights (safetensors) and configs, and anything else in the bundle such as
    ``gates.json``, so that ``load(out)`` and ``lumo audit --bundle out`` accept
    it and a team can change it. Python caches and hidden files are left out.
    Only regular files and folders inside the bundle are copied: a symbolic
    link, device or pipe in it is refused, never followed. The copy is made in
    a temporary sibling directory and swapped into place as ``create_bundle``
    does: a failure or a kill leaves the previous ``out`` (or none), never a
    half-written or half-deleted one, and the temporary folders a killed
    export left are removed by the next one.

    Raises:
        BundleError: ``source`` is not a bundle (no token_space.json), holds a
            link or special file, ``out`` is inside ``source``, or ``out``
            exists and ``force`` is False.
    """
    src = Path(source) if source is not None else default_bundle_dir()
    out = Path(out)
    if not (src / "token_space.json").is_file():
        raise BundleError(f"{src} is not a bundle: no token_space.json in it")
    TokenSpace.load(src / "token_space.json")  # refuse to export a broken token space
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise BundleError(f"cannot export bundle {src} into itself ({out})")
    if (out.exists() or out.is_symlink()) and not force:
        raise BundleError(f"{out} exists; pass force=True (--force) to replace it")
    _check_tree(src)  # before anything is written
    with atomic_dir(out) as tmp:
        _copy_tree(src, src, tmp)
    return out


def _skip_in_export(name: str) -> bool:
    return name.startswith(".") or name == "__pycache__" or name.endswith(".pyc") or name == "__init__.py"


def _check_tree(root: Path, directory: Path | None = None) -> None:
    """Refuse links and special files anywhere in a bundle (never follows a link)."""
    directory = root if directory is None else directory
    with os.scandir(directory) as entries:
        for e in entries:
            if _skip_in_export(e.name):
                continue
            rel = Path(e.path).relative_to(root)
            if e.is_symlink():
                raise BundleError(
                    f"cannot export {root}: {rel} is a symbolic link (to {os.readlink(e.path)!r}); links are not "
                    "followed out of a bundle: replace it with the file or folder itself"
                )
            if e.is_dir(follow_symlinks=False):
                _check_tree(root, Path(e.path))
            elif not e.is_file(follow_symlinks=False):
                raise BundleError(f"cannot export {root}: {rel} is not a regular file or folder")


def _copy_tree(root: Path, src: Path, dst: Path) -> None:
    with os.scandir(src) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if _skip_in_export(e.name):
            continue
        if e.is_dir(follow_symlinks=False):
            os.mkdir(dst / e.name, 0o777)
            _copy_tree(root, Path(e.path), dst / e.name)
        else:
            _copy_regular_file(Path(e.path), dst / e.name, follow=False, root=root)


def _copy_regular_file(src: Path, dst: Path, *, follow: bool = True, root: Path | None = None) -> None:
    """Copy one regular file (``follow=False``: refuse a link, even one swapped in after a check).

    The copy gets the usual ``0o666 & ~umask`` mode; a device, pipe or socket is refused.
    """
    flags = os.O_RDONLY | (0 if follow else getattr(os, "O_NOFOLLOW", 0)) | getattr(os, "O_NONBLOCK", 0)
    where = src.relative_to(root) if root is not None else src
    try:
        fd = os.open(src, flags)
    except OSError as e:
        raise BundleError(f"cannot copy {where}: {e.strerror} (a link is not followed out of a bundle)"
                          if not follow else f"cannot copy {src}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as fin:
        if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
            raise BundleError(f"cannot copy {where}: not a regular file")
        with open(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
