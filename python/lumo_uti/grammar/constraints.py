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

from .layout import INVALID_KINDS, START_KINDS, K, Kind, Layout, codebook_of, codebook_range, kind_table, ordered_run


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

# Kinds that leave each mode's state as it is: a run of them is skipped at once.
# Strict: only text and placeholders in text. Lenient: also every token that
# lenient_step drops (see there); start markers, and the tokens a mode takes,
# always change the state. (Codes of the wrong codebook are dropped too, but
# that depends on the ID, not the kind, so they go one by one.)
_ALL = set(Kind)
_KEEPS_STRICT = {mode: kind_table({Kind.TEXT, Kind.IMAGE_PATCH} if mode == Mode.TEXT else ()) for mode in Mode}
_KEEPS_LENIENT = {
    Mode.TEXT: kind_table(_ALL - START_KINDS),
    Mode.IMAGE_HEIGHT: kind_table(_ALL - START_KINDS - {Kind.GRID, Kind.IMAGE_END}),
    Mode.IMAGE_WIDTH: kind_table(_ALL - START_KINDS - {Kind.GRID, Kind.IMAGE_END}),
    Mode.IMAGE_CODES: kind_table(_ALL - START_KINDS - {Kind.IMAGE_CODE, Kind.IMAGE_END}),
    Mode.IMAGE_END: kind_table(INVALID_KINDS | {Kind.IMAGE_CODE}),
    Mode.AUDIO: kind_table(_ALL - START_KINDS - {Kind.AUDIO_CODE, Kind.AUDIO_END}),
}
_MAX_CACHED_MASKS = 64


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
            if kind == K.TEXT or kind == K.IMAGE_PATCH:
                return TEXT
            if kind == K.IMAGE_START:
                return State(Mode.IMAGE_HEIGHT)
            if kind == K.AUDIO_START:
                return State(Mode.AUDIO, index=0)
            return None
        if mode == Mode.IMAGE_HEIGHT:
            return State(Mode.IMAGE_WIDTH, height=lay.grid_value(token_id)) if kind == K.GRID else None
        if mode == Mode.IMAGE_WIDTH:
            if kind != K.GRID:
                return None
            count = state.height * lay.grid_value(token_id) * lay.image.num_codebooks
            return State(Mode.IMAGE_CODES, remaining=count, index=0)
        if mode == Mode.IMAGE_CODES:
            blk = lay.image
            if kind != K.IMAGE_CODE or codebook_of(blk, token_id) != state.index:
                return None
            if state.remaining == 1:
                return State(Mode.IMAGE_END)
            return State(Mode.IMAGE_CODES, remaining=state.remaining - 1, index=(state.index + 1) % blk.num_codebooks)
        if mode == Mode.IMAGE_END:
            return TEXT if kind == K.IMAGE_END else None
        # Mode.AUDIO
        blk = lay.audio
        if kind == K.AUDIO_CODE and codebook_of(blk, token_id) == state.index:
            return State(Mode.AUDIO, index=(state.index + 1) % blk.num_codebooks)
        if kind == K.AUDIO_END and state.index == 0:
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
        if kind == K.IMAGE_END and mode in (Mode.IMAGE_HEIGHT, Mode.IMAGE_WIDTH, Mode.IMAGE_CODES):
            return TEXT  # image dropped or padded
        if kind == K.AUDIO_END and mode == Mode.AUDIO:
            return TEXT  # partial frame dropped
        if mode == Mode.IMAGE_END and kind != K.IMAGE_CODE:
            return self.step(TEXT, kind, token_id) or TEXT  # complete image closed here
        return state  # dropped

    def state_after(self, ids: np.ndarray, *, lenient: bool = False) -> tuple[State, int]:
        """Run the machine over ``ids`` (int64 [N]).

        Returns ``(state, -1)``, or when strict and a token is illegal,
        ``(last legal state, position of that token)``. Linear in ``len(ids)``:
        runs of tokens that leave the state as it is, and runs of codes in
        codebook order, are skipped in one vectorised step each.
        """
        kinds = self.layout.kinds(ids)
        keeps = _KEEPS_LENIENT if lenient else _KEEPS_STRICT
        stops: dict[Mode, np.ndarray] = {}  # per mode: positions of the tokens that may change the state
        image, audio = self.layout.image, self.layout.audio
        state, n, i = TEXT, len(ids), 0
        while i < n:
            mode = state.mode
            if keeps[mode][kinds[i]]:
                at = stops.get(mode)
                if at is None:
                    at = stops[mode] = np.flatnonzero(~keeps[mode][kinds])
                k = np.searchsorted(at, i)
                i = int(at[k]) if k < len(at) else n
                continue
            if mode == Mode.IMAGE_CODES or mode == Mode.AUDIO:
                image_mode = mode == Mode.IMAGE_CODES
                blk, kind = (image, K.IMAGE_CODE) if image_mode else (audio, K.AUDIO_CODE)
                geometry = (blk, state.index)
                run = ordered_run(ids, kinds, i, kind, *geometry, state.remaining if image_mode else n)
                if run:
                    i += run
                    left, index = state.remaining - run, (state.index + run) % blk.num_codebooks
                    if not image_mode:
                        state = State(Mode.AUDIO, index=index)
                    else:
                        state = State(Mode.IMAGE_END) if left == 0 else State(Mode.IMAGE_CODES, remaining=left, index=index)
                    continue
                if lenient:  # codes of another codebook: dropped, the state waits
                    run = ordered_run(ids, kinds, i, kind, *geometry, n, in_order=False)
                    if run:
                        i += run
                        continue
            kind, tid = Kind(int(kinds[i])), int(ids[i])
            nxt_state = self.lenient_step(state, kind, tid) if lenient else self.step(state, kind, tid)
            if nxt_state is None:
                return state, i
            state, i = nxt_state, i + 1
        return state, -1

    # -- masks --------------------------------------------------------------------------
    def mask(self, state: State) -> np.ndarray:
        """Read-only bool [padded_vocab_size]: True for each ID legal after ``state``."""
        key = (state.mode, state.index if state.mode in (Mode.IMAGE_CODES, Mode.AUDIO) else 0)
        cached = self._masks.pop(key, None)
        if cached is None:
            cached = self._build_mask(*key)
            cached.setflags(write=False)
            if len(self._masks) >= _MAX_CACHED_MASKS:  # one per codebook at most: bound it
                del self._masks[next(iter(self._masks))]
        self._masks[key] = cached  # most recently used last
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
            start, end = codebook_range(lay.image, index)
            m[start:end] = True
        elif mode == Mode.IMAGE_END:
            m[lay.marker_id[Kind.IMAGE_END]] = True
        else:
            start, end = codebook_range(lay.audio, index)
            m[start:end] = True
            if index == 0:
                m[lay.marker_id[Kind.AUDIO_END]] = True
        return m
