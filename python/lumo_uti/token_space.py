"""The token space: the versioned, hashed ABI of global token IDs.

Layout (the arithmetic lives in ``lumo_uti.grammar.layout``)::

    [0, text_vocab_size)             base text tokenizer (Qwen3: BPE + 26 specials)
    [text_vocab_size, base_rows)     base padding rows, never emitted
    [base_rows, ...)                 UTI blocks, appended one after another:
        special  named markers (<|image_start|> ...) then reserved slots
        grid     image side lengths: value v is offset + v - 1 (v = 1..size)
        image    codes: code c of codebook q is offset + q * K + c
        audio    codes: same arithmetic
    [vocab_size, padded_vocab_size)  tail padding, never emitted

IDs are computed from the declared blocks only. ``token_space.json`` holds the
whole description plus a fingerprint (SHA-256 of its canonical JSON without the
fingerprint field); loading re-validates everything.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ._hashing import canonical_json, sha256_bytes
from ._ids import as_int64_ids
from ._io import atomic_write_bytes
from .errors import TokenSpaceError, TokenSpaceLookupError

SCHEMA = "lumo.token_space"
SCHEMA_VERSION = (1, 0)  # (major, minor); a new major may move IDs and is refused

# Sanity limits, checked on build and on load: far above any real model (Qwen3
# has 151936 rows), low enough that a mask over all IDs stays small (2^24
# bools are 16 MiB) and that a damaged or hostile file cannot ask for more.
MAX_VOCAB_SIZE = 1 << 24
MAX_CODEBOOKS = 1024

BLOCK_KINDS = ("special", "grid", "codes")
MODALITIES = ("image", "audio")
LAYOUTS = {"image": "row-major", "audio": "frame-major"}

IMAGE_START = "<|image_start|>"
IMAGE_END = "<|image_end|>"
AUDIO_START = "<|audio_start|>"
AUDIO_END = "<|audio_end|>"
IMAGE_PATCH = "<|image_patch|>"
MARKERS = {"image": (IMAGE_START, IMAGE_END), "audio": (AUDIO_START, AUDIO_END)}


@dataclass(frozen=True)
class Block:
    """One contiguous block of UTI token IDs.

    ``kind`` is ``special`` (``tokens`` are named at ``offset + i``, the rest of
    the block is reserved), ``grid`` (values 1..size) or ``codes``
    (``num_codebooks`` x ``codebook_size`` codes of one ``modality``).
    ``offset`` is ``None`` in a spec until ``TokenSpace.build`` places it.
    """

    name: str
    kind: str
    size: int
    offset: int | None = None
    codebook_size: int = 0
    num_codebooks: int = 1
    modality: str | None = None
    layout: str | None = None
    tokens: tuple[str, ...] = ()

    @property
    def end(self) -> int:
        """One past the last ID of the block."""
        return self._placed() + self.size

    def code_id(self, codebook: int, code: int) -> int:
        """Global ID of ``code`` in ``codebook`` (codes blocks); ``TokenSpaceError`` when it has none."""
        if self.kind != "codes":
            raise TokenSpaceError("range", f"block {self.name!r} is a {self.kind} block, not a codes block")
        if not 0 <= codebook < self.num_codebooks:
            raise TokenSpaceError("range", f"block {self.name!r}: codebook must be in [0, {self.num_codebooks}), got {codebook}")
        if not 0 <= code < self.codebook_size:
            raise TokenSpaceError("range", f"block {self.name!r}: code must be in [0, {self.codebook_size}), got {code}")
        from .grammar.layout import code_id

        self._placed()
        return code_id(self, codebook, code)

    def _placed(self) -> int:
        if self.offset is None:
            raise TokenSpaceError("block", f"block {self.name!r} has no offset yet (build the TokenSpace first)")
        return self.offset

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "offset": self.offset, "size": self.size}
        if self.kind == "codes":
            out.update(
                codebook_size=self.codebook_size,
                num_codebooks=self.num_codebooks,
                modality=self.modality,
                layout=self.layout,
            )
        if self.kind == "special":
            out["tokens"] = list(self.tokens)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Block":
        if not isinstance(obj, Mapping):
            raise TokenSpaceError("block", f"expected a block object, got {type(obj).__name__}")
        try:
            name, kind = obj["name"], obj["kind"]
            if not isinstance(name, str) or not name:
                raise TokenSpaceError("block", f"block name must be a non-empty string, got {_short(name)}")
            if not isinstance(kind, str):
                raise TokenSpaceError("block", f"block {name!r}: kind must be a string, got {_short(kind)}")
            for key in ("modality", "layout"):
                if not isinstance(obj.get(key), (str, type(None))):
                    raise TokenSpaceError("block", f"block {name!r}: {key} must be a string, got {_short(obj[key])}")
            tokens = obj.get("tokens", ())
            if not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens):
                raise TokenSpaceError("special", f"block {name!r}: tokens must be a list of strings, got {_short(tokens)}")
            return cls(
                name=name,
                kind=kind,
                size=_int(obj["size"], f"block {name!r}: size"),
                offset=_int(obj["offset"], f"block {name!r}: offset"),
                codebook_size=_int(
                    obj.get("codebook_size", obj["size"] if kind != "codes" else 0), f"block {name!r}: codebook_size"
                ),
                num_codebooks=_int(obj.get("num_codebooks", 1), f"block {name!r}: num_codebooks"),
                modality=obj.get("modality"),
                layout=obj.get("layout"),
                tokens=tuple(tokens),
            )
        except KeyError as e:
            raise TokenSpaceError("block", f"block {_short(obj.get('name', '?'))} lacks field {e.args[0]!r}") from None


def special_block(tokens: Sequence[str], size: int = 64, name: str = "special") -> Block:
    """A spec for the UTI specials block: named ``tokens`` then reserved slots."""
    return Block(name=name, kind="special", size=size, codebook_size=size, tokens=tuple(tokens))


def grid_block(max_side: int = 256, name: str = "grid") -> Block:
    """A spec for the image grid-size block (sides 1..max_side)."""
    return Block(name=name, kind="grid", size=max_side, codebook_size=max_side)


def codes_block(modality: str, codebook_size: int, num_codebooks: int = 1, name: str | None = None) -> Block:
    """A spec for a codebook family: ``num_codebooks`` x ``codebook_size`` codes."""
    return Block(
        name=name or modality,
        kind="codes",
        size=codebook_size * num_codebooks,
        codebook_size=codebook_size,
        num_codebooks=num_codebooks,
        modality=modality,
        layout=LAYOUTS.get(modality),
    )


@dataclass(frozen=True)
class BaseSpec:
    """The base text model's rows: the tokenizer and the embedding table size."""

    tokenizer: Mapping[str, Any]
    text_vocab_size: int
    base_rows: int
    special_tokens: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "tokenizer": dict(self.tokenizer),
            "text_vocab_size": self.text_vocab_size,
            "base_rows": self.base_rows,
            "special_tokens": dict(self.special_tokens),
        }


