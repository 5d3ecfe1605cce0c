"""Bundles: every recorded hash checked at load; exports and creates swap atomically and never follow links."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lumo_uti
from lumo_uti import bundle as bundle_mod
from lumo_uti.bundle import export_bundle
from lumo_uti.errors import (
    BundleError,
    BundleHashMismatchError,
    BundleTokenizerMismatchError,
    TokenizerMismatchError,
)
from lumo_uti.token_space import TokenSpace

HASH = r"sha256:[0-9a-f]{64}"


@pytest.fixture()
def bundle(tmp_path) -> Path:
    return export_bundle(tmp_path / "bundle")


def _rewrite_token_space(directory: Path, edit) -> None:
    data = TokenSpace.load(directory / "token_space.json").to_json()
    data.pop("fingerprint")
    edit(data)
    TokenSpace(data).save(directory / "token_space.json")


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _siblings(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.parent.iterdir() if p.name != directory.name)


# -- hashes checked at load -----------------------------------------------------------
@pytest.mark.parametrize("modality, key, value", [("audio", "sample_rate", 8000), ("image", "decoder_blocks", 1000000)])
def test_an_edited_codec_config_is_refused_before_the_model_is_built(bundle, monkeypatch, modality, key, value):
    config = bundle / "codecs" / modality / "config.json"
    data = json.loads(config.read_text())
    data[key] = value
    config.write_text(json.dumps(data))
    from lumo_uti import codecs

    real = codecs.load

    def load(spec, **kw):
        if spec.endswith(f"codecs/{modality}"):
            pytest.fail("the codec was built from an unverified config")
        return real(spec, **kw)

    monkeypatch.setattr(codecs, "load", load)
    with pytest.raises(BundleHashMismatchError) as exc:
        lumo_uti.load(bundle)
    message = str(exc.value)
    assert str(config) in message and "config_hash" in message
    assert len(re.findall(HASH, message)) == 2
    assert exc.value.field == f"codecs.{modality}.config_hash" and exc.value.file == str(config)
    assert exc.value.recorded != exc.value.found


def test_edited_codec_weights_are_refused_naming_the_file_and_both_hashes(bundle):
    weights = bundle / "codecs" / "image" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleHashMismatchError) as exc:
        lumo_uti.load(bundle)
    assert str(weights) in str(exc.value) and len(re.findall(HASH, str(exc.value))) >= 4
    assert exc.value.file == str(weights) and exc.value.field == "codecs.image.weights_hash"


def test_a_token_space_without_a_config_hash_is_refused(bundle):
    _rewrite_token_space(bundle, lambda d: d["codecs"]["audio"].pop("config_hash"))
    with pytest.raises(BundleError, match="audio codec in .*token_space.json records no config_hash"):
        lumo_uti.load(bundle)


def test_an_unknown_codec_kind_is_a_bundle_error(bundle):
    _rewrite_token_space(bundle, lambda d: d["codecs"]["audio"].update(kind="lumo-nope"))
    with pytest.raises(BundleError, match="unknown codec kind 'lumo-nope'"):
        lumo_uti.load(bundle)


def test_a_missing_codec_config_is_a_bundle_error(bundle):
    (bundle / "codecs" / "audio" / "config.json").unlink()
    with pytest.raises(BundleError, match=r"audio codec: .*config\.json is missing"):
        lumo_uti.load(bundle)


def _fail_after(seconds: int):
    def on_alarm(*_):
        raise TimeoutError(f"blocked for {seconds} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_pipe_in_a_codec_folder_is_refused_not_read(bundle):
    os.mkfifo(bundle / "codecs" / "audio" / "extra.safetensors")
    _fail_after(20)
    try:
        with pytest.raises(BundleError, match=r"extra\.safetensors is not a regular file"):
            lumo_uti.load(bundle)
    finally:
        signal.alarm(0)


def test_an_edited_builtin_tokenizer_hash_is_a_bundle_and_tokenizer_error(bundle):
    _rewrite_token_space(bundle, lambda d: d["base"]["tokenizer"].update(hash="sha256:" + "ab" * 32))
    with pytest.raises(BundleTokenizerMismatchError) as exc:
        lumo_uti.load(bundle)
    assert isinstance(exc.value, TokenizerMismatchError) and isinstance(exc.value, BundleError)
    assert "sha256:" + "ab" * 32 in str(exc.value) and len(re.findall(HASH, str(exc.value))) == 2
    assert str(bundle / "token_space.json") in str(exc.value)


def test_an_edited_hf_tokenizer_names_its_file(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from lumo_uti.text import HFTextTokenizer
    from lumo_uti.token_space import BaseSpec, default_blocks

    vocab = {c: i for i, c in enumerate("abc ")}
    vocab["[UNK]"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    (tmp_path / "tokenizer").mkdir()
    tok.save(str(tmp_path / "tokenizer" / "tokenizer.json"))
    hf = HFTextTokenizer(tmp_path / "tokenizer")
    TokenSpace.build(BaseSpec(dict(hf.identity, path="tokenizer"), hf.vocab_size, 8), default_blocks(),
                     name="tiny").save(tmp_path / "token_space.json")
    lumo_uti.load(tmp_path)
    file = tmp_path / "tokenizer" / "tokenizer.json"
    file.write_text(file.read_text().replace('"c"', '"C"'))
    with pytest.raises(BundleTokenizerMismatchError) as exc:
        lumo_uti.load(tmp_path)
    assert exc.value.file == str(file) and str(file) in str(exc.value)
    assert len(re.findall(HASH, str(exc.value))) == 2


# -- export: links, special files, atomic swap, stale temp folders --------------------
@pytest.mark.parametrize("make_link", [
    lambda b, outside: os.symlink(outside, b / "codecs" / "secret.txt"),
    lambda b, outside: os.symlink("..", b / "up"),
    lambda b, outside: os.symlink(outside.parent, b / "codecs" / "elsewhere"),
], ids=["file-outside", "up-dotdot", "folder-outside"])
def test_export_refuses_links_and_writes_nothing(bundle, tmp_path, make_link):
    outside = tmp_path / "outside.txt"
    outside.write_text("private")
    make_link(bundle, outside)
    with pytest.raises(BundleError, match="is a symbolic link .* links are not followed out of a bundle"):
        export_bundle(tmp_path / "copy", source=bundle)
    assert not (tmp_path / "copy").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".copy.")]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_export_refuses_a_pipe(bundle, tmp_path):
    os.mkfifo(bundle / "codecs" / "stream.json")
    _fail_after(20)
    try:
        with pytest.raises(BundleError, match=r"stream\.json is not a regular file"):
            export_bundle(tmp_path / "copy", source=bundle)
    finally:
        signal.alarm(0)


def test_a_failed_forced_export_leaves_the_old_bundle_whole(bundle, tmp_path, monkeypatch):
    out = export_bundle(tmp_path / "out")
    (out / "gates.json").write_text("{}\n")  # tell the old copy apart
    before = _files(out)
    copied = []
    real = bundle_mod._copy_regular_file

    def copy_then_fail(src, dst, **kw):
        copied.append(src)
        if len(copied) == 3:
            raise OSError("disk full")
        return real(src, dst, **kw)

    monkeypatch.setattr(bundle_mod, "_copy_regular_file", copy_then_fail)
    with pytest.raises(OSError, match="disk full"):
        export_bundle(out, source=bundle, force=True)
    assert _files(out) == before
    assert _siblings(out) == ["bundle"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_folders_of_killed_exports_are_removed(tmp_path):
    out = tmp_path / "out"
    dead = tmp_path / f".out.{_dead_pid()}.0badc0de.tmp"
    dead_old = tmp_path / f".out.{_dead_pid()}.0badc0de.old"
    alive = tmp_path / f".out.{os.getppid()}.0badc0de.tmp"  # a live process's: kept
    legacy_old, legacy_new = tmp_path / ".out.k2j4h5x_", tmp_path / ".out.a8b7c6d5"  # tempfile.mkdtemp's names
    for d in (dead, dead_old, alive, legacy_old, legacy_new):
        (d / "codecs").mkdir(parents=True)
    past = time.time() - 2 * 3600
    os.utime(legacy_old, (past, past))
    unrelated = tmp_path / ".outer.12.ab.tmp"
    unrelated.mkdir()
    export_bundle(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out", alive.name, legacy_new.name, unrelated.name])


_KILL_SCRIPT = r"""
import os, shutil, sys, time
from pathlib import Path
import lumo_uti.bundle as b
stage = sys.argv[3]
if stage == "copy":
    real = b._copy_regular_file
    count = [0]
    def slow(src, dst, **kw):
        real(src, dst, **kw)
        count[0] += 1
        if count[0] == 2:
            print("copying", flush=True)
            time.sleep(60)
    b._copy_regular_file = slow
