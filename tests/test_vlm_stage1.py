"""Stage-1 training end to end, resume after a kill, the ablation, and the `lumo vlm` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lumo_model.vlm.ablate import ablate, feature_transform, write_report
from lumo_model import checkpoint
from lumo_model.vlm.train import Stage1Config, batch_indices, lr_factor, train_stage1
from test_vlm_tiny import squares, tiny_text, tiny_vision, tiny_vlm

QUIET = dict(log=lambda s: None)


def _train_and_ablate(tmp_path, kind="siglip2", flavour="idefics2", steps=40):
    model, collator = tiny_vlm(kind, flavour=flavour)
    train, val = squares(96, seed=10), squares(16, seed=11)
    before = ablate(model, val, collator, batch_size=8, **QUIET)
    cfg = Stage1Config(steps=steps, batch_size=8, lr=2e-2, warmup_steps=5, save_every=1000, log_every=10)
    result = train_stage1(model, train, collator, tmp_path / "run", cfg, **QUIET)
    after = ablate(model, val, collator, batch_size=8, **QUIET)
    return before, result, after


def test_stage1_lowers_loss_and_ablation_passes(tmp_path):
    before, result, after = _train_and_ablate(tmp_path)
    losses = [loss for _, loss in result["losses"]]
    assert len(losses) == 4 and losses[-1] < 0.5 * losses[0]
    # Held-out captions: the trained connector fits them far better than the untrained one.
    assert after["losses"]["correct"] < 0.3 * before["losses"]["correct"]
    assert after["pass"], after["losses"]
    # Untrained, the connector carries little of the image: shuffling barely matters.
    assert abs(before["deltas"]["shuffled"]) < 1.0
    assert after["deltas"]["shuffled"] > 1.0  # the colour word needs the right image
    assert result["audit"]["trainable_params"] == sum(p.numel() for p in tiny_vlm()[0].connector.parameters())
    assert (tmp_path / "run" / "latest.json").is_file() and (tmp_path / "run" / "coverage.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("kind,flavour", [("siglip", "flamingo"), ("siglip2", "flamingo"), ("siglip", "idefics2")])
def test_stage1_other_towers_and_flavours(tmp_path, kind, flavour):
    _, _, after = _train_and_ablate(tmp_path, kind, flavour, steps=120)
    assert after["pass"], after["losses"]


class _Killed(Exception):
    pass


class _DyingCollator:
    """Wraps a collator and raises after `calls` batches, like a kill mid-run."""

    def __init__(self, inner, calls):
        self.inner, self.calls = inner, calls

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, examples):
        self.calls -= 1
        if self.calls < 0:
            raise _Killed()
        return self.inner(examples)


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path):
    data = squares(20, seed=12)
    cfg = Stage1Config(steps=8, batch_size=4, lr=5e-3, warmup_steps=2, save_every=3, log_every=1)
    model, collator = tiny_vlm()
    train_stage1(model, data, collator, tmp_path / "straight", cfg, **QUIET)
    want = {k: v.clone() for k, v in model.connector.state_dict().items()}

    model, collator = tiny_vlm()
    with pytest.raises(_Killed):
        train_stage1(model, data, _DyingCollator(collator, 7), tmp_path / "killed", cfg, **QUIET)
    assert checkpoint.latest(tmp_path / "killed").name == "step-00000006"
    (tmp_path / "killed" / ".step-00000009.tmp-1").mkdir()  # debris of a kill during a save
    model, collator = tiny_vlm()  # fresh process: weights from the checkpoint
    result = train_stage1(model, data, collator, tmp_path / "killed", cfg, **QUIET)
    assert result["step"] == 8 and [s for s, _ in result["losses"]] == list(range(1, 9))
    for k, v in model.connector.state_dict().items():
        assert torch.equal(v, want[k]), k
    ckpt = checkpoint.load(tmp_path / "killed")
    assert ckpt.step == 8 and ckpt.has_optimizer and ckpt.state["connector"]["num_latents"] == 8
    assert sorted(p.name for p in (tmp_path / "killed").glob("step-*")) == ["step-00000006", "step-00000008"]


def test_schedule_and_data_order():
    cfg = Stage1Config(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0) and lr_factor(100, cfg) == pytest.approx(0.1)
    assert lr_factor(55, cfg) == pytest.approx(0.55)
    seen = [i for s in range(5) for i in batch_indices(s, 4, 10, seed=3)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert batch_indices(3, 4, 10, seed=3) == batch_indices(3, 4, 10, seed=3)
    with pytest.raises(ValueError, match="expected steps a positive int"):
        Stage1Config(steps=0)


def test_ablation_transforms():
    f = torch.randn(4, 6, 5) * 3 + 1
    assert torch.equal(feature_transform("shuffled")(f, None), f.roll(1, 0))
    assert torch.equal(feature_transform("zero")(f, None), torch.zeros_like(f))
    noise = feature_transform("noise", torch.Generator().manual_seed(0))(f.repeat(50, 1, 1), None)
    torch.testing.assert_close(noise.mean((0, 1)), f.mean((0, 1)), atol=0.3, rtol=0.1)
    torch.testing.assert_close(noise.std((0, 1)), f.std((0, 1), unbiased=False), atol=0.3, rtol=0.1)
    assert feature_transform("correct") is None
    with pytest.raises(ValueError, match="at least 2 images"):
        feature_transform("shuffled")(f[:1], None)
    with pytest.raises(ValueError, match="expected a mode in"):
        feature_transform("blur")


def test_ablation_report_files(tmp_path):
    report = {"losses": {"correct": 1.0, "shuffled": 2.0, "zero": 3.0, "noise": 2.5},
              "deltas": {"correct": 0.0, "shuffled": 1.0, "zero": 2.0, "noise": 1.5}, "pass": True,
              "criterion": "correct < shuffled < min(zero, noise)", "level": "tokens", "tokens": 10, "batches": 1}
    jpath, mpath = write_report(report, tmp_path)
    assert json.loads(jpath.read_text()) == report
    md = mpath.read_text()
    assert "**PASS**" in md and "| shuffled | 2.0000 | +1.0000 |" in md


def _write_dataset(folder, n, seed):
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, ex in enumerate(squares(n, seed)):
        arr = (ex.images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        if i % 2:
            from PIL import Image

            Image.fromarray(arr).save(folder / f"{i}.png")
            name = f"{i}.png"
        else:
            np.save(folder / f"{i}.npy", arr)
            name = f"{i}.npy"
        lines.append(json.dumps({"image": name, "prompt": ex.prompt, "caption": ex.caption}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "data.jsonl"


def test_cli_train_resume_and_ablate(tmp_path, capsys):
    from lumo_uti.cli import main

    tiny_text().save_pretrained(tmp_path / "text")
    tiny_vision().save_pretrained(tmp_path / "vision")
    train = _write_dataset(tmp_path / "train", 24, seed=20)
    val = _write_dataset(tmp_path / "val", 8, seed=21)
    common = ["vlm", "train-stage1", "--text", str(tmp_path / "text"), "--vision", str(tmp_path / "vision"),
              "--data", str(train), "--out", str(tmp_path / "run"), "--batch-size", "8", "--lr", "1e-2",
              "--warmup", "5", "--num-latents", "8", "--depth", "1", "--heads", "4", "--kv-heads", "2",
              "--save-every", "5", "--max-seq-len", "64"]
    assert main(common + ["--steps", "5"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["step"] == 5 and first["coverage"]["samples"] == 40
    assert main(common + ["--steps", "10"]) == 0  # resumes at step 5
    captured = capsys.readouterr()
    assert "resumed from" in captured.err and "step-00000005" in captured.err
    assert json.loads(captured.out)["coverage"]["samples"] == 40  # only the 5 new steps
    rc = main(["vlm", "ablate", "--checkpoint", str(tmp_path / "run"), "--data", str(val), "--batch-size", "8",
               "--out", str(tmp_path / "report")])
    out = json.loads(capsys.readouterr().out)
    report = json.loads((tmp_path / "report" / "ablation.json").read_text())
    assert report["step"] == 10 and set(report["losses"]) == {"correct", "shuffled", "zero", "noise"}
    assert (rc == 0) == report["pass"] == out["pass"]
    assert report["level"] == "tokens" and report["batches"] == 1
    assert (tmp_path / "report" / "ablation.md").is_file()


def test_cli_errors(tmp_path, capsys):
    from lumo_uti.cli import main

    from lumo_model.vlm.cli import load_towers

    with pytest.raises(FileNotFoundError, match="--text .* is not a folder"):
        load_towers(tmp_path / "nope", tmp_path)
    assert main(["vlm"]) == 2  # no subcommand: help, usage status
    (tmp_path / "bad.jsonl").write_text('{"image": "missing.png", "caption": "x"}\n')
    from lumo_model.vlm import read_examples

    with pytest.raises(ValueError, match=r"bad.jsonl line 1: FileNotFoundError"):
        read_examples(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="expected a checkpoint folder"):
        checkpoint.load(tmp_path)


@pytest.mark.slow
def test_torchrun_ddp_two_processes(tmp_path):
    """`torchrun --nproc-per-node 2` on CPU (gloo): trains with DDP and rank 0 checkpoints."""
    import subprocess
    import sys

    tiny_text().save_pretrained(tmp_path / "text")
    tiny_vision().save_pretrained(tmp_path / "vision")
    train = _write_dataset(tmp_path / "train", 16, seed=30)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "lumo_uti.cli", "vlm", "train-stage1", "--text", str(tmp_path / "text"),
           "--vision", str(tmp_path / "vision"), "--data", str(train), "--out", str(tmp_path / "run"),
           "--batch-size", "2", "--num-latents", "8", "--depth", "1", "--heads", "4", "--kv-heads", "2",
           "--save-every", "2", "--max-seq-len", "64", "--device", "cpu"]
    env = dict(__import__("os").environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd + ["--steps", "3"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world 2" in done.stderr
    ckpt = checkpoint.load(tmp_path / "run")
    assert ckpt.step == 3 and ckpt.has_optimizer
