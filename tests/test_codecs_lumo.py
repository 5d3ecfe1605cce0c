"""The project's own codecs: ``lumo-vq`` (images) and ``lumo-rvq`` (audio)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import lumo_uti
from lumo_uti import codecs
from lumo_uti.codecs import CodecError
from lumo_uti.codecs.lumo_rvq import MdctRVQ, imdct, mdct, mdct_basis, num_frames
from lumo_uti.codecs.lumo_rvq import save_model as save_rvq
from lumo_uti.codecs.lumo_vq import PatchVQ
from lumo_uti.codecs.lumo_vq import save_model as save_vq


def make_vq(tmp_path, *, codebook_size=64, patch=8, blocks=1, seed=0, name="vq"):
    torch.manual_seed(seed)
    model = PatchVQ(patch=patch, codebook_size=codebook_size, decoder_channels=16, decoder_blocks=blocks)
    model.codebook.copy_(torch.rand(codebook_size, 3 * patch * patch) * 2 - 1)
    if model.decoder is not None:  # non-zero output layer, so the decoder matters
        torch.nn.init.normal_(model.decoder.out.weight, std=0.01)
    directory = tmp_path / name
    directory.mkdir()
    save_vq(model, directory, name="tiny-vq")
    return directory


def make_rvq(tmp_path, *, hop=32, q=3, k=16, blocks=1, sample_rate=8000, seed=0):
    torch.manual_seed(seed)
    model = MdctRVQ(sample_rate=sample_rate, hop=hop, num_codebooks=q, codebook_size=k, postfilter_channels=8,
                    postfilter_blocks=blocks)
    model.codebooks.copy_(torch.randn(q, k, hop) * 0.05)
    directory = tmp_path / "rvq"
    directory.mkdir()
    save_rvq(model, directory, name="tiny-rvq")
    return directory


# -- lumo-vq -------------------------------------------------------------------------------------
def test_vq_codes_are_the_nearest_block(tmp_path):
    codec = codecs.load(f"lumo-vq:{make_vq(tmp_path)}")
    x = torch.rand(2, 3, 24, 40) * 2 - 1
    codes = codec.encode_tensor(x)
    assert codes.shape == (2, 3, 5)
    blocks = torch.nn.functional.pixel_unshuffle(x, 8).permute(0, 2, 3, 1).reshape(-1, 192)
    expected = torch.cdist(blocks.double(), codec.model.codebook.double()).argmin(1)
    assert torch.equal(codes.flatten(), expected)
    out = codec.decode_tensor(codes)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_vq_decoder_refines_the_lookup(tmp_path):
    codec = codecs.load(f"lumo-vq:{make_vq(tmp_path, blocks=1)}")
    codes = torch.randint(0, 64, (1, 4, 4))
    plain = torch.nn.functional.pixel_shuffle(codec.model.lookup(codes), 8)
    assert not torch.allclose(codec.decode_tensor(codes), plain)
    bare = codecs.load(f"lumo-vq:{make_vq(tmp_path, blocks=0, name='bare')}")
    assert torch.equal(bare.decode_tensor(codes), torch.nn.functional.pixel_shuffle(bare.model.lookup(codes), 8))


@pytest.mark.parametrize(
    "size, expected",
    [((256, 256), (256, 256)), ((512, 8), (512, 8)), ((256, 168), (256, 168)), ((300, 451), (304, 448)),
     ((3, 3), (8, 8)), ((1024, 512), (512, 256)), ((2000, 10), (512, 8)), ((513, 100), (512, 96))],
)
def test_vq_size_policy(tmp_path, size, expected):
    codec = codecs.load(f"lumo-vq:{make_vq(tmp_path)}")
    assert codec.pixel_size(*size) == expected


def test_vq_images_with_multiple_of_8_sides_decode_to_their_own_size(tmp_path):
    codec = codecs.load(f"lumo-vq:{make_vq(tmp_path)}")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(16, 8), (40, 24), (16, 8)]]
    codes = codec.encode(images)
    assert [c.shape for c in codes] == [(1, 2), (3, 5), (1, 2)]
    assert [im.size for im in codec.decode(codes)] == [(16, 8), (40, 24), (16, 8)]
    one_by_one = [codec.encode(im)[0] for im in images]  # batching changes nothing
    assert all(np.array_equal(a.codes, b.codes) for a, b in zip(codes, one_by_one))


def test_vq_weights_round_trip_in_float16(tmp_path):
    directory = make_vq(tmp_path)
    codec = codecs.load(f"lumo-vq:{directory}")
    from safetensors.torch import load_file

    stored = load_file(str(directory / "model.safetensors"))
    assert stored["codebook"].dtype == torch.float16
    assert torch.equal(codec.model.codebook, stored["codebook"].float())
    assert codec.identity["name"] == "tiny-vq" and codec.identity["options"] == {"max_side": 512}


def test_vq_bad_directories_and_inputs(tmp_path):
    directory = make_vq(tmp_path)
    with pytest.raises(CodecError, match="unknown options"):
        codecs.load(f"lumo-vq:{directory}", bandwidth=3)
    with pytest.raises(CodecError, match="max_side"):
        codecs.load(f"lumo-vq:{directory}", max_side=4)
    codec = codecs.load(f"lumo-vq:{directory}")
    with pytest.raises(ValueError, match="multiples of 8"):
        codec.encode_tensor(torch.zeros(1, 3, 12, 16))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        codec.decode_tensor(torch.full((1, 2, 2), 64))
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(dict(config, codebook_size=32)))
    with pytest.raises(CodecError, match="does not match"):
        codecs.load(f"lumo-vq:{directory}")
    (directory / "config.json").write_text(json.dumps(dict(config, format="other")))
    with pytest.raises(CodecError, match="format"):
        codecs.load(f"lumo-vq:{directory}")
    (directory / "config.json").write_text("{not json")
    with pytest.raises(CodecError, match="not valid JSON"):
        codecs.load(f"lumo-vq:{directory}")
    (directory / "model.safetensors").unlink()
    with pytest.raises(CodecError, match="model.safetensors"):
        codecs.load(f"lumo-vq:{directory}")


# -- lumo-rvq ------------------------------------------------------------------------------------
@given(length=st.integers(1, 700), hop=st.sampled_from([4, 16, 32, 320]), batch=st.integers(1, 3))
def test_mdct_reconstructs_exactly_with_no_delay(length, hop, batch):
    basis = mdct_basis(hop)
    x = torch.randn(batch, length)
    coefficients = mdct(x, basis)
    assert coefficients.shape == (batch, num_frames(length, hop), hop)
    y = imdct(coefficients, basis)
    assert y.shape[1] == (coefficients.shape[1] - 1) * hop >= length
    torch.testing.assert_close(y[:, :length], x, atol=1e-5, rtol=0)
    # orthogonal: coefficient energy equals the energy of the covered signal
    assert math.isclose(float((coefficients**2).sum()), float((x**2).sum()), rel_tol=1e-4)


def test_rvq_codes_match_the_reference_and_decode_aligned(tmp_path):
    codec = codecs.load(f"lumo-rvq:{make_rvq(tmp_path)}")
    wave = torch.randn(2, 1, 200) * 0.1
    codes = codec.encode_tensor(wave)
    assert codes.shape == (2, num_frames(200, 32), 3)
    from lumo_uti.ops.reference import rvq_encode_reference

    frames = mdct(wave[:, 0], codec.model.basis)
    expected = rvq_encode_reference(frames.reshape(-1, 32), codec.model.codebooks, 3).reshape(codes.shape)
    assert torch.equal(codes, expected)
    out = codec.decode_tensor(codes)
    assert out.shape == (2, 1, (codes.shape[1] - 1) * 32)


def test_rvq_decoding_is_aligned_with_the_input(tmp_path):
    """With a codebook that holds the signal's own MDCT frames, decoding gives the input back, unshifted."""
    hop, length = 32, 500
    wave = torch.randn(1, length) * 0.2
    frames = mdct(wave, mdct_basis(hop))[0]
    model = MdctRVQ(sample_rate=8000, hop=hop, num_codebooks=1, codebook_size=frames.shape[0], postfilter_blocks=0)
    model.codebooks.copy_(frames[None].half().float())
    save_rvq(model, tmp_path, name="exact")
    codec = codecs.load(f"lumo-rvq:{tmp_path}")
    audio = codec.decode(codec.encode(lumo_uti.Audio(wave, 8000)))[0]
    assert audio.sample_rate == 8000
    torch.testing.assert_close(audio.waveform[:, :length], wave, atol=2e-3, rtol=0)


