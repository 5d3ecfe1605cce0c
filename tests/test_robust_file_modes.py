"""Files and folders the library writes get the umask's usual modes (0o666 / 0o777 less the umask), not 0o600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

import lumo_uti
from lumo_uti._io import atomic_dir, atomic_write_bytes, atomic_write_text

@pytest.fixture()
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _assert_usual(root: Path, umask: int, *, include_root: bool = True) -> None:
    """Every file under ``root`` is 0o666 & ~umask, every folder 0o777 & ~umask (``root`` too unless told)."""
    paths = sorted(root.rglob("*")) + ([root] if include_root else [])
    assert paths
    for p in paths:
        mode = stat.S_IMODE(p.lstat().st_mode)
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        assert mode == want, f"{p}: {oct(mode)}, expected {oct(want)}"


@pytest.mark.parametrize("umask", [0o022, 0o027], indirect=True, ids=["022", "027"])
def test_atomic_writes(tmp_path, umask):
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_text(tmp_path / "sub" / "b.txt", "y")
    with atomic_dir(tmp_path / "folder") as tmp:
        atomic_write_text(tmp / "c.json", "{}")
        (tmp / "inner").mkdir()
    _assert_usual(tmp_path, umask, include_root=False)


@pytest.mark.parametrize("umask", [0o022, 0o027], indirect=True, ids=["022", "027"])
def test_bundle_export_and_create(tmp_path, umask):
    from lumo_uti.bundle import export_bundle

    out = export_bundle(tmp_path / "exported")
    _assert_usual(out, umask)
    made = lumo_uti.create_bundle(tmp_path / "made", audio=f"lumo-rvq:{out / 'codecs' / 'audio'}")
    _assert_usual(made, umask)


@pytest.mark.parametrize("umask", [0o022, 0o027], indirect=True, ids=["022", "027"])
def test_codec_files_media_and_token_space(tmp_path, umask):
    from lumo_uti.codecs.lumo_vq import PatchVQ, save_model

    save_model(PatchVQ(patch=2, codebook_size=4, decoder_channels=2, decoder_blocks=1), tmp_path / "vq", name="t")
    lumo_uti.Audio(torch.zeros(1, 10), 8000).save(tmp_path / "a.wav")
    lumo_uti.load().token_space.save(tmp_path / "token_space.json")
    _assert_usual(tmp_path, umask, include_root=False)


@pytest.mark.parametrize("umask", [0o022, 0o027], indirect=True, ids=["022", "027"])
def test_training_checkpoints(tmp_path, umask):
    from lumo_model import checkpoint
    from lumo_model.codec.train import ImageTrainConfig, _Run

    codec = _Run(tmp_path / "codec", ImageTrainConfig(), "image")
    codec.save({"stage": "kmeans", "iteration": 1}, {"codebook": {"codebook": torch.zeros(2)}})
    codec.save({"stage": "kmeans", "iteration": 2}, {"codebook": {"codebook": torch.ones(2)}})
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(net.parameters())
    net(torch.ones(1, 2)).sum().backward()
    opt.step()
    checkpoint.save(tmp_path / "vlm", 1, tensors={"model": net.state_dict()}, optimizer=opt, state={"loss": 1.0})
    # the same step again: swapped, not rmtree'd
    checkpoint.save(tmp_path / "vlm", 1, tensors={"model": net.state_dict()}, optimizer=opt, state={"loss": 0.5})
    _assert_usual(tmp_path, umask, include_root=False)
    assert sorted(p.name for p in (tmp_path / "vlm").iterdir()) == ["latest.json", "step-00000001"]


@pytest.mark.parametrize("umask", [0o022, 0o027], indirect=True, ids=["022", "027"])
def test_adapters_and_merged_checkpoints(tmp_path, umask):
    from lumo_model.token_lm import expand, merge, save_trainable_rows
    from test_token_lm_helpers import tiny_qwen3, token_space

    model = expand(tiny_qwen3(False), token_space(), noise_std=0.02, seed=5)
    save_trainable_rows(model, tmp_path / "adapter")
    merge(model, tmp_path / "merged")
    _assert_usual(tmp_path, umask, include_root=False)


@pytest.mark.parametrize("umask", [0o027], indirect=True, ids=["027"])
def test_lumo_demo_output(tmp_path, umask, capsys):
    from lumo_uti.cli import main

    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    _assert_usual(tmp_path / "demo", umask)
    assert stat.S_IMODE((tmp_path / "demo" / "report.md").stat().st_mode) == 0o640


@pytest.mark.parametrize("umask", [0o022], indirect=True, ids=["022"])
def test_usual_modes_keeps_execute_bits(tmp_path, umask):
    from lumo_uti._io import usual_modes

    (tmp_path / "d").mkdir(mode=0o700)
    (tmp_path / "d" / "private").write_text("x")
    (tmp_path / "d" / "private").chmod(0o600)
    (tmp_path / "d" / "tool").write_text("#!/bin/sh\n")
    (tmp_path / "d" / "tool").chmod(0o700)
    usual_modes(tmp_path / "d")
    assert stat.S_IMODE((tmp_path / "d" / "private").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d" / "tool").stat().st_mode) == 0o755
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["private", "tool"]  # the probe is gone
