"""``UTI``: one bundle's encode/decode front (token space + text tokenizer + codecs)."""

from __future__ import annotations

import copy
import json
import os
import weakref
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import BundleError
from .grammar import DecodeResult, Grammar
from .segments import SEGMENT_TYPES, AudioCodes, ImageCodes, segment_type_names
from .text import TextTokenizer
from .token_space import TokenSpace

_SEGMENT_TYPES = tuple(SEGMENT_TYPES.values())


class UTI:
    """The Unified Token Interface of one bundle.

    ``encode`` takes a *document* (``encode_batch``: a list of *documents*):
    one item or a list of items, each item a segment (``str``,
    ``ImageCodes``, ``AudioCodes``, ``ImagePlaceholder``) or media
    (``PIL.Image.Image``, ``lumo_uti.Audio``) where the bundle has a codec
    for that modality.

    Args:
        token_space: the ABI.
        text_tokenizer: the base tokenizer the token space records (hash-checked
            by ``lumo_uti.load``).
        image_codec, audio_codec: optional ``lumo_uti.codecs`` codecs; their
            codebook geometry must match the token space's blocks.

    Pickling (DataLoader workers, Ray, ``datasets`` fingerprints; see
    docs/workers.md): a UTI from ``lumo_uti.load`` pickles as a reference
    (bundle path or "the embedded default", token-space fingerprint, device;
    about 150 bytes plus the path) and unpickles as ``lumo_uti.load`` of it,
    raising ``BundleError`` if that bundle no longer loads or has another
    fingerprint. It does so while its tokenizer and codecs are the ones loaded
    and still on the load device; weights changed in place are not carried.
    Any other UTI pickles by value: the token space's JSON, the tokenizer and
    the codecs (see ``lumo_uti.codecs.base``), without packed-codebook caches.
    Equal UTIs pickle to equal bytes. ``copy.deepcopy`` copies the codecs
    rather than re-loading the bundle.
    """

    def __init__(
        self,
        token_space: TokenSpace,
        text_tokenizer: TextTokenizer,
        *,
        image_codec: Any = None,
        audio_codec: Any = None,
    ):
        token_space.check_text_tokenizer(text_tokenizer)  # TokenSpaceError unless the text IDs agree
        self._token_space = token_space
        self.text_tokenizer = text_tokenizer
        self.grammar = Grammar(token_space, text_tokenizer.encode, text_tokenizer.decode)
        for modality, codec in (("image", image_codec), ("audio", audio_codec)):
            if codec is not None:
                check_codec_fits(token_space, modality, codec)
        self.image_codec = image_codec
        self.audio_codec = audio_codec
        self._source: tuple | None = None  # (path or None, device, weakrefs to the parts as loaded)

    @property
    def token_space(self) -> TokenSpace:
        return self._token_space

    # -- encode -------------------------------------------------------------------------
    def encode(self, document: Any, *, allow_special: bool = True) -> list[int]:
        """A document -> one flat list of global token IDs (no BOS/EOS).

        ``allow_special``: the literal text of a base special token (such as
        ``"<|im_start|>"``) encodes to that special, as the Hugging Face Qwen3
        tokenizer does; False encodes it as plain text. Text never encodes to
        a UTI ID, whatever it contains.
        """
        return self.encode_batch([document], allow_special=allow_special)[0]

    def encode_batch(self, documents: Iterable[Any], *, allow_special: bool = True) -> list[list[int]]:
        """``encode`` for each document; media of all documents go through each codec in one batched call."""
        coded = self._with_codes([_items(document) for document in documents])
        encode_text = None if allow_special else (lambda t: self.text_tokenizer.encode(t, allow_special=False))
        return [self.grammar.encode(document, encode_text=encode_text) for document in coded]

    def _with_codes(self, documents: list[list[Any]]) -> list[list[Any]]:
        """Replace media items by codes, one batched codec call per modality."""
        pending: dict[str, list[tuple[int, int]]] = {"image": [], "audio": []}
        for d, document in enumerate(documents):
            for i, item in enumerate(document):
                if isinstance(item, _SEGMENT_TYPES):
                    continue
                for modality, codec in (("image", self.image_codec), ("audio", self.audio_codec)):
                    if codec is not None and codec.accepts(item):
                        pending[modality].append((d, i))
                        break
                else:
                    where = f"document {d}, item {i}" if len(documents) > 1 else f"document item {i}"
                    raise TypeError(
                        f"{where}: cannot encode {type(item).__name__}; expected {segment_type_names()}, "
                        "or media this bundle has a codec for "
                        f"(image codec: {_kind(self.image_codec)}, audio codec: {_kind(self.audio_codec)})"
                    )
        out = [list(document) for document in documents]
        for modality, places in pending.items():
            if places:
                codec = self.image_codec if modality == "image" else self.audio_codec
                codes = codec.encode([documents[d][i] for d, i in places])
                for (d, i), c in zip(places, codes):
                    out[d][i] = c
        return out

    # -- decode -------------------------------------------------------------------------
    def decode(self, ids: Any, *, strict: bool = True) -> DecodeResult:
        """IDs -> segments: ``str``, media where the bundle has a codec, codes otherwise.

        Returns a ``DecodeResult`` either way: the list of segments, with
        ``.repairs``. Strict (default): raises ``UTIDecodeError`` (position +
        rule) on a malformed stream, so ``repairs`` is empty. Lenient: never
        raises for integer input and lists each repair in ``repairs`` (see
        ``lumo_uti.grammar.decode`` for every repair).
        """
        result = self.grammar.decode(ids, strict=strict)
        return DecodeResult(self._with_media(result), result.repairs)

    def decode_codes(self, ids: Any, *, strict: bool = True) -> DecodeResult:
        """Like ``decode`` but always ``str`` / ``ImageCodes`` / ``AudioCodes`` / ``ImagePlaceholder``."""
        return self.grammar.decode(ids, strict=strict)

    def decode_batch(self, batch: Iterable[Any], *, strict: bool = True) -> list[DecodeResult]:
        """``decode`` for each ID sequence."""
        return [self.decode(ids, strict=strict) for ids in batch]

    def _with_media(self, segments: list[Any]) -> list[Any]:
        out = list(segments)
        for codes_type, codec in ((ImageCodes, self.image_codec), (AudioCodes, self.audio_codec)):
            places = [i for i, s in enumerate(out) if isinstance(s, codes_type)]
            if codec is not None and places:
                for i, media in zip(places, codec.decode([out[i] for i in places])):
                    out[i] = media
        return out

    # -- generation ---------------------------------------------------------------------
    def allowed_next(self, prefix: Sequence[int]) -> np.ndarray:
        """Bool mask [padded_vocab_size] of the IDs legal after ``prefix``."""
        return self.grammar.allowed_next(prefix)

    def logits_processor(self):
        """A Hugging Face ``LogitsProcessor`` for ``model.generate(logits_processor=[...])``."""
        return self.grammar.logits_processor()

    # -- pickling -----------------------------------------------------------------------
    def _loaded_from(self, path: str | os.PathLike, *, device: Any) -> None:
        """Called by ``lumo_uti.load``: pickle as a reference to this bundle while as loaded."""
        from .bundle import default_bundle_dir

        where = os.path.abspath(path)
        is_default = where == os.path.abspath(default_bundle_dir())
        self._remember_source(None if is_default else where, "cpu" if device is None else str(device))

    def _remember_source(self, path: str | None, device: str) -> None:
        parts = (self.text_tokenizer, self.image_codec, self.audio_codec)
        self._source = (path, device, tuple(None if p is None else weakref.ref(p) for p in parts))

    def _bundle_reference(self) -> tuple | None:
        """(path or None for the default, fingerprint, load options) while the UTI is as loaded, else None."""
        if self._source is None:
            return None
        path, device, refs = self._source
        parts = (self.text_tokenizer, self.image_codec, self.audio_codec)
        if any((p is not None if r is None else r() is not p) for p, r in zip(parts, refs)):
            return None  # a part was replaced after loading
        codecs = [c for c in parts[1:] if c is not None]
        if codecs and not all(_on_device(c, device) for c in codecs):
            return None  # moved after loading: the reference would land elsewhere
        return path, self._token_space.fingerprint, {"device": device}

    def __reduce__(self) -> tuple:
        ref = self._bundle_reference()
        if ref is not None:
            return _unpickle_bundle, ref
        # The token space as its JSON: a value, so equal UTIs give equal bytes.
        return _unpickle_state, (type(self), self._token_space.to_json_bytes(), self.text_tokenizer,
                                 self.image_codec, self.audio_codec)

    def __copy__(self) -> "UTI":
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo: dict) -> "UTI":
        parts = (self.text_tokenizer, self.image_codec, self.audio_codec)
        new = _unpickle_state(type(self), self._token_space.to_json_bytes(), *copy.deepcopy(parts, memo))
        if self._bundle_reference() is not None:
            new._remember_source(*self._source[:2])
        return new

    def __repr__(self) -> str:
        return (
            f"UTI({self._token_space.name!r}, fingerprint={self._token_space.fingerprint[:19]}..., "
            f"image_codec={_kind(self.image_codec)}, audio_codec={_kind(self.audio_codec)})"
        )


