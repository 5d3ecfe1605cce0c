"""``lumo_uti.datasets``: corpus -> token shards, byte-identical whatever the route; ``TokenShards``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import lumo_uti
from dataset_corpus import make_corpus
from lumo_uti.cli import main as lumo
from lumo_uti.datasets import ShardFolderError, TokenShards, TooManyErrors, tokenize_dataset
from lumo_uti.datasets.documents import to_document
from lumo_uti.datasets.indexed import IndexedFormatError


@pytest.fixture(scope="module")
def uti():
    return lumo_uti.load()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """One run of the local engine in this process: the bytes every other route must give."""
    out = tmp_path_factory.mktemp("reference") / "shards"
    manifest = tokenize_dataset(corpus[0], out=out, shard_docs=4, progress=False)
    return out, manifest


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".bin", ".idx", ".jsonl")}


def test_every_document_is_uti_encode_and_totals_add_up(uti, corpus, reference):
    path, records = corpus
    out, manifest = reference
    shards = TokenShards(out)
    errors = {e["position"]: e["reason"] for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    written = 0
    for position, record in enumerate(records):
        if position in errors:
            continue
        doc = to_document(record, path.parent)
        assert np.array_equal(shards[written], uti.encode(doc, allow_special=False)), position
        assert shards[written].dtype == np.int32
        written += 1
    assert written == len(shards)
    totals = manifest["totals"]
    assert totals["documents_in"] == len(records) == totals["documents_written"] + totals["documents_errored"]
    assert totals["documents_errored"] == len(errors) == 5
    assert totals["tokens"] == sum(len(d) for d in shards) == sum(totals["tokens_per_block"].values())
    assert set(totals["tokens_per_block"]) >= {"text", "image", "audio", "special", "grid"}
    reasons = sorted(errors.values())
    for expected in ("empty document", "image file not found", "cannot read image", "not JSON", "expected a string"):
        assert any(expected in r for r in reasons), (expected, reasons)


def test_special_token_text_stays_plain_unless_asked(uti, tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps(["x <|endoftext|> y"]) + "\n")
    plain = tokenize_dataset(tmp_path / "c.jsonl", out=tmp_path / "a", progress=False)
    special = tokenize_dataset(tmp_path / "c.jsonl", out=tmp_path / "b", allow_special=True, append_eos=True,
                               progress=False)
    eos = uti.token_space.id_of("<|endoftext|>")
    a, b = TokenShards(tmp_path / "a")[0], TokenShards(tmp_path / "b")[0]
    assert eos not in a.tolist() and list(a) == uti.encode("x <|endoftext|> y", allow_special=False)
    assert list(b) == uti.encode("x <|endoftext|> y") + [eos] and b.tolist().count(eos) == 2
    assert plain["identity"]["settings"]["allow_special"] is False
    assert special["identity"]["settings"] == special["identity"]["settings"] | {"allow_special": True, "append_eos": True}


def test_same_bytes_for_any_workers_and_batch_size(corpus, reference, tmp_path):
    out, _ = reference
    tokenize_dataset(corpus[0], out=tmp_path / "w2", shard_docs=4, workers=2, batch_size=3, progress=False)
    assert _files(tmp_path / "w2") == _files(out)


def test_megatron_core_reads_the_shards(reference):
    indexed = pytest.importorskip("megatron.core.datasets.indexed_dataset", reason="megatron-core not installed")
    out, manifest = reference
    shards = TokenShards(out)
    got = []
    for entry in manifest["shards"]:
        if entry["documents"]:
            ds = indexed.IndexedDataset(str(out / entry["bin"][: -len(".bin")]))
            assert len(ds) == entry["documents"]
            got += [np.array(ds[i], copy=True) for i in range(len(ds))]  # ds unmaps its file when collected
            assert list(ds.document_indices) == list(range(len(ds) + 1))
    assert len(got) == len(shards) and all(np.array_equal(a, b) for a, b in zip(got, shards))


def test_killed_with_sigkill_and_resumed_gives_the_same_bytes(tmp_path):
    path, records = make_corpus(tmp_path / "big", copies=4, audio=False)
    clean = tmp_path / "clean"
    tokenize_dataset(path, out=clean, shard_docs=3, progress=False)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "lumo_uti.cli", "tokenize-dataset", str(path), "--out", str(out), "--shard-docs", "3",
           "--batch-size", "1", "--quiet"]
    kills = 0
    for attempt in range(2):  # kill twice, at different points
        proc = subprocess.Popen(cmd + (["--resume"] if attempt else []), stderr=subprocess.PIPE)
        journal = out / "progress.jsonl"
        deadline = time.monotonic() + 120
        want_lines = 2 + 3 * attempt  # header + shards done
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.is_file() and len(journal.read_text().splitlines()) >= want_lines:
                break
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1
    assert not (out / "manifest.json").exists()
    with pytest.raises(ShardFolderError, match="--resume"):
        tokenize_dataset(path, out=out, shard_docs=3, progress=False)
    with pytest.raises(ShardFolderError, match="settings"):
        tokenize_dataset(path, out=out, shard_docs=3, append_eos=True, resume=True, progress=False)
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _files(out) == _files(clean)
    assert not list(out.glob(".*")) and not (out / "progress.jsonl").exists()


def test_max_errors_stops_and_a_resume_finishes_the_same(corpus, reference, tmp_path):
    out, _ = reference
    with pytest.raises(TooManyErrors, match="more than --max-errors 1"):
        tokenize_dataset(corpus[0], out=tmp_path / "s", shard_docs=4, max_errors=1, progress=False)
    assert lumo(["tokenize-dataset", str(corpus[0]), "--out", str(tmp_path / "s"), "--shard-docs", "4", "--resume",
                 "--max-errors", "2", "--quiet"]) == 1
    assert lumo(["tokenize-dataset", str(corpus[0]), "--out", str(tmp_path / "s"), "--shard-docs", "4", "--resume",
                 "--quiet"]) == 0
    assert _files(tmp_path / "s") == _files(out)
    # a finished folder: --resume is a no-op, a new run is refused
    assert tokenize_dataset(corpus[0], out=tmp_path / "s", shard_docs=4, resume=True, progress=False)["totals"]
    with pytest.raises(ShardFolderError, match="already holds finished shards"):
        tokenize_dataset(corpus[0], out=tmp_path / "s", shard_docs=4, progress=False)


def test_huge_documents_are_recorded_not_fatal(tmp_path):
    lines = [json.dumps(["short"]), json.dumps(["word " * 5000]), json.dumps(["also short"])]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    manifest = tokenize_dataset(tmp_path / "c.jsonl", out=tmp_path / "o", max_doc_tokens=100, progress=False)
    assert manifest["totals"]["documents_written"] == 2
    error = json.loads((tmp_path / "o" / "errors.jsonl").read_text())
    assert error["position"] == 1 and "more than max_doc_tokens 100" in error["reason"]


def test_parquet_and_hugging_face_inputs_give_the_same_ids(uti, corpus, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path, _ = corpus
    media = path.parent / "media"
    captions = ["first", "second", "third"]
    images = [(media / f"img_{i}.png").read_bytes() for i in range(3)] + [b"corrupt"]
    captions.append("bad one")
    table = pa.table({"caption": captions, "jpg": images,
                      "document": [json.dumps([c, {"image": f"media/img_{i % 3}.png"}]) for i, c in enumerate(captions)]})
    pq.write_table(table, path.parent / "t.parquet", row_group_size=2)
    a = tokenize_dataset(path.parent / "t.parquet", out=tmp_path / "a", columns="image:jpg,text:caption",
                         shard_docs=3, progress=False)
    b = tokenize_dataset(path.parent / "t.parquet", out=tmp_path / "b", shard_docs=3, progress=False)
    assert a["totals"]["documents_errored"] == 1 and b["totals"]["documents_errored"] == 0
    from PIL import Image

    sa, sb = TokenShards(tmp_path / "a"), TokenShards(tmp_path / "b")
    for i in range(3):
        img = Image.open(media / f"img_{i}.png")
        assert list(sa[i]) == uti.encode([img, captions[i]], allow_special=False)
        assert list(sb[i]) == uti.encode([captions[i], img], allow_special=False)
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"caption": captions[:3], "jpg": images[:3]})
    ds = ds.cast_column("jpg", datasets.Image())
    c = tokenize_dataset(ds, out=tmp_path / "c", columns=["image:jpg", "text:caption"], shard_docs=3, progress=False)
    assert c["totals"]["documents_written"] == 3
    ds.save_to_disk(str(tmp_path / "saved"))
    tokenize_dataset(tmp_path / "saved", out=tmp_path / "d", columns="image:jpg,text:caption", shard_docs=3,
                     workers=2, progress=False)
    assert _files(tmp_path / "c") == _files(tmp_path / "d") and (tmp_path / "c" / "shard_000000.bin").read_bytes() \
        == (tmp_path / "a" / "shard_000000.bin").read_bytes()


def test_workers_do_not_hang_after_the_parent_ran_threaded_kernels(corpus, reference, tmp_path):
    """forkserver workers: a parent that ran multi-threaded torch and our kernels first must not matter."""
    code = f"""
