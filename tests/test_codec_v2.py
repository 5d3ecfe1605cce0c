"""The lumo-vq learned encoder and full-resolution refiner, the image quality measures, and the
train-codec options that come with them (time limit, --init-codebook)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from codec_training_data import (encodes_at_thread_counts_and_batch_splits, same_weights, train_and_eval_folders,
                                 train_in_stops)

from lumo_model.codec import train as codec_train
from lumo_model.codec.image_quality import block_edge_ratio, ssim_map
from lumo_model.codec.train import ImageTrainConfig, fit_image_deblock, train_image_codec
from lumo_uti.codecs.hf_common import CodecError
from lumo_uti.codecs.lumo_vq import ENCODER_GRID, LumoVQCodec, PatchVQ, load_model, save_model
from lumo_uti.metrics import ssim

SMALL = dict(patch=4, codebook_size=64, decoder_channels=8, decoder_blocks=1, encoder_channels=8, encoder_blocks=1,
             refine_channels=6, refine_blocks=1, refine_extra=2)


def _random_model(seed: int = 0, **overrides) -> PatchVQ:
    """A model whose every weight (the zero-initialised outputs included) is random."""
    torch.manual_seed(seed)
    model = PatchVQ(**{**SMALL, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
        model.codebook.copy_(torch.randn_like(model.codebook) * 0.5)
    return model.eval()


def _codec(tmp_path, model: PatchVQ) -> LumoVQCodec:
    save_model(model, tmp_path / "codec", name="t")
    return LumoVQCodec(tmp_path / "codec")


def _conv(x, weights, name):
    return F.conv2d(x, weights[f"{name}.weight"], weights[f"{name}.bias"], padding=1)


def _stack(x, weights, prefix, blocks):
    """The documented conv stack: inp, residual blocks x + conv2(gelu(conv1(gelu(x)))), out(gelu(.))."""
    h = _conv(x, weights, f"{prefix}.inp")
    for i in range(blocks):
        h = h + _conv(F.gelu(_conv(F.gelu(h), weights, f"{prefix}.blocks.{i}.conv1")), weights,
                      f"{prefix}.blocks.{i}.conv2")
    return _conv(F.gelu(h), weights, f"{prefix}.out")


def test_decode_is_the_documented_function_of_the_codes(tmp_path):
    codec = _codec(tmp_path, _random_model())
    from safetensors.torch import load_file

    w = {k: v.double() for k, v in load_file(str(tmp_path / "codec" / "model.safetensors")).items()}
    codes = torch.randint(0, 64, (2, 3, 5))
    q = w["codebook"][codes].permute(0, 3, 1, 2)  # [B, D, h, w], D = 3 * 4 * 4
    r = _stack(q, w, "decoder", 1)
    image = F.pixel_shuffle(q + r[:, :48], 4)
    features = F.pixel_shuffle(r[:, 48:], 4)  # refine_extra = 2 planes
    expected = image + _stack(torch.cat([image, features], 1), w, "refiner", 1)
    got = codec.decode_tensor(codes)
    assert got.shape == (2, 3, 12, 20)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_codes_are_the_nearest_codebook_vectors_to_the_rounded_latents(tmp_path):
    codec = _codec(tmp_path, _random_model(1))
    from safetensors.torch import load_file

    w = {k: v.double() for k, v in load_file(str(tmp_path / "codec" / "model.safetensors")).items()}
    x = torch.rand(3, 3, 16, 12) * 2 - 1
    b = F.pixel_unshuffle(x.double(), 4)
    z = torch.round((b + _stack(b, w, "encoder", 1)) / ENCODER_GRID) * ENCODER_GRID
    z = z.permute(0, 2, 3, 1).reshape(-1, 48)
    expected = torch.cdist(z, w["codebook"]).argmin(1).reshape(3, 4, 3)
    codes = codec.encode_tensor(x)
    assert torch.equal(codes, expected)
    # The encoder matters: these are not (all) the nearest codes to the raw blocks.
    raw = torch.cdist(b.permute(0, 2, 3, 1).reshape(-1, 48), w["codebook"]).argmin(1).reshape(3, 4, 3)
    assert not torch.equal(codes, raw)


@pytest.mark.parametrize("seed, encoder_blocks", [(0, 1), (1, 1), (2, 0)])
def test_encode_is_the_same_at_any_thread_count_and_batch_size(tmp_path, seed, encoder_blocks):
    # Trained-size widths (convolutions that split work over threads and batch), 64 x 64 images.
    codec = _codec(tmp_path, _random_model(seed, patch=8, codebook_size=512, encoder_channels=96,
                                           encoder_blocks=encoder_blocks, decoder_blocks=0, refine_blocks=0))
    x = torch.rand(5, 3, 64, 64) * 2 - 1
    results = encodes_at_thread_counts_and_batch_splits(codec, x)
    for r in results[1:]:
        assert torch.equal(r, results[0])


def test_codecs_without_encoder_or_refiner_keys_still_load(tmp_path):
    model = PatchVQ(patch=4, codebook_size=16, decoder_channels=8, decoder_blocks=1)
    save_model(model, tmp_path / "c", name="old")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    for key in ("encoder_channels", "encoder_blocks", "refine_channels", "refine_blocks", "refine_extra"):
        config.pop(key)
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    loaded, _ = load_model(tmp_path / "c")
    assert loaded.encoder is None and loaded.refiner is None and loaded.decoder is not None


@pytest.mark.parametrize("key, value", [("encoder_blocks", -1), ("refine_extra", 65), ("refine_channels", "8"),
                                        ("encoder_channels", True)])
def test_bad_encoder_or_refiner_keys_are_refused(tmp_path, key, value):
    save_model(_random_model(), tmp_path / "c", name="t")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config[key] = value
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CodecError, match=key):
        load_model(tmp_path / "c")


def test_untrained_encoder_and_refiner_are_the_plain_codec():
    torch.manual_seed(0)
    plain = PatchVQ(patch=4, codebook_size=32, decoder_channels=8, decoder_blocks=1)
    torch.manual_seed(0)
    full = PatchVQ(**{**SMALL, "codebook_size": 32})
    full.codebook.copy_(torch.randn(32, 48))
    plain.codebook.copy_(full.codebook)
    plain.decoder.load_state_dict({k: v[:48] if k.startswith("out.") else v
                                   for k, v in full.decoder.state_dict().items()})
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    codes = full.encode(x)
    assert torch.equal(codes, plain.encode(x))
    torch.testing.assert_close(full.decode(codes), plain.decode(codes))


# -- measures ---------------------------------------------------------------------------
def test_block_edge_ratio_sees_a_block_grid():
    torch.manual_seed(0)
    smooth = F.interpolate(torch.rand(1, 3, 9, 9), size=64, mode="bicubic", align_corners=False)  # not 8-periodic
    blocky = F.interpolate(F.avg_pool2d(smooth, 8), scale_factor=8, mode="nearest") + 0.01 * torch.randn(1, 3, 64, 64)
    assert 0.8 < block_edge_ratio(smooth) < 1.25
    assert block_edge_ratio(blocky) > 3
    shifted = torch.roll(blocky, shifts=(4, 4), dims=(2, 3))  # the grid is no longer at the 8-pixel lines
    assert block_edge_ratio(shifted) < 1
    with pytest.raises(ValueError, match="expected images"):
        block_edge_ratio(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="at least 16"):
        block_edge_ratio(torch.rand(1, 3, 8, 64))


@pytest.mark.parametrize("size", [11, 32, 40])
def test_differentiable_ssim_matches_the_metric(size):
    torch.manual_seed(size)
    a = torch.rand(2, 3, size, size + 3, dtype=torch.float64)
    b = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    assert float(ssim_map(a, b).mean()) == pytest.approx(ssim(a, b), abs=1e-9)


# -- training ----------------------------------------------------------------------------
TINY = ImageTrainConfig(codebook_size=32, kmeans_samples=2000, kmeans_iterations=3, decoder_channels=8,
                        decoder_blocks=1, encoder_channels=8, encoder_blocks=1, refine_channels=4, decoder_steps=6,
                        batch_size=2, crop=32, save_every=2, eval_every=2, scales=(1.0, 0.5), eval_size=32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return train_and_eval_folders(tmp_path_factory, "v2")


def test_time_limit_stops_at_checkpoints_and_the_reruns_equal_one_run(data, tmp_path):
    from safetensors.torch import load_file

    train, evald = data
    whole = train_image_codec(train, tmp_path / "whole", eval_data=evald, config=TINY, progress=False)
    parts, stops = train_in_stops(train, tmp_path / "parts", evald, TINY)
    assert stops == 2 + 2  # k-means iterations 1, 2; decoder steps 2, 4 (the last of each needs no stop)
    assert parts["psnr_db"] == whole["psnr_db"]
    assert same_weights(tmp_path / "whole" / "codec", tmp_path / "parts" / "codec")
    a = load_file(str(tmp_path / "whole" / "codec" / "model.safetensors"))
    assert {"encoder.out.weight", "refiner.out.weight"} <= a.keys()
    log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if r["stage"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4, 6]
    assert all(r["photos_psnr_db"] > 5 and 0 < r["photos_block_edge_ratio"] for r in evals)
    assert whole["photos_block_edge_ratio"] > 0 and whole["block_edge_ratio"] > 0
    with pytest.raises(ValueError, match="time limit"):
        train_image_codec(train, tmp_path / "bad", config=TINY, progress=False, time_limit_s=0)


def test_init_codebook_replaces_kmeans(data, tmp_path):
    from dataclasses import replace

    train, _ = data
    train_image_codec(train, tmp_path / "first", config=replace(TINY, decoder_steps=0), progress=False)
    cfg = replace(TINY, init_codebook=str(tmp_path / "first" / "codec"))
    train_image_codec(train, tmp_path / "second", config=cfg, progress=False)
    first, _ = load_model(tmp_path / "first" / "codec")
    second, _ = load_model(tmp_path / "second" / "codec")
    assert torch.equal(first.codebook, second.codebook)
    log = [json.loads(line) for line in (tmp_path / "second" / "log.jsonl").read_text().splitlines()]
    assert not [r for r in log if "iteration" in r] and log[0]["init_codebook"] == cfg.init_codebook
    # The codec records where its codebook came from: the first run's k-means settings, not its own.
    first_cfg = json.loads((tmp_path / "first" / "codec" / "config.json").read_text())
    second_cfg = json.loads((tmp_path / "second" / "codec" / "config.json").read_text())
    assert "codebook_source" not in first_cfg
    source = second_cfg["codebook_source"]
    assert source["codec"] == cfg.init_codebook and source["trained_on"] == str(train)
    assert source["kmeans_samples"] == TINY.kmeans_samples == first_cfg["train_config"]["kmeans_samples"]
    # ... through a chain of runs, and through codec-deblock, which keeps it.
    third = replace(TINY, init_codebook=str(tmp_path / "second" / "codec"), kmeans_samples=TINY.kmeans_samples + 1)
    train_image_codec(train, tmp_path / "third", config=third, progress=False)
    assert json.loads((tmp_path / "third" / "codec" / "config.json").read_text())["codebook_source"] == source
    fit_image_deblock(tmp_path / "third" / "codec", train, tmp_path / "deblocked", pattern="*", iterations=2,
                      progress=False)
    assert json.loads((tmp_path / "deblocked" / "config.json").read_text())["codebook_source"] == source
    with pytest.raises(ValueError, match="codebook of shape"):
        train_image_codec(train, tmp_path / "wrong_size", config=replace(cfg, codebook_size=16), progress=False)
    with pytest.raises(ValueError, match="init-codebook"):
        train_image_codec(train, tmp_path / "fourth", config=replace(TINY, init_codebook=str(tmp_path / "none")),
                          progress=False)


def test_training_loss_reaches_the_encoder(data):
    torch.manual_seed(0)
    model = codec_train._image_model(TINY)
    pool = codec_train._image_pool(codec_train._load_images(data[0]), (1.0,), 32)
    x = codec_train._random_crops(pool, 2, 32, np.random.default_rng(0))
    model.codebook.copy_(F.pixel_unshuffle(x, 8).permute(0, 2, 3, 1).reshape(-1, 192)[:32])
    codec_train.image_loss(model, x, TINY).backward()
    assert float(model.encoder.out.weight.grad.abs().sum()) > 0
    assert float(model.refiner.out.weight.grad.abs().sum()) > 0


def test_cli_time_limit_and_codec_eval(data, tmp_path, capsys):
    from lumo_uti.cli import main as lumo

    train, evald = data
    args = ["train-codec", "image", "--data", str(train), "--eval-data", str(evald), "--out", str(tmp_path / "run"),
            "--codebook-size", "16", "--kmeans-samples", "1000", "--kmeans-iterations", "2", "--steps", "4",
            "--save-every", "2", "--crop", "32", "--decoder-channels", "8", "--refine-channels", "4", "--quiet"]
    assert lumo(args + ["--time-limit", "0"]) == 2
    assert "--time-limit must be a positive" in capsys.readouterr().err
    assert lumo(args + ["--time-limit", "1e-9"]) == 3
    assert "run the same command again" in capsys.readouterr().err
    codes = [lumo(args + ["--time-limit", "1e-9"]) for _ in range(2)]
    assert codes == [3, 0]  # k-means iteration 1 | decoder step 2 | done
    capsys.readouterr()
    assert lumo(["codec-eval", "image", "--codec", str(tmp_path / "run" / "codec"), "--eval-data", str(evald)]) == 0
    report = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["psnr_db"] == saved["psnr_db"] and "per_image" not in report
    assert lumo(["codec-eval", "image", "--codec", str(tmp_path / "none"), "--eval-data", str(evald)]) == 2
    assert "codec directory not found" in capsys.readouterr().err
