"""lumo-rvq's beam-search encoder (option ``beam``)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lumo_uti.codecs import CodecError
from lumo_uti.codecs.lumo_rvq import LumoRVQCodec, MdctRVQ, rvq_beam_encode
from lumo_uti.codecs.lumo_rvq import save_model as save_rvq
from lumo_uti.ops import rvq_decode, rvq_encode


def _error(x, codes, codebooks):
    return ((x.double() - rvq_decode(codes, codebooks).double()) ** 2).sum(-1)


def test_beam_one_is_the_greedy_encoder():
    torch.manual_seed(0)
    codebooks, x = torch.randn(4, 32, 16), torch.randn(300, 16)
    assert torch.equal(rvq_beam_encode(x, codebooks, 1), rvq_encode(x, codebooks))


def test_a_full_beam_finds_the_best_sequence():
    torch.manual_seed(1)
    codebooks, x = torch.randn(3, 4, 6), torch.randn(50, 6)
    codes = rvq_beam_encode(x, codebooks, 4 ** 3)
    every = torch.tensor(list(itertools.product(range(4), repeat=3)))  # [64, 3]
    errors = torch.stack([_error(x, c.expand(50, 3), codebooks) for c in every], 1)
    torch.testing.assert_close(_error(x, codes, codebooks), errors.min(1).values)


def test_a_wider_beam_lowers_the_error():
    torch.manual_seed(2)
    codebooks, x = torch.randn(6, 64, 24) / torch.arange(1, 7)[:, None, None], torch.randn(500, 24)
    errors = [float(_error(x, rvq_beam_encode(x, codebooks, b), codebooks).mean()) for b in (1, 4, 16)]
    assert errors[0] > errors[1] > errors[2]


def _codec(tmp_path, **options):
    torch.manual_seed(3)
    model = MdctRVQ(sample_rate=8000, hop=32, num_codebooks=4, codebook_size=64, postfilter_blocks=0)
    model.codebooks.copy_(torch.randn_like(model.codebooks) * 0.1)
    save_rvq(model, tmp_path / "rvq", name="t")
    return LumoRVQCodec(tmp_path / "rvq", **options)


def test_beam_codes_are_the_same_at_any_thread_count_and_batch_size(tmp_path):
    codec = _codec(tmp_path, beam=8)
    torch.manual_seed(4)
    waves = torch.randn(3, 1, 4000) * 0.3
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(codec.encode_tensor(waves))
            results.append(torch.cat([codec.encode_tensor(waves[i:i + 1]) for i in range(3)]))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(r, results[0]) for r in results)
    greedy = _codec(tmp_path).encode_tensor(waves)
    assert not torch.equal(results[0], greedy)


def test_beam_option(tmp_path):
    assert "beam" not in _codec(tmp_path).identity["options"]
    assert _codec(tmp_path, beam=1).identity == _codec(tmp_path).identity
    assert _codec(tmp_path, beam=4).identity["options"]["beam"] == 4
    for bad in (0, 257, 2.0, True, "4"):
        with pytest.raises(CodecError, match="beam must be an integer"):
            _codec(tmp_path, beam=bad)


def test_beam_search_in_chunks_equals_one_pass(monkeypatch):
    from lumo_uti.codecs import lumo_rvq

    g = torch.Generator().manual_seed(11)
    codebooks = torch.randn(3, 16, 6, generator=g)
    x = torch.randn(2, 37, 6, generator=g)
    whole = rvq_beam_encode(x, codebooks, 4)
    monkeypatch.setattr(lumo_rvq, "BEAM_CHUNK_ELEMENTS", 5 * 4 * 16)  # 5 rows a chunk: 15 chunks, the last short
    assert torch.equal(rvq_beam_encode(x, codebooks, 4), whole)
    monkeypatch.setattr(lumo_rvq, "BEAM_CHUNK_ELEMENTS", 1)  # never below one row
    assert torch.equal(rvq_beam_encode(x, codebooks, 4), whole)
    assert rvq_beam_encode(x[:, :0], codebooks, 4).shape == (2, 0, 3)


def test_beam_selection_is_the_stable_sort_for_any_values():
    from lumo_uti.codecs.lumo_rvq import _smallest

    g = torch.Generator().manual_seed(12)
    for scale in (1.0, 1e6, 2.0 ** 60):  # the last too large for int64 keys: the sort itself
        values = torch.round(torch.randn(50, 96, generator=g, dtype=torch.float64) * 3) * scale
        values[:, 40:60] = values[:, :20]  # many exact ties
        for n in (1, 4, 96):
            assert torch.equal(_smallest(values, n), torch.sort(values, dim=1, stable=True).indices[:, :n])


# -- the float32 screen ------------------------------------------------------------------------
def _unscreened(x, codebooks, beam):
    """The beam search with every pair scored in float64."""
    return rvq_beam_encode(x, codebooks, beam, screen=False)


def _search_case(draw, scales=(1e-20, 1e-3, 1.0)):
    """Codebooks and rows with ties, outlier norms, zero entries and a range of scales."""
    q, k, d = draw(st.integers(1, 4)), draw(st.integers(1, 40)), draw(st.integers(1, 12))
    n, seed = draw(st.integers(0, 30)), draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from(scales))
    codebooks = torch.randn(q, k, d, generator=g) * scale / torch.arange(1, q + 1)[:, None, None]
    if draw(st.booleans()) and k > 1:  # duplicated entries: exact ties everywhere
        codebooks[:, k // 2:] = codebooks[:, : k - k // 2].clone()
    if draw(st.booleans()):
        codebooks[:, 0] = 0
    if draw(st.booleans()):  # one loud entry: its norm drives a max-norm bound, not a per-entry one
        codebooks[:, -1] *= 1000
    x = torch.randn(n, d, generator=g) * scale
    if draw(st.booleans()) and n > 1:
        x[n // 2:] = x[: n - n // 2].clone()
    if draw(st.booleans()) and n and k:  # rows that are codebook entries (zero residuals)
        x[0] = codebooks[0, 0]
    strides = draw(st.booleans())  # non-contiguous rows
    if strides:
        x = torch.cat([x, x], 1)[:, ::2]
    return x, codebooks, draw(st.integers(1, 9))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_screened_beam_search_equals_the_float64_one(data):
    x, codebooks, beam = _search_case(data.draw)
    assert torch.equal(rvq_beam_encode(x, codebooks, beam), _unscreened(x, codebooks, beam))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_at_large_scales_the_screened_search_finds_equally_good_codes(data):
    # Scores above about 2^20 have a float64 rounding coarser than the grid: an exact tie between equal
    # entries may then be broken differently by the two float64 computations, never to a worse code.
    x, codebooks, beam = _search_case(data.draw, scales=(1e3, 1e15))
    screened, unscreened = rvq_beam_encode(x, codebooks, beam), _unscreened(x, codebooks, beam)
    torch.testing.assert_close(_error(x, screened, codebooks), _error(x, unscreened, codebooks),
                               rtol=1e-9, atol=0)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_the_screen_bounds_every_score_from_below(data):
    """The float32 product is a lower bound of the float64 score of every (sequence, code) pair."""
    from lumo_uti.codecs.lumo_rvq import _Stage

    x, codebooks, _ = _search_case(data.draw, scales=(1e-20, 1e-3, 1.0, 1e3, 1e15))
    if not x.shape[0] or not codebooks.shape[1]:
        return
    stage = _Stage(codebooks[0].double())
    res = torch.stack([x.double(), x.double() - codebooks[-1, :1].double()], 1)  # [N, 2, D]
    err = (res * res).sum(-1)
    exact = err[:, :, None] - 2 * res @ stage.cb.T + stage.norms
    assert bool(torch.all(stage.lower_bounds(res, err).double() <= exact))


def test_the_screen_stands_aside_for_ties_non_finite_rows_and_reduced_precision():
    from lumo_uti.codecs import lumo_rvq

    g = torch.Generator().manual_seed(21)
    codebooks, x = torch.randn(3, 64, 8, generator=g), torch.randn(20, 8, generator=g)
    stage, res = lumo_rvq._Stage(codebooks[0].double()), x.double()[:, None]
    err = (res * res).sum(-1)
    assert lumo_rvq._screened_stage(res, err, stage, 4) is not None
    same = lumo_rvq._Stage(codebooks[0, :1].double().expand(64, 8).contiguous())  # every entry equal
    assert lumo_rvq._screened_stage(res, err, same, 4) is None
    bad = res.clone()
    bad[3, 0, 2] = float("nan")
    assert lumo_rvq._screened_stage(bad, (bad * bad).sum(-1), stage, 4) is None
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert lumo_rvq._screened_stage(res, err, stage, 4) is None
    finally:
        torch.set_float32_matmul_precision(before)
    for rows in (x, torch.cat([x[:5], torch.full((1, 8), float("nan")), x[5:]])):
        assert torch.equal(rvq_beam_encode(rows, codebooks, 4), _unscreened(rows, codebooks, 4))
