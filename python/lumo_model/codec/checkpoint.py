"""Kill-safe training checkpoints: tensors in safetensors, the rest in JSON (never pickles).

A checkpoint is ``state.json`` naming a ``tensors-<n>.safetensors`` file next to
it. The tensors file is written first, then ``state.json`` is replaced
atomically, then older tensors files are removed; a kill at any point leaves
the previous complete checkpoint loadable.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from lumo_uti._io import atomic_write_bytes, atomic_write_text


def save(directory: str | Path, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save as st_save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    previous = load_state(directory)
    counter = (previous or {}).get("_counter", -1) + 1
    name = f"tensors-{counter:06d}.safetensors"
    blob = st_save({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()})
    atomic_write_bytes(directory / name, blob)
    atomic_write_text(directory / "state.json", json.dumps(dict(state, _counter=counter, _tensors=name), indent=1))
    for old in directory.glob("tensors-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_state(directory: str | Path) -> dict[str, Any] | None:
    f = Path(directory) / "state.json"
    if not f.is_file():
        return None
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint {f} is not valid JSON: {e}") from None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {f}: expected a JSON object, got {type(state).__name__}")
    return state


def load(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """(state, tensors) of the last complete checkpoint, or None when there is none."""
    from safetensors.torch import load_file

    state = load_state(directory)
    if state is None:
        return None
    name = state.get("_tensors")
    if not isinstance(name, str) or not re.fullmatch(r"tensors-\d+\.safetensors", name):
        raise ValueError(f"checkpoint {Path(directory) / 'state.json'}: _tensors must name a tensors-<n>.safetensors "
                         f"file beside it, got {name!r}")
    return state, load_file(str(Path(directory) / name))


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str = "opt.") -> tuple[dict[str, torch.Tensor], Any]:
    """An optimizer's state as flat tensors + JSON-able param groups."""
    sd = optimizer.state_dict()
    tensors = {}
    for index, entry in sd["state"].items():
        for key, value in entry.items():
            tensors[f"{prefix}{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, sd["param_groups"]


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: Any,
                   prefix: str = "opt.") -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix):
            index, key = name[len(prefix):].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})
