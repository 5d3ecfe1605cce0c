"""lumo_model.checkpoint: one kill-safe checkpoint format (safetensors + JSON) for every trainer."""

from __future__ import annotations

import json

import pytest
import torch

from lumo_model import checkpoint
from lumo_model.errors import CheckpointError


def _trained(seed: int = 0, steps: int = 3):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        net(torch.randn(5, 4)).square().sum().backward()
        opt.step()
    return net, opt


def _step(net, opt, seed):
    torch.manual_seed(seed)
    opt.zero_grad()
    net(torch.randn(5, 4)).square().sum().backward()
    opt.step()


def test_resume_continues_exactly(tmp_path):
    net, opt = _trained()
    checkpoint.save(tmp_path, 3, tensors={"net": net.state_dict()}, optimizer=opt, state={"losses": [[1, 0.5]]})
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    ckpt = checkpoint.load(tmp_path)
    fresh.load_state_dict(ckpt.tensors("net"))
    assert ckpt.load_optimizer(fresh_opt) and ckpt.step == 3 and ckpt.state == {"losses": [[1, 0.5]]}
    _step(net, opt, 7)
    _step(fresh, fresh_opt, 7)
    for a, b in zip(net.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_files_are_safetensors_and_json_only(tmp_path):
    net, opt = _trained()
    path = checkpoint.save(tmp_path, 1, tensors={"net": net.state_dict()}, optimizer=opt)
    assert sorted(p.name for p in path.iterdir()) == ["net.safetensors", "optimizer.safetensors", "state.json"]
    assert json.loads((tmp_path / "latest.json").read_text()) == {"step": 1, "dir": "step-00000001"}
    meta = json.loads((path / "state.json").read_text())
    assert meta["format"] == checkpoint.FORMAT and meta["tensors"] == ["net"]


def test_keeps_the_newest_steps_and_the_write_hook(tmp_path):
    for step in (1, 2, 3, 4):
        checkpoint.save(tmp_path, step, state={"s": step}, keep=2,
                        write=lambda d, step=step: (d / "extra.txt").write_text(str(step)))
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000003", "step-00000004"]
    ckpt = checkpoint.load(tmp_path)
    assert ckpt.step == 4 and (ckpt.path / "extra.txt").read_text() == "4"
    assert checkpoint.load(tmp_path / "step-00000003").state == {"s": 3}


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path):
    checkpoint.save(tmp_path, 1, state={"s": 1})

    def crash(_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, 2, state={"s": 2}, write=crash)
    ckpt = checkpoint.load(tmp_path)
    assert ckpt.step == 1 and not (tmp_path / "step-00000002").exists()


def test_bad_inputs(tmp_path):
    with pytest.raises(CheckpointError, match="expected a checkpoint folder"):
        checkpoint.load(tmp_path)
    with pytest.raises(CheckpointError, match="group name"):
        checkpoint.save(tmp_path, 1, tensors={"optimizer": {}})
    with pytest.raises(CheckpointError, match="group name"):
        checkpoint.save(tmp_path, 1, tensors={"../x": {}})
    path = checkpoint.save(tmp_path, 1, tensors={"a": {"w": torch.ones(1)}})
    with pytest.raises(CheckpointError, match="no tensor group 'b'"):
        checkpoint.load(tmp_path).tensors("b")
    (path / "state.json").write_text(json.dumps({"step": 1}))
    with pytest.raises(CheckpointError, match="not a lumo-checkpoint"):
        checkpoint.load(tmp_path)
    (path / "state.json").write_text("{half")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        checkpoint.load(path)
    assert issubclass(CheckpointError, ValueError)


def test_an_optimizer_of_another_shape_is_refused(tmp_path):
    net, opt = _trained()
    checkpoint.save(tmp_path, 1, optimizer=opt)
    other = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(CheckpointError, match="does not fit"):
        checkpoint.load(tmp_path).load_optimizer(other)
    assert checkpoint.save(tmp_path, 2) and not checkpoint.load(tmp_path).load_optimizer(other)
