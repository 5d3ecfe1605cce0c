"""Decode global IDs back to segments, strictly or with repairs.

Strict decoding raises ``UTIDecodeError`` at the first token from which no
valid completion of the stream exists (``len(ids)`` when the stream ends inside
a span), naming the rule (see ``RULES``).

Lenient decoding never raises for integer input; it applies these repairs and
reports each one (runs of the same repair are merged into one report):

- an ID that is never valid (negative, >= vocab, padding row, reserved slot),
  or a token that cannot stand where it is (end marker with no open span, grid
  token or code outside a span, foreign-block ID inside a span, code of the
  wrong codebook) is dropped;
- a start marker inside an open span closes that span first (as if its end
  marker had been there), then opens the new one;
- an image with fewer than H*W*L codes at its end (end marker, nested start or
  end of stream) is padded with code 0; codes beyond H*W*L are dropped; an
  image with all its codes followed by anything but a code or ``<|image_end|>``
  is closed there and decoding goes on;
- an image whose two grid tokens are missing is dropped whole;
- an audio span ending inside a frame drops that partial frame;
- text IDs decode like the base tokenizer (invalid UTF-8 becomes U+FFFD), with
  the text on both sides of a dropped token joined.

A span that is valid is decoded by vectorised checks; the per-token repair
loop runs only on a span that fails them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

from ..errors import UTIDecodeError
from ..segments import AudioCodes, ImageCodes, ImagePlaceholder
from .layout import INVALID_ID_RULES, INVALID_KINDS, START_KINDS, Kind, Layout, run_end

RULES = {
    "id.negative": "a negative token ID",
    "id.out_of_range": "a token ID >= the padded vocab size",
    "id.padding": "a padding-row ID (base padding or tail padding)",
    "id.reserved": "a reserved slot of the specials block",
    "span.unopened": "an end marker with no span open",
    "span.nested": "a start marker inside an open span",
    "span.unterminated": "the stream ends inside a span",
    "span.missing_end": "an image has all its codes but is not followed by <|image_end|>",
    "span.foreign": "an ID of another block inside a span",
    "grid.outside_image": "a grid-size token outside an image header",
    "code.outside_span": "an image or audio code outside its span",
    "image.grid": "<|image_start|> not followed by two grid-size tokens",
    "image.count": "an image with a code count other than H*W*L",
    "image.layer": "an image code of the wrong codebook for its layer",
    "audio.codebook": "an audio code of the wrong codebook for its place in the frame",
    "audio.truncated_frame": "an audio span ending inside a frame",
}


@dataclass(frozen=True)
class Repair:
    """One repair of lenient decoding: tokens ``[position, end)`` and what was done."""

    position: int
    end: int
    rule: str
    action: str

    def __str__(self) -> str:
        where = f"token {self.position}" if self.end - self.position <= 1 else f"tokens {self.position}..{self.end - 1}"
        return f"{where}: [{self.rule}] {self.action}"


class DecodeResult(NamedTuple):
    """Lenient decoding's result: the repaired segments and the repairs made."""

    segments: list[Any]
    repairs: list[Repair]


class _SpanError(Exception):
    def __init__(self, position: int, rule: str, message: str):
        super().__init__(message)
        self.position, self.rule, self.message = position, rule, message


