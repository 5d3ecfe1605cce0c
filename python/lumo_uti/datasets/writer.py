"""Shard files, the run journal and the manifest of a token-shard folder.

Shard ``k`` holds the documents at input positions ``[k * shard_docs, (k + 1)
* shard_docs)`` that encoded (errored ones are left out and listed in
``errors.jsonl``), so shard boundaries do not depend on workers, batches or
engines. A shard's ``.bin`` streams to a temp file while its documents arrive
(in input order) and is renamed into place when the shard is complete; then
its ``.idx``; then one line in ``progress.jsonl`` (the journal) records it with
its hashes, counts and errors. ``--resume`` trusts exactly the shards the
journal lists. At the end ``manifest.json`` and ``errors.jsonl`` are written
(atomically) and the journal is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes, atomic_write_text
from ..errors import ShardFolderError, TooManyErrors
from .encoding import Encoded
from .indexed import index_bytes

SCHEMA = "lumo-token-shards"
SCHEMA_VERSION = 1
JOURNAL = "progress.jsonl"
MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"


def shard_name(k: int) -> str:
    return f"shard_{k:06d}"


class ShardWriter:
    """Receives ``Encoded`` results in input order and writes shards, journal and manifest.

    Args:
        out: the output folder.
        identity: what the bytes depend on (token space, input, settings); a
            resumed run must have the same.
        shard_docs: input documents per shard.
        resume: continue the journal's run (``ShardFolderError`` if the folder
            holds another run, or nothing to resume is fine: starts fresh).
        max_errors: stop with ``TooManyErrors`` past this many failed documents.
    """

    def __init__(self, out: str | os.PathLike, identity: dict[str, Any], shard_docs: int, *, resume: bool,
                 max_errors: int | None = None):
        if shard_docs < 1:
            raise ValueError(f"shard_docs: expected >= 1, got {shard_docs}")
        self.out = Path(out)
        self.identity = json.loads(json.dumps(identity))  # canonical: tuples -> lists
        self.shard_docs = shard_docs
        self.max_errors = max_errors
        self.done: list[dict[str, Any]] = []  # journal entries of finished shards, in order
        self.finished: dict[str, Any] | None = None  # the manifest, when resuming a run that had finished
        self._journal = None
        self._open_folder(resume)
        self.next_position = len(self.done) * shard_docs
        self.errors_so_far = sum(len(s["errors"]) for s in self.done)
        self._file = None
        self._shard: dict[str, Any] | None = None

    # -- folder state ----------------------------------------------------------------------
    def _open_folder(self, resume: bool) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        journal, manifest = self.out / JOURNAL, self.out / MANIFEST
        for stale in self.out.glob(".*.tmp"):  # temp files of a killed run
            if stale.name.startswith((".shard_", f".{JOURNAL}.", f".{MANIFEST}.", f".{ERRORS}.")):
                stale.unlink(missing_ok=True)
        if manifest.is_file():
            previous = json.loads(manifest.read_text())
            if not resume:
                raise ShardFolderError(f"{self.out} already holds finished shards (manifest.json); use a new --out")
            self._check_same(previous.get("identity"))
            self.finished = previous
            return
        if journal.is_file():
            lines = journal.read_text().splitlines()
            header = json.loads(lines[0]) if lines else {}
            if not resume:
                raise ShardFolderError(f"{self.out} holds an unfinished run ({JOURNAL}); add --resume to go on, "
                                       "or use a new --out")
            self._check_same(header.get("identity"))
            if header.get("shard_docs") != self.shard_docs:
                raise ShardFolderError(f"{self.out} was started with shard_docs {header.get('shard_docs')}, "
                                       f"not {self.shard_docs}")
            for line in lines[1:]:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut by a kill: its shard is redone
                if entry.get("shard") != len(self.done) or not self._files_intact(entry):
                    break
                self.done.append(entry)
            self._rewrite_journal(header)
            return
        if any(self.out.glob("shard_*")):
            raise ShardFolderError(f"{self.out} holds shard files but no {JOURNAL} or {MANIFEST}; use a new --out")
        self._rewrite_journal({"schema": SCHEMA, "version": SCHEMA_VERSION, "identity": self.identity,
                               "shard_docs": self.shard_docs})

    def _check_same(self, previous: Any) -> None:
        if previous != self.identity:
            differ = _diff(previous or {}, self.identity)
            raise ShardFolderError(f"{self.out} was made with another bundle, input or settings "
                                   f"(differs in: {', '.join(differ)}); use a new --out")

    def _files_intact(self, entry: dict[str, Any]) -> bool:
        if entry["documents"] == 0:
            return True
        bin_path, idx_path = self.out / entry["bin"], self.out / entry["idx"]
        return bin_path.is_file() and idx_path.is_file() and bin_path.stat().st_size == 4 * entry["tokens"]

    def _rewrite_journal(self, header: dict[str, Any]) -> None:
        text = "".join(json.dumps(x) + "\n" for x in [header, *self.done])
        atomic_write_text(self.out / JOURNAL, text)
        self._journal = open(self.out / JOURNAL, "a")

    # -- writing ---------------------------------------------------------------------------
    def add(self, result: Encoded) -> None:
        """The next document in input order (``result.position`` must be ``next_position``)."""
        if result.position != self.next_position:
            raise RuntimeError(f"shard writer: expected document {self.next_position}, got {result.position}")
        if self._shard is None:
            self._start_shard(result.position // self.shard_docs)
        shard = self._shard
        if result.error is not None:
            shard["errors"].append({"position": result.position, "reason": result.error})
            self.errors_so_far += 1
        else:
            data = memoryview(np.ascontiguousarray(result.ids, dtype="<i4")).cast("B")
            self._file.write(data)
            self._digest.update(data)
            self._lengths.append(len(result.ids))
            shard["regions"] += result.regions
        self.next_position += 1
        if self.next_position % self.shard_docs == 0:
            self._finish_shard()
        if self.max_errors is not None and self.errors_so_far > self.max_errors:
            raise TooManyErrors(f"{self.errors_so_far} documents failed, more than --max-errors {self.max_errors}; "
                                f"the last: position {result.position}: {result.error}")

    def set_regions(self, names: list[str]) -> None:
        """The token space's region names, in the order of ``Encoded.regions``."""
        self.region_names = list(names)

    def _start_shard(self, k: int) -> None:
        name = shard_name(k)
        self._shard = {"shard": k, "name": name, "first_position": k * self.shard_docs, "errors": [],
                       "regions": np.zeros(len(self.region_names), dtype=np.int64)}
        self._tmp = self.out / f".{name}.bin.tmp"
        self._file = open(self._tmp, "wb")
        self._digest = hashlib.sha256()
        self._lengths: list[int] = []

    def _finish_shard(self) -> None:
        shard, name = self._shard, self._shard["name"]
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        lengths = np.array(self._lengths, dtype=np.int64)
        entry = {"shard": shard["shard"], "first_position": shard["first_position"],
                 "input_documents": self.next_position - shard["first_position"], "documents": len(lengths),
                 "tokens": int(lengths.sum()), "bin": None, "idx": None, "bin_sha256": None, "idx_sha256": None,
                 "tokens_per_block": {n: int(c) for n, c in zip(self.region_names, shard["regions"]) if c},
                 "errors": shard["errors"]}
        if len(lengths):  # an empty .bin cannot be memory-mapped: a shard without documents has no files
            os.replace(self._tmp, self.out / f"{name}.bin")
            idx = index_bytes(lengths)
            atomic_write_bytes(self.out / f"{name}.idx", idx)
            entry.update(bin=f"{name}.bin", idx=f"{name}.idx", bin_sha256=self._digest.hexdigest(),
                         idx_sha256=hashlib.sha256(idx).hexdigest())
        else:
            self._tmp.unlink(missing_ok=True)
        self._journal.write(json.dumps(entry) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self.done.append(entry)
        self._shard, self._file = None, None

    def finish(self, run_info: dict[str, Any]) -> dict[str, Any]:
        """Close the last shard, write ``errors.jsonl`` and ``manifest.json``; returns the manifest."""
        if self._shard is not None:
            self._finish_shard()
        errors = [e for s in self.done for e in s["errors"]]
        atomic_write_text(self.out / ERRORS, "".join(json.dumps(e) + "\n" for e in errors))
        per_block: dict[str, int] = {}
        for s in self.done:
            for k, v in s["tokens_per_block"].items():
                per_block[k] = per_block.get(k, 0) + v
        shards = [{k: v for k, v in s.items() if k != "errors"} | {"errors": len(s["errors"])} for s in self.done]
        manifest = {
            "schema": SCHEMA, "version": SCHEMA_VERSION, "format": "megatron-mmididx-v1", "dtype": "int32",
            "identity": self.identity, "shard_docs": self.shard_docs,
            "totals": {"documents_in": self.next_position,
                       "documents_written": sum(s["documents"] for s in self.done),
                       "documents_errored": len(errors), "tokens": sum(s["tokens"] for s in self.done),
                       "tokens_per_block": per_block, "shards": len(self.done)},
            "shards": shards, "errors_file": ERRORS, "run": run_info,
        }
        atomic_write_text(self.out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        self.close()
        (self.out / JOURNAL).unlink(missing_ok=True)
        return manifest

    def close(self) -> None:
        """Leave the folder resumable (the shard in progress is dropped; its temp file removed)."""
        if self._file is not None:
            self._file.close()
            self._tmp.unlink(missing_ok=True)
            self._file, self._shard = None, None
        if getattr(self, "_journal", None) is not None:
            self._journal.close()
            self._journal = None


def _diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out.extend(_diff(x, y, f"{prefix}{key}."))
        elif x != y:
            out.append(prefix + key)
    return out
