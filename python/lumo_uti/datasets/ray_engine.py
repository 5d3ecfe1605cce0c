"""The Ray engine: ``tokenize_dataset(..., engine="ray")`` on Ray Data.

A read stage turns the input into rows ``(position, record)``; ``map_batches``
sends them to a pool of ``workers`` actors, each running the ``BatchEncoder``
that the local engine runs (built once per actor from the pickled UTI); the
results stream back to the driver in input order (``preserve_order``), where
the shard writer takes them. So the shards are byte-identical to the local
engine's, for any ``workers`` and ``batch_size``, and for resumed runs.

Every row carries its input position from the reader on, and the reader drops
the rows before ``start``: a resumed run encodes nothing twice. The driver
checks that positions arrive as ``start, start + 1, ...``.

* JSONL: one read task runs the local reader (``JsonlInput.records``) and
  emits its lines in blocks. Not ``ray.data.read_text``: that splits lines at
  every Unicode line boundary (U+2028, U+0085, ..., which JSON strings may
  hold unescaped), fails the whole read at one invalid UTF-8 byte, judges
  blank lines by Unicode whitespace and numbers nothing, so its documents and
  positions would differ from the local engine's.
* Parquet: one read task per run of row groups of a file (files in sorted name
  order), from the files' metadata, so a resumed run does not read the row
  groups before ``start``. Rows become Python objects as in the local reader
  (``to_pylist``) and travel pickled, so files with differing schemas never
  meet in one Arrow batch. Not ``ray.data.read_parquet``: it reads whole files
  without row numbers, so a resumed run would re-encode the start of its file.
* ``datasets.Dataset``: its Arrow table from ``start`` on, with a position
  column, through ``ray.data.from_arrow``: what ``ray.data.from_huggingface``
  does for a local dataset, without its detour that re-loads a Hub dataset by
  name and may read the Hub's Parquet conversion instead (partial for large
  datasets). The table goes through Ray's object store.

Resources: each actor takes ``threads`` CPUs and, with a ``cuda`` device, one
GPU (media are still decoded on its CPU); reading takes none, so actors that
fill the machine cannot starve it. A dead actor (segfault, OOM kill) is
restarted and its batch retried twice, then the run fails (resumable): Ray
Data's default, forever, would loop on a document that kills its process.

On a cluster (``RAY_ADDRESS``), every node needs ``lumo_uti`` installed and the
input file and relative media paths at the same path (shared storage).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import pickle
import warnings
from typing import Any, Iterator

import numpy as np

from .encoding import BatchEncoder, Encoded, EncodeSettings
from .inputs import PARQUET_BATCH_ROWS, DatasetInput
from .local_engine import batched

POSITION = "__lumo_position"  # the input position of each row (int64)
RECORD = "__lumo_record"  # the record as the local reader yields it, pickled
RESULT = "__lumo_result"  # an actor's Encoded, pickled
# Ray Data restarts a dead actor and retries its task forever by default: a document that kills the process
# (a segfault, an OOM kill) would loop. A few tries ride out a lost node; then the run fails (resumable).
ACTOR_RETRIES = {"max_restarts": 2, "max_task_retries": 2}
BATCHES_PER_BLOCK = 4  # rows of a read block: this many encode batches
READ_TASK_ROWS = 1 << 16  # Parquet: row groups of a file are read in tasks of about this many rows
HF_MAX_BLOCKS = 4096  # datasets.Dataset: at most this many blocks in the object store


def run_ray(inp: DatasetInput, start: int, uti: Any, settings: EncodeSettings, *, workers: int, batch_size: int,
            threads: int, device: str) -> Iterator[Encoded]:
    """``Encoded`` results in input order for the documents of ``inp`` from position ``start`` on.

    Uses the running Ray instance if this process has one, else ``ray.init()``:
    the cluster at ``RAY_ADDRESS`` when set, else a new local instance (shut
    down at the end; one started by the caller is left running). ``workers``
    actors, each with ``threads`` torch threads and, for ``cuda``, one GPU.

    Raises:
        ValueError: Ray is not installed; a device ``cuda:N`` other than ``cuda:0``
            (each actor sees only its own GPU); a new local instance too small
            for ``workers x threads`` CPUs (or ``workers`` GPUs).
        RuntimeError: a Ray task or actor failed beyond one document (a
            document's own failure is its ``Encoded.error``).
    """
    try:
        import ray
        import ray.data
    except ImportError:
        raise ValueError("the ray engine needs Ray: pip install 'lumoomni[ray]'") from None
    device = str(device)
    if device.startswith("cuda") and device not in ("cuda", "cuda:0"):
        raise ValueError(f"ray engine: expected device 'cuda' (each actor gets one GPU of its own), got {device!r}")
    total = inp.known_length()
    if total is not None and start >= total:
        return  # a resumed run with nothing left: no actors to start
    started_here = not ray.is_initialized()
    if started_here:
        ray.init()  # RAY_ADDRESS, when set, names the cluster; else a local instance
        if not os.environ.get("RAY_ADDRESS"):
            try:
                _check_fits(ray.cluster_resources(), workers, threads, device)
            except ValueError:
                ray.shutdown()
                raise
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False  # tokenize_dataset prints its own progress
    batches = None
    try:
        block_rows = batch_size * BATCHES_PER_BLOCK
        ds = _read(ray, inp, start, block_rows)
        base_dir = str(inp.base_dir) if inp.base_dir is not None else None
        with warnings.catch_warnings():  # Ray >= 2.5x: retry limits have no named parameter yet
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = ds.map_batches(
                _EncodeActor, fn_constructor_args=(uti, settings, inp.kind, base_dir, threads),
                batch_size=batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=threads, num_gpus=1 if device.startswith("cuda") else 0, **ACTOR_RETRIES)
        batches = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2))
        expected = start
        while True:
            try:
                table = next(batches)
            except StopIteration:
                break
            except Exception as e:  # RayTaskError, ActorDiedError, UserCodeException, ...
                raise RuntimeError(f"ray engine: a Ray task or actor failed (not one document): {_summary(e)}; "
                                   "finished shards are kept: rerun with --resume") from e
            for result in _from_arrow(table):
                if result.position != expected:
                    raise RuntimeError(f"ray engine: expected document {expected}, got {result.position} "
                                       "(results out of input order)")
                expected += 1
                yield result
        if total is not None and expected != total:
            raise RuntimeError(f"ray engine: the input has {total} documents, the run gave results up to {expected}")
    finally:
        if batches is not None and hasattr(batches, "close"):
            batches.close()  # stops the streaming executor and releases its actors
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
        if started_here:
            ray.shutdown()


def _check_fits(resources: dict[str, float], workers: int, threads: int, device: str) -> None:
    """A local instance cannot grow: refuse actors it cannot all place (Ray Data would wait for them forever)."""
    needs = [("CPU", workers * threads, f"{workers} workers x {threads} threads")]
    if device.startswith("cuda"):
        needs.append(("GPU", workers, f"{workers} workers on {device}"))
    for kind, n, who in needs:
        have = resources.get(kind, 0)
        if n > have:
            raise ValueError(f"ray engine: {who} need {n} {kind}s, the local Ray instance has {have:g} "
                             "(use fewer workers or threads, or a cluster: RAY_ADDRESS)")


class _EncodeActor:
    """One Ray actor: a ``BatchEncoder`` built once; rows ``(POSITION, record)`` -> result rows."""

    def __init__(self, uti: Any, settings: EncodeSettings, input_kind: str, base_dir: str | None, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.encoder = BatchEncoder(uti, settings, input_kind, base_dir)

    def __call__(self, batch: Any) -> Any:
        return _to_arrow(self.encoder(_records(batch)))


def _records(batch: Any) -> list[tuple[int, Any]]:
    """A read block or batch (Arrow) -> ``(position, record)`` as the local reader yields them."""
    positions = batch.column(POSITION).to_pylist()
    if RECORD in batch.column_names:
        records = [pickle.loads(r) for r in batch.column(RECORD).to_pylist()]
    else:  # a datasets.Dataset's own columns: rows as its Python formatting gives them (media undecoded)
        records = batch.drop_columns([POSITION]).to_pylist()
    return list(zip(positions, records))


def _to_arrow(results: list[Encoded]) -> Any:
    """Results as rows ``POSITION`` + ``RESULT`` (the pickled ``Encoded``, whatever fields it has)."""
    import pyarrow as pa

    return pa.table({POSITION: pa.array([r.position for r in results], pa.int64()),
                     RESULT: pa.array([pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in results],
                                      pa.large_binary())})


def _from_arrow(table: Any) -> Iterator[Encoded]:
    for blob in table.column(RESULT).to_pylist():
        yield pickle.loads(blob)


def _summary(e: BaseException) -> str:
    """The root cause of a Ray error, in one line (Ray's own text carries the whole remote traceback)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        e = cause
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    return f"{type(e).__name__}: {text if len(text) <= 400 else text[:400] + '...'}"


# -- reading ---------------------------------------------------------------------------------
def _read(ray: Any, inp: DatasetInput, start: int, block_rows: int) -> Any:
    """The input as a Ray Dataset of ``POSITION`` + (``RECORD`` | a dataset's columns), from ``start`` on."""
    if inp.kind == "hf":
        return _read_hf(ray, inp, start, block_rows)
    tasks = _jsonl_tasks(inp, start, block_rows) if inp.kind == "jsonl" else _parquet_tasks(inp, start, block_rows)
    # Reading takes no CPU slot: actors sized to the cluster's CPUs would otherwise starve it (a deadlock).
    named = "num_cpus" in inspect.signature(ray.data.read_datasource).parameters  # Ray >= 2.4x
    return ray.data.read_datasource(_datasource(tasks), **({"num_cpus": 0} if named else
                                                           {"ray_remote_args": {"num_cpus": 0}}))


def _jsonl_tasks(inp: Any, start: int, block_rows: int) -> list[tuple[Any, dict]]:
    return [((_read_jsonl, inp, start, block_rows), {"num_rows": None, "size_bytes": inp.path.stat().st_size,
                                                     "input_files": [str(inp.path)]})]


def _read_jsonl(inp: Any, start: int, block_rows: int) -> Iterator[Any]:
    for chunk in batched(inp.records(start), block_rows):
        yield _record_block(chunk)


def _parquet_tasks(inp: Any, start: int, block_rows: int) -> list[tuple[Any, dict]]:
    """One task per run of row groups of one file (about ``READ_TASK_ROWS`` rows), from ``start`` on."""
    import pyarrow.parquet as pq

    tasks = []
    position = 0
    for file in inp.files:
        meta = pq.ParquetFile(file).metadata
        groups: list[int] = []
        first = rows = 0
        for group in range(meta.num_row_groups):
            n = meta.row_group(group).num_rows
            if position + n > start:  # resume: row groups wholly before start are not read
                if not groups:
                    first = position
                groups.append(group)
                rows += n
            position += n
            if rows >= READ_TASK_ROWS or (groups and group == meta.num_row_groups - 1):
                skip = max(start - first, 0)
                args = (_read_parquet, str(file), groups, first, skip, block_rows)
                tasks.append((args, {"num_rows": rows - skip, "size_bytes": None, "input_files": [str(file)]}))
                groups, rows = [], 0
    return tasks


def _read_parquet(file: str, groups: list[int], first: int, skip: int, block_rows: int) -> Iterator[Any]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(file)

    def rows() -> Iterator[tuple[int, Any]]:
        position = first
        for group in groups:  # as ParquetInput.records does, so the rows are the same Python objects
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group]):
                if position + batch.num_rows <= first + skip:
                    position += batch.num_rows
                    continue
                for row in batch.to_pylist():
                    if position >= first + skip:
                        yield position, row
                    position += 1

    for chunk in batched(rows(), block_rows):
        yield _record_block(chunk)