class Decoder:
    """Decodes ID arrays of one token space (see the module docstring)."""

    def __init__(self, layout: Layout, decode_text: Callable[[list[int]], str]):
        self.layout = layout
        self.decode_text = decode_text

    # -- entry point --------------------------------------------------------------------
    def decode(self, ids: np.ndarray, *, strict: bool) -> DecodeResult:
        """``ids``: int64 [N]. Returns segments and repairs (none when strict)."""
        kinds = self.layout.kinds(ids)
        out = _Output(self.decode_text)
        report = _Report()
        nontext = np.flatnonzero(kinds != Kind.TEXT)
        n, i = len(ids), 0
        while i < n:
            k = np.searchsorted(nontext, i)
            j = int(nontext[k]) if k < len(nontext) else n
            if j > i:  # a run of text IDs
                out.text(ids[i:j])
                i = j
                continue
            kind = kinds[i]
            if kind == Kind.IMAGE_START or kind == Kind.AUDIO_START:
                strict_span = self._image_strict if kind == Kind.IMAGE_START else self._audio_strict
                try:
                    segment, i = strict_span(ids, kinds, i)
                except _SpanError as e:
                    if strict:
                        raise UTIDecodeError(e.position, e.rule, e.message) from None
                    lenient_span = self._image_lenient if kind == Kind.IMAGE_START else self._audio_lenient
                    segment, i = lenient_span(ids, kinds, i, report)
                if segment is not None:
                    out.add(segment)
            elif kind == Kind.IMAGE_PATCH:
                e = run_end(kinds, i, Kind.IMAGE_PATCH)
                out.add(ImagePlaceholder(e - i))
                i = e
            else:
                rule, message = self._outside_span(ids, kinds, i)
                if strict:
                    raise UTIDecodeError(i, rule, message)
                report.add(i, rule, "dropped")
                i += 1
        return DecodeResult(out.finish(), report.repairs)

    # -- strict spans (vectorised) ------------------------------------------------------
    def _image_strict(self, ids: np.ndarray, kinds: np.ndarray, i: int) -> tuple[ImageCodes, int]:
        lay, n = self.layout, len(ids)
        blk = lay.image
        num_layers = blk.num_codebooks
        p, dims = i + 1, []
        for what in ("height", "width"):
            if p >= n:
                raise _SpanError(n, "span.unterminated", f"the stream ends inside the image header opened at {i}")
            if kinds[p] != Kind.GRID:
                raise self._violation(
                    ids, kinds, p, "image.grid", f"expected the grid {what} token of the image opened at {i}"
                )
            dims.append(lay.grid_value(ids[p]))
            p += 1
        height, width = dims
        count = height * width * num_layers
        end = p + count
        stop = min(end, n)
        body = ids[p:stop]
        bad = kinds[p:stop] != Kind.IMAGE_CODE
        if num_layers > 1 and stop > p:
            layer = (body - blk.offset) // blk.codebook_size
            bad |= layer != (np.arange(stop - p) % num_layers)
        if bad.any():
            b = p + int(np.argmax(bad))
            if kinds[b] == Kind.IMAGE_CODE:
                raise _SpanError(b, "image.layer", f"expected a code of layer {(b - p) % num_layers} (image opened at {i})")
            if kinds[b] == Kind.IMAGE_END:
                raise _SpanError(
                    b, "image.count", f"image {height}x{width}x{num_layers} needs {count} codes, got {b - p} (opened at {i})"
                )
            raise self._violation(ids, kinds, b, "span.foreign", f"inside the image opened at {i}")
        if end >= n:
            raise _SpanError(n, "span.unterminated", f"the stream ends inside the image opened at {i}")
        if kinds[end] == Kind.IMAGE_END:
            codes = ((body - blk.offset) % blk.codebook_size).reshape(height, width, num_layers)
            return ImageCodes(codes.transpose(2, 0, 1)), end + 1
        if kinds[end] == Kind.IMAGE_CODE:
            raise _SpanError(end, "image.count", f"image {height}x{width}x{num_layers} needs {count} codes, got more")
        raise self._violation(ids, kinds, end, "span.missing_end", f"expected <|image_end|> after {count} codes")

    def _audio_strict(self, ids: np.ndarray, kinds: np.ndarray, i: int) -> tuple[AudioCodes, int]:
        blk, n = self.layout.audio, len(ids)
        q = blk.num_codebooks
        p = i + 1
        e = run_end(kinds, p, Kind.AUDIO_CODE)
        body = ids[p:e]
        if len(body):
            codebook = (body - blk.offset) // blk.codebook_size
            wrong = codebook != (np.arange(len(body)) % q)
            if wrong.any():
                b = int(np.argmax(wrong))
                raise _SpanError(
                    p + b, "audio.codebook", f"expected a code of codebook {b % q}, got codebook {int(codebook[b])}"
                )
        if e >= n:
            raise _SpanError(n, "span.unterminated", f"the stream ends inside the audio span opened at {i}")
        if kinds[e] == Kind.AUDIO_END:
            if len(body) % q:
                raise _SpanError(
                    e,
                    "audio.truncated_frame",
                    f"audio span ends after {len(body) % q} of the {q} codes of frame {len(body) // q}",
                )
            return AudioCodes(((body - blk.offset) % blk.codebook_size).reshape(-1, q)), e + 1
        raise self._violation(ids, kinds, e, "span.foreign", f"inside the audio span opened at {i}")

    # -- lenient spans (per token, only for spans that fail the strict check) -----------
    def _image_lenient(self, ids, kinds, i, report: "_Report") -> tuple[ImageCodes | None, int]:
        lay, n = self.layout, len(ids)
        blk = lay.image
        num_layers, dims, codes = blk.num_codebooks, [], []
        p, closed_by = i + 1, None
        while p < n:
            kind = kinds[p]
            if kind == Kind.IMAGE_END:
                closed_by, p = "end", p + 1
                break
            if kind in START_KINDS:
                closed_by = "nested"
                report.add(p, "span.nested", f"closed the image opened at {i} before the new span")
                break
            if len(dims) < 2:
                if kind == Kind.GRID:
                    dims.append(lay.grid_value(ids[p]))
                else:
                    report.add(p, self._drop_rule(kind, "image.grid"), "dropped")
                p += 1
                continue
            need = dims[0] * dims[1] * num_layers
            if kind == Kind.IMAGE_CODE:
                if len(codes) == need:
                    report.add(p, "image.count", f"dropped a code beyond the {need} the image needs")
                elif (ids[p] - blk.offset) // blk.codebook_size == len(codes) % num_layers:
                    codes.append((int(ids[p]) - blk.offset) % blk.codebook_size)
                else:
                    report.add(p, "image.layer", "dropped")
                p += 1
                continue
            if len(codes) == need and kind not in INVALID_KINDS:
                closed_by = "missing_end"
                report.add(p, "span.missing_end", f"closed the complete image opened at {i}")
                break
            report.add(p, self._drop_rule(kind, "span.foreign"), "dropped")
            p += 1
        if closed_by is None:
            report.add(n, "span.unterminated", f"closed the image opened at {i} at the end of the stream")
        if len(dims) < 2:
            report.add(i, "image.grid", "dropped the image: no grid size")
            return None, p
        height, width = dims
        need = height * width * num_layers
        if len(codes) < need:
            report.add(i, "image.count", f"padded {need - len(codes)} missing codes with code 0")
            codes += [0] * (need - len(codes))
        grid = np.array(codes, dtype=np.int64).reshape(height, width, num_layers).transpose(2, 0, 1)
        return ImageCodes(grid), p

    def _audio_lenient(self, ids, kinds, i, report: "_Report") -> tuple[AudioCodes, int]:
        blk, n = self.layout.audio, len(ids)
        q = blk.num_codebooks
        codes: list[int] = []
        p, closed = i + 1, False
        while p < n:
            kind = kinds[p]
            if kind == Kind.AUDIO_END:
                closed, p = True, p + 1
                break
            if kind in START_KINDS:
                closed = True
                report.add(p, "span.nested", f"closed the audio span opened at {i} before the new span")
                break
            if kind == Kind.AUDIO_CODE and (ids[p] - blk.offset) // blk.codebook_size == len(codes) % q:
                codes.append((int(ids[p]) - blk.offset) % blk.codebook_size)
            elif kind == Kind.AUDIO_CODE:
                report.add(p, "audio.codebook", "dropped")
            else:
                report.add(p, self._drop_rule(kind, "span.foreign"), "dropped")
            p += 1
        if not closed:
            report.add(n, "span.unterminated", f"closed the audio span opened at {i} at the end of the stream")
        partial = len(codes) % q
        if partial:
            report.add(i, "audio.truncated_frame", f"dropped the {partial} codes of the last, partial frame")
            del codes[len(codes) - partial :]
        return AudioCodes(np.array(codes, dtype=np.int64).reshape(-1, q)), p

    # -- rules --------------------------------------------------------------------------
    def _drop_rule(self, kind: Kind, default: str) -> str:
        return INVALID_ID_RULES[kind][0] if kind in INVALID_KINDS else default

    def _violation(self, ids, kinds, p: int, rule: str, context: str) -> _SpanError:
        """The error for token ``p`` in a span: invalid IDs and nesting first, then ``rule``."""
        kind = kinds[p]
        if kind in INVALID_KINDS:
            rule = INVALID_ID_RULES[kind][0]
        elif kind in START_KINDS:
            rule = "span.nested"
        return _SpanError(p, rule, f"unexpected {self.describe(int(ids[p]), kind)} {context}")

    def _outside_span(self, ids, kinds, i: int) -> tuple[str, str]:
        kind = kinds[i]
        what = self.describe(int(ids[i]), kind)
        if kind in INVALID_KINDS:
            return INVALID_ID_RULES[kind][0], f"{what}: {INVALID_ID_RULES[kind][1]}"
        if kind in (Kind.IMAGE_END, Kind.AUDIO_END):
            return "span.unopened", f"{what} with no span open"
        if kind == Kind.GRID:
            return "grid.outside_image", f"{what} outside an image header"
        return "code.outside_span", f"{what} outside its span"

    def describe(self, token_id: int, kind: Kind) -> str:
        """A short human name for one token, for error messages."""
        lay = self.layout
        if kind in _MARKER_NAMES:
            return _MARKER_NAMES[kind]
        if kind == Kind.GRID:
            return f"grid token {lay.grid_value(token_id)} (ID {token_id})"
        if kind in (Kind.IMAGE_CODE, Kind.AUDIO_CODE):
            blk = lay.image if kind == Kind.IMAGE_CODE else lay.audio
            cb, code = divmod(token_id - blk.offset, blk.codebook_size)
            return f"{blk.modality} code {code} of codebook {cb} (ID {token_id})"
        if kind == Kind.TEXT:
            return f"text ID {token_id}"
        return f"ID {token_id}"