else:  # "delete": stop inside the removal of the replaced bundle
    def slow_rmtree(path, *a, **k):
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        files[0].unlink()
        print("deleting", flush=True)
        time.sleep(60)
    shutil.rmtree = slow_rmtree
b.export_bundle(sys.argv[1], source=sys.argv[2], force=True)
"""


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
@pytest.mark.parametrize("stage", ["copy", "delete"])
def test_a_killed_forced_export_leaves_a_whole_bundle(bundle, tmp_path, stage):
    out = export_bundle(tmp_path / "out", source=bundle)
    old = _files(out)
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(out), str(bundle), stage],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == ("copying" if stage == "copy" else "deleting")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _files(out) == old  # the old bundle (copy) or the complete new one, same contents (delete)
    lumo_uti.load(out)
    export_bundle(out, source=bundle, force=True)  # the next run cleans up after the killed one
    assert _files(out) == old
    assert _siblings(out) == ["bundle"]


def test_create_bundle_swaps_atomically_and_copies_regular_files_only(tmp_path):
    from lumo_uti.bundle import create_bundle

    src = lumo_uti.default_bundle_dir() / "codecs" / "audio"
    out = create_bundle(tmp_path / "made", audio=f"lumo-rvq:{src}")
    before = _files(out)
    codec = tmp_path / "codec"
    codec.mkdir()
    for f in src.iterdir():
        (codec / f.name).write_bytes(f.read_bytes())
    if hasattr(os, "mkfifo"):
        os.mkfifo(codec / "tokens.txt")
        _fail_after(20)
        try:
            with pytest.raises(Exception, match=r"tokens\.txt is not a regular file"):
                create_bundle(out, audio=f"lumo-rvq:{codec}", force=True)
        finally:
            signal.alarm(0)
        assert _files(out) == before and _siblings(out) == ["codec"]