import torch, lumo_uti, lumo_uti.ops
from lumo_uti.datasets import tokenize_dataset
torch.set_num_threads(2)
torch.randn(512, 512) @ torch.randn(512, 512)
lumo_uti.ops.vq_search(torch.randn(2048, 16), torch.randn(512, 16))
tokenize_dataset({str(corpus[0])!r}, out={str(tmp_path / 'o')!r}, shard_docs=4, workers=2, progress=False)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert _files(tmp_path / "o") == _files(reference[0])


def test_token_shards_random_access_and_checks(reference, tmp_path):
    out, manifest = reference
    shards = TokenShards(out, verify=True)
    n = len(shards)
    assert n == manifest["totals"]["documents_written"]
    assert np.array_equal(shards[-1], shards[n - 1]) and np.array_equal(shards[np.int64(2)], list(shards)[2])
    assert shards.lengths.sum() == shards.num_tokens and shards.fingerprint == manifest["identity"]["token_space"]["fingerprint"]
    with pytest.raises(IndexError):
        shards[n]
    with pytest.raises(TypeError):
        shards[1.5]
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    data = bytearray((bad / "shard_000000.bin").read_bytes())
    data[0] ^= 1
    (bad / "shard_000000.bin").write_bytes(bytes(data))
    TokenShards(bad)  # sizes still agree
    with pytest.raises(ShardFolderError, match="sha256"):
        TokenShards(bad, verify=True)
    (bad / "shard_000000.idx").write_bytes(b"MMIDIDX\x00\x00" + b"\x01" * 20)
    with pytest.raises(IndexedFormatError, match="shard_000000.idx"):
        TokenShards(bad)
    with pytest.raises(ShardFolderError, match="no manifest.json"):
        TokenShards(tmp_path)


