"""``lumo audit``: checks, gates, planted regressions, exit codes; ``lumo bundle export``.

Bundles are built from the tiny random Hugging Face codecs of ``codec_models``
(Janus for images, EnCodec for audio). Their reconstructions are meaningless
as media, so the evaluation clips are made to be *fixed points* of the
original audio codec (each is the codec's own decode of a noise clip): the
original bundle reconstructs them almost exactly, and any change to the codec
shows up as a large drop. Image gates are exercised through codebook usage,
which a perturbed (scaled) codebook collapses to a single entry.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import lumo_uti
from lumo_uti.audit import gates as gates_mod
from lumo_uti.audit.determinism import compare
from lumo_uti.bundle import export_bundle
from lumo_uti.cli import main

import codec_models


def _edit_weights(src: Path, dest: Path, edit) -> Path:
    """Copy a model directory and apply ``edit(state_dict)`` to its safetensors weights."""
    shutil.copytree(src, dest)
    weights = dest / "model.safetensors"
    state = load_file(weights)
    edit(state)
    save_file(state, weights, metadata={"format": "pt"})
    return dest


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: a thread pool only adds waiting on a busy machine (the audit still compares 1 vs 2 threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Models, the original bundle, fixed-point evaluation data and baseline gates."""
    root = tmp_path_factory.mktemp("audit")
    models = {name: codec_models.make(name, root / "models") for name in ("janus", "encodec")}
    bundle = lumo_uti.create_bundle(root / "bundle", image=f"hf-janus:{models['janus']}",
                                    audio=f"hf-encodec:{models['encodec']}")
    uti = lumo_uti.load(bundle)
    rng = np.random.default_rng(0)
    data = root / "data"
    (data / "images").mkdir(parents=True)
    (data / "audio").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(data / "images" / f"{i}.png")
    for i, n in enumerate((640, 960)):
        noise = lumo_uti.Audio(torch.from_numpy(rng.normal(0, 0.1, (1, n)).astype(np.float32)), 8000)
        fixed = uti.audio_codec.decode(uti.audio_codec.encode(noise))[0]
        fixed.save(data / "audio" / f"{i}.wav")
    out = root / "baseline"
    code = main(["audit", "--bundle", str(bundle), "--data", str(data), "--out", str(out), "--update-gates"])
    assert code == 0
    return {"root": root, "models": models, "bundle": bundle, "data": data, "out": out, "gates": out / "gates.json"}


