"""Training checkpoints: the pointer files name a file or folder beside them, nothing else."""

from __future__ import annotations

import json

import pytest
import torch

from lumo_model import checkpoint
from lumo_model.codec.train import AudioTrainConfig, ImageTrainConfig, _Run
from lumo_model.errors import CheckpointError


def test_bad_state_json_is_a_checkpoint_error(tmp_path):
    step = checkpoint.save(tmp_path / "run", 1, tensors={"codebook": {"codebook": torch.ones(2)}})
    (step / "state.json").write_text("{half")
    with pytest.raises(CheckpointError, match=r"state\.json is not valid JSON"):
        checkpoint.load(tmp_path / "run")
    (step / "state.json").write_text("[]")
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        checkpoint.load(tmp_path / "run")


def test_codec_run_refuses_checkpoints_it_did_not_write(tmp_path):
    run = _Run(tmp_path / "image", ImageTrainConfig(), "image")
    run.save({"stage": "decoder", "step": "2"}, {})
    with pytest.raises(CheckpointError, match="not a train-codec image checkpoint"):
        run.resume()
    audio = _Run(tmp_path / "audio", AudioTrainConfig(), "audio")
    audio.save({"stage": "decoder", "step": 2}, {})  # an image stage
    with pytest.raises(CheckpointError, match="not a train-codec audio checkpoint"):
        audio.resume()
    # An older layout (state.json beside its tensors, no latest.json) is named, not silently restarted.
    old = _Run(tmp_path / "old", ImageTrainConfig(), "image")
    old.ckpt.mkdir()
    (old.ckpt / "state.json").write_text(json.dumps({"stage": "kmeans", "iteration": 1, "_tensors": "t.safetensors"}))
    with pytest.raises(CheckpointError, match="is not a lumo-checkpoint version 1 checkpoint"):
        old.resume()


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
