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
from lumo_model.codec.kmeans import kmeans, lloyd_step, rvq_refine_step
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


def test_kmeans_pinned_zero_stays_zero_and_takes_the_zero_samples():
    g = torch.Generator().manual_seed(4)
    samples = torch.cat([torch.zeros(200, 6), torch.randn(400, 6, generator=g) + 3]).contiguous()
    centroids = kmeans(samples, 16, 5, seed=0, pin_zero=True)
    assert torch.equal(centroids[0], torch.zeros(6))
    codes = torch.cdist(samples, centroids).argmin(1)
    assert (codes[:200] == 0).all() and (codes[200:] != 0).all()
    # without the pin, entry 0 is an ordinary centroid (here: on the cloud, not at the origin)
    assert kmeans(samples[200:], 16, 5, seed=0)[0].abs().sum() > 0


def test_kmeans_pinned_zero_is_never_restarted_when_unused():
    samples = torch.randn(300, 4, generator=torch.Generator().manual_seed(5)) + 50  # nothing near zero
    centroids = kmeans(samples, 8, 4, seed=1, pin_zero=True)
    assert torch.equal(centroids[0], torch.zeros(4))


def _rvq_data(seed=6, n=3000, d=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.linspace(3, 0.2, d)
    x[: n // 10] = 0  # digital silence
    return x


def test_rvq_refinement_lowers_the_error_and_keeps_the_pins():
    from lumo_uti.ops import rvq_decode, rvq_encode

    x = _rvq_data()
    codebooks = torch.zeros(3, 32, x.shape[1])
    residual = x.clone()
    for q in range(3):  # the stage-by-stage k-means the trainer runs first
        codebooks[q] = kmeans(residual, 32, 8, seed=q, pin_zero=True).half().float()
        residual -= rvq_decode(rvq_encode(residual, codebooks[q:q + 1]), codebooks[q:q + 1])
    stagewise = float((residual ** 2).mean())
    mses = []
    for _ in range(4):
        stats = rvq_refine_step(x, codebooks, pin_zero=True, dtype=torch.float16)
        assert stats["mse_refit"] <= stats["mse"] + 1e-9  # codes fixed: each block update is a least-squares fit
        mses.append(stats["mse"])
    assert mses[0] == pytest.approx(stagewise, rel=1e-5)
    final = float(((x - rvq_decode(rvq_encode(x, codebooks), codebooks)) ** 2).mean())
    assert final < 0.97 * stagewise  # re-encoded with the refined codebooks: clearly better
    assert torch.equal(codebooks[:, 0], torch.zeros(3, x.shape[1]))
    assert torch.equal(codebooks, codebooks.half().float())  # rounded to the stored precision
    assert (rvq_encode(x[: len(x) // 10], codebooks) == 0).all()  # silence stays code 0


def test_rvq_refinement_leaves_unused_entries_alone():
    x = _rvq_data(seed=7, n=400)
    codebooks = torch.randn(2, 16, x.shape[1], generator=torch.Generator().manual_seed(8))
    codebooks[:, 5] = 1e4  # never the nearest
    before = codebooks.clone()
    rvq_refine_step(x, codebooks)
    assert torch.equal(codebooks[:, 5], before[:, 5])
    assert not torch.equal(codebooks, before)


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
    # no sentence in both splits, at the largest sizes they can be written with
    train = {text for _, _, text, *_ in corpus.speech_plan("train", corpus.SENTENCE_SPAN)}
    evaluation = list(corpus.speech_plan("eval", corpus.SENTENCE_SPAN))
    assert not train & {text for _, _, text, *_ in evaluation}
    assert len(evaluation) > 0.9 * len(corpus.EVAL_VOICES) * corpus.SENTENCE_SPAN
    with pytest.raises(ValueError, match="split"):
        corpus.write_image_corpus("unused", "test")
    with pytest.raises(ValueError, match="sentences per voice"):
        list(corpus.speech_plan("train", corpus.SENTENCE_SPAN + 1))


def test_more_training_voices_leave_the_evaluation_split_as_it_was(monkeypatch):
    before = list(corpus.speech_plan("eval", 10))
    core = list(corpus.speech_plan("train", 10))[:10 * corpus.CORE_TRAIN_VOICES]
    monkeypatch.setattr(corpus, "TRAIN_VOICES", corpus.TRAIN_VOICES[:corpus.CORE_TRAIN_VOICES])
    assert list(corpus.speech_plan("eval", 10)) == before
    assert list(corpus.speech_plan("train", 10)) == core  # and the core voices' files stay the same too


def test_speech_plan_is_reproducible_and_varied():
    plan = list(corpus.speech_plan("train", 3))
    assert plan == list(corpus.speech_plan("train", 3))
    assert len({voice for voice, *_ in plan}) == len(corpus.TRAIN_VOICES)
    speeds, levels = [p[3] for p in plan], [p[5] for p in plan]
    assert min(speeds) >= 130 and max(speeds) < 200 and -12 <= min(levels) < max(levels) <= 0


def test_unknown_espeak_variant_is_refused(monkeypatch):
    monkeypatch.setattr(corpus, "_espeak_variants", lambda exe: frozenset({"m1", "Andy"}))
    corpus._check_variant("espeak-ng", "en-us+m1")
    corpus._check_variant("espeak-ng", "en-us")  # no variant: nothing to check
    with pytest.raises(ValueError, match="case-sensitive: 'Andy'"):
        corpus._check_variant("espeak-ng", "en-us+andy")
    with pytest.raises(ValueError, match="no voice variant 'zz'"):
        corpus._check_variant("espeak-ng", "en-us+zz")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_every_corpus_voice_variant_exists():
    exe = shutil.which("espeak-ng")
    if corpus._espeak_variants(exe) is None:
        pytest.skip("espeak-ng's data folder not found")
    for voice in corpus.TRAIN_VOICES + corpus.EVAL_VOICES:
        corpus._check_variant(exe, voice)


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
                              refine_iterations=2, postfilter_channels=8, postfilter_blocks=1, postfilter_steps=6,
                              batch_size=2,
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


# Checkpoints of a TINY_AUDIO run: 2 codebooks x (2 k-means iterations + 1) = 6, the switch to the
# joint refinement (7), its 2 passes (8, 9), the switch to the post-filter (10), then its steps.
@pytest.mark.parametrize("kill_at", [2, 8], ids=["in-kmeans", "in-refinement"])
def test_audio_training_resumes_after_a_kill(audio_data, tmp_path, monkeypatch, kill_at):
    report = train_audio_codec(audio_data / "train", tmp_path / "full", eval_data=audio_data / "eval",
                               config=TINY_AUDIO, progress=False)
    assert report["files"] == 4 and set(report["groups"]) == {"music", "noise"}
    assert len(report["codebook_usage"]) == 2
    log = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if r["stage"] == "refine"] == [1, 2]
    real_save, calls = checkpoint.save, {"n": 0}

    def dying_save(*args, **kwargs):
        real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == kill_at:
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


def test_trained_audio_codec_keeps_digital_silence_silent(tmp_path):
    from dataclasses import replace

    rate = 8000
    train = tmp_path / "train"
    train.mkdir()
    for i in range(3):
        clip = corpus.music(i, rate, 1.0)
        clip[2000:4000] = 0  # a pause, as synthesised speech has
        soundfile.write(train / f"music_{i}.wav", clip, rate)
    cfg = replace(TINY_AUDIO, postfilter_blocks=0)
    train_audio_codec(train, tmp_path / "run", config=cfg, progress=False)
    codec = codecs.load(f"lumo-rvq:{tmp_path / 'run' / 'codec'}")
    wave = torch.from_numpy(corpus.music(10, rate, 0.5))
    wave[1000:2000] = 0
    codes = codec.encode_tensor(wave[None, None])
    out = codec.decode_tensor(codes)[0, 0]
    hop = cfg.hop
    # frames whose whole window (2 hops, the first centred on sample 0) lies in the pause
    silent = [f for f in range(codes.shape[1]) if 1000 <= (f - 1) * hop and (f + 1) * hop <= 2000]
    assert silent and (codes[0, silent] == 0).all()
    assert torch.count_nonzero(out[1000 + hop:2000 - hop]) == 0  # exact silence, not faint noise
    assert out[:1000].abs().max() > 0


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
