"""The native predictive-coding loop (``_C.predictive_code``) against the Python diagonal loop.

``block_prediction.code_blocks`` runs the whole anti-diagonal loop of a lumo-vq encode or decode
in one native call on the CPU (threads claim row blocks of a diagonal once the earlier diagonals
are done). These tests check that it gives the Python loop's codes and reconstruction bit for bit
(the Python loop is itself checked against a block-by-block definition in
``test_codec_prediction.py``): on hypothesis grids of every patch size up to 4, batch sizes,
heavy-tailed codebooks with exact duplicate and zero entries (ties go to the lowest index), every
vector ISA x screen, and 1-3 threads; that it does not depend on the thread count or on how images
are batched; on the default image codec's own codebook; and that bad input names the block.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lumo_uti.codecs import block_prediction as bp
from lumo_uti.ops import PackedCodebook, _native
from test_ops_vq_int_screen import every_path
from test_ops_vq_ordered import heavy_tailed

pytestmark = pytest.mark.skipif(_native.cpu() is None, reason="CPU kernels not built")


def python_loop(monkeypatch, blocks, codebook, weight, packed=None, codes=None):
    """``code_blocks`` through its Python diagonal loop (the native call turned off)."""
    with monkeypatch.context() as mp:
        mp.setattr(bp, "_native_code", lambda *args: None)
        search = None if packed is None else packed.search
        return bp.code_blocks(blocks, codebook, weight, search, codes=codes)


def native(blocks, codebook, weight, packed=None, codes=None):
    """``code_blocks`` through the native loop (checked to be the one that ran)."""
    p = round((blocks.shape[-1] // 3) ** 0.5)
    got = bp._native_code(blocks, codebook, weight, p, codes, packed)
    assert got is not None
    return got


def grid_case(b, h, w, p, k, seed, scale=1.0):
    """Blocks with correlated pixels (as in images), a heavy-tailed codebook and a predictor fitted
    to the blocks (so that the prediction errors are small and the codes depend on it)."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(b, 3, h * p, w * p, generator=g) * 2 - 1).cumsum(-1).clamp(-1, 1) * scale
    blocks = torch.nn.functional.pixel_unshuffle(x, p).permute(0, 2, 3, 1).contiguous()
    _, cb = heavy_tailed(1, k, 3 * p * p, 0.1, seed)
    cb = cb * 0.2
    weight = bp.fit_predictor([blocks]) if b * h * w > 0 else torch.zeros(6 * p + 6, 3 * p * p)
    return blocks, cb.contiguous(), weight


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(b=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), p=st.integers(1, 4),
       k=st.sampled_from([1, 7, 64, 300]), seed=st.integers(0, 10_000), threads=st.integers(1, 3))
def test_native_loop_is_the_python_loop(monkeypatch, b, h, w, p, k, seed, threads):
    blocks, cb, weight = grid_case(b, h, w, p, k, seed)
    packed = PackedCodebook(cb)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        want_codes, want_rec = python_loop(monkeypatch, blocks, cb, weight, packed)
        codes, rec = native(blocks, cb, weight, packed)
        assert torch.equal(codes, want_codes)
        assert torch.equal(rec, want_rec)
        # Decoding: the reconstruction of the codes, and of any other codes.
        assert torch.equal(native(blocks, cb, weight, codes=codes)[1], want_rec)
        other = torch.randint(0, k, codes.shape, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(native(blocks, cb, weight, codes=other)[1],
                           python_loop(monkeypatch, blocks, cb, weight, codes=other)[1])
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
def test_every_isa_and_screen(monkeypatch, threads):
    """The search inside the loop runs every kernel path (D = 48, K = 2000: the integer screen and
    the norm-ordered copy where the ISA has them)."""
    blocks, cb, weight = grid_case(2, 7, 11, 4, 2000, seed=3)
    want = python_loop(monkeypatch, blocks, cb, weight, PackedCodebook(cb))

    def run():
        return native(blocks, cb, weight, PackedCodebook(cb))  # packed under this path's ISA and screen

    results = every_path(run, threads=threads)
    with monkeypatch.context() as mp:
        mp.setenv("LUMO_VQ_ISA", "scalar")
        results["scalar"] = run()
    for key, got in results.items():
        assert torch.equal(got[0], want[0]), key
        assert torch.equal(got[1], want[1]), key


def test_same_codes_at_any_thread_count_and_batching():
    blocks, cb, weight = grid_case(4, 16, 12, 4, 512, seed=11)
    packed = PackedCodebook(cb)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3, 4):
            torch.set_num_threads(threads)
            results.append(native(blocks, cb, weight, packed))
            # One image at a time, and the batch split unevenly.
            results.append(tuple(torch.cat(parts) for parts in zip(
                *(native(blocks[i:j], cb, weight, packed) for i, j in ((0, 1), (1, 3), (3, 4))))))
    finally:
        torch.set_num_threads(before)
    for codes, rec in results[1:]:
        assert torch.equal(codes, results[0][0])
        assert torch.equal(rec, results[0][1])