def _unpickle_bundle(path: str | None, fingerprint: str, options: dict[str, Any]) -> UTI:
    """``lumo_uti.load(path, **options)``, checked to have the pickled token-space fingerprint."""
    from .bundle import load

    where = "the embedded default bundle" if path is None else f"bundle {path}"
    try:
        uti = load(path, **options)
    except (OSError, ValueError) as e:  # every bundle, token space, tokenizer and codec error
        raise BundleError(f"cannot unpickle a UTI of {where}: it no longer loads: {e}") from e
    if uti.token_space.fingerprint != fingerprint:
        raise BundleError(
            f"cannot unpickle a UTI of {where}: its token space now has fingerprint "
            f"{uti.token_space.fingerprint}, the pickled UTI had {fingerprint}"
        )
    return uti


def _unpickle_state(cls: type, token_space_json: bytes, text_tokenizer: TextTokenizer, image_codec: Any,
                    audio_codec: Any) -> UTI:
    token_space = TokenSpace.from_json(json.loads(token_space_json))  # re-validated, fingerprint checked
    return cls(token_space, text_tokenizer, image_codec=image_codec, audio_codec=audio_codec)


def _on_device(codec: Any, device: str) -> bool:
    import torch

    want, have = torch.device(device), codec.device
    return want.type == have.type and want.index in (None, have.index)


def _kind(codec: Any) -> str | None:
    return getattr(codec, "kind", None) if codec is not None else None


def _items(document: Any) -> list[Any]:
    """A document (a single item or a list/tuple of them) -> list of items."""
    return list(document) if isinstance(document, (list, tuple)) else [document]


def check_codec_fits(token_space: TokenSpace, modality: str, codec: Any) -> None:
    """``BundleError`` unless the token space has a ``modality`` block of the codec's codebook geometry."""
    block = token_space.codes_block(modality)
    if block is None:
        raise BundleError(f"an {modality} codec was given but token space {token_space.name!r} has no {modality} block")
    have = (codec.codebook_size, codec.num_codebooks)
    want = (block.codebook_size, block.num_codebooks)
    if have != want:
        raise BundleError(
            f"{modality} codec {_kind(codec)} has {have[1]} codebook(s) of {have[0]} codes, but block "
            f"{block.name!r} has {want[1]} of {want[0]}"
        )
