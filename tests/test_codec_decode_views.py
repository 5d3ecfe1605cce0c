"""lumo-vq's ``decode_views`` option: decoding as the mean of mirrored / transposed decoder runs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import lumo_uti
from lumo_uti.codecs.hf_common import CodecError
from lumo_uti.codecs.lumo_vq import LumoVQCodec, PatchVQ, save_model

from test_codec_v2 import _random_model as _random_v2_model

# test_codec_v2's small model, without the encoder (decoding only) and with a deblocking.
NO_ENCODER_WITH_DEBLOCK = dict(encoder_channels=0, encoder_blocks=0, deblock_taps=2)


def _random_model(seed: int = 0, **overrides) -> PatchVQ:
    """Every weight random, the zero-initialised output layers and the deblocking taps included."""
    return _random_v2_model(seed, **{**NO_ENCODER_WITH_DEBLOCK, **overrides})


def _codec(tmp_path, model: PatchVQ, **options) -> LumoVQCodec:
    save_model(model, tmp_path / "codec", name="t")
    return LumoVQCodec(tmp_path / "codec", **options)


# Written out here, independently of the codec's table: each view as a function and its inverse.
VIEWS = [
    (lambda x: x, lambda x: x),
    (lambda x: x.flip(-1), lambda x: x.flip(-1)),
    (lambda x: x.flip(-2), lambda x: x.flip(-2)),
    (lambda x: x.flip(-1).flip(-2), lambda x: x.flip(-2).flip(-1)),
    (lambda x: x.mT, lambda x: x.mT),
    (lambda x: x.mT.flip(-1), lambda x: x.flip(-1).mT),
    (lambda x: x.mT.flip(-2), lambda x: x.flip(-2).mT),
    (lambda x: x.mT.flip(-1).flip(-2), lambda x: x.flip(-2).flip(-1).mT),
]


def _reference(model: PatchVQ, codes: torch.Tensor, views: int) -> torch.Tensor:
    """The documented decode: the mean over the first ``views`` views of (view, one-view network without
    the deblocking, view undone), then the deblocking."""
    deblock, model.deblock = model.deblock, None
    try:
        looked_up = F.pixel_shuffle(model.lookup(codes), model.patch)
        outs = [undo(model.decode_blocks(F.pixel_unshuffle(view(looked_up), model.patch)))
                for view, undo in VIEWS[:views]]
    finally:
        model.deblock = deblock
    return deblock(torch.stack(outs).mean(0))


def test_one_view_is_the_plain_decoder(tmp_path):
    model = _random_model()
    codes = torch.randint(0, 64, (2, 3, 5))
    plain = _codec(tmp_path, model).decode_tensor(codes)
    assert torch.equal(LumoVQCodec(tmp_path / "codec", decode_views=1).decode_tensor(codes), plain)


@pytest.mark.parametrize("views", [2, 4, 8])
def test_an_empty_batch_decodes_to_an_empty_batch(tmp_path, views):
    codec = _codec(tmp_path, _random_model(), decode_views=views)
    assert codec.decode_tensor(torch.zeros(0, 3, 5, dtype=torch.long)).shape == (0, 3, 12, 20)


@pytest.mark.parametrize("views", [2, 4, 8])
@pytest.mark.parametrize("shape", [(1, 3, 5), (2, 4, 4), (1, 1, 7)])
def test_several_views_are_the_documented_mean(tmp_path, views, shape):
    model = _random_model(seed=views)
    codec = _codec(tmp_path, model, decode_views=views)
    codes = torch.randint(0, 64, shape)
    got = codec.decode_tensor(codes)
    assert got.shape == (shape[0], 3, shape[1] * 4, shape[2] * 4)
    torch.testing.assert_close(got, _reference(codec.model, codes, views), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, LumoVQCodec(tmp_path / "codec").decode_tensor(codes), atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(views=st.sampled_from([2, 4, 8]), h=st.integers(1, 5), w=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_the_mean_over_the_views_is_symmetric_under_them(views, h, w, seed):
    """Decoding a viewed image's blocks equals viewing the decoded image, for every view averaged over
    (the first 2, 4 and 8 views are each closed under composition); the one-view decoder is not."""
    model = _random_model(seed=seed % 7)
    gen = torch.Generator().manual_seed(seed)
    blocks = model.lookup(torch.randint(0, 64, (1, h, w), generator=gen))
    looked_up = F.pixel_shuffle(blocks, 4)
    with torch.no_grad():
        decoded = model.decode_blocks(blocks, views)
        for view, _ in VIEWS[:views]:
            torch.testing.assert_close(model.decode_blocks(F.pixel_unshuffle(view(looked_up), 4), views),
                                       view(decoded), rtol=1e-4, atol=1e-5)
        one = model.decode_blocks(F.pixel_unshuffle(VIEWS[1][0](looked_up), 4))
        assert not torch.allclose(one, VIEWS[1][0](model.decode_blocks(blocks)), atol=1e-4)


def test_views_do_not_change_codes_and_are_recorded_only_when_set(tmp_path):
    model = _random_model()
    plain = _codec(tmp_path, model)
    eight = LumoVQCodec(tmp_path / "codec", decode_views=8)
    x = torch.rand(2, 3, 12, 8) * 2 - 1
    assert torch.equal(plain.encode_tensor(x), eight.encode_tensor(x))
    assert plain.identity["options"] == {"max_side": 512}  # as before the option existed
    assert eight.identity["options"] == {"max_side": 512, "decode_views": 8}
    assert eight.identity["weights_hash"] == plain.identity["weights_hash"]


@pytest.mark.parametrize("bad", [0, 3, 16, -1, True, 2.0, "8", None])
def test_bad_decode_views_are_refused(tmp_path, bad):
    save_model(_random_model(), tmp_path / "codec", name="t")
    with pytest.raises(CodecError, match="decode_views must be one of"):
        LumoVQCodec(tmp_path / "codec", decode_views=bad)
    with pytest.raises(ValueError, match="views must be one of"):
        _random_model().decode(torch.zeros(1, 1, 1, dtype=torch.long), views=bad)


def test_a_bundle_keeps_its_decode_views(tmp_path):
    save_model(_random_model(), tmp_path / "codec", name="t")
    bundle = lumo_uti.create_bundle(tmp_path / "b", image=f"lumo-vq:{tmp_path / 'codec'}",
                                    image_options={"decode_views": 4})
    uti = lumo_uti.load(bundle)
    assert uti.image_codec.decode_views == 4
    assert uti.token_space.codecs["image"]["options"]["decode_views"] == 4


def test_codec_eval_takes_decode_views(tmp_path, capsys):
    from PIL import Image

    from lumo_uti.cli import main as lumo

    save_model(_random_model(patch=8, deblock_taps=3), tmp_path / "codec", name="t")
    evald = tmp_path / "eval"
    evald.mkdir()
    gen = torch.Generator().manual_seed(0)
    for name in ("photo_a", "drawn_b"):
        pixels = (torch.rand(40, 48, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(evald / f"{name}.png")
    base = ["codec-eval", "image", "--codec", str(tmp_path / "codec"), "--eval-data", str(evald)]
    reports = []
    for views in (1, 2):
        assert lumo(base + ["--decode-views", str(views)]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert [r["decode_views"] for r in reports] == [1, 2]
    assert reports[0]["psnr_db"] != reports[1]["psnr_db"]
    assert reports[0]["codebook_usage"] == reports[1]["codebook_usage"]  # the same codes
    assert lumo(base + ["--decode-views", "3"]) == 2
    assert "decode_views must be one of" in capsys.readouterr().err
    assert lumo(base + ["--beam", "4"]) == 2
    assert "--beam does not apply to image codecs" in capsys.readouterr().err
