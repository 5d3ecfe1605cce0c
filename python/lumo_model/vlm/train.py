"""Stage-1 training: the connector learns, both towers stay frozen.

AdamW on the connector's parameters, linear warmup then cosine decay to
``min_lr_ratio * lr``, gradient-norm clipping, bf16 autocast on CUDA.
Checkpoints every ``save_every`` steps (``lumo_model.checkpoint``) and resumes
from the latest one in ``out_dir``: the data order is a function of
(seed, step), so a resumed run sees the batches the killed run would have.
Under ``torchrun`` (``WORLD_SIZE > 1``) the connector is wrapped in DDP
(gloo on CPU, NCCL on GPU); each rank takes its slice of the global batch
and rank 0 writes checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from lumo_uti._io import atomic_write_text

from .. import checkpoint
from .collator import VLMCollator, VLMExample
from .model import LumoVLM

__all__ = ["Stage1Config", "batch_indices", "lr_factor", "to_device", "train_stage1"]


@dataclass
class Stage1Config:
    """Stage-1 hyper-parameters. ``batch_size`` is per rank."""

    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    save_every: int = 200
    log_every: int = 10
    seed: int = 0
    bf16: Optional[bool] = None  # None: on for CUDA, off on CPU

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "save_every", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Stage1Config: expected {name} a positive int, got {v!r}")
        if self.warmup_steps < 0 or not self.lr > 0 or self.grad_clip <= 0:
            raise ValueError(
                f"Stage1Config: expected warmup_steps >= 0, lr > 0, grad_clip > 0, got "
                f"{self.warmup_steps}, {self.lr}, {self.grad_clip}"
            )


def lr_factor(step: int, cfg: Stage1Config) -> float:
    """Multiplier of ``cfg.lr`` at ``step``: linear warmup, then cosine to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def batch_indices(step: int, batch: int, n: int, seed: int) -> list[int]:
    """Example indices of global batch ``step``: an endless stream of per-epoch permutations."""
    out = []
    for pos in range(step * batch, (step + 1) * batch):
        epoch, k = divmod(pos, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.append(int(perm[k]))
    return out


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Model inputs of a collated batch on ``device`` (drops the coverage report)."""
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items() if k != "coverage"}


def _dist() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def train_stage1(model: LumoVLM, examples: Sequence[VLMExample], collator: VLMCollator, out_dir: str | Path,
                 cfg: Stage1Config, *, device: Optional[torch.device | str] = None,
                 run_info: Optional[dict[str, Any]] = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``model.connector`` on ``examples``; resume from ``out_dir`` if it holds a checkpoint.

    ``run_info`` (text/vision folders, image settings) is stored in each
    checkpoint so that ``lumo vlm ablate`` can rebuild the model.
    Returns ``{"step", "losses" (this process's logged (step, loss)), "coverage", "audit"}``.
    """
    if not examples:
        raise ValueError("train_stage1: expected at least one example, got none")
    rank, world = _dist()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    out_dir = Path(out_dir)
    model.to(device)
    model.train()
    audit = model.freeze_audit()
    log(f"stage1: {audit['trainable_params']:,} trainable connector parameters, "
        f"{audit['frozen_params']:,} frozen; device {device}, world {world}")
    params = [p for p in model.connector.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    start, losses = 0, []
    if checkpoint.latest(out_dir) is not None:
        ckpt = checkpoint.load(out_dir)
        model.connector.load_state_dict(ckpt.tensors("connector"))
        ckpt.load_optimizer(opt)
        start = ckpt.step
        sched.last_epoch = start
        for group in opt.param_groups:  # the lr of step `start`
            group["lr"] = group["initial_lr"] * lr_factor(start, cfg)
        losses = [tuple(x) for x in ckpt.state.get("losses", [])]
        log(f"stage1: resumed from {ckpt.path} at step {start}")
    connector = model.connector
    step_model: Any = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            connector, device_ids=[device.index] if device.type == "cuda" else None
        )
        model.connector = ddp  # forward goes through DDP for gradient all-reduce
    use_bf16 = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"
    state_base = {"config": dataclasses.asdict(cfg), "connector": connector.config, "run": run_info or {},
                  "feature_layer": model.feature_layer}
    t0 = time.perf_counter()
    try:
        for step in range(start, cfg.steps):
            idx = batch_indices(step, cfg.batch_size * world, len(examples), cfg.seed)
            mine = idx[rank * cfg.batch_size:(rank + 1) * cfg.batch_size]
            batch = to_device(collator([examples[i] for i in mine]), device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = step_model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                losses.append((done, float(loss.detach())))
                if rank == 0:
                    log(f"stage1: step {done}/{cfg.steps} loss {float(loss.detach()):.4f} "
                        f"lr {opt.param_groups[0]['lr']:.2e} {time.perf_counter() - t0:.1f}s")
            if rank == 0 and (done % cfg.save_every == 0 or done == cfg.steps):
                checkpoint.save(out_dir, done, tensors={"connector": connector.state_dict()}, optimizer=opt,
                                state=dict(state_base, losses=losses, coverage=collator.report.as_dict()))
    finally:
        model.connector = connector
    model.assert_towers_have_no_grad()
    if rank == 0:
        atomic_write_text(out_dir / "coverage.json", json.dumps(collator.report.as_dict(), indent=1) + "\n")
    return {"step": cfg.steps, "losses": losses, "coverage": collator.report.as_dict(), "audit": audit}
