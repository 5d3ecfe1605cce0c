"""Fuzzing the decoders of untrusted input, bounded to run in the normal suite.

Targets: strict and lenient ``decode``, ``allowed_next`` / ``state_after`` on
arbitrary integer streams (lists, numpy arrays and tensors of every integer
dtype), and ``TokenSpace.from_json_bytes`` on mutated files, both with broken
bytes and with re-fingerprinted content edits (so validation, not just the
fingerprint check, sees the damage). ``tests/fuzz/fuzz_decoders.py`` runs the
same targets under atheris, by hand, for as long as you like.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lumo_uti
from lumo_uti import AudioCodes, ImageCodes, TokenSpace, TokenSpaceError, UTIDecodeError
from lumo_uti._hashing import canonical_json, sha256_bytes
from lumo_uti.grammar import RULES
from lumo_uti.grammar.decode import PAD_LIMIT
from lumo_uti.token_space import MAX_VOCAB_SIZE
from test_grammar import mutated_streams
from uti_strategies import documents, grammar_for, normalize, small_space

UTI = lumo_uti.UTI(lumo_uti.load().token_space, lumo_uti.load().text_tokenizer)
DEFAULT = UTI.token_space
SPACES = [small_space(), small_space(image=(5, 2), audio=(4, 2)), small_space(image=None), small_space(audio=None)]
GRAMMARS = [UTI.grammar] + [grammar_for(ts) for ts in SPACES]
# A few hundred examples each keeps this file under 20 s; HYPOTHESIS_PROFILE does not
# raise them: run tests/fuzz/fuzz_decoders.py for a long search.
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

INTEGER_DTYPES = ["list", np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
                  torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32, torch.uint64]


@st.composite
def id_streams(draw):
    """(grammar, ids) where ids is any container of integers, mostly near the UTI blocks."""
    g = draw(st.sampled_from(GRAMMARS))
    ts = g.token_space
    dtype = draw(st.sampled_from(INTEGER_DTYPES))
    if draw(st.booleans()):
        values = draw(mutated_streams(ts))
    else:
        pool = st.one_of(
            st.integers(ts.base_rows - 2, ts.padded_vocab_size + 2),
            st.integers(-3, ts.padded_vocab_size + 3),
            st.integers(-(2**70), 2**70),
        )
        values = draw(st.lists(pool, max_size=120))
    if dtype == "list":
        return g, values
    np_dtype = np.dtype(str(dtype).removeprefix("torch.")) if isinstance(dtype, torch.dtype) else np.dtype(dtype)
    info = np.iinfo(np_dtype)
    arr = np.array([min(max(v, info.min), info.max) for v in values], dtype=np_dtype)
    return g, (torch.from_numpy(arr) if isinstance(dtype, torch.dtype) else arr)


def _codes_in(segments) -> int:
    return sum(s.codes.size for s in segments if isinstance(s, (ImageCodes, AudioCodes)))


@FUZZ
@given(case=id_streams())
def test_decoders_fail_only_with_their_own_error(case):
    g, ids = case
    n = len(ids)
    try:
        strict = g.decode(ids).segments
    except UTIDecodeError as e:
        assert e.rule in RULES and 0 <= e.position <= n
        strict = None
    lenient = g.decode(ids, strict=False)  # never raises for integers
    assert all(r.rule in RULES and 0 <= r.position < r.end <= n + 1 for r in lenient.repairs)
    assert g.decode(g.encode(lenient.segments)).segments == normalize(lenient.segments)  # a valid document
    assert _codes_in(lenient.segments) <= (PAD_LIMIT + 1) * n  # repairs create little
    if strict is not None:
        assert lenient.segments == strict and lenient.repairs == []
    try:
        mask = g.allowed_next(ids)
        assert mask.shape == (g.token_space.padded_vocab_size,)
    except UTIDecodeError as e:
        assert strict is None and e.rule in RULES
    g.state_after(ids)


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_lenient_decoding_round_trips_valid_streams(data):
    g = data.draw(st.sampled_from(GRAMMARS[1:]))
    doc = data.draw(documents(g.token_space))
    ids = g.encode(doc)
    result = g.decode(np.array(ids, dtype=np.int64), strict=False)
    assert result.repairs == [] and result.segments == normalize(doc) == g.decode(ids).segments


# -- the token-space loader --------------------------------------------------------------------
FILES = [DEFAULT.to_json_bytes(), SPACES[1].to_json_bytes(), SPACES[2].to_json_bytes()]

json_values = st.recursive(
    st.none() | st.booleans() | st.text(max_size=8) | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, -1, 7, MAX_VOCAB_SIZE, MAX_VOCAB_SIZE + 1, 2**40, 2**63]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@st.composite
def edited_files(draw):
    """A token space file with a few content edits and a fingerprint that matches them."""
    data = json.loads(draw(st.sampled_from(FILES)))
    data.pop("fingerprint")
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(data))))
        op = draw(st.sampled_from(["replace", "delete", "wrap", "bump"]))
        if not path:
            continue
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        key, old = path[-1], parent[path[-1]]
        if op == "delete":
            del parent[key]
        elif op == "wrap":
            parent[key] = [old]
        elif op == "bump" and isinstance(old, int) and not isinstance(old, bool):
            parent[key] = old + draw(st.sampled_from([-1, 1, 2**20, 2**40, -old]))
        else:
            parent[key] = draw(json_values)
    if draw(st.booleans()):
        try:
            data["fingerprint"] = sha256_bytes(canonical_json(data))
        except ValueError:
            pass  # a huge int canonical JSON cannot print: left unsigned
    return json.dumps(data).encode()


@st.composite
def broken_files(draw):
    """A token space file with byte-level damage (the fingerprint mostly catches it)."""
    raw = bytearray(draw(st.sampled_from(FILES)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "nest"]))
        if op == "flip" and at < len(raw):
            raw[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del raw[at : at + draw(st.integers(1, 16))]
        elif op == "truncate":
            del raw[at:]
        elif op == "nest":
            depth = draw(st.integers(1, 3000))
            raw[at:at] = b"[" * depth + b"]" * depth
    return bytes(raw)


def _load_only_token_space_errors(raw: bytes) -> None:
    try:
        ts = TokenSpace.from_json_bytes(raw)
    except TokenSpaceError:
        return
    # It loaded: then it is usable, and within the limits.
    assert ts.padded_vocab_size <= MAX_VOCAB_SIZE
    assert TokenSpace.from_json_bytes(ts.to_json_bytes()) == ts
    g = grammar_for(ts)
    assert g.allowed_next([]).shape == (ts.padded_vocab_size,)


@settings(FUZZ, max_examples=150)
@given(raw=edited_files())
def test_loader_raises_only_token_space_errors_on_edited_content(raw):
    _load_only_token_space_errors(raw)


@settings(FUZZ, max_examples=100)
@given(raw=broken_files())
def test_loader_raises_only_token_space_errors_on_broken_bytes(raw):
    _load_only_token_space_errors(raw)


@pytest.mark.parametrize("raw", [b"", b"null", b"[]", b"{}", b'"x"', b"1e999", b"-0"], ids=repr)
def test_loader_on_tiny_inputs(raw):
    with pytest.raises(TokenSpaceError):
        TokenSpace.from_json_bytes(raw)
