"""lumo-vq block prediction: codes and decodes against a block-by-block reference, determinism,
the predictor fit, config round trips and training with ``predict``."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from codec_training_data import (encodes_at_thread_counts_and_batch_splits, same_weights, train_and_eval_folders,
                                 train_in_stops)

from lumo_model.codec.train import ImageTrainConfig, train_image_codec
from lumo_uti.codecs import block_prediction as bp
from lumo_uti.codecs.hf_common import CodecError
from lumo_uti.codecs.lumo_vq import LumoVQCodec, PatchVQ, load_model, save_model


def _model(seed: int, patch: int = 4, codebook_size: int = 64, **kw) -> PatchVQ:
    torch.manual_seed(seed)
    model = PatchVQ(patch=patch, codebook_size=codebook_size, decoder_blocks=0, predict=1, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
        model.codebook.copy_(torch.randn_like(model.codebook) * 0.3)
        model.predictor.copy_(torch.randn_like(model.predictor) * 0.15)
    return model.eval()


def _codec(tmp_path, model: PatchVQ, name: str = "codec") -> LumoVQCodec:
    save_model(model, tmp_path / name, name="t")
    return LumoVQCodec(tmp_path / name)


def _reference(blocks: torch.Tensor, codebook: torch.Tensor, weight: torch.Tensor, p: int,
               codes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Block by block in raster order, as the module docstring states it (float64 features and
    prediction, rounded; float32 reconstruction); codes from a float64 nearest search when not given."""
    b, h, w, d = blocks.shape
    rec = torch.zeros(b, h, w, 3, p, p)
    out = torch.zeros(b, h, w, dtype=torch.long)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                above = rec[n, i - 1, j, :, p - 1, :].flatten() if i else torch.zeros(3 * p)
                left = rec[n, i, j - 1, :, :, p - 1].flatten() if j else torch.zeros(3 * p)
                corner = rec[n, i - 1, j - 1, :, p - 1, p - 1] if i and j else torch.zeros(3)
                f = torch.cat([above, left, corner, torch.tensor([float(i > 0), float(j > 0), 1.0])]).double()
                pred = (torch.round((f @ weight.double()) / bp.PREDICTION_GRID) * bp.PREDICTION_GRID).float()
                if codes is None:
                    residual = (blocks[n, i, j] - pred).double()
                    out[n, i, j] = int(((codebook.double() - residual) ** 2).sum(1).argmin())
                else:
                    out[n, i, j] = codes[n, i, j]
                rec[n, i, j] = (pred + codebook[out[n, i, j]]).view(3, p, p)
    return out, rec.reshape(b, h, w, d)


@pytest.mark.parametrize("seed, height, width", [(0, 4, 4), (1, 12, 20), (2, 20, 8), (3, 4, 28), (4, 16, 16)])
def test_codes_and_decode_follow_the_block_by_block_definition(tmp_path, seed, height, width):
    codec = _codec(tmp_path, _model(seed))
    from safetensors.torch import load_file

    w = {k: v.float() for k, v in load_file(str(tmp_path / "codec" / "model.safetensors")).items()}
    x = torch.rand(2, 3, height, width) * 2 - 1
    blocks = F.pixel_unshuffle(x, 4).permute(0, 2, 3, 1)
    want_codes, want_rec = _reference(blocks, w["codebook"], w["predictor"], 4)
    codes = codec.encode_tensor(x)
    assert torch.equal(codes, want_codes)
    # No decoder weights: the decode is the reconstruction itself, pixel-shuffled.
    expected = F.pixel_shuffle(want_rec.permute(0, 3, 1, 2), 4)
    assert torch.equal(codec.decode_tensor(codes), expected)
    # Decoding any codes (not only an encoder's) follows the same definition.
    other = torch.randint(0, 64, codes.shape)
    assert torch.equal(codec.decode_tensor(other),
                       F.pixel_shuffle(_reference(blocks, w["codebook"], w["predictor"], 4, other)[1]
                                       .permute(0, 3, 1, 2), 4))


def test_prediction_changes_the_codes():
    model = _model(5)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    plain = PatchVQ(patch=4, codebook_size=64, decoder_blocks=0)
    plain.codebook.copy_(model.codebook)
    assert not torch.equal(model.encode(x), plain.encode(x))


@pytest.mark.parametrize("seed", [0, 1])
def test_encode_is_the_same_at_any_thread_count_and_batch_size(tmp_path, seed):
    torch.manual_seed(seed)
    x = (torch.rand(5, 3, 64, 64) * 2 - 1).cumsum(-1).clamp(-1, 1)  # correlated pixels, as in images
    model = _model(seed, patch=8, codebook_size=512)
    grid = F.pixel_unshuffle(x, 8).permute(0, 2, 3, 1).contiguous()
    model.predictor.copy_(bp.fit_predictor([grid]).half().float())
    codec = _codec(tmp_path, model)
    results = encodes_at_thread_counts_and_batch_splits(codec, x)
    for r in results[1:]:
        assert torch.equal(r, results[0])


def test_empty_batches(tmp_path):
    codec = _codec(tmp_path, _model(0))
    codes = codec.encode_tensor(torch.zeros(0, 3, 8, 12))
    assert codes.shape == (0, 2, 3)
    assert codec.decode_tensor(codes).shape == (0, 3, 8, 12)