def test_cli_inspect_and_bad_input(reference, tmp_path, capsys):
    out, manifest = reference
    assert lumo(["shards", "inspect", str(out), "--verify"]) == 0
    text = capsys.readouterr().out
    assert manifest["identity"]["token_space"]["fingerprint"] in text and "errored" in text and "position" in text
    assert lumo(["shards", "inspect", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["documents_written"] == manifest["totals"]["documents_written"]
    assert lumo(["tokenize-dataset", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "input not found" in capsys.readouterr().err
    assert lumo(["tokenize-dataset", str(out / "manifest.json"), "--out", str(tmp_path / "o"), "--workers", "0"]) == 2
    assert lumo(["shards", "inspect", str(tmp_path)]) == 2
    capsys.readouterr()
    import torch

    bad_device = "nonsense" if torch.cuda.is_available() else "cuda"
    assert lumo(["tokenize-dataset", str(out / "manifest.json"), "--out", str(tmp_path / "o"),
                 "--device", bad_device, "--quiet"]) == 2
    assert "device" in capsys.readouterr().err


def test_files_are_readable_by_others(reference):
    out, _ = reference
    umask = os.umask(0)
    os.umask(umask)
    for p in out.iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p


def test_a_line_that_is_not_utf8_is_that_documents_error(tmp_path):
    (tmp_path / "c.jsonl").write_bytes(b'["ok"]\n["caf\xe9"]\n\r\n["also ok"]\r\n')
    manifest = tokenize_dataset(tmp_path / "c.jsonl", out=tmp_path / "o", progress=False)
    assert manifest["totals"] == manifest["totals"] | {"documents_in": 3, "documents_written": 2}
    error = json.loads((tmp_path / "o" / "errors.jsonl").read_text())
    assert error["position"] == 1 and "not UTF-8" in error["reason"]