def test_default_codec_codebook(monkeypatch):
    """The shipped image codec (K = 16384, D = 192) on a 64 x 96 image and its mirror, batched."""
    import lumo_uti

    codec = lumo_uti.load().image_codec
    model = codec.model
    x = (torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1).cumsum(-1).clamp(-1, 1)
    x = torch.cat([x, x.flip(-1)])
    with torch.inference_mode():
        blocks = model.search_latents(x).contiguous()
        packed = PackedCodebook(model.codebook)
        want = python_loop(monkeypatch, blocks, model.codebook, model.predictor, packed)
        got = native(blocks, model.codebook, model.predictor, packed)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        # The codec's own encode runs the native loop and gives the same codes.
        assert torch.equal(codec.encode_tensor(x), want[0])


def test_non_contiguous_blocks_and_int32_codes(monkeypatch):
    blocks, cb, weight = grid_case(2, 5, 6, 2, 50, seed=5)
    packed = PackedCodebook(cb)
    strided = blocks.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    assert not strided.is_contiguous()
    want = python_loop(monkeypatch, blocks, cb, weight, packed)
    got = bp.code_blocks(strided, cb, weight, packed.search, packed=packed)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(bp.reconstruct(want[0].int(), cb, weight), want[1])


def test_falls_back_to_the_python_loop_where_it_cannot_run(monkeypatch):
    """Another codebook's packed copy, a cosine copy, or float64 blocks: the Python loop runs (and
    gives the l2 codes of the codebook it was given)."""
    blocks, cb, weight = grid_case(1, 4, 5, 2, 40, seed=8)
    packed = PackedCodebook(cb)
    want = python_loop(monkeypatch, blocks, cb, weight, packed)
    for other in (PackedCodebook(cb.clone()), PackedCodebook(cb, metric="cosine")):
        assert bp._native_code(blocks, cb, weight, 2, None, other) is None
    assert bp._native_code(blocks.double(), cb, weight, 2, None, packed) is None
    assert bp._native_code(blocks, cb.double(), weight, 2, None, packed) is None
    got = bp.code_blocks(blocks, cb, weight, packed.search, packed=PackedCodebook(cb.clone()))
    assert torch.equal(got[0], want[0])


def test_bad_input_names_the_block():
    blocks, cb, weight = grid_case(2, 4, 5, 2, 40, seed=9)
    packed = PackedCodebook(cb)
    bad = blocks.clone()
    bad[1, 2, 3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"inf/NaN in block \(1, 2, 3\) of \[B, h, w\] = \[2, 4, 5\]"):
        bp.code_blocks(bad, cb, weight, packed.search, packed=packed)
    huge = blocks.clone()
    huge[0, 1, 1] = 3e38
    with pytest.raises(ValueError, match=r"block \(0, 1, 1\) .*overflows fp32"):
        bp.code_blocks(huge, cb, weight, packed.search, packed=packed)
    codes = bp.code_blocks(blocks, cb, weight, packed.search, packed=packed)[0]
    codes[0, 3, 4] = 40
    with pytest.raises(ValueError, match=r"code of block \(0, 3, 4\) .* is 40, outside \[0, 40\)"):
        bp.reconstruct(codes, cb, weight)
    codes[0, 3, 4] = -1
    with pytest.raises(ValueError, match=r"is -1, outside"):
        bp.reconstruct(codes, cb, weight)


def test_binding_checks_sizes_and_arguments():
    module = _native.cpu()
    blocks, cb, weight = grid_case(1, 2, 3, 2, 10, seed=1)
    packed = PackedCodebook(cb)._native_packed()
    w64 = weight.double().contiguous()
    codes = torch.empty(1, 2, 3, dtype=torch.long)
    buf = _native.buffer

    def call(**over):
        args = dict(packed=packed, blocks=buf(blocks), codebook=buf(cb), k=10, weight=buf(w64), b=1, h=2, w=3,
                    patch=2, grid=bp.PREDICTION_GRID, codes=buf(codes), recon=(0, 0), num_threads=1)
        args.update(over)
        return module.predictive_code(**args)

    assert call() == -1
    assert torch.equal(codes, bp.code_blocks(blocks, cb, weight, PackedCodebook(cb).search)[0])
    with pytest.raises(ValueError, match="blocks of b \\* h \\* w \\* 3 patch\\^2"):
        call(h=3)
    with pytest.raises(ValueError, match="weight of"):
        call(weight=buf(w64[:-1]))
    with pytest.raises(ValueError, match="power of two"):
        call(grid=0.001)
    with pytest.raises(ValueError, match="packed codebook of dimension"):
        call(packed=PackedCodebook(torch.randn(10, 27))._native_packed())
    with pytest.raises(ValueError, match="packed codebook of the codebook's size"):
        call(packed=PackedCodebook(cb[:9].contiguous())._native_packed())
    with pytest.raises(ValueError, match="num_threads >= 0"):
        call(num_threads=-1)
    assert call(b=0, blocks=(0, 0), codes=(0, 0)) == -1  # an empty batch: nothing to do
