"""lumo tokenlm train: task templates, the command, resume after a kill, a 2-process gloo run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lumo_uti
from lumo_model.token_lm import TrainConfig, patch_load, train
from lumo_model.token_lm.tasks import TEMPLATES, example_from_record, read_examples, render_task
from lumo_model.token_lm.training import batch_indices, collate
from lumo_uti.cli import main
from lumo_uti.segments import AudioCodes, ImageCodes
from test_token_lm_helpers import mixed_ids, tiny_qwen3, token_space

RUN_MAIN = "import sys; from lumo_uti.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A saved tiny untied Qwen3 base and a JSONL file of every record kind."""
    d = tmp_path_factory.mktemp("tokenlm")
    tiny_qwen3(False, hidden=16).save_pretrained(d / "base")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12):
        task = list(TEMPLATES)[i % 4]
        lines.append({
            "task": task, "text": f"item number {i}",
            "image_codes": rng.integers(0, 16384, (3, 3)).tolist(),
            "audio_codes": rng.integers(0, 1024, (2, 8)).tolist(),
        })
    lines.append(["a mixed document ", {"image_codes": [[1, 2], [3, 4]]}, " and ", {"audio_codes": [[0] * 8]}])
    lines.append({"document": ["plain text only"]})
    (d / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return d


def _cfg(workdir: Path, out: Path, **kw) -> TrainConfig:
    base = dict(base=str(workdir / "base"), data=str(workdir / "data.jsonl"), out=str(out), steps=4,
                batch_size=2, seq_len=40, save_every=2, log_every=1, lr=1e-2)
    base.update(kw)
    return TrainConfig(**base)


def _check_rows_trained(model) -> None:
    """Seen rows moved from the mean init; a row no example uses kept it exactly."""
    ts = token_space()
    emb = model.get_input_embeddings()
    mean = emb.base_weight[: ts.text_vocab_size].float().mean(0)
    rows = emb.new_weight.detach()
    seen = ts.id_of("<|image_start|>") - ts.base_rows
    unseen = ts.grid_id(200) - ts.base_rows  # no 200-wide image in the data
    assert not torch.allclose(rows[seen], mean, rtol=0, atol=1e-4)
    assert torch.equal(rows[unseen], mean)


def _rows(adapter: Path) -> dict[str, torch.Tensor]:
    return load_file(str(adapter / "adapter.safetensors"))


# ---------------------------------------------------------------------------
# Tasks and data
# ---------------------------------------------------------------------------


def test_templates_put_loss_on_the_target_only() -> None:
    uti = lumo_uti.load()
    ts = uti.token_space
    img = ImageCodes(np.array([[5, 6], [7, 8]]))
    aud = AudioCodes(np.zeros((2, 8), dtype=np.int64))
    for task in TEMPLATES:
        rec = {"task": task, "text": "hello", "image_codes": img.codes.tolist(), "audio_codes": aud.codes.tolist()}
        ex = example_from_record(rec, uti)
        prompt, target = render_task(task, text="hello", image=img, audio=aud)
        p, t = uti.encode(prompt), uti.encode(target)
        assert list(ex.ids) == p + t + [ts.special_tokens["<|endoftext|>"]]
        assert list(ex.target) == [False] * len(p) + [True] * (len(t) + 1)
        target_regions = {ts.region_name(i) for i, keep in zip(ex.ids, ex.target) if keep}
        want = {"I2T": "text", "A2T": "text", "T2I": "image", "T2A": "audio"}[task]
        assert want in target_regions
    doc = example_from_record(["x", {"image_codes": [[1]]}], uti)
    assert all(doc.target) and doc.task == "document"


def test_bad_records_name_the_line(tmp_path) -> None:
    uti = lumo_uti.load()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('["ok"]\n{"task": "I2X", "text": "a"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: unknown task 'I2X'"):
        read_examples(bad, uti)
    bad.write_text('{"task": "T2I", "text": "a"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: task T2I: needs 'image_codes'"):
        read_examples(bad, uti)
    bad.write_text('{"foo": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: expected a document or a task record"):
        read_examples(bad, uti)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not valid JSON"):
        read_examples(bad, uti)


def test_batches_are_a_function_of_step_and_rank() -> None:
    a = [batch_indices(10, s, 3, r, 2, 0) for s in range(5) for r in range(2)]
    b = [batch_indices(10, s, 3, r, 2, 0) for s in range(5) for r in range(2)]
    assert a == b
    first_epoch = [i for s in range(10) for r in range(2) for i in batch_indices(10, s, 3, r, 2, 0)][:10]
    assert sorted(first_epoch) == list(range(10))  # each example once per epoch
    ids, attn, labels = collate([example_from_record({"task": "I2T", "text": "hi", "image_codes": [[1]]}, lumo_uti.load())], 8, 0)
    assert ids.shape == (1, 8) and attn.sum() == 8 and (labels == -100).sum() >= 1


# ---------------------------------------------------------------------------
# The command, checkpoints, resume
# ---------------------------------------------------------------------------


def test_command_trains_checkpoints_and_writes_an_adapter(workdir, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(["tokenlm", "train", "--base", str(workdir / "base"), "--data", str(workdir / "data.jsonl"),
                 "--out", str(out), "--steps", "4", "--batch-size", "2", "--seq-len", "40", "--save-every", "2",
                 "--log-every", "2", "--lr", "0.01"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "tokenlm: step 4/4 loss" in captured.err and "checkpoint" in captured.err
    assert json.loads(captured.out)["step"] == 4
    logs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [2, 4] and all(r["loss_by_region"] for r in logs)
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest.json", "step-00000002", "step-00000004"]
    # The adapter loads onto the saved base, and the rows moved from their init.
    from transformers import AutoModelForCausalLM

    model = patch_load(AutoModelForCausalLM.from_pretrained(workdir / "base"), out / "adapter")
    _check_rows_trained(model)
    # `lumo tokenlm merge` writes a plain HF checkpoint with the same logits.
    assert main(["tokenlm", "merge", "--base", str(workdir / "base"), "--adapter", str(out / "adapter"), "--out", str(tmp_path / "merged")]) == 0
    capsys.readouterr()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ids = mixed_ids(token_space(), batch=1, length=12)
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, model.eval()(ids).logits)
    assert main(["tokenlm", "merge", "--base", str(workdir / "base"), "--adapter", str(out / "adapter"), "--out", str(tmp_path / "merged")]) == 2
    assert "exists" in capsys.readouterr().err
    # Refuses to overwrite a run without --resume.
    code = main(["tokenlm", "train", "--base", str(workdir / "base"), "--data", str(workdir / "data.jsonl"),
                 "--out", str(out), "--steps", "4"])
    assert code == 2 and "holds a run already" in capsys.readouterr().err


def test_resume_after_interrupt_equals_uninterrupted(workdir, tmp_path) -> None:
    straight = train(_cfg(workdir, tmp_path / "straight", steps=5), log=lambda s: None)

    class Killed(Exception):
        pass

    def kill_after_step_2_checkpoint(line: str) -> None:
        if "checkpoint" in line and "step-00000002" in line:
            raise Killed

    with pytest.raises(Killed):
        train(_cfg(workdir, tmp_path / "resumed", steps=5), log=kill_after_step_2_checkpoint)
    assert not (tmp_path / "resumed" / "adapter").exists()
    lines: list[str] = []
    resumed = train(_cfg(workdir, tmp_path / "resumed", steps=5, resume=True), log=lines.append)
    assert any("resumed from" in x and "at step 2" in x for x in lines)
    assert resumed["step"] == straight["step"] == 5
    a, b = _rows(tmp_path / "straight" / "adapter"), _rows(tmp_path / "resumed" / "adapter")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_data(workdir, tmp_path) -> None:
    train(_cfg(workdir, tmp_path / "r", steps=2), log=lambda s: None)
    other = tmp_path / "other.jsonl"
    other.write_text('["different"]\n')
    with pytest.raises(ValueError, match="--resume with another data file"):
        train(_cfg(workdir, tmp_path / "r", steps=4, resume=True, data=str(other)), log=lambda s: None)


def _cli(workdir: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", RUN_MAIN, "tokenlm", "train", "--base", str(workdir / "base"),
            "--data", str(workdir / "data.jsonl"), "--out", str(out), "--batch-size", "2", "--seq-len", "40",
            "--lr", "0.01", "--log-every", "1", *extra]


def test_sigkill_then_resume_loses_nothing(workdir, tmp_path) -> None:
    """A run killed with SIGKILL mid-training resumes from its last checkpoint to the same rows."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps = ["--steps", "40", "--save-every", "3"]
    ref = subprocess.run(_cli(workdir, tmp_path / "ref", *steps), env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen(_cli(workdir, tmp_path / "run", *steps), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "run" / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if latest.exists() and json.loads(latest.read_text())["step"] >= 6:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    killed_at = json.loads(latest.read_text())["step"]
    assert 6 <= killed_at < 40 and not (tmp_path / "run" / "adapter").exists()
    res = subprocess.run(_cli(workdir, tmp_path / "run", *steps, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"at step {killed_at}" in res.stderr
    a, b = _rows(tmp_path / "ref" / "adapter"), _rows(tmp_path / "run" / "adapter")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_gloo_run_trains_and_saves(workdir, tmp_path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(RUN_MAIN.replace("; ", "\n") + "\n")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(driver),
           *_cli(workdir, out, "--steps", "3", "--save-every", "2")[3:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 process(es)" in proc.stderr and "step 3/3" in proc.stderr
    state = json.loads((out / "checkpoints" / "step-00000003" / "state.json").read_text())["state"]
    assert state["world_size"] == 2
    from transformers import AutoModelForCausalLM

    model = patch_load(AutoModelForCausalLM.from_pretrained(workdir / "base"), out / "adapter").eval()
    _check_rows_trained(model)
    ids = mixed_ids(token_space(), batch=1, length=8)
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


# ---------------------------------------------------------------------------
# Fused loss and 16-bit runs
# ---------------------------------------------------------------------------


def _losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_fused_loss_equals_materialized(workdir, tmp_path, tied: bool) -> None:
    """The default fused loss gives the plain path's losses and rows (fp32), tied embeddings included."""
    base = workdir / "base"
    if tied:
        base = tmp_path / "tied_base"
        tiny_qwen3(True, hidden=16).save_pretrained(base)
    runs = {}
    for loss in ("materialized", "fused"):
        out = tmp_path / loss
        train(_cfg(workdir, out, steps=3, base=str(base), loss=loss), log=lambda s: None)
        runs[loss] = (_losses(out), _rows(out / "adapter"))
    (la, ra), (lb, rb) = runs["materialized"], runs["fused"]
    assert len(la) == 3 and np.allclose(la, lb, rtol=1e-5, atol=0)
    assert ra.keys() == rb.keys()
    # AdamW normalises each element's step, so gradients that are pure rounding
    # noise in both paths still move by up to lr: compare within 5% of one step.
    for k in ra:
        torch.testing.assert_close(ra[k], rb[k], rtol=1e-3, atol=5e-4)


def test_loss_option_is_checked(workdir, tmp_path) -> None:
    with pytest.raises(ValueError, match="expected loss in"):
        train(_cfg(workdir, tmp_path / "x", loss="chunked"), log=lambda s: None)


def test_bfloat16_run_keeps_float32_master_rows(workdir, tmp_path) -> None:
    """A bf16 run steps float32 masters (in each checkpoint); the model gets them rounded; resume is exact."""
    from safetensors.torch import load_file as load_st

    straight = tmp_path / "straight"
    train(_cfg(workdir, straight, steps=4, dtype="bfloat16"), log=lambda s: None)
    master = load_st(str(straight / "checkpoints" / "step-00000004" / "master.safetensors"))
    adapter = _rows(straight / "adapter")
    assert master and all(v.dtype == torch.float32 for v in master.values())
    rounded = sorted(v.to(torch.bfloat16).float().sum().item() for v in master.values())
    saved = sorted(v.float().sum().item() for v in adapter.values())
    assert np.allclose(rounded, saved, rtol=1e-6)
    # Updates smaller than a bf16 step still accumulate in the masters.
    assert any(not torch.equal(v, v.to(torch.bfloat16).float()) for v in master.values())
    assert all(np.isfinite(_losses(straight)))

    class Killed(Exception):
        pass

    def kill(line: str) -> None:
        if "checkpoint" in line and "step-00000002" in line:
            raise Killed

    with pytest.raises(Killed):
        train(_cfg(workdir, tmp_path / "resumed", steps=4, dtype="bfloat16"), log=kill)
    train(_cfg(workdir, tmp_path / "resumed", steps=4, dtype="bfloat16", resume=True), log=lambda s: None)
    b = _rows(tmp_path / "resumed" / "adapter")
    assert all(torch.equal(adapter[k], b[k]) for k in adapter)
