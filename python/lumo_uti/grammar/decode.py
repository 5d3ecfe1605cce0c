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
  end of stream) is padded with code 0, provided the codes it lacks are at
  most ``PAD_LIMIT`` (4) times the tokens it has (its start marker, two grid
  tokens and the codes kept); one that lacks more is dropped whole, so that
  repairs never create more than 4 codes per input token; codes beyond H*W*L
  are dropped; an image with all its codes followed by anything but a code or
  ``<|image_end|>`` is closed there and decoding goes on;
- an image whose two grid tokens are missing is dropped whole;
- an audio span ending inside a frame drops that partial frame;
- text IDs decode like the base tokenizer (invalid UTF-8 becomes U+FFFD), with
  the text on both sides of a dropped token joined.

A span that is valid is decoded by vectorised checks. Repairs work on runs:
a run of dropped tokens is skipped in one vectorised step and reported once
per rule, so lenient decoding stays linear in the input (only out-of-order
codes inside a run of codes are looked at one by one, over a plain list).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import UTIDecodeError
from ..segments import AudioCodes, ImageCodes, ImagePlaceholder
from .layout import (INVALID_ID_RULES, INVALID_KINDS, START_KINDS, K, Kind, Layout, code_of, codebook_of, kind_table,
                     run_end, scan)

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

# A padded image may gain at most PAD_LIMIT codes per token it has in the input.
PAD_LIMIT = 4

_RULE_NAMES = list(RULES)


def _drop_rules(default: str, **by_kind: str) -> np.ndarray:
    """int8 [len(Kind)]: index into ``_RULE_NAMES`` of the rule for dropping each kind.

    Invalid IDs always report their own rule; ``by_kind`` maps kind names to rules.
    """
    table = np.full(len(Kind), _RULE_NAMES.index(default), dtype=np.int8)
    for name, rule in by_kind.items():
        table[Kind[name]] = _RULE_NAMES.index(rule)
    for kind, (rule, _) in INVALID_ID_RULES.items():
        table[kind] = _RULE_NAMES.index(rule)
    return table


_OUTSIDE_RULES = _drop_rules(
    "code.outside_span", IMAGE_END="span.unopened", AUDIO_END="span.unopened", GRID="grid.outside_image"
)
_HEADER_RULES = _drop_rules("image.grid")
_SPAN_RULES = _drop_rules("span.foreign")

# What ends a run of dropped tokens, by where it stands.
_KEPT_OUTSIDE = kind_table({Kind.TEXT, Kind.IMAGE_PATCH, *START_KINDS})
_HEADER_STOPS = kind_table({Kind.GRID, Kind.IMAGE_END, *START_KINDS})
_IMAGE_BODY_STOPS = kind_table({Kind.IMAGE_CODE, Kind.IMAGE_END, *START_KINDS})
_AUDIO_BODY_STOPS = kind_table({Kind.AUDIO_CODE, Kind.AUDIO_END, *START_KINDS})
_NOT_INVALID = kind_table(set(Kind) - INVALID_KINDS)
_STARTS = (K.IMAGE_START, K.AUDIO_START)


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


class DecodeResult(list):
    """What decoding returns, strict or lenient: the segments, in order (it is that list), and ``repairs``.

    ``repairs``: what lenient decoding changed, in stream order (always empty
    for strict decoding, which raises instead). ``segments`` is the list as a
    plain ``list``. Equality is a list's: it compares the segments only.
    """

    def __init__(self, segments: Iterable[Any] = (), repairs: Iterable[Repair] = ()):
        super().__init__(segments)
        self.repairs: list[Repair] = list(repairs)

    @property
    def segments(self) -> list[Any]:
        return list(self)

    def __repr__(self) -> str:
        return f"DecodeResult({list.__repr__(self)}, repairs={self.repairs!r})"

    def __reduce__(self) -> tuple:
        return DecodeResult, (list(self), self.repairs)


