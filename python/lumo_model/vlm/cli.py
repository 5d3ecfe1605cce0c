"""``lumo vlm train-stage1`` and ``lumo vlm ablate`` (see docs/vlm.md).

Heavy imports (torch, transformers) happen inside the commands only, so that
``lumo --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["load_towers", "register"]


def register(subparsers: Any) -> None:
    """Add the ``vlm`` command group to the ``lumo`` parser."""
    vlm = subparsers.add_parser("vlm", help="Track A VLM: connector training (stage 1) and its ablation",
                                description="Track A VLM: connector training (stage 1) and its ablation")
    sub = vlm.add_subparsers(dest="vlm_command", metavar="VLM_COMMAND", title="vlm commands")

    sp = sub.add_parser("train-stage1", help="train the connector between frozen text and vision towers",
                        description="Train the connector (resampler + projector) on image-caption pairs; "
                                    "resumes from --out when it holds a checkpoint.")
    sp.set_defaults(func=_cmd_train)
    sp.add_argument("--text", required=True, metavar="DIR", help="Hugging Face causal LM folder (Qwen3)")
    sp.add_argument("--vision", required=True, metavar="DIR", help="SigLIP / SigLIP2 folder (vision or full model)")
    sp.add_argument("--data", required=True, metavar="FILE", help='JSONL: {"image": PATH, "prompt": str, "caption": str}')
    sp.add_argument("--out", required=True, metavar="DIR", help="checkpoint folder (resumed if it holds one)")
    sp.add_argument("--steps", type=int, default=1000)
    sp.add_argument("--batch-size", type=int, default=8, help="per process")
    sp.add_argument("--lr", type=float, default=1e-3)
    sp.add_argument("--warmup", type=int, default=50, help="warmup steps")
    sp.add_argument("--weight-decay", type=float, default=0.0)
    sp.add_argument("--grad-clip", type=float, default=1.0)
    sp.add_argument("--save-every", type=int, default=200)
    sp.add_argument("--log-every", type=int, default=10)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--max-seq-len", type=int, default=512)
    sp.add_argument("--image-size", type=int, help="resize images to this square size (default: from the vision config)")
    sp.add_argument("--num-latents", type=int, default=64)
    sp.add_argument("--depth", type=int, default=3)
    sp.add_argument("--heads", type=int, default=16)
    sp.add_argument("--kv-heads", type=int, default=4)
    sp.add_argument("--head-dim", type=int, help="default: resampler width / heads")
    sp.add_argument("--flavour", choices=("idefics2", "flamingo"), default="idefics2")
    sp.add_argument("--feature-layer", type=int, help="vision hidden_states index (default: last_hidden_state)")
    sp.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    sp.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast (default: on for CUDA)")

    sp = sub.add_parser("ablate", help="teacher-forced loss with correct, shuffled, zero and noise features",
                        description="Ablation of a stage-1 checkpoint: writes ablation.json and ablation.md; "
                                    "exit status 1 when correct < shuffled < min(zero, noise) fails.")
    sp.set_defaults(func=_cmd_ablate)
    sp.add_argument("--checkpoint", required=True, metavar="DIR", help="a train-stage1 --out folder or one step folder")
    sp.add_argument("--data", required=True, metavar="FILE", help="JSONL as for train-stage1")
    sp.add_argument("--out", metavar="DIR", help="report folder (default: the checkpoint folder)")
    sp.add_argument("--text", metavar="DIR", help="override the text model folder stored in the checkpoint")
    sp.add_argument("--vision", metavar="DIR", help="override the vision model folder stored in the checkpoint")
    sp.add_argument("--batch-size", type=int, default=8)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device")


def load_towers(text_dir: str | Path, vision_dir: str | Path):
    """``(text_model, vision_model)`` from local Hugging Face folders (nothing is downloaded)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    for what, d in (("text", text_dir), ("vision", vision_dir)):
        if not Path(d).is_dir():
            raise FileNotFoundError(f"lumo vlm: --{what} {d} is not a folder")
    text = AutoModelForCausalLM.from_pretrained(str(text_dir), local_files_only=True)
    cfg = AutoConfig.from_pretrained(str(vision_dir), local_files_only=True)
    if cfg.model_type == "siglip":  # full SigLIP: take the vision tower only
        from transformers import SiglipVisionModel as cls
    elif cfg.model_type == "siglip2":
        from transformers import Siglip2VisionModel as cls
    else:
        cls = AutoModel
    vision = cls.from_pretrained(str(vision_dir), local_files_only=True)
    return text, vision


