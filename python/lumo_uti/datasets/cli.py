"""``lumo tokenize-dataset`` and ``lumo shards inspect`` (registered through the ``lumo.commands`` entry points)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``tokenize-dataset`` and ``shards`` to the ``lumo`` command."""
    t = subparsers.add_parser(
        "tokenize-dataset",
        help="encode a corpus (JSONL, Parquet, a datasets folder) into token shards (docs/datasets.md)",
        description="Encode every document of INPUT with a bundle into Megatron indexed shards "
        "(DIR/shard_NNNNNN.bin/.idx, manifest.json, errors.jsonl). The bytes do not depend on --workers, "
        "--batch-size, --engine or on how often the run was killed and resumed.",
    )
    t.add_argument("input", metavar="INPUT", help="a .jsonl file, a .parquet file or folder, or a datasets save_to_disk folder")
    t.add_argument("--out", required=True, metavar="DIR", help="output folder")
    t.add_argument("--bundle", help="bundle directory (default: the embedded bundle)")
    t.add_argument("--workers", type=int, default=1, help="worker processes / Ray actors (default 1)")
    t.add_argument("--shard-docs", type=int, default=10_000, help="input documents per shard (default 10000)")
    t.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: a process pool (default); ray: Ray Data (RAY_ADDRESS picks the cluster)")
    t.add_argument("--device", default="cpu", help="where the codecs run, e.g. cuda (default cpu)")
    t.add_argument("--resume", action="store_true", help="go on with an unfinished run in DIR")
    t.add_argument("--max-errors", type=int, metavar="N", help="stop once more than N documents have failed")
    t.add_argument("--batch-size", type=int, default=16, help="documents per encode call (default 16)")
    t.add_argument("--columns", metavar="KIND:COL,...",
                   help="tables: the columns forming a document, in order, e.g. image:jpg,text:caption "
                   "(default: a 'document' column)")
    t.add_argument("--allow-special", action="store_true",
                   help="encode special-token text such as <|endoftext|> as the special (default: plain text)")
    t.add_argument("--append-eos", action="store_true", help="end every document with <|endoftext|>")
    t.add_argument("--max-doc-tokens", type=int, default=1 << 24,
                   help="longer documents are recorded as errors (default 16777216)")
    t.add_argument("--threads-per-worker", type=int, default=1, help="torch/kernel threads per worker (default 1)")
    t.add_argument("--quiet", action="store_true", help="no progress line")
    t.set_defaults(func=_cmd_tokenize)

    s = subparsers.add_parser("shards", help="look at token shards: lumo shards inspect DIR",
                              description="Token-shard folders written by lumo tokenize-dataset.")
    s.set_defaults(func=lambda args: (s.print_help(), 2)[1])
    sub = s.add_subparsers(dest="shards_command", metavar="SUBCOMMAND")
    i = sub.add_parser("inspect", help="counts, blocks, fingerprints, errors of a shard folder",
                       description="Summarise a token-shard folder (finished or in progress).")
    i.add_argument("dir", metavar="DIR")
    i.add_argument("--verify", action="store_true", help="also check every file's sha256 against the manifest")
    i.add_argument("--errors", type=int, default=5, metavar="N", help="show the first N errors (default 5)")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    i.set_defaults(func=_cmd_inspect)


def _cmd_tokenize(args: argparse.Namespace) -> int:
    from ..errors import TooManyErrors, UTIError
    from .pipeline import tokenize_dataset

    try:
        manifest = tokenize_dataset(
            args.input, out=args.out, bundle=args.bundle, workers=args.workers, shard_docs=args.shard_docs,
            engine=args.engine, device=args.device, resume=args.resume, max_errors=args.max_errors,
            batch_size=args.batch_size, allow_special=args.allow_special, append_eos=args.append_eos,
            columns=args.columns, max_doc_tokens=args.max_doc_tokens, threads_per_worker=args.threads_per_worker,
            progress=not args.quiet,
        )
    except TooManyErrors as e:
        print(f"lumo tokenize-dataset: stopped: {e}; finished shards are kept (fix the input, then --resume "
              "with a larger --max-errors)", file=sys.stderr)
        return 1
    except (UTIError, ValueError, TypeError, OSError) as e:
        print(f"lumo tokenize-dataset: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a worker or actor died: finished shards are kept
        print(f"lumo tokenize-dataset: failed: {e}", file=sys.stderr)
        return 1
    totals = manifest["totals"]
    run = manifest.get("run", {})
    print(json.dumps({"out": args.out, **totals, "seconds": run.get("seconds")}))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .shards import TokenShards
    from .writer import ERRORS, JOURNAL, ShardFolderError

    folder = Path(args.dir)
    if not (folder / "manifest.json").is_file() and (folder / JOURNAL).is_file():
        lines = (folder / JOURNAL).read_text().splitlines()
        done = [json.loads(x) for x in lines[1:] if x.strip().endswith("}")]
        summary = {"status": "unfinished", "shards_done": len(done), "documents_written": sum(s["documents"] for s in done),
                   "documents_errored": sum(len(s["errors"]) for s in done), "tokens": sum(s["tokens"] for s in done)}
        print(json.dumps(summary) if args.json else "\n".join(f"{k:<20}{v}" for k, v in summary.items()))
        return 0
    try:
        shards = TokenShards(folder, verify=args.verify)
    except (ShardFolderError, ValueError, OSError) as e:
        print(f"lumo shards inspect: {e}", file=sys.stderr)
        return 2
    m = shards.manifest
    ident, totals = m["identity"], m["totals"]
    errors = []
    if (folder / ERRORS).is_file():
        with open(folder / ERRORS) as f:
            for line in f:
                if len(errors) >= args.errors:
                    break
                errors.append(json.loads(line))
    lengths = shards.lengths
    summary = {
        "status": "finished", "token_space": ident["token_space"], "tokenizer_hash": ident["tokenizer"].get("hash"),
        "codecs": {k: v.get("weights_hash") for k, v in ident["codecs"].items()}, "input": ident["input"],
        "settings": ident["settings"], **totals,
        "doc_tokens": {"min": int(lengths.min()) if len(lengths) else 0, "mean": float(lengths.mean()) if len(lengths) else 0.0,
                       "max": int(lengths.max()) if len(lengths) else 0},
        "verified": bool(args.verify), "first_errors": errors,
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"folder              {folder}  (finished, {totals['shards']} shards)")
    print(f"token space         {ident['token_space']['name']}  {ident['token_space']['fingerprint']}")
    print(f"tokenizer           {ident['tokenizer'].get('kind')}  {ident['tokenizer'].get('hash')}")
    for modality, h in summary["codecs"].items():
        print(f"codec {modality:<14}{ident['codecs'][modality].get('kind')}  {h}")
    print(f"input               {ident['input'].get('kind')}  {ident['input'].get('path', ident['input'].get('origin', ''))}")
    print(f"settings            {json.dumps(ident['settings'])}")
    print(f"documents           {totals['documents_in']} in = {totals['documents_written']} written + "
          f"{totals['documents_errored']} errored")
    d = summary["doc_tokens"]
    print(f"tokens              {totals['tokens']}  (per document min {d['min']}, mean {d['mean']:.1f}, max {d['max']})")
    for block, count in totals["tokens_per_block"].items():
        print(f"  {block:<18}{count}")
    if args.verify:
        print("verified            every file matches its sha256")
    for e in errors:
        print(f"error               position {e['position']}: {e['reason']}")
    return 0
