"""Rows-only training of an expanded token LM (``lumo tokenlm train``).

One process, or one per rank under ``torchrun`` (DDP; gloo on CPU, NCCL on
GPU): only the new rows are in the optimizer; every other parameter is frozen.
Data is a JSONL file of documents and task records (encoded in memory at start,
one example per sequence) or a token-shard folder (streamed from the
memory-mapped shards and packed into windows, ``packing``).
The batch of a step is a pure function of (seed, step, rank), so a run resumed
from a checkpoint continues exactly where the killed run was: the checkpoint
holds the rows, the optimizer state and the step, and the resumed run gives
bit-identical rows to an uninterrupted one (on the same machine and thread
count).

Loss: ``fused`` (default) computes the cross entropy from the last hidden
state with ``lumo_uti.ops.rows_linear_cross_entropy``, never building the
``[B, L, V]`` logits; ``materialized`` takes the model's logits (the plain
path, same loss). With ``dtype`` bfloat16/float16 the model runs in that dtype
and the optimizer updates float32 master copies of the new rows (kept in
each checkpoint's ``master.safetensors``), copied back into the model after
every step.

Output directory::

    log.jsonl                  one JSON object per logged step
    checkpoints/               a run folder of ``lumo_model.checkpoint``:
      latest.json              {"step": N, "dir": "step-0000000N"} (written last)
      step-XXXXXXXX/           adapter/ (rows-only adapter), optimizer.safetensors, state.json,
                               master.safetensors (16-bit runs: the float32 rows)
    adapter/                   the final rows-only adapter
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from lumo_uti._hashing import sha256_file

from .. import checkpoint

from .expansion import expand, expansion_of, trainable_parameters
from .packaging import patch_load, save_trainable_rows
from .packing import ShardPacker, collate_windows, open_token_shards
from .tasks import LOSS_ON, Example, loss_id_mask, read_examples

__all__ = ["TrainConfig", "train", "forbidden_columns", "forbidden_ranges", "rows_loss", "LOSSES"]

CKPT_DIR = "checkpoints"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LOSSES = ("fused", "materialized")
MASTER = "master.safetensors"


@dataclass
class TrainConfig:
    """Options of ``train`` (the command's flags have the same names)."""

    base: str
    data: str
    out: str
    bundle: str | None = None
    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 4
    seq_len: int = 512
    save_every: int = 50
    resume: bool = False
    seed: int = 0
    log_every: int = 10
    weight_decay: float = 0.0
    noise_std: float = 0.0
    dtype: str = "float32"
    keep_checkpoints: int = 2
    loss_on: str = "all"
    loss: str = "fused"

    def validate(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"tokenlm train: expected {name} >= 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise ValueError(f"tokenlm train: expected seq_len >= 2, got {self.seq_len}")
        if not self.lr > 0:
            raise ValueError(f"tokenlm train: expected lr > 0, got {self.lr}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"tokenlm train: expected dtype in {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"tokenlm train: expected keep_checkpoints >= 1, got {self.keep_checkpoints}")
        if self.loss not in LOSSES:
            raise ValueError(f"tokenlm train: expected loss in {list(LOSSES)}, got {self.loss!r}")
        if self.loss_on not in LOSS_ON:
            raise ValueError(f"tokenlm train: expected loss_on in {list(LOSS_ON)}, got {self.loss_on!r}")


def forbidden_columns(token_space: Any, width: int) -> torch.Tensor:
    """``[width]`` bool: True for IDs never emitted (base padding, tail padding)."""
    mask = torch.zeros(width, dtype=torch.bool)
    mask[token_space.text_vocab_size : token_space.base_rows] = True
    mask[token_space.vocab_size :] = True
    return mask


def forbidden_ranges(token_space: Any, width: int) -> list[tuple[int, int]]:
    """The True columns of ``forbidden_columns`` as half-open ``(start, stop)`` ranges."""
    ranges = [(token_space.text_vocab_size, token_space.base_rows), (token_space.vocab_size, width)]
    return [(a, b) for a, b in ranges if a < b]


def rows_loss(logits: torch.Tensor, labels: torch.Tensor, forbidden: torch.Tensor) -> torch.Tensor:
    """Per-target cross entropy ``[B, L-1]`` (0 where label is -100).

    logits: [B, L, V]; labels: [B, L] (-100 = no loss); forbidden: [V] bool,
    columns set to -inf so padding rows are never a target nor get probability
    mass (their rows then get exactly zero gradient).
    """
    logits = logits[:, :-1].float().masked_fill(forbidden.to(logits.device), float("-inf"))
    target = labels[:, 1:]
    flat = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none")
    return flat.view(target.shape)


class RowsLossModel(torch.nn.Module):
    """An expanded model and its loss in one forward (so DDP sees the whole step).

    ``forward(input_ids, attention_mask, labels, position_ids=None) -> [B, L-1]``
    per-target loss (0 where the label is -100). Packed token shards pass
    ``position_ids`` (each document restarts at 0) and a 4-D block-diagonal mask. ``fused``: the decoder's last hidden state
    into ``rows_linear_cross_entropy`` (the model's logits must be
    ``lm_head(last_hidden_state)``, as for Qwen3); ``materialized``: the
    model's logits into ``rows_loss``.
    """

    def __init__(self, model: torch.nn.Module, loss: str, forbidden: torch.Tensor):
        super().__init__()
        self.model, self.loss = model, loss
        self.register_buffer("forbidden", forbidden, persistent=False)
        self.ranges = [(int(a), int(b)) for a, b in _mask_runs(forbidden)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if position_ids is not None:
            inputs["position_ids"] = position_ids
        if self.loss == "materialized":
            logits = self.model(**inputs).logits
            return rows_loss(logits, labels, self.forbidden)
        from lumo_uti.ops import rows_linear_cross_entropy

        out = self.model.get_decoder()(**inputs, use_cache=False)
        head = self.model.get_output_embeddings()
        return rows_linear_cross_entropy(
            out.last_hidden_state[:, :-1], head.base_weight, head.new_weight, labels[:, 1:],
            base_bias=head.base_bias, new_bias=head.new_bias, masked_columns=self.ranges, reduction="none",
        )


def _mask_runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """Half-open runs of True in a ``[V]`` bool mask."""
    m = mask.to("cpu", torch.int8)
    edges = torch.diff(torch.cat([torch.zeros(1, dtype=torch.int8), m, torch.zeros(1, dtype=torch.int8)]))
    starts = torch.nonzero(edges == 1).reshape(-1).tolist()
    stops = torch.nonzero(edges == -1).reshape(-1).tolist()
    return list(zip(starts, stops))


class _MasterRows:
    """float32 master copies of 16-bit trainable rows: the optimizer steps these, the model gets them rounded."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params
        self.masters = [torch.nn.Parameter(p.detach().to(torch.float32).clone()) for p in params]

    def grads_to_masters(self) -> None:
        for p, m in zip(self.params, self.masters):
            m.grad = None if p.grad is None else p.grad.to(torch.float32)
            p.grad = None

    @torch.no_grad()
    def masters_to_model(self) -> None:
        for p, m in zip(self.params, self.masters):
            p.copy_(m)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file({f"row_{i}": m.detach().cpu().contiguous() for i, m in enumerate(self.masters)}, str(path))

    @torch.no_grad()
    def load(self, path: Path) -> None:
        from safetensors.torch import load_file

        saved = load_file(str(path))
        for i, m in enumerate(self.masters):
            m.copy_(saved[f"row_{i}"].to(m.device))
        self.masters_to_model()


# -- data ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, step: int, batch_size: int, rank: int, world: int, seed: int) -> list[int]:
    """Example indices of ``rank``'s batch at ``step``: a pure function of its arguments."""
    out = []
    for i in range(batch_size):
        g = (step * world + rank) * batch_size + i
        epoch, k = divmod(g, n)
        out.append(int(_order(n, seed, epoch)[k]))
    return out


def collate(
    examples: list[Example], seq_len: int, pad_id: int, loss_ids: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids [B, L], attention_mask [B, L], labels [B, L])``, truncated/padded to seq_len.

    Labels keep an example's target tokens whose ID is in ``loss_ids`` (``[V]`` bool; None: all).
    """
    ids = torch.full((len(examples), seq_len), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), seq_len), dtype=torch.long)
    labels = torch.full((len(examples), seq_len), -100, dtype=torch.long)
    for b, ex in enumerate(examples):
        n = min(len(ex.ids), seq_len)
        row = torch.tensor(ex.ids[:n], dtype=torch.long)
        ids[b, :n] = row
        attn[b, :n] = 1
        tgt = torch.tensor(ex.target[:n], dtype=torch.bool)
        if loss_ids is not None:
            tgt &= loss_ids[row]
        labels[b, :n] = torch.where(tgt, row, -100)
    return ids, attn, labels


class _ExampleData:
    """A JSONL file: every example encoded at start, one per sequence (truncated/padded)."""

    def __init__(self, cfg: TrainConfig, uti: Any, loss_ids: torch.Tensor):
        self.examples = read_examples(cfg.data, uti)
        self.hash = sha256_file(cfg.data)
        self.cfg, self.loss_ids = cfg, loss_ids
        self.pad_id = uti.token_space.special_tokens.get("<|endoftext|>", 0)
        self.summary = f"{len(self.examples)} examples"

    def batch(self, step: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        idx = batch_indices(len(self.examples), step, self.cfg.batch_size, rank, world, self.cfg.seed)
        ids, attn, labels = collate([self.examples[i] for i in idx], self.cfg.seq_len, self.pad_id, self.loss_ids)
        return {"input_ids": ids, "attention_mask": attn, "labels": labels}


class _ShardData:
    """A token-shard folder: documents streamed from the memory-mapped shards, packed into windows."""

    def __init__(self, cfg: TrainConfig, uti: Any, loss_ids: torch.Tensor):
        shards, separator, self.hash = open_token_shards(cfg.data, uti.token_space)
        self.packer = ShardPacker(shards, cfg.seq_len, cfg.seed, separator)
        self.cfg, self.loss_ids = cfg, loss_ids
        self.summary = (f"{len(shards)} documents / {self.packer.epoch_tokens} tokens per epoch from token shards "
                        f"(separator {'added' if separator is not None else 'in the shards'})")

    def batch(self, step: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        windows = self.packer.batch(step, self.cfg.batch_size, rank, world)
        return collate_windows(windows, self.loss_ids, _DTYPES[self.cfg.dtype])


def _open_data(cfg: TrainConfig, uti: Any) -> _ExampleData | _ShardData:
    """A folder is token shards (``TokenShards`` says what is wrong with one that is not); a file is JSONL."""
    loss_ids = loss_id_mask(uti.token_space, cfg.loss_on)
    if Path(cfg.data).is_dir():
        return _ShardData(cfg, uti, loss_ids)
    return _ExampleData(cfg, uti, loss_ids)


# -- distributed ----------------------------------------------------------------------------------


def _dist_setup() -> tuple[int, int, torch.device, bool]:
    """(rank, world, device, initialised_here) from the torchrun environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if world == 1:
        return 0, 1, device, False
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device, False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, True


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# -- checkpoints ----------------------------------------------------------------------------------


def _save_checkpoint(out: Path, model: Any, optimizer: torch.optim.Optimizer, state: dict[str, Any], keep: int,
                     master: _MasterRows | None = None) -> Path:
    def write(step_dir: Path) -> None:
        save_trainable_rows(model, step_dir / "adapter")
        if master is not None:
            master.save(step_dir / MASTER)

    return checkpoint.save(out / CKPT_DIR, state["step"], optimizer=optimizer, state=state, keep=keep, write=write)


# -- training -----------------------------------------------------------------------------------


def _load_base(cfg: TrainConfig, device: torch.device) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(cfg.base, dtype=_DTYPES[cfg.dtype])
    return model.to(device)


def train(cfg: TrainConfig, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train the new rows; returns ``{"step", "loss", "adapter", "out"}`` (rank 0's view).

    Raises:
        ValueError: bad options or data; resuming with another data file or
            another base (the adapter's hashes are checked by ``patch_load``).
        FileExistsError: ``out`` holds a run and ``resume`` is False.
    """
    import lumo_uti

    cfg.validate()
    rank, world, device, own_pg = _dist_setup()
    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    say = say if rank == 0 else (lambda s: None)
    out = Path(cfg.out)
    try:
        uti = lumo_uti.load(cfg.bundle)
        ts = uti.token_space
        data = _open_data(cfg, uti)
        data_hash = data.hash
        run_dir = out / CKPT_DIR
        ckpt = checkpoint.load(run_dir) if cfg.resume and checkpoint.latest(run_dir) is not None else None
        if not cfg.resume and checkpoint.latest(run_dir) is not None:
            raise FileExistsError(f"{out} holds a run already ({run_dir / checkpoint.LATEST}); "
                                  "pass --resume or another --out")
        start = 0
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        model = _load_base(cfg, device)
        if ckpt is not None:
            state = ckpt.state
            if state["data_sha256"] != data_hash:
                raise ValueError(
                    f"tokenlm train: --resume with another data file: the run used {state['data_sha256']}, "
                    f"{cfg.data} is {data_hash}"
                )
            if int(state.get("world_size", 1)) != world:
                raise ValueError(
                    f"tokenlm train: --resume with {world} process(es), the run used {state['world_size']}: "
                    "the data order depends on the number of processes"
                )
            for key in ("seed", "batch_size", "seq_len", "loss_on"):
                was = state.get("config", {}).get(key, getattr(TrainConfig, key, None))
                if was != getattr(cfg, key):
                    raise ValueError(
                        f"tokenlm train: --resume with {key} {getattr(cfg, key)!r}, the run used {was!r}: "
                        "the batches depend on it"
                    )
            model = patch_load(model, ckpt.path / "adapter")
            if expansion_of(model).token_space.fingerprint != ts.fingerprint:
                raise ValueError(
                    f"tokenlm train: --resume with another bundle: the run used token space "
                    f"{expansion_of(model).token_space.fingerprint}, this bundle has {ts.fingerprint}"
                )
            start = int(state["step"])
            say(f"tokenlm: resumed from {ckpt.path} at step {start}")
        else:
            model = expand(model, ts, init="mean", noise_std=cfg.noise_std, seed=cfg.seed)
        params = trainable_parameters(model)
        for p in params:
            p.requires_grad_(True)
        master = _MasterRows(params) if any(p.dtype != torch.float32 for p in params) else None
        optimizer = torch.optim.AdamW(master.masters if master else params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if ckpt is not None and master is not None and (ckpt.path / MASTER).exists():
            master.load(ckpt.path / MASTER)
        if ckpt is not None:
            ckpt.load_optimizer(optimizer)
        n_trainable = sum(p.numel() for p in params)
        say(
            f"tokenlm: {data.summary}, {world} process(es), vocab {expansion_of(model).total_rows} "
            f"({expansion_of(model).new_rows} new rows), {n_trainable} trainable parameters, device {device}"
        )
        forbidden = forbidden_columns(ts, expansion_of(model).total_rows).to(device)
        net = RowsLossModel(model, cfg.loss, forbidden)
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        net.train()
        names = [r.name for r in ts.regions]
        bounds = ts.region_bounds
        last_loss = float("nan")
        t0, tokens = time.perf_counter(), 0
        for step in range(start, cfg.steps):
            inputs = {k: v.to(device) for k, v in data.batch(step, rank, world).items()}
            labels = inputs["labels"]
            per_tok = net(**inputs)
            valid = labels[:, 1:] != -100
            count = valid.sum()
            loss = per_tok.sum() / count.clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if master is not None:
                master.grads_to_masters()
            optimizer.step()
            if master is not None:
                master.masters_to_model()
            tokens += int(count)
            last_loss = float(loss.detach())
            done = step + 1
            if rank == 0 and (done % cfg.log_every == 0 or done == cfg.steps):
                region = np.searchsorted(bounds, labels[:, 1:][valid].cpu().numpy(), side="right") - 1
                losses = per_tok[valid].detach().cpu().numpy()
                by = {names[r]: float(losses[region == r].mean()) for r in np.unique(region) if 0 <= r < len(names)}
                rate = tokens / max(time.perf_counter() - t0, 1e-9)
                rec = {"step": done, "loss": last_loss, "loss_by_region": by, "target_tokens_per_s": rate}
                say(
                    f"tokenlm: step {done}/{cfg.steps} loss {last_loss:.4f} "
                    + " ".join(f"{k} {v:.3f}" for k, v in sorted(by.items()))
                    + f" ({rate:.0f} target tok/s)"
                )
                with open(out / "log.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
            if done % cfg.save_every == 0 or done == cfg.steps:
                if rank == 0:
                    state = {"step": done, "loss": last_loss, "data_sha256": data_hash, "config": asdict(cfg), "world_size": world}
                    path = _save_checkpoint(out, model, optimizer, state, cfg.keep_checkpoints, master)
                    say(f"tokenlm: checkpoint {path}")
                _barrier(world)
        if rank == 0:
            save_trainable_rows(model, out / "adapter")
            say(f"tokenlm: adapter written to {out / 'adapter'}")
        _barrier(world)
        return {"step": cfg.steps, "loss": last_loss, "adapter": str(out / "adapter"), "out": str(out)}
    finally:
        if own_pg:
            import torch.distributed as dist

            dist.destroy_process_group()
