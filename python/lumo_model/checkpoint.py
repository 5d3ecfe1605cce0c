"""Training checkpoints: one kill-safe format for every trainer (safetensors + JSON, never pickles).

Layout of a run folder ``RUN``::

    RUN/latest.json                 {"step": k, "dir": "step-0000000k"}  (written last, atomically)
    RUN/step-0000000k/state.json    format, version, step, tensor groups, optimizer JSON, the trainer's state
    RUN/step-0000000k/NAME.safetensors        one file per tensor group (e.g. "connector", "codebook")
    RUN/step-0000000k/optimizer.safetensors   the optimizer's tensors, "state.<param index>.<key>"
    RUN/step-0000000k/...           anything the trainer writes with ``write=`` (e.g. an adapter folder)

A step folder is built under a temporary name and swapped into place
(``lumo_uti._io.atomic_dir``); ``latest.json`` moves only after that, and
older step folders are removed last, so a kill at any point leaves the
previous checkpoint loadable. Files get the usual ``0o666 & ~umask``
permissions.

Use::

    checkpoint.save(run, step, tensors={"connector": module.state_dict()}, optimizer=opt,
                    state={"losses": losses})
    ckpt = checkpoint.load(run)          # the latest step (or pass a step folder)
    module.load_state_dict(ckpt.tensors("connector"))
    ckpt.load_optimizer(opt)
    ckpt.step, ckpt.state["losses"]
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from lumo_uti._io import atomic_dir, atomic_write_bytes, atomic_write_text

from .errors import CheckpointError

__all__ = ["FORMAT", "LATEST", "Checkpoint", "latest", "load", "save", "step_dir_name"]

FORMAT = "lumo-checkpoint"
VERSION = 1
LATEST = "latest.json"
OPTIMIZER = "optimizer"
_STEP_DIR = re.compile(r"step-\d{8,}")
_GROUP = re.compile(r"[A-Za-z0-9_]+")


def step_dir_name(step: int) -> str:
    """The folder name of step ``step`` (zero-padded, so names sort by step)."""
    return f"step-{int(step):08d}"


def save(run_dir: str | Path, step: int, *, tensors: Optional[Mapping[str, Mapping[str, torch.Tensor]]] = None,
         optimizer: Optional[torch.optim.Optimizer] = None, state: Optional[Mapping[str, Any]] = None,
         write: Optional[Callable[[Path], None]] = None, keep: int = 2) -> Path:
    """Write step ``step`` under ``run_dir``, point ``latest.json`` at it, keep the ``keep`` newest steps.

    Args:
        tensors: group name -> tensors, one ``NAME.safetensors`` each (e.g. a
            module's ``state_dict()``); copied to the CPU.
        optimizer: its state goes to ``optimizer.safetensors`` + ``state.json``.
        state: the trainer's JSON-able state (config, losses, ...).
        write: called with the (temporary) step folder to add files of its own.
    Returns the step folder.
    """
    from safetensors.torch import save as st_save

    if keep < 1:
        raise CheckpointError(f"checkpoint.save: keep must be >= 1, got {keep}")
    groups = dict(tensors or {})
    for name in groups:
        if not _GROUP.fullmatch(name) or name == OPTIMIZER:
            raise CheckpointError(f"checkpoint.save: tensor group name must be [A-Za-z0-9_]+ and not "
                                  f"{OPTIMIZER!r}, got {name!r}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = step_dir_name(step)
    meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "step": int(step), "tensors": sorted(groups),
                            "optimizer": None, "state": dict(state or {})}
    with atomic_dir(run_dir / name) as tmp:
        for group, values in groups.items():
            atomic_write_bytes(tmp / f"{group}.safetensors", st_save(_cpu(values)))
        if optimizer is not None:
            opt_tensors, meta["optimizer"] = _split_optimizer(optimizer.state_dict())
            atomic_write_bytes(tmp / f"{OPTIMIZER}.safetensors", st_save(opt_tensors))
        if write is not None:
            write(tmp)
        atomic_write_text(tmp / "state.json", json.dumps(meta, indent=1, sort_keys=True) + "\n")
    atomic_write_text(run_dir / LATEST, json.dumps({"step": int(step), "dir": name}) + "\n")
    olds = sorted(p for p in run_dir.iterdir() if p.is_dir() and _STEP_DIR.fullmatch(p.name) and p.name != name)
    for p in olds[: max(0, len(olds) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return run_dir / name


def latest(run_dir: str | Path) -> Optional[Path]:
    """The step folder ``run_dir/latest.json`` names, or None when there is no ``latest.json``."""
    run_dir = Path(run_dir)
    ptr = run_dir / LATEST
    if not ptr.is_file():
        return None
    info = _read_json(ptr)
    name = info.get("dir")
    if not isinstance(name, str) or not _STEP_DIR.fullmatch(name):
        raise CheckpointError(f"checkpoint: {ptr} must name a step-<n> folder beside it, got {name!r}")
    path = run_dir / name
    if not (path / "state.json").is_file():
        raise CheckpointError(f"checkpoint: {ptr} names {path}, which has no state.json")
    return path


def load(path: str | Path) -> "Checkpoint":
    """The checkpoint in step folder ``path``, or the latest one of run folder ``path``."""
    path = Path(path)
    if not (path / "state.json").is_file():
        found = latest(path)
        if found is None:
            raise CheckpointError(f"checkpoint: expected a checkpoint folder (a step folder with state.json "
                                  f"or a run folder with latest.json) at {path}")
        path = found
    meta = _read_json(path / "state.json")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"checkpoint: {path / 'state.json'} is not a {FORMAT} version {VERSION} checkpoint "
                              f"(format {meta.get('format')!r}, version {meta.get('version')!r})")
    step, groups, state = meta.get("step"), meta.get("tensors"), meta.get("state")
    if not isinstance(step, int) or not isinstance(groups, list) or not isinstance(state, dict) or not all(
            isinstance(g, str) and _GROUP.fullmatch(g) for g in groups):
        raise CheckpointError(f"checkpoint: {path / 'state.json'} lacks a valid step, tensors list or state")
    return Checkpoint(path, step, state, tuple(groups), meta.get("optimizer"))


@dataclass(frozen=True)
class Checkpoint:
    """One loaded step folder: ``step``, the trainer's ``state``, and its tensors on demand."""

    path: Path
    step: int
    state: dict[str, Any]
    groups: tuple[str, ...]
    _optimizer: Optional[dict[str, Any]] = None

    def tensors(self, group: str) -> dict[str, torch.Tensor]:
        """The tensors of group ``group`` (CPU)."""
        from safetensors.torch import load_file

        if group not in self.groups:
            raise CheckpointError(f"checkpoint {self.path}: no tensor group {group!r} (groups: {list(self.groups)})")
        return load_file(str(self.path / f"{group}.safetensors"))

    @property
    def has_optimizer(self) -> bool:
        return self._optimizer is not None

    def optimizer_state(self) -> Optional[dict[str, Any]]:
        """The optimizer's ``state_dict()`` as saved, or None when none was."""
        from safetensors.torch import load_file

        if self._optimizer is None:
            return None
        state: dict[int, dict[str, Any]] = {}
        for key, t in load_file(str(self.path / f"{OPTIMIZER}.safetensors")).items():
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = t
        for key, v in self._optimizer["scalars"].items():
            i, k = key.split(".", 1)
            state.setdefault(int(i), {})[k] = v
        return {"state": state, "param_groups": self._optimizer["param_groups"]}

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> bool:
        """Restore ``optimizer`` from this checkpoint; False when it holds no optimizer state."""
        saved = self.optimizer_state()
        if saved is None:
            return False
        try:
            optimizer.load_state_dict(saved)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {self.path}: the optimizer state does not fit this optimizer: {e}") from None
        return True


def _cpu(values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in values.items()}


def _split_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer ``state_dict()`` -> (tensors, JSON): tensors by ``state.<i>.<key>``, the rest as JSON."""
    tensors, scalars = {}, {}
    for i, entry in sd["state"].items():
        for k, v in entry.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{i}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{i}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint: {path} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint: {path}: expected a JSON object, got {type(obj).__name__}")
    return obj
