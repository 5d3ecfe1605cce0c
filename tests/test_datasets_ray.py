"""``tokenize_dataset(engine="ray")``: the same bytes as the local engine, fresh or resumed; clear failures."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the Ray engine tests need Ray: pip install 'lumoomni[ray]'")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import lumo_uti  # noqa: E402
from dataset_corpus import make_corpus  # noqa: E402
from lumo_uti.datasets import TooManyErrors, tokenize_dataset  # noqa: E402
from lumo_uti.datasets import ray_engine  # noqa: E402
from lumo_uti.datasets.inputs import open_input  # noqa: E402

# lines on which ray.data.read_text would disagree with the local reader: raw U+2028 / U+0085 inside JSON
# strings (one document each), invalid UTF-8 (that document's error, not the run's), a whitespace-only line
# (blank: skipped), an ideographic space (not blank in bytes: a malformed document)
EXTRA_LINES = ['["para\u2028graph and next\u0085line"]'.encode(), b'["bad byte \xff here"]', b" \t ",
               "\u3000".encode(), b'["the end"]']


@pytest.fixture(scope="module")
def ray_session():
    """One small Ray instance for the whole file (the engine must leave it running)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def uti():
    return lumo_uti.load()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """make_corpus (text, images, a missing and a corrupt image, audio, a malformed line, ...) + EXTRA_LINES."""
    path, _ = make_corpus(tmp_path_factory.mktemp("corpus"))
    with open(path, "ab") as f:
        f.write(b"\n".join(EXTRA_LINES) + b"\n")
    return path


@pytest.fixture(scope="module")
def table_folder(corpus):
    """Two Parquet files (read in sorted name order) with `document`, `img` (raw bytes) and `caption` columns."""
    media = corpus.parent / "media"
    images = [(media / f"img_{i}.png").read_bytes() for i in range(3)]
    rows = [(f"caption {i}", images[i % 3] if i != 4 else b"not an image", i) for i in range(9)]
    folder = corpus.parent / "tables"
    folder.mkdir()
    for name, part in (("part_1.parquet", rows[:5]), ("part_2.parquet", rows[5:])):
        table = pa.table({"caption": [c for c, _, _ in part], "img": [b for _, b, _ in part],
                          "document": [json.dumps([c, {"image": f"../media/img_{i % 3}.png"}]) if i != 6 else "{oops"
                                       for c, _, i in part]})
        pq.write_table(table, folder / name, row_group_size=2)
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".bin", ".idx", ".jsonl")}


def _same_run(local: dict, ray_run: dict, local_out: Path, ray_out: Path) -> None:
    assert _files(ray_out) == _files(local_out)
    assert ray_run["totals"] == local["totals"] and ray_run["shards"] == local["shards"]
    assert ray_run["run"]["engine"] == "ray"


def _actors_gone(timeout: float = 30.0) -> bool:
    """The engine's actors released their CPUs (they are killed asynchronously) and Ray still runs."""
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < 2:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return ray.is_initialized()


def test_jsonl_same_bytes_as_the_local_engine(ray_session, uti, corpus, tmp_path):
    local = tokenize_dataset(corpus, uti, out=tmp_path / "local", shard_docs=4, progress=False)
    assert local["totals"]["documents_in"] == 12 + 4 and local["totals"]["documents_errored"] == 7
    reasons = " | ".join(json.loads(line)["reason"] for line in (tmp_path / "local" / "errors.jsonl").open())
    assert "file not found" in reasons and "not JSON" in reasons and "not UTF-8" in reasons
    got = tokenize_dataset(corpus, uti, out=tmp_path / "ray", shard_docs=4, engine="ray", workers=2, batch_size=2,
                           progress=False)
    _same_run(local, got, tmp_path / "local", tmp_path / "ray")
    assert _actors_gone()


def test_parquet_columns_same_bytes_as_the_local_engine(ray_session, uti, table_folder, tmp_path):
    columns = ("image:img", "text:caption")
    local = tokenize_dataset(table_folder, uti, out=tmp_path / "local", shard_docs=3, columns=columns, progress=False)
    assert local["totals"]["documents_in"] == 9 and local["totals"]["documents_errored"] == 1
    got = tokenize_dataset(table_folder, uti, out=tmp_path / "ray", shard_docs=3, columns=columns, engine="ray",
                           workers=2, batch_size=2, progress=False)
    _same_run(local, got, tmp_path / "local", tmp_path / "ray")