def test_fit_predictor_recovers_a_linear_rule():
    # On a linear ramp image each pixel is above(x) + left(y) - corner: a block with both neighbours
    # can be predicted exactly. One predictor serves the edge blocks too (the indicators only add a
    # bias there), so the least-squares fit is close to that rule, not exact.
    g = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    ramps = torch.stack([torch.stack([a + bx * xs + by * ys for a, bx, by in (torch.rand(3, 3, generator=g) - 0.5) * 0.05])
                         for _ in range(12)])
    grid = F.pixel_unshuffle(ramps, 4).permute(0, 2, 3, 1).contiguous()
    weight = bp.fit_predictor([grid[:6], grid[6:]])
    assert weight.shape == (bp.feature_count(4), 48)
    errors = bp.open_loop_residuals(grid, weight).reshape(12, 8, 8, 48)
    inner = errors[:, 1:, 1:].abs().mean()
    assert inner < 0.01 * grid.abs().mean()
    assert inner < errors[:, 0].abs().mean() / 5 and inner < errors[:, :, 0].abs().mean() / 5
    with pytest.raises(ValueError, match="at least one grid"):
        bp.fit_predictor([])


def test_config_round_trip_and_bad_combinations(tmp_path):
    model = _model(0)
    save_model(model, tmp_path / "c", name="t")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["predict"] == 1
    loaded, _ = load_model(tmp_path / "c")
    assert torch.equal(loaded.predictor, model.predictor.half().float())
    # A codec without prediction writes no key (files written before it existed stay the same).
    plain = PatchVQ(patch=4, codebook_size=8, decoder_blocks=0)
    assert "predict" not in plain.config() and plain.predictor is None
    with pytest.raises(CodecError, match="cannot be combined"):
        PatchVQ(patch=4, codebook_size=8, decoder_blocks=0, encoder_blocks=1, encoder_channels=4, predict=1)
    config["predict"] = 2
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CodecError, match="predict"):
        load_model(tmp_path / "c")


# -- training ----------------------------------------------------------------------------
TINY = ImageTrainConfig(codebook_size=32, kmeans_samples=2000, kmeans_iterations=3, decoder_channels=8,
                        decoder_blocks=1, refine_channels=4, decoder_steps=4, batch_size=2, crop=32, save_every=2,
                        eval_every=2, scales=(1.0, 0.5), eval_size=32, predict=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return train_and_eval_folders(tmp_path_factory, "pred")


def test_training_with_prediction_resumes_exactly(data, tmp_path):
    from safetensors.torch import load_file

    train, evald = data
    whole = train_image_codec(train, tmp_path / "whole", eval_data=evald, config=TINY, progress=False)
    parts, stops = train_in_stops(train, tmp_path / "parts", evald, TINY)
    assert stops == 2 + 1  # k-means iterations 1, 2; decoder step 2
    assert parts["psnr_db"] == whole["psnr_db"]
    assert same_weights(tmp_path / "whole" / "codec", tmp_path / "parts" / "codec")
    a = load_file(str(tmp_path / "whole" / "codec" / "model.safetensors"))
    assert "predictor" in a and a["predictor"].abs().sum() > 0
    log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    fitted = [r for r in log if r.get("predictor_fitted")]
    assert len(fitted) == 1 and fitted[0]["prediction_error_mse"] > 0


def test_init_codebook_and_decoder_across_prediction(data, tmp_path):
    train, _ = data
    train_image_codec(train, tmp_path / "pred", config=replace(TINY, decoder_steps=0), progress=False)
    train_image_codec(train, tmp_path / "plain", config=replace(TINY, predict=False, decoder_steps=2), progress=False)
    # The predictor travels with the codebook.
    cfg = replace(TINY, init_codebook=str(tmp_path / "pred" / "codec"),
                  init_decoder=str(tmp_path / "plain" / "codec"), decoder_steps=2)
    train_image_codec(train, tmp_path / "both", config=cfg, progress=False)
    first, _ = load_model(tmp_path / "pred" / "codec")
    both, _ = load_model(tmp_path / "both" / "codec")
    assert torch.equal(first.codebook, both.codebook) and torch.equal(first.predictor, both.predictor)
    # A prediction-error codebook needs prediction, and the other way round.
    with pytest.raises(ValueError, match="with block prediction"):
        train_image_codec(train, tmp_path / "x", config=replace(cfg, predict=False, init_decoder=""), progress=False)
    with pytest.raises(ValueError, match="without block prediction"):
        train_image_codec(train, tmp_path / "y", config=replace(cfg, init_codebook=str(tmp_path / "plain" / "codec")),
                          progress=False)


def test_cli_predict_flag(data, tmp_path, capsys):
    from lumo_uti.cli import main as lumo

    train, evald = data
    args = ["train-codec", "image", "--data", str(train), "--eval-data", str(evald), "--out", str(tmp_path / "run"),
            "--codebook-size", "16", "--kmeans-samples", "1000", "--kmeans-iterations", "2", "--steps", "2",
            "--crop", "32", "--decoder-channels", "8", "--refine-channels", "4", "--quiet", "--predict"]
    assert lumo(args) == 0
    config = json.loads((tmp_path / "run" / "codec" / "config.json").read_text())
    assert config["predict"] == 1 and config["train_config"]["predict"] is True
    capsys.readouterr()
    # The codec's own evaluation reads the predictor back: codec-eval gives the run's figures.
    assert lumo(["codec-eval", "image", "--codec", str(tmp_path / "run" / "codec"), "--eval-data", str(evald)]) == 0
    assert json.loads(capsys.readouterr().out)["psnr_db"] == json.loads((tmp_path / "run" / "eval.json").read_text())["psnr_db"]