class _SpanError(Exception):
    """A span fails the strict check. ``message`` may be a callable: lenient decoding
    catches these by the thousand and never reads it."""

    def __init__(self, position: int, rule: str, message: str | Callable[[], str]):
        super().__init__(position, rule)
        self.position, self.rule, self._message = position, rule, message

    @property
    def message(self) -> str:
        return self._message() if callable(self._message) else self._message


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
        nontext = np.flatnonzero(kinds != K.TEXT)
        n, i = len(ids), 0
        while i < n:
            k = np.searchsorted(nontext, i)
            j = int(nontext[k]) if k < len(nontext) else n
            if j > i:  # a run of text IDs
                out.text(ids[i:j])
                i = j
                continue
            kind = int(kinds[i])
            if kind in _STARTS:
                strict_span = self._image_strict if kind == K.IMAGE_START else self._audio_strict
                try:
                    segment, i = strict_span(ids, kinds, i)
                except _SpanError as e:
                    if strict:
                        raise UTIDecodeError(e.position, e.rule, e.message) from None
                    lenient_span = self._image_lenient if kind == K.IMAGE_START else self._audio_lenient
                    segment, i = lenient_span(ids, kinds, i, report)
                if segment is not None:
                    out.add(segment)
            elif kind == K.IMAGE_PATCH:
                e = run_end(kinds, i, K.IMAGE_PATCH)
                out.add(ImagePlaceholder(e - i))
                i = e
            elif strict:
                rule, message = self._outside_span(ids, kinds, i)
                raise UTIDecodeError(i, rule, message)
            else:  # the whole run of tokens that cannot stand outside a span
                e = scan(kinds, i, _KEPT_OUTSIDE)
                _drop(kinds, i, e, _OUTSIDE_RULES, report)
                i = e
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
            if kinds[p] != K.GRID:
                raise self._violation(
                    ids, kinds, p, "image.grid", f"expected the grid {what} token of the image opened at {i}"
                )
            dims.append(lay.grid_value(ids[p]))
            p += 1
        height, width = dims
        count = height * width * num_layers
        end = p + count
        stop = min(end, n)
        e = run_end(kinds, p, K.IMAGE_CODE, limit=stop)  # only the codes present: O(e - p), not O(count)
        body = ids[p:e]
        if num_layers > 1 and e > p:
            wrong = codebook_of(blk, body) != (np.arange(e - p) % num_layers)
            if wrong.any():
                b = p + int(np.argmax(wrong))
                raise _SpanError(b, "image.layer", f"expected a code of layer {(b - p) % num_layers} (image opened at {i})")
        if e < stop:
            b = e
            if kinds[b] == K.IMAGE_END:
                raise _SpanError(
                    b, "image.count", f"image {height}x{width}x{num_layers} needs {count} codes, got {b - p} (opened at {i})"
                )
            raise self._violation(ids, kinds, b, "span.foreign", f"inside the image opened at {i}")
        if end >= n:
            raise _SpanError(n, "span.unterminated", f"the stream ends inside the image opened at {i}")
        if kinds[end] == K.IMAGE_END:
            codes = code_of(blk, body).reshape(height, width, num_layers)
            return ImageCodes._checked(codes.transpose(2, 0, 1)), end + 1
        if kinds[end] == K.IMAGE_CODE:
            raise _SpanError(end, "image.count", f"image {height}x{width}x{num_layers} needs {count} codes, got more")
        raise self._violation(ids, kinds, end, "span.missing_end", f"expected <|image_end|> after {count} codes")

    def _audio_strict(self, ids: np.ndarray, kinds: np.ndarray, i: int) -> tuple[AudioCodes, int]:
        blk, n = self.layout.audio, len(ids)
        q = blk.num_codebooks
        p = i + 1
        e = run_end(kinds, p, K.AUDIO_CODE)
        body = ids[p:e]
        if len(body):
            codebook = codebook_of(blk, body)
            wrong = codebook != (np.arange(len(body)) % q)
            if wrong.any():
                b = int(np.argmax(wrong))
                raise _SpanError(
                    p + b, "audio.codebook", f"expected a code of codebook {b % q}, got codebook {int(codebook[b])}"
                )
        if e >= n:
            raise _SpanError(n, "span.unterminated", f"the stream ends inside the audio span opened at {i}")
        if kinds[e] == K.AUDIO_END:
            if len(body) % q:
                raise _SpanError(
                    e,
                    "audio.truncated_frame",
                    f"audio span ends after {len(body) % q} of the {q} codes of frame {len(body) // q}",
                )
            return AudioCodes._checked(code_of(blk, body).reshape(-1, q)), e + 1
        raise self._violation(ids, kinds, e, "span.foreign", f"inside the audio span opened at {i}")

    # -- lenient spans (runs, only for spans that fail the strict check) ------------------
    def _image_lenient(self, ids, kinds, i, report: "_Report") -> tuple[ImageCodes | None, int]:
        lay, n = self.layout, len(ids)
        blk = lay.image
        num_layers, dims = blk.num_codebooks, []
        p = i + 1
        while p < n and len(dims) < 2:  # the header: two grid tokens
            kind = int(kinds[p])
            if kind == K.IMAGE_END or kind in _STARTS:
                break
            if kind == K.GRID:
                dims.append(lay.grid_value(ids[p]))
                p += 1
            else:
                e = scan(kinds, p, _HEADER_STOPS)
                _drop(kinds, p, e, _HEADER_RULES, report)
                p = e
        parts: list[np.ndarray] = []
        have = need = 0
        if len(dims) == 2:
            need = dims[0] * dims[1] * num_layers
            while p < n:  # the codes
                kind = int(kinds[p])
                if kind == K.IMAGE_END or kind in _STARTS:
                    break
                if kind == K.IMAGE_CODE:
                    e = run_end(kinds, p, K.IMAGE_CODE)
                    have = _take_codes(ids, p, e, blk, have, need, "image.layer", parts, report)
                    p = e
                elif have < need:
                    e = scan(kinds, p, _IMAGE_BODY_STOPS)
                    _drop(kinds, p, e, _SPAN_RULES, report)
                    p = e
                elif kind in INVALID_KINDS:
                    e = scan(kinds, p, _NOT_INVALID)
                    _drop(kinds, p, e, _SPAN_RULES, report)
                    p = e
                else:
                    break  # complete, and something else follows: closed here
        if p >= n:
            report.add(n, "span.unterminated", f"closed the image opened at {i} at the end of the stream")
        elif kinds[p] == K.IMAGE_END:
            p += 1
        elif kinds[p] in _STARTS:
            report.add(p, "span.nested", f"closed the image opened at {i} before the new span")
        else:
            report.add(p, "span.missing_end", f"closed the complete image opened at {i}")
        if len(dims) < 2:
            report.add(i, "image.grid", "dropped the image: no grid size")
            return None, p
        if have < need:
            present = 3 + have  # its start marker, two grid tokens and the codes kept
            if need - have > PAD_LIMIT * present:
                report.add(
                    i, "image.count",
                    f"dropped the image: {have} of its {need} codes present, too few to pad "
                    f"(padding may add at most {PAD_LIMIT} codes per token of the image, {PAD_LIMIT * present})",
                )
                return None, p
            report.add(i, "image.count", f"padded {need - have} missing codes with code 0")
            parts.append(np.zeros(need - have, dtype=np.int64))
        grid = np.concatenate(parts).reshape(dims[0], dims[1], num_layers).transpose(2, 0, 1)
        return ImageCodes._checked(grid), p

    def _audio_lenient(self, ids, kinds, i, report: "_Report") -> tuple[AudioCodes, int]:
        blk, n = self.layout.audio, len(ids)
        q = blk.num_codebooks
        parts: list[np.ndarray] = []
        p, have = i + 1, 0
        while p < n:
            kind = int(kinds[p])
            if kind == K.AUDIO_END or kind in _STARTS:
                break
            if kind == K.AUDIO_CODE:
                e = run_end(kinds, p, K.AUDIO_CODE)
                have = _take_codes(ids, p, e, blk, have, None, "audio.codebook", parts, report)
                p = e
            else:
                e = scan(kinds, p, _AUDIO_BODY_STOPS)
                _drop(kinds, p, e, _SPAN_RULES, report)
                p = e
        if p >= n:
            report.add(n, "span.unterminated", f"closed the audio span opened at {i} at the end of the stream")
        elif kinds[p] == K.AUDIO_END:
            p += 1
        else:
            report.add(p, "span.nested", f"closed the audio span opened at {i} before the new span")
        codes = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        partial = have % q
        if partial:
            report.add(i, "audio.truncated_frame", f"dropped the {partial} codes of the last, partial frame")
            codes = codes[: have - partial]
        return AudioCodes._checked(codes.reshape(-1, q)), p

    # -- rules --------------------------------------------------------------------------
    def _violation(self, ids, kinds, p: int, rule: str, context: str) -> _SpanError:
        """The error for token ``p`` in a span: invalid IDs and nesting first, then ``rule``."""
        kind = int(kinds[p])
        if kind in _STARTS:
            rule = "span.nested"
        elif kind in INVALID_KINDS:
            rule = INVALID_ID_RULES[Kind(kind)][0]
        return _SpanError(p, rule, lambda: f"unexpected {self.describe(int(ids[p]), Kind(kind))} {context}")

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
            blk = lay.codes_block_of(kind)
            cb, code = codebook_of(blk, token_id), code_of(blk, token_id)
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


