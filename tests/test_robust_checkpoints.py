"""Training checkpoints: the pointer files name a file or folder beside them, nothing else."""

from __future__ import annotations

import json

import pytest
import torch

from lumo_model.codec import checkpoint as codec_ckpt
from lumo_model import checkpoint


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", None, 3])
def test_codec_checkpoint_tensors_name_stays_beside_state(tmp_path, name):
    codec_ckpt.save(tmp_path / "run", {"step": 1}, {"w": torch.ones(2)})
    (tmp_path / "outside.safetensors").write_bytes((tmp_path / "run" / "tensors-000000.safetensors").read_bytes())
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    state["_tensors"] = name
    (tmp_path / "run" / "state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="_tensors must name a tensors-<n>.safetensors file beside it"):
        codec_ckpt.load(tmp_path / "run")


def test_codec_checkpoint_bad_state_json(tmp_path):
    (tmp_path / "state.json").write_text("{half")
    with pytest.raises(ValueError, match=r"state\.json is not valid JSON"):
        codec_ckpt.load(tmp_path)
    (tmp_path / "state.json").write_text("[]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        codec_ckpt.load(tmp_path)


@pytest.mark.parametrize("name", ["../elsewhere", "/tmp", "step-1/../../x", None])
def test_latest_names_a_step_folder_beside_it(tmp_path, name):
    checkpoint.save(tmp_path / "run", 1, tensors={"model": torch.nn.Linear(2, 2).state_dict()})
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "state.json").write_text("{}")
    (tmp_path / "run" / "latest.json").write_text(json.dumps({"step": 1, "dir": name}))
    with pytest.raises(ValueError, match="must name a step-<n> folder beside it"):
        checkpoint.latest(tmp_path / "run")
    with pytest.raises(ValueError, match="must name a step-<n> folder beside it"):
        checkpoint.load(tmp_path / "run")


def test_checkpoint_still_round_trips(tmp_path):
    net = torch.nn.Linear(2, 2)
    checkpoint.save(tmp_path / "run", 3, tensors={"model": net.state_dict()}, state={"loss": 1.5})
    ckpt = checkpoint.load(tmp_path / "run")
    assert torch.equal(ckpt.tensors("model")["weight"], net.weight.detach())
    assert not ckpt.has_optimizer and ckpt.state["loss"] == 1.5 and ckpt.step == 3
