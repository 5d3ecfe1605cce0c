"""``lumo tokenlm ...``: train the new rows of a token LM, merge an adapter.

Registered through the ``lumo.commands`` entry points (pyproject.toml); torch and transformers are
imported inside the commands only, so ``lumo --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``tokenlm`` (with ``train`` and ``merge``) to the ``lumo`` command."""
    p = subparsers.add_parser(
        "tokenlm",
        help="Track B token LM: train the new rows, merge an adapter (docs/token_lm.md)",
        description="Track B token LM: a Qwen3 model expanded by the UTI token space, trained rows-only.",
    )
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    sub = p.add_subparsers(dest="tokenlm_command", metavar="SUBCOMMAND")

    t = sub.add_parser(
        "train",
        help="train the new embedding/LM-head rows on UTI documents or task records",
        description="Train only the new rows of a base causal LM expanded by the token space. "
        "Runs on one process or under torchrun (DDP). Data: JSONL, or a token-shard folder "
        "from `lumo tokenize-dataset` (packed into --seq-len windows); see docs/token_lm.md.",
    )
    t.add_argument("--base", required=True, metavar="DIR", help="local Hugging Face model directory (e.g. Qwen3-8B-Base)")
    t.add_argument("--bundle", metavar="DIR", help="UTI bundle directory (default: embedded bundle)")
    t.add_argument("--data", required=True, metavar="PATH",
                   help="JSONL of documents or task records (I2T/A2T/T2I/T2A), or a token-shard folder (manifest.json)")
    t.add_argument("--out", required=True, metavar="DIR", help="output directory (checkpoints, log.jsonl, adapter/)")
    t.add_argument("--steps", type=int, default=100, help="optimizer steps in total (default 100)")
    t.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    t.add_argument("--batch-size", type=int, default=4, help="sequences per step per process (default 4)")
    t.add_argument("--seq-len", type=int, default=512,
                   help="tokens per sequence; longer JSONL examples are cut, shard documents are packed (default 512)")
    t.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps (default 50)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/latest.json")
    t.add_argument("--seed", type=int, default=0, help="data order and init noise seed (default 0)")
    t.add_argument("--log-every", type=int, default=10, help="log loss per region every N steps (default 10)")
    t.add_argument("--noise-std", type=float, default=0.0, help="init noise, in units of the base rows' std (default 0)")
    t.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    t.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model dtype; 16-bit runs keep float32 master copies of the new rows (default float32)")
    t.add_argument("--loss", default="fused", choices=["fused", "materialized"],
                   help="fused: cross entropy from the hidden states without building the [tokens x vocab] "
                        "logits (default); materialized: from the model's logits (same loss, far more memory)")
    from .tasks import LOSS_ON  # torch-free

    t.add_argument("--loss-on", default="all", choices=list(LOSS_ON),
                   help="targets by token kind: all, new (UTI rows), image / audio (their spans' tokens), text "
                        "(default all; task records keep their own target mask within it)")
    t.set_defaults(func=_cmd_train)

    m = sub.add_parser(
        "merge",
        help="write a plain Hugging Face checkpoint with the full expanded tables",
        description="Patch-load an adapter onto its base (every hash checked) and save a plain HF checkpoint.",
    )
    m.add_argument("--base", required=True, metavar="DIR", help="local Hugging Face model directory the adapter was trained on")
    m.add_argument("--adapter", required=True, metavar="DIR", help="adapter directory (adapter.safetensors, manifest.json, token_space.json)")
    m.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist unless --overwrite)")
    m.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    m.set_defaults(func=_cmd_merge)


def _cmd_train(args: argparse.Namespace) -> int:
    from .packaging import AdapterMismatchError
    from .training import TrainConfig, train

    cfg = TrainConfig(
        base=args.base, data=args.data, out=args.out, bundle=args.bundle, steps=args.steps, lr=args.lr,
        batch_size=args.batch_size, seq_len=args.seq_len, save_every=args.save_every, resume=args.resume,
        seed=args.seed, log_every=args.log_every, weight_decay=args.weight_decay, noise_std=args.noise_std,
        dtype=args.dtype, loss_on=args.loss_on, loss=args.loss,
    )
    try:
        result = train(cfg)
    except (ValueError, FileExistsError, AdapterMismatchError, OSError) as e:
        print(f"lumo tokenlm train: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from transformers import AutoModelForCausalLM

    from .packaging import AdapterMismatchError, merge, patch_load

    try:
        base = AutoModelForCausalLM.from_pretrained(args.base)
        model = patch_load(base, args.adapter)
        path = merge(model, args.out, overwrite=args.overwrite)
    except (ValueError, FileExistsError, AdapterMismatchError, OSError) as e:
        print(f"lumo tokenlm merge: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(path)}))
    return 0
