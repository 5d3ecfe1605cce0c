"""Lenient decoding and the grammar state machine stay linear and bounded on hostile input."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lumo_uti
from lumo_uti import AudioCodes, ImageCodes
from lumo_uti.grammar import decode as decode_module
from lumo_uti.grammar.constraints import TEXT
from lumo_uti.grammar.layout import Kind
from test_grammar import mutated_streams
from uti_strategies import grammar_for, small_space

UTI = lumo_uti.UTI(lumo_uti.load().token_space, lumo_uti.load().text_tokenizer)
TS = UTI.token_space
IMG_START, IMG_END = TS.id_of("<|image_start|>"), TS.id_of("<|image_end|>")
AUD_START, AUD_END = TS.id_of("<|audio_start|>"), TS.id_of("<|audio_end|>")
IMAGE, AUDIO = TS.block("image"), TS.block("audio")
N = 10**6


def _codes_created(segments) -> int:
    return sum(s.codes.size for s in segments if isinstance(s, (ImageCodes, AudioCodes)))


# -- what a repair may create -------------------------------------------------------------------
def test_headers_without_codes_do_not_become_huge_images():
    ids = [IMG_START, TS.grid_id(256), TS.grid_id(256)] * 1600  # 4,800 IDs asking for 1600 x 65536 codes
    segments = UTI.decode_codes(ids, strict=False)
    repairs = segments.repairs
    assert _codes_created(segments) <= decode_module.PAD_LIMIT * len(ids)
    assert segments == []
    dropped = [r for r in repairs if r.rule == "image.count"]
    assert len(dropped) == 1600 and "dropped the image: 0 of its 65536 codes present" in dropped[0].action


def test_media_decode_renders_no_padded_giants():
    uti = lumo_uti.load()  # with the default bundle's codecs
    segments = uti.decode([IMG_START, TS.grid_id(256), TS.grid_id(256)] * 100, strict=False)
    assert segments == []


@pytest.mark.parametrize(
    "height, width, have, padded",
    [
        (3, 4, 0, True),  # lacks 12 = 4 x 3 tokens (marker + two grid tokens): the limit
        (1, 13, 0, False),  # lacks 13
        (16, 16, 49, True),  # lacks 207 <= 4 x 52
        (16, 16, 48, False),  # lacks 208 > 4 x 51
    ],
)
def test_padding_limit_is_four_codes_per_token_present(height, width, have, padded):
    ids = [IMG_START, TS.grid_id(height), TS.grid_id(width)] + [IMAGE.offset + 7] * have + [IMG_END, 100]
    segments = UTI.decode_codes(ids, strict=False)
    repairs = segments.repairs
    if padded:
        expected = np.array([7] * have + [0] * (height * width - have)).reshape(height, width)
        assert segments == [ImageCodes(expected), UTI.decode([100])[0]]
        assert [r.action for r in repairs] == [f"padded {height * width - have} missing codes with code 0"]
    else:
        assert segments == [UTI.decode([100])[0]]
        assert [r.rule for r in repairs] == ["image.count"] and repairs[0].action.startswith("dropped the image")


def test_state_machine_agrees_with_a_dropped_image():
    """A dropped image leaves the grammar in text, as a padded one does."""
    ids = [IMG_START, TS.grid_id(256), TS.grid_id(256), IMAGE.offset, IMG_END]
    assert UTI.grammar.state_after(ids) == TEXT
    assert UTI.decode_codes(ids + [100], strict=False).segments == UTI.decode([100])


# -- linear time: runs of dropped tokens are skipped at once -------------------------------------
HOSTILE = {
    "outside a span": lambda: np.full(N, -1),
    "padding rows": lambda: np.full(N, 151700),
    "grid tokens outside": lambda: np.full(N, TS.grid_id(3)),
    "in an image header": lambda: np.r_[IMG_START, np.full(N, 100)],
    "in an image body": lambda: np.r_[IMG_START, TS.grid_id(256), TS.grid_id(256), np.full(N, -1)],
    "extra image codes": lambda: np.r_[IMG_START, TS.grid_id(1), TS.grid_id(1), np.full(N, IMAGE.offset)],
    "after a complete image": lambda: np.r_[IMG_START, TS.grid_id(1), TS.grid_id(1), IMAGE.offset, np.full(N, -7)],
    "in an audio span": lambda: np.r_[AUD_START, np.full(N, 151700)],
    "audio codes of the wrong codebook": lambda: np.r_[AUD_START, np.full(N, AUDIO.code_id(3, 5))],
}


@pytest.mark.parametrize("make", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_million_dropped_tokens_are_one_repair(make, monkeypatch):
    calls = []
    add = decode_module._Report.add
    monkeypatch.setattr(decode_module._Report, "add", lambda self, *a, **k: calls.append(a) or add(self, *a, **k))
    ids = make()
    start = time.perf_counter()
    segments = UTI.decode_codes(ids, strict=False)
    repairs = segments.repairs
    elapsed = time.perf_counter() - start
    # Work done: one report per run and per span event, not one per token.
    assert len(calls) <= 4 and len(repairs) <= 4
    assert max(r.end - r.position for r in repairs) >= N - 1
    assert elapsed < 20, elapsed  # a sanity bound only: this takes well under a second
    assert UTI.decode(UTI.encode(segments)) == segments


def test_alternating_rules_are_one_repair_per_stretch():
    ids = np.tile([-1, -1, TS.grid_id(2)], 50_000)
    segments = UTI.decode_codes(ids, strict=False)
    repairs = segments.repairs
    assert segments == []
    assert len(repairs) == 100_000
    assert repairs[:2] == [
        decode_module.Repair(0, 2, "id.negative", "dropped"),
        decode_module.Repair(2, 3, "grid.outside_image", "dropped"),
    ]


@pytest.mark.parametrize("make", HOSTILE.values(), ids=HOSTILE.keys())
def test_lenient_state_skips_runs(make, monkeypatch):
    g = UTI.grammar
    steps = []
    lenient_step = g.constraints.lenient_step
    monkeypatch.setattr(g.constraints, "lenient_step", lambda *a: steps.append(a) or lenient_step(*a))
    g.state_after(make())
    assert len(steps) <= 8  # per token would be a million


def test_strict_prefix_check_is_linear_in_the_codes_present():
    """allowed_next used to re-check all remaining codes of an image at every token."""
    codes = [IMAGE.offset] * 60_000
    ids = [IMG_START, TS.grid_id(256), TS.grid_id(256)] + codes + [100] + codes
    start = time.perf_counter()
    with pytest.raises(lumo_uti.UTIDecodeError) as info:
        UTI.allowed_next(ids)
    assert info.value.position == 60_003
    assert time.perf_counter() - start < 10  # sanity bound; quadratic took minutes


def test_mask_cache_is_bounded():
    ts = small_space(audio=(3, 200))  # 200 codebooks: 200 different masks
    g = grammar_for(ts)
    audio, start = ts.block("audio"), ts.id_of("<|audio_start|>")
    prefix = [start] + [audio.code_id(q, 0) for q in range(199)]
    for n in range(1, 200):
        g.allowed_next(prefix[:n])
    assert len(g.constraints._masks) <= 64


# -- the fast paths agree with the plain token-by-token machine ---------------------------------
def _plain_state_after(constraints, ids, lenient):
    kinds = constraints.layout.kinds(np.asarray(ids, dtype=np.int64))
    state = TEXT
    for i, (kind, tid) in enumerate(zip(kinds.tolist(), ids)):
        nxt = (constraints.lenient_step if lenient else constraints.step)(state, Kind(kind), int(tid))
        if nxt is None:
            return state, i
        state = nxt
    return state, -1


SPACES = [small_space(), small_space(image=(5, 2), audio=(4, 2)), small_space(image=(3, 3), audio=(2, 1))]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_state_after_equals_stepping_token_by_token(data):
    ts = data.draw(st.sampled_from(SPACES))
    g = grammar_for(ts)
    ids = [max(min(v, 2**62), -(2**62)) for v in data.draw(mutated_streams(ts))]
    for lenient in (False, True):
        assert g.constraints.state_after(np.array(ids, dtype=np.int64), lenient=lenient) == _plain_state_after(
            g.constraints, ids, lenient
        )
