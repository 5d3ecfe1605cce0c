"""Training checkpoints: the pointer files name a file or folder beside them, nothing else."""

from __future__ import annotations

import json

import pytest
import torch

from lumo_model.codec import checkpoint as codec_ckpt
from lumo_model.vlm.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


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
def test_vlm_latest_names_a_step_folder_beside_it(tmp_path, name):
    save_checkpoint(tmp_path / "run", 1, torch.nn.Linear(2, 2), None, {})
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "state.json").write_text("{}")
    (tmp_path / "run" / "latest.json").write_text(json.dumps({"step": 1, "dir": name}))
    with pytest.raises(ValueError, match="must name a step-<n> folder beside it"):
        latest_checkpoint(tmp_path / "run")
    with pytest.raises(ValueError, match="must name a step-<n> folder beside it"):
        load_checkpoint(tmp_path / "run")


def test_vlm_checkpoint_still_round_trips(tmp_path):
    net = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path / "run", 3, net, None, {"loss": 1.5})
    weights, opt, meta = load_checkpoint(tmp_path / "run")
    assert torch.equal(weights["weight"], net.weight.detach()) and opt is None and meta["loss"] == 1.5