@dataclass(frozen=True)
class Region:
    """A contiguous ID range as ``classify`` reports it."""

    name: str
    start: int
    end: int


class TokenSpace:
    """An immutable, validated token space. Build with ``build`` or ``load``."""

    def __init__(self, data: Mapping[str, Any]):
        """Validate ``data`` (the JSON object, fingerprint optional) and wrap it."""
        given = data.get("fingerprint") if isinstance(data, Mapping) else None
        if given is not None:
            # Checked first: an edited file is reported as edited, whatever else broke.
            try:
                raw = sha256_bytes(canonical_json(_without_fingerprint(data)))
            except (TypeError, ValueError, RecursionError) as e:
                raise TokenSpaceError("schema", f"not JSON-serialisable: {_short(e)}") from None
            if raw != given:
                raise TokenSpaceError(
                    "fingerprint",
                    f"stored fingerprint {given} does not match the contents ({raw}); "
                    "the file was edited after it was written",
                )
        self._data = _validate(data)
        self._fingerprint = sha256_bytes(canonical_json(_without_fingerprint(self._data)))
        if given is not None and given != self._fingerprint:
            raise TokenSpaceError("schema", "the file holds fields this library does not know or lacks defaults")
        self._data["fingerprint"] = self._fingerprint
        base = self._data["base"]
        self._blocks = tuple(Block.from_json(b) for b in self._data["blocks"])
        self._by_name = {b.name: b for b in self._blocks}
        self._specials = {t: blk.offset + i for blk in self._blocks if blk.kind == "special" for i, t in enumerate(blk.tokens)}
        self._base_specials = {str(k): int(v) for k, v in base["special_tokens"].items()}
        regions = [Region("text", 0, base["text_vocab_size"])]
        if base["base_rows"] > base["text_vocab_size"]:
            regions.append(Region("base_padding", base["text_vocab_size"], base["base_rows"]))
        regions += [Region(b.name, b.offset, b.end) for b in self._blocks]
        if self.padded_vocab_size > self.vocab_size:
            regions.append(Region("padding", self.vocab_size, self.padded_vocab_size))
        self._regions = tuple(regions)
        self._bounds = np.array([r.start for r in regions] + [regions[-1].end], dtype=np.int64)

    # -- construction -----------------------------------------------------------------
    @classmethod
    def build(
        cls,
        base: BaseSpec,
        blocks: Iterable[Block],
        *,
        name: str = "custom",
        pad_to_multiple_of: int = 128,
        codecs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> "TokenSpace":
        """Place ``blocks`` one after another from ``base.base_rows`` and validate.

        Blocks that already carry an offset must sit exactly where appending puts
        them (otherwise the error names the gap or overlap).
        """
        placed = _place([], blocks, base.base_rows)
        return cls(_assemble(name, base.to_json(), placed, pad_to_multiple_of, codecs or {}))

    def extend(self, blocks: Iterable[Block], *, name: str | None = None) -> "TokenSpace":
        """A new token space with ``blocks`` appended; existing IDs do not move."""
        placed = _place(list(self._blocks), blocks, self.vocab_size)
        return TokenSpace(
            _assemble(name or self.name, self._data["base"], placed, self._data["pad_to_multiple_of"], self.codecs)
        )

    def with_codec(self, modality: str, identity: Mapping[str, Any]) -> "TokenSpace":
        """A new token space that records ``identity`` as the codec of ``modality``."""
        codecs = dict(self.codecs)
        codecs[modality] = dict(identity)
        data = _without_fingerprint(self._data)
        data["codecs"] = codecs
        return TokenSpace(data)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "TokenSpace":
        """Validate a parsed ``token_space.json`` object; the fingerprint must match."""
        if not isinstance(obj, Mapping):
            raise TokenSpaceError("schema", f"expected a JSON object, got {type(obj).__name__}")
        if "fingerprint" not in obj:
            raise TokenSpaceError("fingerprint", "the file has no fingerprint field")
        return cls(obj)

    @classmethod
    def from_json_bytes(cls, raw: bytes, *, source: str = "token space") -> "TokenSpace":
        """Parse and validate the bytes of a ``token_space.json``; the fingerprint must match.

        Raises ``TokenSpaceError`` (and nothing else) for any bytes that are not a
        valid token space: bad UTF-8 or JSON, nesting too deep, an ABI rule broken.
        """
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise TypeError(f"TokenSpace.from_json_bytes: expected bytes, got {type(raw).__name__}")
        try:
            obj = json.loads(bytes(raw).decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
            raise TokenSpaceError("schema", f"{source} is not valid JSON: {_short(e)}") from None
        return cls.from_json(obj)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TokenSpace":
        """Read and validate ``token_space.json`` (a file, or a directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "token_space.json"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"token space file not found: {path}") from None
        return cls.from_json_bytes(raw, source=str(path))

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``token_space.json`` atomically (temp file + rename); returns the path."""
        path = Path(path)
        if path.is_dir():
            path = path / "token_space.json"
        atomic_write_bytes(path, self.to_json_bytes())
        return path

    def to_json(self) -> dict[str, Any]:
        """The JSON object (a deep copy), fingerprint included."""
        return json.loads(self.to_json_bytes())

    def to_json_bytes(self) -> bytes:
        """Human-readable JSON (sorted keys, indented); fingerprint over canonical form."""
        return (json.dumps(self._data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")

    # -- properties -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._data["name"]

    @property
    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the canonical JSON (without the fingerprint field)."""
        return self._fingerprint

    @property
    def schema_version(self) -> tuple[int, int]:
        return tuple(self._data["schema_version"])  # type: ignore[return-value]

    @property
    def tokenizer(self) -> dict[str, Any]:
        """The base text tokenizer's identity (kind, name, hash, ...)."""
        return dict(self._data["base"]["tokenizer"])

    @property
    def text_vocab_size(self) -> int:
        return self._data["base"]["text_vocab_size"]

    @property
    def base_rows(self) -> int:
        return self._data["base"]["base_rows"]

    @property
    def vocab_size(self) -> int:
        """One past the last real ID (end of the last block)."""
        return self._data["vocab_size"]

    @property
    def padded_vocab_size(self) -> int:
        """``vocab_size`` rounded up to ``pad_to_multiple_of`` (embedding-table size)."""
        return self._data["padded_vocab_size"]

    @property
    def blocks(self) -> tuple[Block, ...]:
        return self._blocks

    @property
    def codecs(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self._data["codecs"].items()}

    @property
    def regions(self) -> tuple[Region, ...]:
        """All ID ranges in order: text, base_padding, each block, padding."""
        return self._regions

    @property
    def region_bounds(self) -> np.ndarray:
        """``[R + 1]`` int64 starts of ``regions`` plus the final end (for ``classify``)."""
        return self._bounds

    def check_text_tokenizer(self, tokenizer: Any) -> None:
        """Raise ``TokenSpaceError`` (rule ``base``) unless ``tokenizer`` has exactly
        ``text_vocab_size`` IDs: text IDs beyond the tokenizer could not be
        decoded, and tokenizer IDs beyond ``text_vocab_size`` would land on
        padding or UTI rows."""
        have = tokenizer.vocab_size
        if have != self.text_vocab_size:
            raise TokenSpaceError(
                "base",
                f"base.text_vocab_size is {self.text_vocab_size} but the text tokenizer "
                f"{self.tokenizer.get('name', '?')!r} has {have} token IDs; they must be equal",
            )

    def has_block(self, name: str) -> bool:
        return name in self._by_name

    def block(self, name: str) -> Block:
        """The block called ``name``; ``TokenSpaceLookupError`` (a ``KeyError``) naming the known blocks otherwise."""
        try:
            return self._by_name[name]
        except KeyError:
            raise TokenSpaceLookupError(
                "block", f"token space {self.name!r} has no block {name!r}; blocks: {list(self._by_name)}"
            ) from None

    def codes_block(self, modality: str) -> Block | None:
        """The codes block of ``modality`` (``image``/``audio``), or ``None``."""
        return next((b for b in self._blocks if b.kind == "codes" and b.modality == modality), None)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Named UTI specials and the base tokenizer's specials, name -> ID."""
        return {**self._base_specials, **self._specials}

    def id_of(self, special: str) -> int:
        """ID of a named special token (UTI or base tokenizer)."""
        if special in self._specials:
            return self._specials[special]
        if special in self._base_specials:
            return self._base_specials[special]
        raise TokenSpaceLookupError("special", f"token space {self.name!r} has no special token {special!r}")

    def grid_id(self, value: int) -> int:
        """ID of the grid-size token for side length ``value`` (1..max)."""
        blk = self._grid_block()
        if not 1 <= value <= blk.size:
            raise TokenSpaceError("range", f"grid size must be in [1, {blk.size}], got {value}")
        from .grammar.layout import grid_id

        return grid_id(blk, value)

    def _grid_block(self) -> Block:
        blk = next((b for b in self._blocks if b.kind == "grid"), None)
        if blk is None:
            raise TokenSpaceLookupError("block", f"token space {self.name!r} has no grid block")
        return blk

    def classify(self, ids: Any) -> np.ndarray:
        """Region index of each ID (``regions[i]``), ``-1`` outside ``[0, padded_vocab_size)``.

        ``ids``: array-like of integers, any shape; returns int32 of that shape.
        Runs in the compiled core when it is available.
        """
        from .ops import classify_ids

        return classify_ids(as_int64_ids(ids, what="classify"), self._bounds)

    def region_name(self, token_id: int) -> str | None:
        """Name of the region holding ``token_id``, or ``None`` when out of range."""
        r = int(self.classify(np.array([token_id]))[0])
        return self._regions[r].name if r >= 0 else None

    # -- compatibility ----------------------------------------------------------------
    def compatibility_problems(self, other: "TokenSpace") -> list[str]:
        """Why ``other`` cannot read streams made with ``self`` (empty when it can)."""
        problems = []
        if other.schema_version[0] != self.schema_version[0]:
            problems.append(f"schema major version {self.schema_version[0]} != {other.schema_version[0]}")
        for key in ("text_vocab_size", "base_rows"):
            if self._data["base"][key] != other._data["base"][key]:
                problems.append(f"base {key} {self._data['base'][key]} != {other._data['base'][key]}")
        if self.tokenizer.get("hash") != other.tokenizer.get("hash"):
            problems.append(f"base tokenizer hash {self.tokenizer.get('hash')} != {other.tokenizer.get('hash')}")
        for blk in self._blocks:
            theirs = other._by_name.get(blk.name)
            if theirs is None:
                problems.append(f"block {blk.name!r} is missing")
            elif theirs.to_json() != blk.to_json():
                if blk.kind == "special" and _special_extends(blk, theirs):
                    continue  # named a reserved slot: no existing ID changed
                problems.append(f"block {blk.name!r} changed: {blk.to_json()} -> {theirs.to_json()}")
        for modality, identity in self.codecs.items():
            theirs = other.codecs.get(modality)
            if theirs is not None and theirs.get("weights_hash") != identity.get("weights_hash"):
                problems.append(f"{modality} codec weights changed: codes no longer mean the same")
        return problems

    def is_compatible(self, other: "TokenSpace") -> bool:
        """True when every ID valid in ``self`` means the same in ``other``.

        ``other`` may append blocks, name reserved special slots or add a codec
        for a modality that had none; moving or resizing anything, changing the
        base tokenizer, or changing a codec's weights is incompatible.
        """
        return not self.compatibility_problems(other)

    # -- misc -------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenSpace) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        blocks = ", ".join(f"{b.name}@{b.offset}+{b.size}" for b in self._blocks)
        return f"TokenSpace({self.name!r}, vocab={self.vocab_size}, padded={self.padded_vocab_size}, [{blocks}])"


# -- the default space ------------------------------------------------------------------
DEFAULT_SPECIALS = (IMAGE_START, IMAGE_END, AUDIO_START, AUDIO_END, IMAGE_PATCH)


def default_blocks() -> list[Block]:
    """The default bundle's blocks: 64 specials, grid 1..256, image 1x16384, audio 8x1024."""
    return [
        special_block(DEFAULT_SPECIALS, size=64),
        grid_block(256),
        codes_block("image", codebook_size=16384, num_codebooks=1),
        codes_block("audio", codebook_size=1024, num_codebooks=8),
    ]


# -- validation -------------------------------------------------------------------------
def _place(placed: list[Block], blocks: Iterable[Block], cursor: int) -> list[Block]:
    """Append ``blocks`` to ``placed`` one after another from ``cursor`` (a block with an offset keeps it)."""
    for blk in blocks:
        placed.append(blk if blk.offset is not None else replace(blk, offset=cursor))
        cursor = placed[-1].offset + placed[-1].size
    return placed


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed")


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TokenSpaceError("block", f"{what} must be an integer, got {_short(value)}")
    return value


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` for an error message, cut to ``limit`` characters (values may be huge or deep)."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<deeply nested {type(value).__name__}>"
    except ValueError:  # an int with more digits than Python will print
        text = f"<an int of about {value.bit_length() * 3 // 10} digits>" if isinstance(value, int) else "<unprintable>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_limit(rule: str, what: str, value: int, limit: int) -> None:
    if value > limit:
        raise TokenSpaceError(rule, f"{what} is {_short(value)}, beyond the limit of {limit}")


def _without_fingerprint(data: Mapping[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(dict(data)))
    out.pop("fingerprint", None)
    return out


def _special_extends(old: Block, new: Block) -> bool:
    return (
        old.kind == new.kind == "special"
        and (old.offset, old.size) == (new.offset, new.size)
        and new.tokens[: len(old.tokens)] == old.tokens
    )


def _assemble(name, base_json, blocks, pad_to, codecs) -> dict[str, Any]:
    if isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < 1:
        raise TokenSpaceError("vocab", f"pad_to_multiple_of must be an integer >= 1, got {pad_to!r}")
    vocab = blocks[-1].offset + blocks[-1].size if blocks else base_json["base_rows"]
    return {
        "schema": SCHEMA,
        "schema_version": list(SCHEMA_VERSION),
        "name": name,
        "base": dict(base_json),
        "blocks": [b.to_json() for b in blocks],
        "vocab_size": vocab,
        "pad_to_multiple_of": pad_to,
        "padded_vocab_size": -(-vocab // pad_to) * pad_to,
        "codecs": {k: dict(v) for k, v in codecs.items()},
    }


def _validate(data: Mapping[str, Any]) -> dict[str, Any]:
    """Check every ABI rule; returns a normalised deep copy. Raises TokenSpaceError."""
    if not isinstance(data, Mapping):
        raise TokenSpaceError("schema", f"expected a JSON object, got {type(data).__name__}")
    try:
        d = json.loads(json.dumps(dict(data), allow_nan=False))
    except (TypeError, ValueError, RecursionError) as e:
        raise TokenSpaceError("schema", f"not JSON-serialisable: {_short(e)}") from None
    if d.get("schema") != SCHEMA:
        raise TokenSpaceError("schema", f"expected schema {SCHEMA!r}, got {_short(d.get('schema'))}")
    ver = d.get("schema_version")
    if not (isinstance(ver, list) and len(ver) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in ver)):
        raise TokenSpaceError("version", f"schema_version must be [major, minor], got {_short(ver)}")
    if ver[0] != SCHEMA_VERSION[0]:
        raise TokenSpaceError(
            "version", f"unsupported schema major version {ver[0]} (this library reads {SCHEMA_VERSION[0]}.x)"
        )
    for key in ("name", "base", "blocks", "vocab_size", "padded_vocab_size", "pad_to_multiple_of", "codecs"):
        if key not in d:
            raise TokenSpaceError("schema", f"missing field {key!r}")
    if not isinstance(d["name"], str):
        raise TokenSpaceError("schema", f"name must be a string, got {_short(d['name'])}")

    base = d["base"]
    if not isinstance(base, dict):
        raise TokenSpaceError("base", "base must be an object")
    tok = base.get("tokenizer")
    if not isinstance(tok, dict) or not isinstance(tok.get("kind"), str) or not isinstance(tok.get("hash"), str):
        raise TokenSpaceError("base", f"base.tokenizer must be an object with 'kind' and 'hash', got {_short(tok)}")
    text_vocab, base_rows = base.get("text_vocab_size"), base.get("base_rows")
    for what, v in (("text_vocab_size", text_vocab), ("base_rows", base_rows)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise TokenSpaceError("base", f"base.{what} must be an integer >= 1, got {_short(v)}")
        _check_limit("base", f"base.{what}", v, MAX_VOCAB_SIZE)
    if base_rows < text_vocab:
        raise TokenSpaceError("base", f"base_rows {base_rows} < text_vocab_size {text_vocab}")
    specials = base.setdefault("special_tokens", {})
    if not isinstance(specials, dict):
        raise TokenSpaceError("base", "base.special_tokens must be an object name -> ID")
    for tname, tid in specials.items():
        if isinstance(tid, bool) or not isinstance(tid, int) or not 0 <= tid < text_vocab:
            raise TokenSpaceError("base", f"base special {tname!r} has ID {_short(tid)} outside [0, {text_vocab})")

    blocks = d["blocks"]
    if not isinstance(blocks, list):
        raise TokenSpaceError("block", "blocks must be a list")
    parsed = [Block.from_json(b) for b in blocks]
    cursor, names, modalities = base_rows, set(), {}
    kinds_seen: dict[str, str] = {}
    for blk in parsed:
        if blk.name in names:
            raise TokenSpaceError("block", f"two blocks are called {blk.name!r}")
        names.add(blk.name)
        if blk.kind not in BLOCK_KINDS:
            raise TokenSpaceError("block", f"block {blk.name!r}: unknown kind {blk.kind!r} (known: {BLOCK_KINDS})")
        if blk.size < 1:
            raise TokenSpaceError("block", f"block {blk.name!r}: size must be >= 1, got {_short(blk.size)}")
        _check_limit("block", f"block {blk.name!r}: size", blk.size, MAX_VOCAB_SIZE)
        _check_limit("block", f"block {blk.name!r}: codebook_size", blk.codebook_size, MAX_VOCAB_SIZE)
        _check_limit("block", f"block {blk.name!r}: num_codebooks", blk.num_codebooks, MAX_CODEBOOKS)
        if not 0 <= blk.offset <= MAX_VOCAB_SIZE:
            raise TokenSpaceError("block", f"block {blk.name!r}: offset must be in [0, {MAX_VOCAB_SIZE}], got {_short(blk.offset)}")
        if blk.offset < cursor:
            raise TokenSpaceError(
                "overlap", f"block {blk.name!r} starts at {blk.offset}, inside the IDs before it (which end at {cursor})"
            )
        if blk.offset > cursor:
            raise TokenSpaceError(
                "gap", f"block {blk.name!r} starts at {blk.offset}, leaving a gap after {cursor} (blocks are contiguous)"
            )
        cursor = blk.offset + blk.size
        _check_limit("vocab", f"the end of block {blk.name!r} (vocab_size)", cursor, MAX_VOCAB_SIZE)
        if blk.kind in ("special", "grid"):
            if blk.kind in kinds_seen:
                raise TokenSpaceError("block", f"two {blk.kind} blocks: {kinds_seen[blk.kind]!r} and {blk.name!r}")
            kinds_seen[blk.kind] = blk.name
        if blk.kind == "codes":
            if blk.modality not in MODALITIES:
                raise TokenSpaceError("block", f"block {blk.name!r}: modality must be one of {MODALITIES}, got {blk.modality!r}")
            if blk.modality in modalities:
                raise TokenSpaceError("block", f"two {blk.modality} code blocks: {modalities[blk.modality]!r} and {blk.name!r}")
            modalities[blk.modality] = blk.name
            if blk.codebook_size < 1 or blk.num_codebooks < 1 or blk.size != blk.codebook_size * blk.num_codebooks:
                raise TokenSpaceError(
                    "block",
                    f"block {blk.name!r}: size {blk.size} != codebook_size {blk.codebook_size} x "
                    f"num_codebooks {blk.num_codebooks}",
                )
            if blk.layout != LAYOUTS[blk.modality]:
                raise TokenSpaceError("block", f"block {blk.name!r}: layout must be {LAYOUTS[blk.modality]!r}, got {blk.layout!r}")
        if blk.kind == "special":
            if len(set(blk.tokens)) != len(blk.tokens) or len(blk.tokens) > blk.size:
                raise TokenSpaceError(
                    "special", f"block {blk.name!r}: {len(blk.tokens)} token names (must be unique and <= size {blk.size})"
                )
            if not all(isinstance(t, str) and t for t in blk.tokens):
                raise TokenSpaceError("special", f"block {blk.name!r}: token names must be non-empty strings")
            clash = set(blk.tokens) & set(specials)
            if clash:
                raise TokenSpaceError("special", f"UTI specials {sorted(clash)} clash with base special tokens")

    named = set(next((b.tokens for b in parsed if b.kind == "special"), ()))
    for modality in modalities:
        missing = [m for m in MARKERS[modality] if m not in named]
        if missing:
            raise TokenSpaceError("special", f"a {modality} block needs the special tokens {missing}")
    if "image" in modalities and "grid" not in kinds_seen:
        raise TokenSpaceError("block", "an image block needs a grid block for the image size tokens")

    if d["vocab_size"] != cursor:
        raise TokenSpaceError("vocab", f"vocab_size {_short(d['vocab_size'])} != end of the last block {cursor}")
    pad_to = d["pad_to_multiple_of"]
    if isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < 1:
        raise TokenSpaceError("vocab", f"pad_to_multiple_of must be an integer >= 1, got {_short(pad_to)}")
    want_padded = -(-cursor // pad_to) * pad_to
    _check_limit("vocab", f"padded_vocab_size (vocab_size {cursor} rounded up to {pad_to})", want_padded, MAX_VOCAB_SIZE)
    if d["padded_vocab_size"] != want_padded:
        raise TokenSpaceError(
            "vocab", f"padded_vocab_size {_short(d['padded_vocab_size'])} != vocab_size rounded up to {pad_to} ({want_padded})"
        )
    if not isinstance(d["codecs"], dict) or not all(isinstance(v, dict) for v in d["codecs"].values()):
        raise TokenSpaceError("schema", "codecs must be an object modality -> identity object")
    for modality in d["codecs"]:
        if modality not in modalities:
            raise TokenSpaceError("block", f"a codec is recorded for {modality!r} but there is no {modality} block")
    d["blocks"] = [b.to_json() for b in parsed]
    return d