def _record_block(chunk: list[tuple[int, Any]]) -> Any:
    import pyarrow as pa

    return pa.table({POSITION: pa.array([p for p, _ in chunk], pa.int64()),
                     RECORD: pa.array([pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for _, r in chunk],
                                      pa.large_binary())})


def _read_hf(ray: Any, inp: Any, start: int, block_rows: int) -> Any:
    import pyarrow as pa

    dataset = inp.dataset
    if POSITION in dataset.column_names:
        raise ValueError(f"ray engine: the dataset has a column {POSITION!r}, a name this engine reserves")
    n = len(dataset)
    table = dataset.with_format("arrow")[start:] if start < n else dataset.with_format("arrow")[:0]
    table = table.append_column(POSITION, pa.array(np.arange(start, start + table.num_rows), pa.int64()))
    step = max(block_rows, -(-table.num_rows // HF_MAX_BLOCKS))
    slices = [table.slice(i, step) for i in range(0, table.num_rows, step)] or [table]
    return ray.data.from_arrow(slices)


def _datasource(tasks: list[tuple[tuple, dict]]) -> Any:
    """A ``ray.data.Datasource`` whose read tasks call ``fn(*args)`` for each ``((fn, *args), metadata)``."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    names = {f.name for f in dataclasses.fields(BlockMetadata)}

    def metadata(fields: dict) -> Any:
        given = {"schema": None, "exec_stats": None, **fields}  # `schema` only in older Ray
        return BlockMetadata(**{k: v for k, v in given.items() if k in names})

    class _Source(Datasource):
        def get_name(self) -> str:
            return "LumoInput"

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, **_: Any) -> list[Any]:
            return [ReadTask(functools.partial(*call), metadata(fields)) for call, fields in tasks]

    return _Source()

