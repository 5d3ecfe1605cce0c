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
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import BundleError
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


# The default bundle's codecs: directory (inside the bundle), kind, options.
DEFAULT_CODECS = {
    "image": ("codecs/image", "lumo-vq", {"max_side": 512}),
    "audio": ("codecs/audio", "lumo-rvq", {"num_quantizers": 8}),
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

    The tokenizer's hash is checked against the token space
    (``TokenizerMismatchError``), and so is every codec's weights hash
    (``BundleError`` naming the files that differ). Codecs run on ``device``.
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
    text_tokenizer = load_text_tokenizer(token_space.tokenizer, ts_file.parent)  # checked first: cheap, fundamental
    codecs = {m: _load_codec(ts_file.parent, m, identity, device) for m, identity in token_space.codecs.items()}
    return UTI(
        token_space,
        text_tokenizer,
        image_codec=codecs.get("image"),
        audio_codec=codecs.get("audio"),
    )


@functools.lru_cache(maxsize=1)
def _default() -> UTI:
    return load(default_bundle_dir(), device=None)


def _inside(bundle_dir: Path, rel: Any, what: str) -> Path:
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise BundleError(f"{what}: path must be relative and inside the bundle, got {rel!r}")
    return bundle_dir / rel


def _load_codec(bundle_dir: Path, modality: str, identity: dict[str, Any], device: Any):
    from . import codecs

    directory = _inside(bundle_dir, identity.get("path"), f"{modality} codec in token_space.json")
    codec = codecs.load(f"{identity.get('kind')}:{directory}", device=device or "cpu", **identity.get("options", {}))
    if codec.weights_hash != identity.get("weights_hash"):
        recorded, found = identity.get("weight_files", {}), codec.identity["weight_files"]
        differ = sorted(n for n in set(recorded) | set(found) if recorded.get(n) != found.get(n))
        raise BundleError(
            f"{modality} codec weights in {directory} do not match token_space.json "
            f"(weights_hash {identity.get('weights_hash')} recorded, {codec.weights_hash} found); "
            f"files that differ: {differ}"
        )
    return codec


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
    The bundle is assembled in a temporary sibling directory and renamed into
    place, so a failure leaves nothing half-written; an existing ``out`` is
    refused unless ``force``.
    """
    from . import codecs
    from .text import HFTextTokenizer
    from .token_space import DEFAULT_SPECIALS, codes_block, grid_block, special_block

    out = Path(out)
    if out.exists() and not force:
        raise BundleError(f"{out} exists; pass force=True (--force) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if text == "qwen3":
            tok = qwen3_tokenizer()
            identity, rows = tok.identity, base_rows or 151936
        elif text.startswith("hf:"):
            src = Path(text[3:])
            (tmp / "tokenizer").mkdir()
            for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                if (src / f).is_file():
                    shutil.copy2(src / f, tmp / "tokenizer" / f)
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
            for f in Path(src_dir).iterdir():
                if f.is_file() and f.suffix in (".json", ".safetensors", ".txt", ".model"):
                    shutil.copy2(f, dest / f.name)
            codec = codecs.load(f"{kind}:{dest}", **(options or {}))
            if modality == "image":
                blocks.append(grid_block(grid_max))
            blocks.append(codes_block(modality, codec.codebook_size, codec.num_codebooks))
            recorded[modality] = dict(codec.identity, path=f"codecs/{modality}")
        base = BaseSpec(identity, tok.vocab_size, rows, tok.special_tokens)
        token_space = TokenSpace.build(base, blocks, name=name or out.name, codecs=recorded)
        token_space.save(tmp / "token_space.json")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_bundle(
    out: str | os.PathLike, *, source: str | os.PathLike | None = None, force: bool = False
) -> Path:
    """Copy a bundle (default: the embedded one) to the directory ``out``.

    The copy holds token_space.json, the tokenizer (if not built in), the codec
    weights (safetensors) and configs, and anything else in the bundle such as
    ``gates.json``, so that ``load(out)`` and ``lumo audit --bundle out`` accept
    it and a team can change it. Python caches and hidden files are left out.
    The copy is made in a temporary sibling directory and renamed into place:
    a failure leaves nothing half-written.

    Raises:
        BundleError: ``source`` is not a bundle (no token_space.json), ``out``
            is inside ``source``, or ``out`` exists and ``force`` is False.
    """
    src = Path(source) if source is not None else default_bundle_dir()
    out = Path(out)
    if not (src / "token_space.json").is_file():
        raise BundleError(f"{src} is not a bundle: no token_space.json in it")
    TokenSpace.load(src / "token_space.json")  # refuse to export a broken token space
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise BundleError(f"cannot export bundle {src} into itself ({out})")
    if out.exists() and not force:
        raise BundleError(f"{out} exists; pass force=True (--force) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True,
                        ignore=lambda d, names: [n for n in names if n.startswith(".") or n == "__pycache__"
                                                 or n.endswith(".pyc") or n == "__init__.py"])
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