def _drop(kinds: np.ndarray, p: int, e: int, rules: np.ndarray, report: "_Report") -> None:
    """Report tokens ``[p, e)`` as dropped: one repair per stretch of the same rule."""
    codes = rules[kinds[p:e]]
    cuts = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    starts = np.concatenate(([0], cuts))
    names = [_RULE_NAMES[c] for c in codes[starts].tolist()]
    report.add_runs((starts + p).tolist(), (cuts + p).tolist() + [e], names, "dropped")


def _take_codes(ids, p: int, e: int, blk, have: int, need: int | None, rule: str,
                parts: list[np.ndarray], report: "_Report") -> int:
    """Keep the codes of the run ``ids[p:e]`` that come in codebook order; returns the new count.

    ``have`` codes were kept before; a code is kept when its codebook is
    ``have % num_codebooks`` and, for an image, fewer than ``need`` are kept.
    Out-of-order codes are dropped under ``rule``, those past ``need`` under
    ``image.count``. In order (the usual case) is one vectorised check.
    """
    q, run = blk.num_codebooks, ids[p:e]
    room = len(run) if need is None else min(len(run), need - have)
    if room <= 0:
        report.add(p, "image.count", f"dropped a code beyond the {need} the image needs", end=e)
        return have
    codebooks = codebook_of(blk, run)
    if q == 1 or bool((codebooks[:room] == (have + np.arange(room)) % q).all()):
        keep, stop = np.ones(room, dtype=bool), room
    else:  # out of order: which codes are kept depends on those kept before, one by one
        keep, stop, h = np.zeros(len(run), dtype=bool), len(run), have
        for t, c in enumerate(codebooks.tolist()):
            if h == need:
                stop = t
                break
            if c == h % q:
                keep[t] = True
                h += 1
        keep = keep[:stop]
        edges = np.flatnonzero(np.diff(np.concatenate(([True], keep, [True])).astype(np.int8))) + p
        for a, b in zip(edges[0::2].tolist(), edges[1::2].tolist()):
            report.add(a, rule, "dropped", end=b)
    parts.append(code_of(blk, run[:stop][keep]))
    if stop < len(run):
        report.add(p + stop, "image.count", f"dropped a code beyond the {need} the image needs", end=e)
    return have + int(np.count_nonzero(keep))