_MARKER_NAMES = {
    Kind.IMAGE_START: "<|image_start|>",
    Kind.IMAGE_END: "<|image_end|>",
    Kind.AUDIO_START: "<|audio_start|>",
    Kind.AUDIO_END: "<|audio_end|>",
    Kind.IMAGE_PATCH: "<|image_patch|>",
}


class _Output:
    """Collects segments, joining adjacent text runs and placeholder runs."""

    def __init__(self, decode_text: Callable[[list[int]], str]):
        self.decode_text = decode_text
        self.segments: list[Any] = []
        self.pending_text: list[np.ndarray] = []

    def text(self, ids: np.ndarray) -> None:
        self.pending_text.append(ids)

    def add(self, segment: Any) -> None:
        if isinstance(segment, ImagePlaceholder) and not self.pending_text and self.segments:
            last = self.segments[-1]
            if isinstance(last, ImagePlaceholder):  # a lenient drop split one run
                self.segments[-1] = ImagePlaceholder(last.num_tokens + segment.num_tokens)
                return
        self._flush()
        self.segments.append(segment)

    def _flush(self) -> None:
        if self.pending_text:
            ids = np.concatenate(self.pending_text).tolist()
            self.pending_text = []
            self.segments.append(self.decode_text(ids))

    def finish(self) -> list[Any]:
        self._flush()
        return self.segments


class _Report:
    """Repairs, merging consecutive ones with the same rule and action."""

    def __init__(self):
        self.repairs: list[Repair] = []

    def add(self, position: int, rule: str, action: str) -> None:
        last = self.repairs[-1] if self.repairs else None
        if last is not None and last.rule == rule and last.action == action and last.end == position:
            self.repairs[-1] = Repair(last.position, position + 1, rule, action)
        else:
            self.repairs.append(Repair(position, position + 1, rule, action))
