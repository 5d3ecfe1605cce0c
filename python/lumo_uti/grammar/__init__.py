"""The sequence grammar: one object for layout, encode, decode and constraints.

Modules: ``layout`` (what each ID is), ``encode`` (segments -> IDs), ``decode``
(IDs -> segments, strict or lenient, with ``RULES``), ``constraints`` (the
token-by-token state machine and next-ID masks), ``logits`` (the Hugging Face
``LogitsProcessor``; imported on demand because it needs transformers).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .._ids import as_int64_ids
from ..errors import UTIDecodeError
from ..token_space import TokenSpace
from .constraints import Constraints, Mode, State
from .decode import RULES, Decoder, DecodeResult, Repair
from .encode import encode_segments
from .layout import Kind, Layout

__all__ = ["Grammar", "RULES", "DecodeResult", "Repair", "Kind", "Mode", "State"]


class Grammar:
    """Encode/decode/constrain token streams of one token space.

    Args:
        token_space: the ABI.
        encode_text: str -> list of text IDs (the base tokenizer).
        decode_text: list of text IDs -> str.
    """

    def __init__(
        self,
        token_space: TokenSpace,
        encode_text: Callable[[str], list[int]],
        decode_text: Callable[[list[int]], str],
    ):
        self.token_space = token_space
        self.layout = Layout(token_space)
        self.constraints = Constraints(self.layout)
        self._encode_text = encode_text
        self._decoder = Decoder(self.layout, decode_text)

    def encode(self, segments: list[Any], *, encode_text: Callable[[str], list[int]] | None = None) -> list[int]:
        """Segments (str, ImageCodes, AudioCodes, ImagePlaceholder) -> flat ID list.

        ``encode_text`` overrides the grammar's text encoder for this call.
        """
        return encode_segments(self.layout, segments, encode_text or self._encode_text)

    def decode(self, ids: Any, *, strict: bool = True) -> DecodeResult:
        """IDs -> ``DecodeResult`` (the segments, with ``.repairs``); strict raises ``UTIDecodeError``."""
        return self._decoder.decode(as_int64_ids(ids, one_dim=True), strict=strict)

    def allowed_next(self, prefix: Any) -> np.ndarray:
        """Bool mask [padded_vocab_size] of the IDs legal after ``prefix``.

        Raises ``UTIDecodeError`` when ``prefix`` itself cannot be completed.
        """
        ids = as_int64_ids(prefix, what="prefix", one_dim=True)
        state, bad = self.constraints.state_after(ids)
        if bad >= 0:
            self._decoder.decode(ids[: bad + 1], strict=True)  # raises with the precise rule
            raise UTIDecodeError(bad, "grammar", "token not allowed here")  # pragma: no cover - kept in sync by tests
        return self.constraints.mask(state)

    def state_after(self, prefix: Any) -> State:
        """The grammar state after a prefix, parsed leniently (never raises for ints)."""
        return self.constraints.state_after(as_int64_ids(prefix, what="prefix", one_dim=True), lenient=True)[0]

    def logits_processor(self):
        """A Hugging Face ``LogitsProcessor`` that masks every illegal next ID."""
        from .logits import UTILogitsProcessor

        return UTILogitsProcessor(self.constraints)