def test_rvq_num_quantizers_and_media(tmp_path):
    directory = make_rvq(tmp_path)
    codec = codecs.load(f"lumo-rvq:{directory}", num_quantizers=2)
    assert codec.num_codebooks == 2 and codec.frame_rate == 8000 / 32
    stereo = lumo_uti.Audio(torch.randn(2, 441) * 0.1, 44100)  # resampled to 8 kHz and mixed down
    codes = codec.encode(stereo)[0]
    assert codes.shape == (num_frames(80, 32), 2)
    out = codec.decode(codes)[0]
    assert out.sample_rate == 8000 and out.num_channels == 1
    for bad in (0, 4):
        with pytest.raises(CodecError, match="num_quantizers"):
            codecs.load(f"lumo-rvq:{directory}", num_quantizers=bad)
    with pytest.raises(ValueError, match="mono"):
        codec.encode_tensor(torch.zeros(1, 2, 64))
    with pytest.raises(ValueError, match=r"\[B, T', 2\]"):
        codec.decode_tensor(torch.zeros(1, 4, 3, dtype=torch.long))


def test_bundle_with_lumo_codecs_round_trips_a_document(tmp_path):
    bundle = lumo_uti.create_bundle(tmp_path / "b", image=f"lumo-vq:{make_vq(tmp_path)}",
                                    audio=f"lumo-rvq:{make_rvq(tmp_path)}")
    uti = lumo_uti.load(bundle)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8))
    ids = uti.encode(["hi", image, lumo_uti.Audio(torch.randn(1, 100) * 0.1, 8000)])
    text, image_out, audio_out = uti.decode(ids)
    assert text == "hi" and image_out.size == (24, 16) and audio_out.sample_rate == 8000
    identity = uti.token_space.codecs["image"]
    assert identity["kind"] == "lumo-vq" and identity["name"] == "tiny-vq"
