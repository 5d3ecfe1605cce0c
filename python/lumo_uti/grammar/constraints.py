"""Constrained generation: the grammar as a token-by-token state machine.

``State`` is where a prefix stands (in text, in an image header, among image
codes, waiting for ``<|image_end|>``, inside an audio frame). ``step`` is the
strict transition (``None`` when the token is illegal); ``lenient_step`` mirrors
the repairs of lenient decoding, so a generator fed a damaged prompt keeps a
sensible state. ``mask`` gives the IDs legal next, as a bool array of
``padded_vocab_size``; the set agrees with strict decoding: an ID is allowed
exactly when strict decoding of ``prefix + [id]`` does not fail at that ID.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from .layout import INVALID_KINDS, START_KINDS, Kind, Layout, run_end


class Mode(IntEnum):
    TEXT = 0
    IMAGE_HEIGHT = 1
    IMAGE_WIDTH = 2
    IMAGE_CODES = 3
    IMAGE_END = 4
    AUDIO = 5


@dataclass(frozen=True)
class State:
    """Grammar position. ``index``: image layer or audio codebook expected next."""

    mode: Mode = Mode.TEXT
    remaining: int = 0  # image codes still to come
    index: int = 0
    height: int = 0

    @property
    def in_span(self) -> bool:
        return self.mode != Mode.TEXT


TEXT = State()


class Constraints:
    """Transitions and next-token masks for one layout."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self._masks: dict[tuple[Mode, int], np.ndarray] = {}

    # -- transitions --------------------------------------------------------------------
    def step(self, state: State, kind: Kind, token_id: int) -> State | None:
        """The state after ``token_id`` (of ``kind``), or None when it is illegal."""
        lay, mode = self.layout, state.mode
        if mode == Mode.TEXT:
            if kind == Kind.TEXT or kind == Kind.IMAGE_PATCH:
                return TEXT
            if kind == Kind.IMAGE_START:
                return State(Mode.IMAGE_HEIGHT)
            if kind == Kind.AUDIO_START:
                return State(Mode.AUDIO, index=0)
            return None
        if mode == Mode.IMAGE_HEIGHT:
            return State(Mode.IMAGE_WIDTH, height=lay.grid_value(token_id)) if kind == Kind.GRID else None
        if mode == Mode.IMAGE_WIDTH:
            if kind != Kind.GRID:
                return None
            count = state.height * lay.grid_value(token_id) * lay.image.num_codebooks
            return State(Mode.IMAGE_CODES, remaining=count, index=0)
        if mode == Mode.IMAGE_CODES:
            blk = lay.image
            if kind != Kind.IMAGE_CODE or (token_id - blk.offset) // blk.codebook_size != state.index:
                return None
            if state.remaining == 1:
                return State(Mode.IMAGE_END)
            return State(Mode.IMAGE_CODES, remaining=state.remaining - 1, index=(state.index + 1) % blk.num_codebooks)
        if mode == Mode.IMAGE_END:
            return TEXT if kind == Kind.IMAGE_END else None
        # Mode.AUDIO
        blk = lay.audio
        if kind == Kind.AUDIO_CODE and (token_id - blk.offset) // blk.codebook_size == state.index:
            return State(Mode.AUDIO, index=(state.index + 1) % blk.num_codebooks)
        if kind == Kind.AUDIO_END and state.index == 0:
            return TEXT
        return None

    def lenient_step(self, state: State, kind: Kind, token_id: int) -> State:
        """Like ``step``, but applies lenient decoding's repair instead of failing."""
        nxt = self.step(state, kind, token_id)
        if nxt is not None:
            return nxt
        if kind in INVALID_KINDS:
            return state  # dropped
        if kind in START_KINDS:  # closes the open span, opens a new one
            return self.step(TEXT, kind, token_id)
        mode = state.mode
        if kind == Kind.IMAGE_END and mode in (Mode.IMAGE_HEIGHT, Mode.IMAGE_WIDTH, Mode.IMAGE_CODES):
            return TEXT  # image dropped or padded
        if kind == Kind.AUDIO_END and mode == Mode.AUDIO:
            return TEXT  # partial frame dropped
        if mode == Mode.IMAGE_END and kind != Kind.IMAGE_CODE:
            return self.step(TEXT, kind, token_id) or TEXT  # complete image closed here
        return state  # dropped

    def state_after(self, ids: np.ndarray, *, lenient: bool = False) -> tuple[State, int]:
        """Run the machine over ``ids`` (int64 [N]).

        Returns ``(state, -1)``, or when strict and a token is illegal,
        ``(last legal state, position of that token)``.
        """
        kinds = self.layout.kinds(ids)
        state, n, i = TEXT, len(ids), 0
        text_or_patch = (kinds == Kind.TEXT) | (kinds == Kind.IMAGE_PATCH)
        while i < n:
            if state.mode == Mode.TEXT and text_or_patch[i]:
                nxt = np.flatnonzero(~text_or_patch[i:])  # skip the text run at once
                i = n if len(nxt) == 0 else i + int(nxt[0])
                continue
            if state.mode == Mode.IMAGE_CODES and state.remaining > 1 and self._image_run_ok(ids, kinds, i, state):
                i += state.remaining - 1
                state = State(Mode.IMAGE_CODES, remaining=1, index=(state.index + state.remaining - 1) % self.layout.image.num_codebooks)
                continue
            if state.mode == Mode.AUDIO and kinds[i] == Kind.AUDIO_CODE:
                run = self._audio_run(ids, kinds, i, state.index)
                if run > 1:
                    i += run
                    state = State(Mode.AUDIO, index=(state.index + run) % self.layout.audio.num_codebooks)
                    continue
            kind, tid = Kind(kinds[i]), int(ids[i])
            nxt_state = self.lenient_step(state, kind, tid) if lenient else self.step(state, kind, tid)
            if nxt_state is None:
                return state, i
            state, i = nxt_state, i + 1
        return state, -1

    def _image_run_ok(self, ids, kinds, i, state: State) -> bool:
        """Whether the next ``remaining - 1`` tokens are the image codes expected (fast path)."""
        blk, m = self.layout.image, state.remaining - 1
        if i + m > len(ids):
            return False
        seg = ids[i : i + m]
        if not (kinds[i : i + m] == Kind.IMAGE_CODE).all():
            return False
        layers = (seg - blk.offset) // blk.codebook_size
        return bool((layers == (state.index + np.arange(m)) % blk.num_codebooks).all())

    def _audio_run(self, ids, kinds, i, index: int) -> int:
        """Length of the run of audio codes from ``i`` in the expected codebook order (fast path)."""
        blk = self.layout.audio
        end = run_end(kinds, i, Kind.AUDIO_CODE)
        codebooks = (ids[i:end] - blk.offset) // blk.codebook_size
        wrong = codebooks != (index + np.arange(end - i)) % blk.num_codebooks
        return int(np.argmax(wrong)) if wrong.any() else end - i

    # -- masks --------------------------------------------------------------------------
    def mask(self, state: State) -> np.ndarray:
        """Read-only bool [padded_vocab_size]: True for each ID legal after ``state``."""
        key = (state.mode, state.index if state.mode in (Mode.IMAGE_CODES, Mode.AUDIO) else 0)
        cached = self._masks.get(key)
        if cached is None:
            cached = self._build_mask(*key)
            cached.setflags(write=False)
            self._masks[key] = cached
        return cached

    def _build_mask(self, mode: Mode, index: int) -> np.ndarray:
        lay = self.layout
        ts = lay.token_space
        m = np.zeros(ts.padded_vocab_size, dtype=bool)
        if mode == Mode.TEXT:
            m[: ts.text_vocab_size] = True
            for kind in (Kind.IMAGE_START, Kind.AUDIO_START, Kind.IMAGE_PATCH):
                if kind in lay.marker_id:
                    m[lay.marker_id[kind]] = True
        elif mode in (Mode.IMAGE_HEIGHT, Mode.IMAGE_WIDTH):
            m[lay.grid.offset : lay.grid.end] = True
        elif mode == Mode.IMAGE_CODES:
            start = lay.image.offset + index * lay.image.codebook_size
            m[start : start + lay.image.codebook_size] = True
        elif mode == Mode.IMAGE_END:
            m[lay.marker_id[Kind.IMAGE_END]] = True
        else:
            start = lay.audio.offset + index * lay.audio.codebook_size
            m[start : start + lay.audio.codebook_size] = True
            if index == 0:
                m[lay.marker_id[Kind.AUDIO_END]] = True
        return m
