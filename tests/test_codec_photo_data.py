"""Photos in the image codec's training: the corpus's extra photos, the photo share of the sampling,
and fine-tuning a decoder from an earlier codec (``--init-decoder``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from lumo_model import checkpoint
from lumo_model.codec import corpus
from lumo_model.codec import train as codec_train
from lumo_model.codec.train import ImageTrainConfig, train_image_codec
from lumo_uti.cli import main as lumo


# -- the corpus's extra photos -------------------------------------------------------------------
def test_extra_photo_names_are_unique_and_none_is_an_evaluation_photo():
    names = [name for name, *_ in corpus.EXTRA_TRAIN_PHOTOS]
    stems = {p.rsplit(".", 1)[0] for p in corpus.TRAIN_PHOTOS + corpus.EVAL_PHOTOS + corpus._EXCLUDED_PHOTOS}
    assert len(set(names)) == len(names) and not set(names) & stems
    for _, source, path, digest in corpus.EXTRA_TRAIN_PHOTOS:
        assert source.split(":")[0] in ("deb", "pypi") and len(digest) == 64
        assert path.startswith("/") == source.startswith("deb:")


def _fake_sources(tmp_path, monkeypatch, *, tamper: bool = False):
    """Two extra photos: one from a 'Debian package' (an absolute path), one inside an importable module."""
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 256, (1200, 800, 3), dtype=np.uint8))  # shorter side 800
    small = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    big.save(tmp_path / "big.png")
    package = tmp_path / "site" / "fakephotos"
    (package / "images").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('the corpus must not import the package')\n")
    small.save(package / "images" / "small.png")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "big.png",
                                                                      package / "images" / "small.png")}
    monkeypatch.setattr(corpus, "EXTRA_TRAIN_PHOTOS", (
        ("big", "deb:fake-wallpapers", str(tmp_path / "big.png"), digest[tmp_path / "big.png"]),
        ("small", "pypi:fake-photos:fakephotos", "images/small.png",
         "0" * 64 if tamper else digest[package / "images" / "small.png"]),
    ))
    monkeypatch.setattr(corpus, "photos", lambda split: [("sk", Image.new("RGB", (64, 64), (9, 9, 9)))])
    return big, small


def test_extra_photos_are_written_scaled_to_the_corpus_side(tmp_path, monkeypatch):
    big, small = _fake_sources(tmp_path, monkeypatch)
    out = corpus.write_image_corpus(tmp_path / "train", "train", procedural=2)
    written = sorted(p.name for p in out.iterdir())
    assert written == ["drawn_0000000.png", "drawn_0000001.png", "photo_big.png", "photo_sk.png", "photo_small.png"]
    with Image.open(out / "photo_big.png") as im:
        assert im.size == (corpus.EXTRA_PHOTO_SIDE, round(1200 * corpus.EXTRA_PHOTO_SIDE / 800))
    with Image.open(out / "photo_small.png") as im:  # smaller than the side: written as it is
        assert np.array_equal(np.asarray(im), np.asarray(small))
    # the evaluation split and the train split without extras have none of them
    evaluation = corpus.write_image_corpus(tmp_path / "eval", "eval", procedural=1)
    plain = corpus.write_image_corpus(tmp_path / "plain", "train", procedural=1, extra=False)
    assert sorted(p.name for p in evaluation.iterdir()) == ["drawn_1000000.png", "photo_sk.png"]
    assert sorted(p.name for p in plain.iterdir()) == ["drawn_0000000.png", "photo_sk.png"]


def test_a_changed_source_file_is_reported_and_used(tmp_path, monkeypatch):
    _fake_sources(tmp_path, monkeypatch, tamper=True)
    reports: list[str] = []
    names = [name for name, _ in corpus.extra_photos(reports.append)]
    assert names == ["big", "small"] and len(reports) == 1 and "small.png" in reports[0]
    with pytest.warns(UserWarning, match="not the file the shipped image codec was trained on"):
        corpus.extra_photos()


def test_missing_sources_name_the_packages_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    _fake_sources(tmp_path, monkeypatch)
    monkeypatch.setattr(corpus, "EXTRA_TRAIN_PHOTOS", corpus.EXTRA_TRAIN_PHOTOS + (
        ("gone", "deb:gone-wallpapers", str(tmp_path / "absent.jpg"), "0" * 64),
        ("lost", "pypi:lost-photos:no_such_module_here", "a.jpg", "0" * 64),
    ))
    with pytest.raises(RuntimeError, match=r"apt-get install gone-wallpapers and pip install lost-photos"):
        corpus.write_image_corpus(tmp_path / "out", "train", procedural=1)
    assert not (tmp_path / "out").exists()
    assert lumo(["codec-corpus", "image", "--split", "train", "--out", str(tmp_path / "out")]) == 2
    assert "--no-extra-photos" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert lumo(["codec-corpus", "image", "--split", "train", "--out", str(tmp_path / "out"), "--count", "1",
                 "--no-extra-photos"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["drawn_0000000.png", "photo_sk.png"]


def test_installed_sources_are_the_recorded_files():
    found = [(corpus.extra_photo_path(source, path), digest) for _, source, path, digest in corpus.EXTRA_TRAIN_PHOTOS]
    if any(where is None for where, _ in found):
        pytest.skip("the extra photos' packages are not all installed (plasma-workspace-wallpapers, "
                    "mate-backgrounds, lomiri-wallpapers-20.04, scikit-learn, matplotlib)")
    assert all(hashlib.sha256(where.read_bytes()).hexdigest() == digest for where, digest in found)


# -- the photo share ----------------------------------------------------------------------------
def _pools(*, photos: int = 2, others: int = 3):
    """Photos are a horizontal ramp in [0, 1] (constant down each column), other images all -0.5."""
    ramp = Image.fromarray(np.tile(np.linspace(128, 255, 80, dtype=np.uint8)[None, :, None], (80, 1, 3)))
    flat = Image.new("RGB", (80, 80), (64, 64, 64))
    images = [ramp] * photos + [flat] * others
    names = [f"photo_{i}.png" for i in range(photos)] + [f"drawn_{i}.png" for i in range(others)]
    return codec_train._ImagePools(images, names, (1.0,), 16)


def test_photo_share_sets_the_share_of_photo_crops_and_turns_only_photos():
    crops = _pools().crops(4000, 16, np.random.default_rng(1), 0.3)
    is_photo = crops.mean(dim=(1, 2, 3)) > 0
    assert abs(is_photo.float().mean().item() - 0.3) < 0.03
    photo = crops[is_photo]
    along_height = (photo[:, :, 1:, :] - photo[:, :, :-1, :]).abs().amax(dim=(1, 2, 3)) > 0
    along_width = (photo[:, :, :, 1:] - photo[:, :, :, :-1]).abs().amax(dim=(1, 2, 3)) > 0
    assert torch.equal(along_height, ~along_width)  # each photo crop is a ramp in one direction
    assert 0.4 < along_height.float().mean().item() < 0.6  # a quarter turn half of the time
    assert torch.all(crops[~is_photo] == crops[~is_photo][0])  # the others, flat, never change
    assert {round(v, 3) for v in photo[:, 0, 0, 0].tolist()} != {round(photo[0, 0, 0, 0].item(), 3)}
    for share, want in ((0.0, 0.0), (1.0, 1.0)):
        got = (_pools().crops(200, 16, np.random.default_rng(2), share).mean(dim=(1, 2, 3)) > 0).float().mean()
        assert got.item() == want


def test_no_share_or_one_kind_of_image_draws_every_view_alike_as_before():
    for pools, share in ((_pools(), None), (_pools(photos=0), 0.5), (_pools(others=0), 0.5)):
        got = pools.crops(50, 16, np.random.default_rng(3), share)
        assert torch.equal(got, codec_train._random_crops(pools.all, 50, 16, np.random.default_rng(3)))
    a, b = (_pools().crops(40, 16, np.random.default_rng(4), 0.5) for _ in range(2))
    assert torch.equal(a, b)


def test_photo_share_outside_the_unit_interval_is_refused(tmp_path):
    for cfg in (ImageTrainConfig(photo_share=1.5), ImageTrainConfig(decoder_photo_share=-0.1)):
        with pytest.raises(ValueError, match=r"photo_share must lie in \[0, 1\]"):
            train_image_codec(tmp_path, tmp_path / "run", config=cfg, progress=False)
    assert not (tmp_path / "run").exists()


# -- training with photos, and --init-decoder ----------------------------------------------------
TINY = ImageTrainConfig(codebook_size=32, kmeans_samples=2000, kmeans_iterations=2, decoder_channels=8,
                        decoder_blocks=1, refine_channels=4, decoder_steps=4, batch_size=2, crop=32, save_every=2,
                        scales=(1.0, 0.5), eval_size=32, photo_share=0.5)


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(5)
    for i in range(3):
        corpus.procedural_image(i, 64).save(root / f"drawn_{i}.png")
        Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(root / f"photo_{i}.png")
    return root


def _weights(directory):
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def test_photo_share_changes_the_training_data(mixed_data, tmp_path):
    for share, out in ((0.5, "half"), (None, "none")):
        train_image_codec(mixed_data, tmp_path / out, config=replace(TINY, photo_share=share, decoder_steps=0),
                          progress=False)
    assert not torch.equal(_weights(tmp_path / "half" / "codec")["codebook"],
                           _weights(tmp_path / "none" / "codec")["codebook"])


def test_decoder_photo_share_changes_the_decoder_alone(mixed_data, tmp_path):
    runs = {"same": replace(TINY, decoder_photo_share=TINY.photo_share), "default": TINY,
            "more": replace(TINY, decoder_photo_share=1.0)}
    weights = {}
    for name, cfg in runs.items():
        train_image_codec(mixed_data, tmp_path / name, config=cfg, progress=False)
        weights[name] = _weights(tmp_path / name / "codec")
    same, default, more = weights["same"], weights["default"], weights["more"]
    assert all(torch.equal(same[k], default[k]) for k in default)  # None = the k-means share
    assert torch.equal(more["codebook"], default["codebook"])
    assert not torch.equal(more["decoder.out.weight"], default["decoder.out.weight"])


def test_fine_tuning_starts_from_the_given_decoder_and_resumes_exactly(mixed_data, tmp_path, monkeypatch):
    train_image_codec(mixed_data, tmp_path / "first", config=TINY, progress=False)
    first = _weights(tmp_path / "first" / "codec")
    # zero steps: the exported decoder is the initial one, beside the run's own k-means codebook; a
    # deblocked codec gives its decoder, not its deblocking (refitted after training)
    codec_train.fit_image_deblock(tmp_path / "first" / "codec", mixed_data, tmp_path / "deblocked", size=32,
                                  iterations=3, progress=False)
    assert "deblock.taps" in _weights(tmp_path / "deblocked")
    cfg = replace(TINY, init_decoder=str(tmp_path / "first" / "codec"), seed=7)
    train_image_codec(mixed_data, tmp_path / "zero", progress=False,
                      config=replace(cfg, decoder_steps=0, init_decoder=str(tmp_path / "deblocked")))
    zero = _weights(tmp_path / "zero" / "codec")
    assert zero.keys() == first.keys()
    assert all(torch.equal(zero[k], first[k]) for k in first if k != "codebook")
    assert not torch.equal(zero["codebook"], first["codebook"])
    # trained on: it moves away from the initial weights, and a run killed in the decoder stage
    # resumes from its checkpoint (not from the initial weights again), bit for bit
    train_image_codec(mixed_data, tmp_path / "full", config=cfg, progress=False)
    real_save, calls = checkpoint.save, {"n": 0}

    def dying_save(*args, **kwargs):
        real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:  # 2 k-means iterations, the switch to the decoder, its first checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train_image_codec(mixed_data, tmp_path / "killed", config=cfg, progress=False)
    monkeypatch.setattr(checkpoint, "save", real_save)
    train_image_codec(mixed_data, tmp_path / "killed", config=cfg, progress=False)
    full, resumed = _weights(tmp_path / "full" / "codec"), _weights(tmp_path / "killed" / "codec")
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    assert not torch.equal(full["decoder.out.weight"], first["decoder.out.weight"])


def test_init_decoder_of_another_architecture_is_refused_before_anything_is_written(mixed_data, tmp_path,
                                                                                      capsys):
    train_image_codec(mixed_data, tmp_path / "first", config=replace(TINY, decoder_steps=0), progress=False)
    wider = replace(TINY, decoder_channels=16, init_decoder=str(tmp_path / "first" / "codec"))
    with pytest.raises(ValueError, match=r"--init-decoder: .* another architecture .*decoder\.blocks\.0"):
        train_image_codec(mixed_data, tmp_path / "run", config=wider, progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="--init-decoder"):
        train_image_codec(mixed_data, tmp_path / "run", config=replace(TINY, init_decoder=str(tmp_path / "none")),
                          progress=False)
    args = ["train-codec", "image", "--data", str(mixed_data), "--out", str(tmp_path / "cli"), "--quiet"]
    assert lumo(args + ["--init-decoder", str(tmp_path / "first" / "codec"), "--decoder-channels", "16"]) == 2
    assert "another architecture" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lumo(args + ["--photo-share", "1.5"])
    assert "expected a fraction in [0, 1] or 'none'" in capsys.readouterr().err
    for bad in ("none", "2"):
        with pytest.raises(SystemExit):
            lumo(args + ["--decoder-photo-share", bad])
        assert "expected a fraction in [0, 1]" in capsys.readouterr().err


def test_cli_photo_share_none_is_the_old_sampling(mixed_data, tmp_path):
    args = ["train-codec", "image", "--data", str(mixed_data), "--quiet", "--codebook-size", "32",
            "--kmeans-samples", "2000", "--kmeans-iterations", "2", "--steps", "0", "--crop", "32"]
    assert lumo(args + ["--out", str(tmp_path / "none"), "--photo-share", "none"]) == 0
    assert lumo(args + ["--out", str(tmp_path / "quarter"), "--photo-share", "0.25",
                        "--decoder-photo-share", "0.75"]) == 0
    saved = {name: json.loads((tmp_path / name / "train_config.json").read_text())["config"]
             for name in ("none", "quarter")}
    assert saved["none"]["photo_share"] is None and saved["none"]["decoder_photo_share"] is None
    assert saved["quarter"]["photo_share"] == 0.25 and saved["quarter"]["decoder_photo_share"] == 0.75
    assert lumo(args + ["--out", str(tmp_path / "none")]) == 2  # the default (0.5) is another setting
