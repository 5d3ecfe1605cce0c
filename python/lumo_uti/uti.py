"""``UTI``: one bundle's encode/decode front (token space + text tokenizer + codecs)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from .grammar import DecodeResult, Grammar
from .segments import AudioCodes, ImageCodes, ImagePlaceholder
from .text import TextTokenizer
from .token_space import TokenSpace

_SEGMENT_TYPES = (str, ImageCodes, AudioCodes, ImagePlaceholder)


class UTI:
    """The Unified Token Interface of one bundle.

    Documents are a single segment or a list of segments: ``str``,
    ``ImageCodes``, ``AudioCodes``, ``ImagePlaceholder``. (Codecs that turn
    pixels and waveforms into codes plug in here; until a bundle has them,
    ``decode`` and ``decode_codes`` both yield codes.)

    Args:
        token_space: the ABI.
        text_tokenizer: the base tokenizer the token space records (hash-checked
            by ``lumo_uti.load``).
    """

    def __init__(self, token_space: TokenSpace, text_tokenizer: TextTokenizer):
        self._token_space = token_space
        self.text_tokenizer = text_tokenizer
        self.grammar = Grammar(token_space, text_tokenizer.encode, text_tokenizer.decode)

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
        encode_text = None if allow_special else (lambda t: self.text_tokenizer.encode(t, allow_special=False))
        return self.grammar.encode(_segments(document), encode_text=encode_text)

    def encode_batch(self, documents: Iterable[Any], *, allow_special: bool = True) -> list[list[int]]:
        """``encode`` for each document."""
        return [self.encode(doc, allow_special=allow_special) for doc in documents]

    # -- decode -------------------------------------------------------------------------
    def decode(self, ids: Any, *, strict: bool = True) -> list[Any] | DecodeResult:
        """IDs -> segments (``str`` and codes; media once the bundle has codecs).

        Strict (default): returns the list of segments and raises
        ``UTIDecodeError`` (position + rule) on a malformed stream. Lenient:
        returns ``DecodeResult(segments, repairs)`` and never raises for
        integer input (see ``lumo_uti.grammar.decode`` for every repair).
        """
        return self.decode_codes(ids, strict=strict)

    def decode_codes(self, ids: Any, *, strict: bool = True) -> list[Any] | DecodeResult:
        """Like ``decode`` but always ``str`` / ``ImageCodes`` / ``AudioCodes`` / ``ImagePlaceholder``."""
        result = self.grammar.decode(ids, strict=strict)
        return result.segments if strict else result

    def decode_batch(self, batch: Iterable[Any], *, strict: bool = True) -> list[Any]:
        """``decode`` for each ID sequence."""
        return [self.decode(ids, strict=strict) for ids in batch]

    # -- generation ---------------------------------------------------------------------
    def allowed_next(self, prefix: Sequence[int]) -> np.ndarray:
        """Bool mask [padded_vocab_size] of the IDs legal after ``prefix``."""
        return self.grammar.allowed_next(prefix)

    def logits_processor(self):
        """A Hugging Face ``LogitsProcessor`` for ``model.generate(logits_processor=[...])``."""
        return self.grammar.logits_processor()

    def __repr__(self) -> str:
        return f"UTI({self._token_space.name!r}, fingerprint={self._token_space.fingerprint[:19]}...)"


def _segments(document: Any) -> list[Any]:
    """A single segment or a list/tuple of them -> list, with a clear error for anything else."""
    items = list(document) if isinstance(document, (list, tuple)) else [document]
    for index, item in enumerate(items):
        if not isinstance(item, _SEGMENT_TYPES):
            raise TypeError(
                f"document item {index}: cannot encode {type(item).__name__}; expected str, ImageCodes, "
                "AudioCodes or ImagePlaceholder (this bundle has no codec for media)"
            )
    return items