def _vision_geometry(vision: Any, image_size: int | None) -> tuple[int, int | None]:
    cfg = vision.config
    naflex = hasattr(cfg, "num_patches") and not hasattr(cfg, "image_size")
    patch = int(cfg.patch_size)
    if image_size is None:
        image_size = int(round(cfg.num_patches ** 0.5)) * patch if naflex else int(cfg.image_size)
    return image_size, (patch if naflex else None)


def _build(text_dir: str, vision_dir: str, connector_cfg: dict[str, Any] | None, run: dict[str, Any],
           feature_layer: int | None, args_connector: dict[str, Any] | None = None):
    import lumo_uti

    from .collator import VLMCollator
    from .model import LumoVLM
    from .projector import Connector

    text, vision = load_towers(text_dir, vision_dir)
    if connector_cfg is None:
        connector_cfg = dict(vision_dim=int(vision.config.hidden_size), text_dim=int(text.config.hidden_size),
                             **(args_connector or {}))
    connector = Connector.from_config(connector_cfg)
    uti = lumo_uti.load()
    model = LumoVLM(text, vision, connector, uti.token_space, feature_layer=feature_layer)
    image_size, patch = _vision_geometry(vision, run.get("image_size"))
    collator = VLMCollator(uti, num_latents=connector.num_latents, max_seq_len=int(run.get("max_seq_len", 512)),
                           image_size=image_size, patch_size=patch)
    return model, collator, image_size


def _cmd_train(args: argparse.Namespace) -> int:
    from .collator import read_examples
    from .train import Stage1Config, train_stage1

    cfg = Stage1Config(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
                       weight_decay=args.weight_decay, grad_clip=args.grad_clip, save_every=args.save_every,
                       log_every=args.log_every, seed=args.seed, bf16=args.bf16)
    examples = read_examples(args.data)
    run = {"text": str(Path(args.text).resolve()), "vision": str(Path(args.vision).resolve()),
           "max_seq_len": args.max_seq_len, "image_size": args.image_size}
    conn = dict(num_latents=args.num_latents, depth=args.depth, heads=args.heads, kv_heads=args.kv_heads,
                head_dim=args.head_dim, flavour=args.flavour)
    model, collator, image_size = _build(args.text, args.vision, None, run, args.feature_layer, conn)
    run["image_size"] = image_size
    result = train_stage1(model, examples, collator, args.out, cfg, device=args.device, run_info=run,
                          log=lambda s: print(s, file=sys.stderr, flush=True))
    print(json.dumps({"step": result["step"], "final_loss": result["losses"][-1][1] if result["losses"] else None,
                      "coverage": result["coverage"], "out": str(args.out)}, indent=1))
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from .ablate import ablate, write_report
    from .. import checkpoint
    from .collator import read_examples

    ckpt = checkpoint.load(args.checkpoint)
    meta = ckpt.state
    run = dict(meta.get("run", {}))
    text_dir, vision_dir = args.text or run.get("text"), args.vision or run.get("vision")
    if not text_dir or not vision_dir:
        raise FileNotFoundError("lumo vlm ablate: the checkpoint names no text/vision folder; pass --text and --vision")
    model, collator, _ = _build(text_dir, vision_dir, meta["connector"], run, meta.get("feature_layer"))
    model.connector.load_state_dict(ckpt.tensors("connector"))
    report = ablate(model, read_examples(args.data), collator, batch_size=args.batch_size, seed=args.seed,
                    device=args.device, log=lambda s: print(s, file=sys.stderr, flush=True))
    report["checkpoint"] = str(args.checkpoint)
    report["step"] = ckpt.step
    out = Path(args.out) if args.out else Path(args.checkpoint)
    jpath, mpath = write_report(report, out)
    print(json.dumps({"pass": report["pass"], "losses": report["losses"], "json": str(jpath), "markdown": str(mpath)},
                     indent=1))
    return 0 if report["pass"] else 1
