"""``tokenize_dataset``: a corpus -> token shards (see ``lumo_uti.datasets``)."""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Sequence

from .documents import parse_columns
from .encoding import EncodeSettings
from .inputs import open_input
from .progress import RunProgress
from .writer import ShardWriter

ENGINES = ("local", "ray")


def tokenize_dataset(
    source: Any,
    uti: Any = None,
    *,
    out: str | os.PathLike,
    bundle: str | os.PathLike | None = None,
    workers: int = 1,
    shard_docs: int = 10_000,
    engine: str = "local",
    device: str = "cpu",
    resume: bool = False,
    max_errors: int | None = None,
    batch_size: int = 16,
    allow_special: bool = False,
    append_eos: bool = False,
    columns: str | Sequence[str] | None = None,
    max_doc_tokens: int = 1 << 24,
    threads_per_worker: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every document of ``source`` into Megatron indexed shards in ``out``; returns the manifest.

    Args:
        source: a ``.jsonl`` / ``.parquet`` path, a folder of Parquet files or a
            ``datasets`` ``save_to_disk`` folder, or a ``datasets.Dataset``.
        uti: the ``UTI`` to encode with; default ``lumo_uti.load(bundle, device=device)``.
        out: output folder (``shard_NNNNNN.bin/.idx``, ``manifest.json``, ``errors.jsonl``).
        workers: processes (local engine) or actors (Ray); the bytes do not depend on it.
        shard_docs: input documents per shard.
        engine: ``local`` (a process pool) or ``ray`` (Ray Data; ``RAY_ADDRESS`` picks the cluster).
        device: where the codecs run (``cuda`` needs a bundle loaded there).
        resume: continue an unfinished run in ``out`` (refused if its bundle, input or settings differ).
        max_errors: stop (``TooManyErrors``) once more documents than this have failed.
        batch_size: documents per encode call (media of a batch go through each codec together).
        allow_special: encode special-token text such as ``<|endoftext|>`` as the special
            (off: scraped text never turns into control tokens).
        append_eos: end every document with ``<|endoftext|>``.
        columns: for tables, ``"image:jpg,text:caption"``: the columns forming each document, in order
            (default: a ``document`` column in the JSON document form).
        max_doc_tokens: documents longer than this are recorded as errors.
        threads_per_worker: torch / kernel threads in each worker.
    """
    from .. import load

    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {ENGINES}, got {engine!r}")
    for name, value in (("workers", workers), ("batch_size", batch_size), ("shard_docs", shard_docs),
                        ("threads_per_worker", threads_per_worker), ("max_doc_tokens", max_doc_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if max_errors is not None and max_errors < 0:
        raise ValueError(f"max_errors: expected >= 0, got {max_errors}")
    _check_device(device)
    inp = open_input(source)
    settings = EncodeSettings(allow_special=allow_special, append_eos=append_eos,
                              columns=tuple(parse_columns(columns)) if columns else None, max_doc_tokens=max_doc_tokens)
    if uti is None:
        uti = load(bundle, device=device)
    ts = uti.token_space
    identity = {
        "token_space": {"name": ts.name, "fingerprint": ts.fingerprint},
        "tokenizer": ts.tokenizer,
        "codecs": ts.codecs,
        "input": inp.identity,
        "settings": settings.to_json() | {"device": str(device)},
    }
    writer = ShardWriter(out, identity, shard_docs, resume=resume, max_errors=max_errors)
    if writer.finished is not None:
        return writer.finished
    writer.set_regions([r.name for r in ts.regions])
    start = writer.next_position
    base_dir = str(inp.base_dir) if inp.base_dir is not None else None
    bar = RunProgress(inp.known_length(), progress, start_position=start)
    if engine == "local":
        from .local_engine import run_local

        results = run_local(inp.records(start), uti, settings, inp.kind, base_dir, workers=workers,
                            batch_size=batch_size, threads=threads_per_worker)
    else:
        from .ray_engine import run_ray

        results = run_ray(inp, start, uti, settings, workers=workers, batch_size=batch_size,
                          threads=threads_per_worker, device=device)
    started = time.time()
    try:
        for result in results:
            writer.add(result)
            bar.add(0 if result.ids is None else len(result.ids), result.images, result.audio_seconds,
                    result.error is not None)
    except BaseException:
        writer.close()
        raise
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()
    bar.close()
    run_info = {"engine": engine, "workers": workers, "batch_size": batch_size, "threads_per_worker": threads_per_worker,
                "resumed_at": start, "started": started, "seconds": time.time() - started,
                "host": platform.node(), **{k: round(v, 3) for k, v in bar.rates().items()}}
    return writer.finish(run_info)


def _check_device(device: str) -> None:
    """``ValueError`` for a device string torch does not know or a GPU this machine does not have."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch sees no CUDA device here (torch {torch.__version__})")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
