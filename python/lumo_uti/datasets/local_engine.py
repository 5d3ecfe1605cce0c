"""The local engine: encode batches in this process or in a pool of worker processes.

Workers start with ``forkserver`` (``spawn`` where that is missing), never a
plain ``fork``: a child forked from a parent that has already run multi-threaded
torch or our kernels can hang in the OpenMP runtime. Each worker loads the UTI
once (it pickles as a reference to its bundle) and runs ``threads`` threads
(default 1: the workers are the parallelism). At most ``2 x workers`` batches
are in flight, so reading never runs ahead of encoding and memory stays flat.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import Any, Iterable, Iterator

from .encoding import BatchEncoder, Encoded, EncodeSettings

_worker_encoder: BatchEncoder | None = None


def batched(records: Iterable[tuple[int, Any]], size: int) -> Iterator[list[tuple[int, Any]]]:
    it = iter(records)
    while batch := list(islice(it, size)):
        yield batch


def run_local(records: Iterable[tuple[int, Any]], uti: Any, settings: EncodeSettings, input_kind: str,
              base_dir: str | None, *, workers: int, batch_size: int, threads: int) -> Iterator[Encoded]:
    """``Encoded`` results in input order for ``records`` (``(position, record)`` pairs)."""
    if workers <= 1:
        yield from _run_here(records, uti, settings, input_kind, base_dir, batch_size, threads)
        return
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method), initializer=_init_worker,
                               initargs=(uti, settings, input_kind, base_dir, threads))
    pending: deque = deque()
    try:
        for batch in batched(records, batch_size):
            pending.append(pool.submit(_encode_in_worker, batch))
            while len(pending) >= 2 * workers:
                yield from _result(pending.popleft())
        while pending:
            yield from _result(pending.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _result(future: Any) -> list[Encoded]:
    try:
        return future.result()
    except BrokenProcessPool as e:
        raise RuntimeError(f"a worker process died ({e}); finished shards are kept: rerun with --resume") from None


def _run_here(records, uti, settings, input_kind, base_dir, batch_size, threads) -> Iterator[Encoded]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        encoder = BatchEncoder(uti, settings, input_kind, base_dir)
        for batch in batched(records, batch_size):
            yield from encoder(batch)
    finally:
        torch.set_num_threads(before)


def _init_worker(uti: Any, settings: EncodeSettings, input_kind: str, base_dir: str | None, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    global _worker_encoder
    _worker_encoder = BatchEncoder(uti, settings, input_kind, base_dir)


def _encode_in_worker(batch: list[tuple[int, Any]]) -> list[Encoded]:
    return _worker_encoder(batch)