def test_parquet_stopped_and_resumed_ray_run_same_bytes_as_the_local_engine(ray_session, uti, table_folder,
                                                                          tmp_path):
    """The `document` column; the first run stops at position 6 (max_errors=0), inside a row group of the
    second file: the resumed run starts at 6, reading from the middle of that row group."""
    local = tokenize_dataset(table_folder, uti, out=tmp_path / "local", shard_docs=3, progress=False)
    assert [json.loads(e)["position"] for e in (tmp_path / "local" / "errors.jsonl").read_text().splitlines()] == [6]
    with pytest.raises(TooManyErrors, match="position 6"):
        tokenize_dataset(table_folder, uti, out=tmp_path / "ray", shard_docs=3, engine="ray", max_errors=0,
                         progress=False)
    assert _actors_gone()  # stopping early (the writer raised) released the actors
    assert (tmp_path / "ray" / "shard_000001.bin").is_file() and not (tmp_path / "ray" / "manifest.json").exists()
    got = tokenize_dataset(table_folder, uti, out=tmp_path / "ray", shard_docs=3, engine="ray", workers=2,
                           batch_size=2, resume=True, progress=False)
    assert got["run"]["resumed_at"] == 6
    _same_run(local, got, tmp_path / "local", tmp_path / "ray")


class _Unloadable:
    """A UTI stand-in for the driver whose pickle fails to load in the actors."""

    def __init__(self, uti):
        self.token_space = uti.token_space

    def __reduce__(self):
        return int, ("not a bundle",)


def test_an_actor_failure_is_a_clear_runtime_error(ray_session, uti, corpus, tmp_path):
    match = r"ray engine: a Ray task or actor failed .*ValueError: invalid literal for int\(\).*--resume"
    with pytest.raises(RuntimeError, match=match):
        tokenize_dataset(corpus, _Unloadable(uti), out=tmp_path / "ray", shard_docs=4, engine="ray", progress=False)
    assert _actors_gone()


class _Crashing:
    """A UTI stand-in (token space only) whose worker process dies on a batch holding "CRASH"."""

    def __init__(self, uti):
        self.token_space = uti.token_space

    def encode_batch(self, docs, **kwargs):
        if any("CRASH" in str(doc) for doc in docs):
            os._exit(3)  # as a segfault or the OOM killer would
        raise ValueError("no tokenizer here")

    encode = encode_batch


def test_a_document_that_kills_its_actor_fails_the_run_instead_of_looping(ray_session, uti, tmp_path):
    """Ray Data would restart the actor and retry the batch forever; the engine allows a few tries."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps([f"doc {i}" + (" CRASH" if i == 5 else "")]) + "\n" for i in range(8)))
    module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(module)  # the actors cannot import this test module
    try:
        with pytest.raises(RuntimeError, match=r"ray engine: a Ray task or actor failed .*ActorDiedError.*--resume"):
            tokenize_dataset(corpus, _Crashing(uti), out=tmp_path / "ray", engine="ray", batch_size=2,
                             progress=False)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(module)
    assert _actors_gone()


def test_parquet_read_tasks_give_the_local_rows_from_any_start(table_folder, monkeypatch):
    """Without Ray: the Parquet read tasks (row groups, the first one sliced) are ``records(start)``."""
    monkeypatch.setattr(ray_engine, "READ_TASK_ROWS", 3)  # several tasks per file
    inp = open_input(table_folder)
    for start in range(len(inp) + 1):
        got = []
        for (fn, *args), meta in ray_engine._parquet_tasks(inp, start, block_rows=2):
            rows = [r for block in fn(*args) for r in _rows(block)]
            assert meta["num_rows"] == len(rows)
            got += rows
        assert got == list(inp.records(start)), start


def test_jsonl_read_task_is_the_local_reader_from_any_start(corpus):
    inp = open_input(corpus)
    for start in (0, 1, 7, 15, 16, 99):
        [((fn, *args), _)] = ray_engine._jsonl_tasks(inp, start, block_rows=3)
        assert [r for block in fn(*args) for r in _rows(block)] == list(inp.records(start)), start


def _rows(block) -> list:
    return ray_engine._records(block)


def test_hf_rows_are_the_local_rows_from_any_start(ray_session, table_folder):
    """A datasets.Dataset (Image feature, undecoded) through the object store: the rows ``records(start)`` gives."""
    datasets = pytest.importorskip("datasets")
    table = pa.concat_tables(pq.read_table(f) for f in sorted(table_folder.glob("*.parquet")))
    dataset = datasets.Dataset(table).cast_column("img", datasets.Image())
    inp = open_input(dataset.shuffle(seed=0))  # an indices mapping: rows in the shuffled order
    for start in (0, 4, 9):
        blocks = ray_engine._read_hf(ray, inp, start, block_rows=2).iter_batches(batch_size=None,
                                                                                 batch_format="pyarrow")
        assert [r for block in blocks for r in _rows(block)] == list(inp.records(start)), start


def test_missing_ray_is_a_clear_error(monkeypatch, corpus):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    inp = open_input(corpus)
    with pytest.raises(ValueError, match=r"the ray engine needs Ray: pip install 'lumoomni\[ray\]'"):
        next(ray_engine.run_ray(inp, 0, None, None, workers=1, batch_size=1, threads=1, device="cpu"))