def _audit(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["audit", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _report(out: Path) -> dict:
    return json.loads((out / "audit.json").read_text())


# -- the baseline run and the report -----------------------------------------------------
def test_baseline_report_has_every_check_and_pictures(env):
    report = _report(env["out"])
    assert report["format"] == "lumo-audit" and report["metrics_v2_pass"] is True
    assert report["token_space_fingerprint"] == lumo_uti.TokenSpace.load(env["bundle"]).fingerprint
    assert report["library_version"] == lumo_uti.__version__
    assert "cpu" in report["backends"] and report["device"] == "cpu"
    verdicts = {c["name"]: c["verdict"] for c in report["checks"]}
    for name in ("abi.token_space", "abi.tokenizer", "abi.codec.image", "abi.codec.audio",
                 "determinism.image.repeat", "determinism.image.batch", "determinism.image.threads",
                 "determinism.audio.repeat", "determinism.audio.batch", "determinism.audio.threads",
                 "token_range.image", "token_range.audio", "decode.image", "decode.audio"):
        assert verdicts[name] == "pass", name
    cuda = "pass" if torch.cuda.is_available() else "skipped"
    assert verdicts["determinism.image.cpu_vs_cuda"] == cuda
    assert set(report["metrics"]) == set(gates_mod.GATE_METRICS)
    assert report["metrics"]["audio.si_snr_db"] > 40  # fixed-point clips
    assert report["samples"]["image"][0]["model_size"] == [8, 8]
    # Janus here downsamples by 2 (8 x 8 pixels -> 4 x 4 codes): the block-edge grid is the code grid.
    assert all(r["block_edge_px"] == 2 and r["block_edge_ratio"] > 0 for r in report["samples"]["image"])
    for picture in report["pictures"]:
        assert Image.open(env["out"] / picture).size[0] > 100
    assert {"image_reconstructions.png", "audio_00.png", "audio_codebook_usage.png"} <= set(report["pictures"])
    md = (env["out"] / "audit.md").read_text()
    assert md.startswith("# lumo audit: PASS") and "image.psnr_db" in md and "image.block_edge_ratio" in md


def test_update_gates_round_trip(env, capsys, tmp_path):
    gates = json.loads(env["gates"].read_text())
    assert gates["format"] == "lumo-gates"
    assert gates["bundle_fingerprint"] == _report(env["out"])["token_space_fingerprint"]
    assert set(gates["gates"]) == set(gates_mod.GATE_METRICS)
    code, out, err = _audit(capsys, "--bundle", str(env["bundle"]), "--data", str(env["data"]),
                            "--gates", str(env["gates"]), "--out", str(tmp_path / "a"))
    assert code == 0, err
    assert "metrics_v2_pass: true" in out
    report = _report(tmp_path / "a")
    assert all(c["verdict"] == "pass" for c in report["checks"] if c["group"] == "metrics")


def test_without_gates_metrics_have_no_gate_and_a_gates_json_in_the_bundle_is_used(env, capsys, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(env["bundle"], bundle)
    images = str(env["data"] / "images")
    code, _, _ = _audit(capsys, "--bundle", str(bundle), "--data", images, "--out", str(tmp_path / "a"))
    assert code == 0
    checks = {c["name"]: c for c in _report(tmp_path / "a")["checks"]}
    assert checks["image.psnr_db"]["verdict"] == "no gate"
    assert checks["determinism.audio"]["verdict"] == "skipped"  # a codec with no data
    shutil.copy(env["gates"], bundle / "gates.json")
    code, _, _ = _audit(capsys, "--bundle", str(bundle), "--data", images, "--out", str(tmp_path / "b"))
    assert code == 0
    checks = {c["name"]: c for c in _report(tmp_path / "b")["checks"]}
    assert checks["image.psnr_db"]["verdict"] == "pass"
    assert checks["audio.si_snr_db"]["verdict"] == "skipped"  # gated but not measured


# -- planted regressions ---------------------------------------------------------------------
def test_perturbed_image_codebook_fails_the_image_gate(env, capsys, tmp_path):
    def scale_codebook(state):
        g = torch.Generator().manual_seed(1)
        w = state["quantize.embedding.weight"]
        state["quantize.embedding.weight"] = w * 1000 + torch.randn(w.shape, generator=g) * w.std()

    model = _edit_weights(env["models"]["janus"], tmp_path / "janus_perturbed", scale_codebook)
    bundle = lumo_uti.create_bundle(tmp_path / "bundle", image=f"hf-janus:{model}",
                                    audio=f"hf-encodec:{env['models']['encodec']}")
    code, _, err = _audit(capsys, "--bundle", str(bundle), "--data", str(env["data"] / "images"),
                          "--gates", str(env["gates"]), "--out", str(tmp_path / "a"))
    assert code == 1
    assert "FAIL image.codebook_usage: gate image.codebook_usage failed: value 0.015625 < min" in err
    report = _report(tmp_path / "a")
    assert report["metrics_v2_pass"] is False and "image.codebook_usage" in report["failures"]
    assert "abi.codec.image" not in report["failures"]  # a consistent bundle: only quality regressed
    assert (tmp_path / "a" / "audit.md").read_text().split("## Failures")[1].lstrip().startswith("| check")


def test_swapped_audio_codebooks_fail_an_audio_gate(env, capsys, tmp_path):
    def swap(state):
        a, b = "quantizer.layers.0.codebook.embed", "quantizer.layers.1.codebook.embed"
        state[a], state[b] = state[b].clone(), state[a].clone()

    model = _edit_weights(env["models"]["encodec"], tmp_path / "encodec_swapped", swap)
    bundle = lumo_uti.create_bundle(tmp_path / "bundle", image=f"hf-janus:{env['models']['janus']}",
                                    audio=f"hf-encodec:{model}")
    code, _, err = _audit(capsys, "--bundle", str(bundle), "--data", str(env["data"] / "audio"),
                          "--gates", str(env["gates"]), "--out", str(tmp_path / "a"))
    assert code == 1
    assert "FAIL audio.si_snr_db: gate audio.si_snr_db failed: value" in err
    failures = _report(tmp_path / "a")["failures"]
    assert "audio.si_snr_db" in failures and not any(f.startswith("abi") for f in failures)


def test_edited_token_space_fails_abi(env, capsys, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(env["bundle"], bundle)
    ts = json.loads((bundle / "token_space.json").read_text())
    ts["name"] = "edited"
    (bundle / "token_space.json").write_text(json.dumps(ts))
    code, _, err = _audit(capsys, "--bundle", str(bundle), "--data", str(env["data"]), "--out", str(tmp_path / "a"))
    assert code == 1
    assert "FAIL abi.token_space" in err and "edited after it was written" in err
    report = _report(tmp_path / "a")
    assert report["failures"] == ["abi.token_space"] and report["metrics_v2_pass"] is False


def test_weights_changed_after_bundling_fail_abi_but_the_audit_goes_on(env, capsys, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(env["bundle"], bundle)
    weights = bundle / "codecs" / "image" / "model.safetensors"
    state = load_file(weights)
    state["quantize.embedding.weight"] = state["quantize.embedding.weight"] + 1e-3
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(lumo_uti.BundleError):
        lumo_uti.load(bundle)
    code, _, err = _audit(capsys, "--bundle", str(bundle), "--data", str(env["data"] / "images"),
                          "--out", str(tmp_path / "a"))
    assert code == 1
    assert "FAIL abi.codec.image" in err and "weight file model.safetensors has hash" in err
    checks = {c["name"]: c["verdict"] for c in _report(tmp_path / "a")["checks"]}
    assert checks["abi.codec.audio"] == "pass" and checks["decode.image"] == "pass"


def test_non_deterministic_codec_fails_determinism(env, capsys, tmp_path, monkeypatch):
    from lumo_uti.codecs.hf_image import JanusCodec

    original = JanusCodec.encode_tensor

    def noisy(self, pixel_values):
        codes = original(self, pixel_values)
        flip = torch.rand(codes.shape) < 0.3
        return torch.where(flip, (codes + 1) % self.codebook_size, codes)

    monkeypatch.setattr(JanusCodec, "encode_tensor", noisy)
    code, _, err = _audit(capsys, "--bundle", str(env["bundle"]), "--data", str(env["data"] / "images"),
                          "--out", str(tmp_path / "a"))
    assert code == 1
    assert "FAIL determinism.image.repeat: repeated encode: agreement" in err
    check = next(c for c in _report(tmp_path / "a")["checks"] if c["name"] == "determinism.image.repeat")
    assert check["value"] < 1 and check["details"]["first_difference"]["sample"] == "0.png"


def test_update_gates_refuses_when_a_hard_check_fails(env, capsys, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(env["bundle"], bundle)
    (bundle / "codecs" / "image" / "config.json").write_text(
        (bundle / "codecs" / "image" / "config.json").read_text().replace("{", '{"edited": 1, ', 1))
    code, _, err = _audit(capsys, "--bundle", str(bundle), "--data", str(env["data"] / "images"),
                          "--out", str(tmp_path / "a"), "--update-gates")
    assert code == 1
    assert "config_hash" in err and "gates not written" in err
    assert not (tmp_path / "a" / "gates.json").exists()


# -- usage errors: exit 2 --------------------------------------------------------------------
def test_usage_errors_exit_2(env, capsys, tmp_path):
    base = ["--data", str(env["data"]), "--out", str(tmp_path / "a")]
    code, _, err = _audit(capsys, "--bundle", str(tmp_path / "missing"), *base)
    assert code == 2 and "bundle directory not found" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = _audit(capsys, "--bundle", str(env["bundle"]), "--gates", str(bad), *base)
    assert code == 2 and "not valid JSON" in err
    bad.write_text(json.dumps({"format": "lumo-gates", "version": 1, "gates": {"image.psnr": {"min": 1}}}))
    code, _, err = _audit(capsys, "--bundle", str(env["bundle"]), "--gates", str(bad), *base)
    assert code == 2 and "unknown metric names ['image.psnr']" in err
    code, _, err = _audit(capsys, "--bundle", str(env["bundle"]), "--data", str(tmp_path / "nowhere"))
    assert code == 2 and "evaluation data directory not found" in err
    code, _, err = _audit(capsys, "--bundle", str(env["bundle"]), *base, "--margin-db", "1")
    assert code == 2 and "need --update-gates" in err
    code, _, err = _audit(capsys, "--bundle", str(env["bundle"]), *base, "--update-gates", "--margin-frac", "1.5")
    assert code == 2 and "--margin-frac" in err
    if not torch.cuda.is_available():
        code, _, err = _audit(capsys, "--bundle", str(env["bundle"]), *base, "--device", "cuda")
        assert code == 2 and "CUDA is not available" in err


def test_data_for_a_modality_without_codec_is_an_error(env, capsys, tmp_path):
    image_only = lumo_uti.create_bundle(tmp_path / "b", image=f"hf-janus:{env['models']['janus']}")
    code, _, err = _audit(capsys, "--bundle", str(image_only), "--data", str(env["data"]), "--out", str(tmp_path / "a"))
    assert code == 2 and "2 audio sample(s) but the bundle has no audio codec" in err


# -- gates, determinism helpers --------------------------------------------------------------
def test_gates_validation_and_margins(tmp_path):
    parse = gates_mod.parse_gates
    with pytest.raises(gates_mod.GatesError, match="expected format 'lumo-gates'"):
        parse({"version": 1, "gates": {}})
    with pytest.raises(gates_mod.GatesError, match="must be a finite number"):
        parse({"format": "lumo-gates", "version": 1, "gates": {"image.ssim": {"min": "high"}}})
    with pytest.raises(gates_mod.GatesError, match="'min' and/or 'max'"):
        parse({"format": "lumo-gates", "version": 1, "gates": {"image.ssim": {"at_least": 1}}})
    g = gates_mod.gates_from_metrics({"image.psnr_db": 30.0, "image.ssim": -0.5, "audio.mel_distance": 2.0,
                                      "image.codebook_usage": 0.5})
    assert g.gates == {"image.psnr_db": {"min": 29.5}, "image.ssim": {"min": -0.55},
                       "audio.mel_distance": {"max": 2.2}, "image.codebook_usage": {"min": 0.45}}
    path = gates_mod.save_gates(tmp_path / "g.json", g)
    assert gates_mod.load_gates(path).gates == g.gates
    checks = {c.name: c for c in gates_mod.evaluate(g, {"image.psnr_db": 29.0, "image.ssim": 0.1,
                                                        "audio.si_snr_db": 3.0})}
    assert checks["image.psnr_db"].verdict == "fail" and "29 < min 29.5" in checks["image.psnr_db"].message
    assert checks["image.ssim"].verdict == "pass"
    assert checks["audio.si_snr_db"].verdict == "no gate"
    assert checks["audio.mel_distance"].verdict == "skipped"


def test_compare_reports_agreement_and_first_difference():
    a = [np.array([[1, 2], [3, 4]]), np.array([5, 6])]
    b = [np.array([[1, 2], [3, 9]]), np.array([5, 6])]
    result = compare(a, b, ["x", "y"])
    assert result["agreement"] == pytest.approx(5 / 6)
    assert result["first_difference"] == {"sample": "x", "index": [1, 1], "values": [4, 9]}
    assert compare(a, a, ["x", "y"])["first_difference"] is None


# -- bundle export ---------------------------------------------------------------------------
def test_bundle_export_round_trip(env, capsys, tmp_path):
    shutil.copy(env["gates"], tmp_path / "gates.json")
    out = tmp_path / "exported"
    capsys.readouterr()
    assert main(["bundle", "export", str(out), "--bundle", str(env["bundle"])]) == 0
    assert (out / "codecs" / "image" / "model.safetensors").is_file()
    uti = lumo_uti.load(out)
    assert uti.token_space == lumo_uti.TokenSpace.load(env["bundle"]) and uti.image_codec is not None
    code, _, err = _audit(capsys, "--bundle", str(out), "--data", str(env["data"] / "images"),
                          "--gates", str(env["gates"]), "--out", str(tmp_path / "a"))
    assert code == 0, err
    assert main(["bundle", "export", str(out), "--bundle", str(env["bundle"])]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["bundle", "export", str(out), "--bundle", str(env["bundle"]), "--force"]) == 0
    assert main(["bundle", "export"]) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_default_bundle_export(tmp_path):
    out = export_bundle(tmp_path / "default")
    assert lumo_uti.TokenSpace.load(out) == lumo_uti.TokenSpace.load(lumo_uti.default_bundle_dir())
    assert not list(out.rglob("__pycache__")) and not list(out.rglob("*.py"))
    with pytest.raises(lumo_uti.BundleError, match="exists"):
        export_bundle(out)
