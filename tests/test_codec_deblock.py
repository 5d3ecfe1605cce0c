"""lumo-vq's learned deblocking (``BlockEdgeBlend``): its definition, its file keys, and fitting it."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lumo_model.codec import corpus
from lumo_model.codec.train import fit_image_deblock
from lumo_uti.codecs.hf_common import CodecError
from lumo_uti.codecs.lumo_vq import BlockEdgeBlend, LumoVQCodec, PatchVQ, load_model, save_model
from lumo_uti.metrics import block_edge_ratio


def reference_deblock(image: torch.Tensor, weights: list[float], patch: int) -> torch.Tensor:
    """The documented rule, boundary by boundary: width first, then height, each pass on the last's output."""
    x = image.double().clone()
    for axis in (3, 2):
        src = x.clone()
        for b in range(patch, (x.shape[axis] // patch) * patch, patch):
            step = src.select(axis, b) - src.select(axis, b - 1)
            for k, w in enumerate(weights):
                x.select(axis, b - 1 - k).add_(w * step)
                x.select(axis, b + k).sub_(w * step)
    return x


@settings(max_examples=40, deadline=None)
@given(patch=st.sampled_from([2, 4, 8]), data=st.data())
def test_deblock_is_the_documented_rule(patch, data):
    taps = data.draw(st.integers(1, patch // 2))
    h = data.draw(st.integers(1, 5 * patch))
    w = data.draw(st.integers(1, 5 * patch))
    weights = data.draw(st.lists(st.floats(-1, 1), min_size=taps, max_size=taps))
    blend = BlockEdgeBlend(taps, patch)
    with torch.no_grad():
        blend.taps.copy_(torch.tensor(weights))
    image = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h * 31 + w))
    if data.draw(st.booleans()):
        image = image.transpose(2, 3).contiguous().transpose(2, 3)  # strided input
    out = blend(image)
    assert out.shape == image.shape
    torch.testing.assert_close(out.double(), reference_deblock(image, weights, patch), rtol=1e-5, atol=1e-5)


def test_untrained_deblock_is_the_identity_and_smooths_a_block_grid():
    blend = BlockEdgeBlend(3, 8)
    grid = torch.arange(16.0).repeat_interleave(8)  # a staircase: one step per 8-pixel block
    image = (grid[None, :] + grid[:, None]).expand(1, 3, 128, 128) / 32
    assert torch.equal(blend(image), image)
    with torch.no_grad():
        blend.taps.copy_(torch.tensor([7, 5, 3]) / 16)  # a ramp over the 6 pixels by the boundary
    smooth = blend(image)
    assert block_edge_ratio(smooth) < 0.5 * block_edge_ratio(image)
    # the step of 1/32 between pixels 7 and 8 of row 0 is spread: neighbour differences 3, 2, 2, 2, 2, 2, 3 / 16ths
    row = smooth[0, 0, 0, 4:12]
    expected = torch.tensor([3, 2, 2, 2, 2, 2, 3]) / 16 / 32
    torch.testing.assert_close(row[1:] - row[:-1], expected, rtol=0, atol=1e-6)


def test_deblock_taps_beyond_half_a_block_are_refused(tmp_path):
    with pytest.raises(ValueError, match="taps"):
        BlockEdgeBlend(5, 8)
    model = PatchVQ(patch=4, codebook_size=16, decoder_channels=8, decoder_blocks=1, deblock_taps=2)
    save_model(model, tmp_path / "c", name="t")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["deblock_taps"] == 2
    config["deblock_taps"] = 3
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CodecError, match="deblock_taps"):
        load_model(tmp_path / "c")


def test_codec_without_the_deblock_key_loads_without_deblocking(tmp_path):
    model = PatchVQ(patch=4, codebook_size=16, decoder_channels=8, decoder_blocks=1)
    save_model(model, tmp_path / "c", name="t")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config.pop("deblock_taps")
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    assert load_model(tmp_path / "c")[0].deblock is None


def _plain_codec(tmp_path):
    data = tmp_path / "train"
    data.mkdir()
    for i in range(4):
        corpus.procedural_image(i, 64).save(data / f"photo_{i}.png")
    corpus.procedural_image(9, 64).save(data / "drawn_9.png")
    torch.manual_seed(0)
    model = PatchVQ(patch=8, codebook_size=32, decoder_blocks=0)
    with torch.no_grad():
        model.codebook.copy_(torch.rand(32, 192) * 2 - 1)
    save_model(model, tmp_path / "plain", name="t")
    return data


def test_fit_deblock_lowers_the_error_and_keeps_the_codes(tmp_path):
    data = _plain_codec(tmp_path)
    fitted = fit_image_deblock(tmp_path / "plain", data, tmp_path / "deblocked", size=64, progress=False)
    assert fitted["mse_after"] < 0.99 * fitted["mse_before"] and fitted["images"] == 4  # photo_* only
    assert any(abs(t) > 1e-3 for t in fitted["taps"])
    plain, deblocked = LumoVQCodec(tmp_path / "plain"), LumoVQCodec(tmp_path / "deblocked")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    codes = plain.encode_tensor(x)
    assert torch.equal(codes, deblocked.encode_tensor(x))
    taps = load_model(tmp_path / "deblocked")[0].deblock.taps.tolist()
    assert taps == fitted["taps"] or torch.allclose(torch.tensor(taps), torch.tensor(fitted["taps"]), atol=1e-6)
    torch.testing.assert_close(deblocked.decode_tensor(codes).double(),
                               reference_deblock(plain.decode_tensor(codes), taps, 8), rtol=1e-5, atol=1e-5)
    assert json.loads((tmp_path / "deblocked" / "config.json").read_text())["deblock_fit"]["taps"] == fitted["taps"]


def test_cli_codec_deblock(tmp_path, capsys):
    from lumo_uti.cli import main as lumo

    data = _plain_codec(tmp_path)
    code = lumo(["codec-deblock", "--codec", str(tmp_path / "plain"), "--data", str(data), "--out",
                 str(tmp_path / "d"), "--pattern", "*", "--taps", "2", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["images"] == 5 and len(json.loads(out)["taps"]) == 2
    assert load_model(tmp_path / "d")[0].deblock.taps.numel() == 2
    code = lumo(["codec-deblock", "--codec", str(tmp_path / "plain"), "--data", str(data), "--out",
                 str(tmp_path / "e"), "--pattern", "nothing_*"])
    assert code == 2 and "matches 'nothing_*'" in capsys.readouterr().err
    code = lumo(["codec-deblock", "--codec", str(tmp_path / "plain"), "--data", str(data), "--out",
                 str(tmp_path / "e"), "--taps", "5"])
    assert code == 2 and "taps" in capsys.readouterr().err and not (tmp_path / "e").exists()
