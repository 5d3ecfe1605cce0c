"""Stage-1 checkpoints: safetensors for tensors, JSON for everything else.

Layout of a checkpoint folder ``OUT``::

    OUT/latest.json            {"step": k, "dir": "step-0000k"} (written last, atomically)
    OUT/step-0000k/connector.safetensors
    OUT/step-0000k/optimizer.safetensors   AdamW moments, "state.<i>.<name>"
    OUT/step-0000k/state.json              step, configs, param groups, scheduler, losses

A step folder is written under a temporary name and swapped into place
(``lumo_uti._io.atomic_dir``), and ``latest.json`` moves only after that, so a
kill at any point leaves the previous checkpoint loadable; files get the
usual ``0o666 & ~umask`` permissions. The two newest step folders are kept.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from lumo_uti._io import atomic_dir, atomic_write_bytes, atomic_write_text

__all__ = ["latest_checkpoint", "load_checkpoint", "save_checkpoint"]

_KEEP = 2


def _optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for i, st in state["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{i}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{i}.{k}"] = v
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save_checkpoint(out_dir: str | Path, step: int, connector: torch.nn.Module,
                    optimizer: Optional[torch.optim.Optimizer], state: dict[str, Any]) -> Path:
    """Write step ``step`` under ``out_dir`` and point ``latest.json`` at it. Returns the step folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = out_dir / name
    weights = {k: v.detach().cpu().contiguous() for k, v in connector.state_dict().items()}
    meta = dict(state, step=step)
    with atomic_dir(final) as tmp:  # a kill leaves the previous step folder whole (or this one whole)
        atomic_write_bytes(tmp / "connector.safetensors", st_save(weights))
        if optimizer is not None:
            tensors, opt_meta = _optimizer_tensors(optimizer.state_dict())
            atomic_write_bytes(tmp / "optimizer.safetensors", st_save(tensors))
            meta["optimizer"] = opt_meta
        atomic_write_text(tmp / "state.json", json.dumps(meta, indent=1, sort_keys=True))
    atomic_write_text(out_dir / "latest.json", json.dumps({"step": step, "dir": name}) + "\n")
    olds = sorted(p for p in out_dir.glob("step-*") if p.is_dir() and p.name != name)
    for p in olds[: max(0, len(olds) - (_KEEP - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: str | Path) -> Optional[Path]:
    """The step folder named by ``out_dir/latest.json``, or None when there is none."""
    out_dir = Path(out_dir)
    ptr = out_dir / "latest.json"
    if not ptr.is_file():
        return None
    try:
        info = json.loads(ptr.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"load_checkpoint: {ptr} is not valid JSON: {e}") from None
    name = info.get("dir") if isinstance(info, dict) else None
    if not isinstance(name, str) or not re.fullmatch(r"step-\d+", name):
        raise ValueError(f"load_checkpoint: {ptr} must name a step-<n> folder beside it, got {name!r}")
    path = out_dir / name
    if not (path / "state.json").is_file():
        raise ValueError(f"load_checkpoint: {ptr} names {path}, which has no state.json")
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], Optional[dict[str, Any]], dict[str, Any]]:
    """``(connector_state, optimizer_state or None, state_json)`` of a step folder or of a run folder (its latest)."""
    path = Path(path)
    if not (path / "state.json").is_file():
        latest = latest_checkpoint(path)
        if latest is None:
            raise ValueError(f"load_checkpoint: expected a checkpoint folder (state.json or latest.json) at {path}")
        path = latest
    meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    weights = load_file(str(path / "connector.safetensors"))
    opt = None
    if (path / "optimizer.safetensors").is_file() and "optimizer" in meta:
        tensors = load_file(str(path / "optimizer.safetensors"))
        state: dict[int, dict[str, Any]] = {}
        for key, t in tensors.items():
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = t
        for key, v in meta["optimizer"]["scalars"].items():
            i, k = key.split(".", 1)
            state.setdefault(int(i), {})[k] = v
        opt = {"state": state, "param_groups": meta["optimizer"]["param_groups"]}
    return weights, opt, meta