class _Report:
    """Repairs, merging consecutive ones with the same rule and action."""

    def __init__(self):
        # Parallel lists, not one object per repair: cheap to extend by the million.
        self._pos: list[int] = []
        self._end: list[int] = []
        self._rule: list[str] = []
        self._action: list[str] = []

    def add(self, position: int, rule: str, action: str, *, end: int | None = None) -> None:
        """Tokens ``[position, end)`` (``end`` defaults to ``position + 1``)."""
        end = position + 1 if end is None else end
        if self._pos and self._end[-1] == position and self._rule[-1] == rule and self._action[-1] == action:
            self._end[-1] = end
        else:
            self._pos.append(position)
            self._end.append(end)
            self._rule.append(rule)
            self._action.append(action)

    def add_runs(self, starts: list[int], ends: list[int], rules: list[str], action: str) -> None:
        """Many ``add`` calls at once: stretches ``[starts[k], ends[k])``, in order, none adjacent
        with the same rule (so only the first may merge with the last repair so far)."""
        self.add(starts[0], rules[0], action, end=ends[0])
        self._pos += starts[1:]
        self._end += ends[1:]
        self._rule += rules[1:]
        self._action += [action] * (len(starts) - 1)

    @property
    def repairs(self) -> list[Repair]:
        return list(map(Repair, self._pos, self._end, self._rule, self._action))
