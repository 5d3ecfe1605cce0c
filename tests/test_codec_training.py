"""``lumo train-codec``: k-means, training stages, resume after a kill, corpora, CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile
import torch

from lumo_model import checkpoint
from lumo_model.codec import corpus
from lumo_model.codec.kmeans import kmeans, lloyd_step
from lumo_model.codec.train import AudioTrainConfig, ImageTrainConfig, _Run, train_audio_codec, train_image_codec
from lumo_uti import codecs
from lumo_uti.cli import main as lumo


# -- k-means -------------------------------------------------------------------------------------
def test_kmeans_finds_planted_clusters_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 4, generator=g) * 10
    samples = (centres[torch.arange(800) % 8] + 0.01 * torch.randn(800, 4, generator=g)).contiguous()
    a = kmeans(samples, 64, 10, seed=3)
    assert torch.equal(a, kmeans(samples, 64, 10, seed=3))
    nearest = torch.cdist(centres, a).min(dim=1).values
    assert float(nearest.max()) < 0.05  # every planted centre has a centroid on it


def test_kmeans_mse_never_increases_and_dead_codes_restart():
    g = torch.Generator().manual_seed(1)
    samples = torch.randn(500, 6, generator=g)
    centroids = torch.zeros(16, 6)
    centroids[1:] = 1000.0  # 15 codes no sample will ever pick
    stats = lloyd_step(samples, centroids, g)
    assert stats["dead"] == 15 and stats["used"] == 1
    mses = [lloyd_step(samples, centroids, g)["mse"] for _ in range(6)]
    assert lloyd_step(samples, centroids, g)["dead"] == 0
    assert all(later <= earlier + 1e-6 for earlier, later in zip(mses[1:], mses[2:]))


def test_kmeans_resume_equals_uninterrupted():
    samples = torch.randn(300, 5, generator=torch.Generator().manual_seed(2))
    saved = {}

    def keep(i, centroids, stats):
        if i + 1 == 3:
            saved["c"] = centroids.clone()

    full = kmeans(samples, 12, 6, seed=1, on_iteration=keep)
    resumed = kmeans(samples, 12, 6, seed=1, centroids=saved["c"], start=3)
    assert torch.equal(full, resumed)


def test_run_checkpoints_count_up_and_resume_at_the_last(tmp_path):
    run = _Run(tmp_path, TINY_IMAGE, "image")
    assert run.resume() is None
    for i in (1, 2, 3):
        run.save({"stage": "kmeans", "iteration": i}, {"codebook": {"codebook": torch.full((2,), float(i))}})
    assert sorted(p.name for p in run.ckpt.iterdir()) == ["latest.json", "step-00000002", "step-00000003"]
    again = _Run(tmp_path, TINY_IMAGE, "image")
    ckpt = again.resume()
    assert ckpt.step == 3 and ckpt.state == {"stage": "kmeans", "iteration": 3}
    assert torch.equal(ckpt.tensors("codebook")["codebook"], torch.full((2,), 3.0))
    again.save({"stage": "decoder", "step": 0}, {"codebook": {"codebook": torch.zeros(2)}})
    assert checkpoint.load(run.ckpt).step == 4  # the previous checkpoint's step + 1


# -- corpora -------------------------------------------------------------------------------------
def test_procedural_images_are_reproducible_and_varied():
    a, b, c = (np.asarray(corpus.procedural_image(s, 64)) for s in (5, 5, 6))
    assert a.shape == (64, 64, 3) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_splits_are_disjoint():
    assert not set(corpus.TRAIN_PHOTOS) & set(corpus.EVAL_PHOTOS)
    assert not set(corpus.TRAIN_VOICES) & set(corpus.EVAL_VOICES)
    assert not {v.split("+")[0] for v in corpus.TRAIN_VOICES} >= {v.split("+")[0] for v in corpus.EVAL_VOICES}
    train = corpus._train_sentence_set(40)
    eval_sentences = {corpus.sentence(corpus.EVAL_SEED_BASE + s) for s in range(10)}
    assert len(eval_sentences - train) > 0
    with pytest.raises(ValueError, match="split"):
        corpus.write_image_corpus("unused", "test")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_espeak_speech():
    samples, rate = corpus.espeak("Hello there.", "en-us+m1")
    assert rate > 8000 and samples.ndim == 1 and 0.2 < len(samples) / rate < 5 and np.abs(samples).max() > 0.05


# -- training ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for split, base in (("train", 0), ("eval", 100)):
        (root / split).mkdir()
        for i in range(6 if split == "train" else 2):
            corpus.procedural_image(base + i, 64).save(root / split / f"drawn_{i}.png")
    return root


@pytest.fixture(scope="module")
def audio_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    for split, base in (("train", 0), ("eval", 100)):
        (root / split).mkdir()
        for i in range(4 if split == "train" else 2):
            soundfile.write(root / split / f"music_{i}.wav", corpus.music(base + i, 8000, 1.0), 8000)
            soundfile.write(root / split / f"noise_{i}.wav", corpus.noise(base + i, 8000, 0.5), 8000)
    return root


TINY_IMAGE = ImageTrainConfig(codebook_size=32, kmeans_samples=2000, kmeans_iterations=3, decoder_channels=8,
                              decoder_blocks=1, decoder_steps=6, batch_size=2, crop=32, save_every=2,
                              scales=(1.0, 0.5), eval_size=32)
TINY_AUDIO = AudioTrainConfig(sample_rate=8000, hop=16, num_codebooks=2, codebook_size=16, kmeans_iterations=2,
                              postfilter_channels=8, postfilter_blocks=1, postfilter_steps=6, batch_size=2,
                              segment_frames=8, save_every=2)


def _weights(directory):
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def test_image_training_makes_a_codec_that_beats_its_lookup(image_data, tmp_path):
    report = train_image_codec(image_data / "train", tmp_path / "run", eval_data=image_data / "eval",
                               config=TINY_IMAGE, progress=False)
    codec = codecs.load(f"lumo-vq:{tmp_path / 'run' / 'codec'}")
    assert codec.codebook_size == 32 and codec.downsample == 8
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert saved["images"] == 2 and saved["psnr_db"] == report["psnr_db"] > 5
    assert 0 < saved["codebook_usage"]["fraction"] <= 1
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if r["stage"] == "kmeans"] == [1, 2, 3]


def test_image_training_resumes_after_a_kill(image_data, tmp_path, monkeypatch):
    train_image_codec(image_data / "train", tmp_path / "full", config=TINY_IMAGE, progress=False)
    real_save, calls = checkpoint.save, {"n": 0}

    def dying_save(*args, **kwargs):
        real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:  # after k-means and the first decoder checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train_image_codec(image_data / "train", tmp_path / "killed", config=TINY_IMAGE, progress=False)
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert not (tmp_path / "killed" / "codec").exists()
    train_image_codec(image_data / "train", tmp_path / "killed", config=TINY_IMAGE, progress=False)
    full, resumed = _weights(tmp_path / "full" / "codec"), _weights(tmp_path / "killed" / "codec")
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)


def test_training_refuses_other_settings_in_the_same_folder(image_data, tmp_path):
    train_image_codec(image_data / "train", tmp_path, config=TINY_IMAGE, progress=False)
    from dataclasses import replace

    with pytest.raises(ValueError, match="other settings"):
        train_image_codec(image_data / "train", tmp_path, config=replace(TINY_IMAGE, seed=1), progress=False)


def test_audio_training_resumes_after_a_kill(audio_data, tmp_path, monkeypatch):
    report = train_audio_codec(audio_data / "train", tmp_path / "full", eval_data=audio_data / "eval",
                               config=TINY_AUDIO, progress=False)
    assert report["files"] == 4 and set(report["groups"]) == {"music", "noise"}
    assert len(report["codebook_usage"]) == 2
    real_save, calls = checkpoint.save, {"n": 0}

    def dying_save(*args, **kwargs):
        real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # in the middle of the first codebook's k-means
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train_audio_codec(audio_data / "train", tmp_path / "killed", config=TINY_AUDIO, progress=False)
    monkeypatch.setattr(checkpoint, "save", real_save)
    train_audio_codec(audio_data / "train", tmp_path / "killed", config=TINY_AUDIO, progress=False)
    full, resumed = _weights(tmp_path / "full" / "codec"), _weights(tmp_path / "killed" / "codec")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    codec = codecs.load(f"lumo-rvq:{tmp_path / 'killed' / 'codec'}")
    assert codec.sample_rate == 8000 and codec.num_codebooks == 2


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_rerun_after_the_last_checkpoint_exports_the_trained_weights(image_data, audio_data, tmp_path, kind):
    """Running the same command again (or resuming after a kill during export/eval) keeps the training."""
    train, data, cfg = ((train_image_codec, image_data, TINY_IMAGE) if kind == "image"
                        else (train_audio_codec, audio_data, TINY_AUDIO))
    train(data / "train", tmp_path, config=cfg, progress=False)
    first = _weights(tmp_path / "codec")
    trained = [k for k in first if k.startswith(("decoder.", "postfilter."))]
    assert trained and any(first[k].abs().sum() > 0 for k in trained if k.endswith("out.weight"))
    (tmp_path / "codec" / "model.safetensors").unlink()  # as if killed during the export
    train(data / "train", tmp_path, config=cfg, progress=False)
    again = _weights(tmp_path / "codec")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)


def test_cli_train_codec(image_data, tmp_path, capsys):
    code = lumo(["train-codec", "image", "--data", str(image_data / "train"), "--out", str(tmp_path / "run"),
                 "--codebook-size", "16", "--kmeans-samples", "1000", "--kmeans-iterations", "2", "--steps", "0",
                 "--crop", "32", "--quiet"])
    assert code == 0
    assert "lumo-vq:" in capsys.readouterr().out
    assert codecs.load(f"lumo-vq:{tmp_path / 'run' / 'codec'}").codebook_size == 16
    assert lumo(["train-codec", "audio", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "a")]) == 2
    assert "data folder not found" in capsys.readouterr().err
