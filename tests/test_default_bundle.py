"""The embedded default bundle: its shipped codecs, their quality gates, and the audit on it."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import lumo_uti
from lumo_uti.bundle import default_bundle_dir
from lumo_uti.cli import main

EVAL = default_bundle_dir().parent / "eval"


def test_default_bundle_ships_its_codecs_within_budget():
    uti = lumo_uti.load()
    image, audio = uti.image_codec, uti.audio_codec
    assert (image.kind, image.codebook_size, image.num_codebooks, image.downsample) == ("lumo-vq", 16384, 1, 8)
    assert (audio.kind, audio.codebook_size, audio.num_codebooks) == ("lumo-rvq", 1024, 8)
    assert audio.sample_rate in (16000, 24000)
    assert audio.frame_rate * audio.num_codebooks * math.log2(audio.codebook_size) <= 6000  # bits per second
    weights = sum(f.stat().st_size for f in (default_bundle_dir() / "codecs").rglob("*.safetensors"))
    assert weights <= 20 * 1024 * 1024
    recorded = uti.token_space.codecs
    assert recorded["image"]["weights_hash"] == image.weights_hash
    assert recorded["audio"]["weights_hash"] == audio.weights_hash


def test_default_bundle_passes_its_own_audit(tmp_path, capsys):
    assert (default_bundle_dir() / "gates.json").is_file()
    code = main(["audit", "--out", str(tmp_path / "audit")])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert report["metrics_v2_pass"] is True
    gated = {c["name"]: c["verdict"] for c in report["checks"] if c["group"] == "metrics"}
    assert gated["image.psnr_db"] == gated["audio.si_snr_db"] == "pass"
    # the quality floors, measured on the bundled (unseen) evaluation samples
    assert report["metrics"]["image.psnr_db"] >= 22 and report["metrics"]["audio.si_snr_db"] >= 4


def _planted_bundle(tmp_path, modality, edit):
    """A bundle whose ``modality`` codec weights went through ``edit`` (hashes re-recorded: only quality changed)."""
    src = default_bundle_dir() / "codecs"
    for m in ("image", "audio"):
        shutil.copytree(src / m, tmp_path / m)
    weights = tmp_path / modality / "model.safetensors"
    state = load_file(weights)
    edit(state)
    save_file(state, weights)
    return lumo_uti.create_bundle(tmp_path / "bundle", image=f"lumo-vq:{tmp_path / 'image'}",
                                  audio=f"lumo-rvq:{tmp_path / 'audio'}")


def _audit_fails(tmp_path, capsys, bundle, data, metric):
    code = main(["audit", "--bundle", str(bundle), "--data", str(data),
                 "--gates", str(default_bundle_dir() / "gates.json"), "--out", str(tmp_path / "audit")])
    err = capsys.readouterr().err
    assert code == 1
    assert f"FAIL {metric}" in err
    assert json.loads((tmp_path / "audit" / "audit.json").read_text())["metrics_v2_pass"] is False


def test_swapped_audio_codebooks_fail_the_audio_gate(tmp_path, capsys):
    """A planted regression in a copy of the real bundle fails the audio metric gate, by name."""

    def swap_first_and_last(state):
        order = torch.tensor([7, 1, 2, 3, 4, 5, 6, 0])
        state["codebooks"] = state["codebooks"][order].contiguous()

    bundle = _planted_bundle(tmp_path, "audio", swap_first_and_last)
    _audit_fails(tmp_path, capsys, bundle, EVAL / "audio", "audio.si_snr_db")


def test_perturbed_image_codebook_fails_the_image_gate(tmp_path, capsys):
    def perturb(state):
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(state["codebook"].shape, generator=g) * 0.15
        state["codebook"] = (state["codebook"].float() + noise).half()

    bundle = _planted_bundle(tmp_path, "image", perturb)
    _audit_fails(tmp_path, capsys, bundle, EVAL / "images", "image.psnr_db")


@pytest.mark.parametrize("name", ["image", "audio"])
def test_bundled_evaluation_samples_exist(name):
    suffix = ".png" if name == "image" else ".wav"
    assert len(list((EVAL / f"{name}s" if name == "image" else EVAL / name).glob(f"*{suffix}"))) >= 8
