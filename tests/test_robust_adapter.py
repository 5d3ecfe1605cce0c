"""patch_load: tensor shapes against rows.count x hidden_size, token_space.file inside the adapter, missing fields."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file, save_file

from lumo_model.token_lm import AdapterMismatchError, expand, patch_load, save_trainable_rows
from lumo_model.token_lm.identity import tensor_sha256
from test_token_lm_helpers import tiny_qwen3, token_space


def _adapter(tmp_path, tied: bool, name: str = "a"):
    model = expand(tiny_qwen3(tied), token_space(), noise_std=0.02, seed=5)
    return save_trainable_rows(model, tmp_path / name)


def _edit_manifest(adapter, edit):
    manifest = json.loads((adapter / "manifest.json").read_text())
    edit(manifest)
    (adapter / "manifest.json").write_text(json.dumps(manifest))


def _replace_tensors(adapter, edit):
    """Rewrite adapter.safetensors and its manifest entries so that they agree with each other."""
    tensors = load_file(str(adapter / "adapter.safetensors"))
    edit(tensors)
    save_file(tensors, str(adapter / "adapter.safetensors"))
    _edit_manifest(adapter, lambda m: m.update(tensors={
        k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."), "sha256": tensor_sha256(v)}
        for k, v in tensors.items()}))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_a_one_row_adapter_is_not_broadcast_into_every_row(tmp_path, tied):
    a = _adapter(tmp_path, tied)
    _replace_tensors(a, lambda t: t.update({"embed.new_rows": t["embed.new_rows"][:1].clone()}))
    with pytest.raises(AdapterMismatchError, match=r"embed\.new_rows\.shape: the adapter holds \[1, 16\], "
                                                   r"this base needs \[\d+, 16\] \(rows\.count x hidden_size\)") as e:
        patch_load(tiny_qwen3(tied), a)
    assert e.value.field == "tensors.embed.new_rows.shape"


def test_a_transposed_or_short_head_is_refused(tmp_path):
    a = _adapter(tmp_path, False)
    _replace_tensors(a, lambda t: t.update({"lm_head.new_rows": t["lm_head.new_rows"][:-1].clone()}))
    with pytest.raises(AdapterMismatchError, match=r"lm_head\.new_rows\.shape"):
        patch_load(tiny_qwen3(False), a)


def test_an_untied_adapter_without_head_rows_is_refused(tmp_path):
    a = _adapter(tmp_path, False)
    _replace_tensors(a, lambda t: t.pop("lm_head.new_rows"))
    with pytest.raises(AdapterMismatchError, match=r"^patch_load: tensors: the manifest lists tensors \['embed.new_rows'\], "
                                                   r"this base has \['embed.new_rows', 'lm_head.new_rows'\]"):
        patch_load(tiny_qwen3(False), a)


def test_a_row_count_that_disagrees_with_the_range_is_refused(tmp_path):
    a = _adapter(tmp_path, True)
    _edit_manifest(a, lambda m: m["rows"].update(count=1))
    with pytest.raises(AdapterMismatchError, match=r"^patch_load: rows: row range \[\d+, \d+\) of 1 rows"):
        patch_load(tiny_qwen3(True), a)


def test_a_token_space_file_outside_the_adapter_is_refused(tmp_path):
    a = _adapter(tmp_path, True)
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(a / "token_space.json", tmp_path / "elsewhere" / "token_space.json")
    for rel in ("../elsewhere/token_space.json", str(tmp_path / "elsewhere" / "token_space.json")):
        _edit_manifest(a, lambda m: m["token_space"].update(file=rel))
        with pytest.raises(AdapterMismatchError, match="token_space.file: must name a file inside the adapter folder") as e:
            patch_load(tiny_qwen3(True), a)
        assert e.value.field == "token_space.file"


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_token_space_file_that_is_a_device_is_refused_unread(tmp_path):
    a = _adapter(tmp_path, True)
    (a / "ts_link.json").symlink_to("/dev/zero")

    def on_alarm(*_):
        raise TimeoutError("read /dev/zero")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(20)
    try:
        for rel in ("/dev/zero", "ts_link.json"):
            _edit_manifest(a, lambda m: m["token_space"].update(file=rel))
            with pytest.raises(AdapterMismatchError, match="token_space.file"):
                patch_load(tiny_qwen3(True), a)
    finally:
        signal.alarm(0)


@pytest.mark.parametrize("drop, field", [
    (lambda m: m.pop("token_space"), "token_space.file"),
    (lambda m: m["token_space"].pop("fingerprint"), "token_space.fingerprint"),
    (lambda m: m["base"].pop("tied"), "base.tied"),
    (lambda m: m.pop("base"), "base.architecture"),
    (lambda m: m["rows"].pop("count"), "rows.count"),
    (lambda m: m.pop("tensors"), "tensors"),
    (lambda m: m["tensors"]["embed.new_rows"].pop("sha256"), "tensors.embed.new_rows.sha256"),
], ids=["token_space", "fingerprint", "base.tied", "base", "rows.count", "tensors", "tensor.sha256"])
def test_missing_manifest_fields_are_adapter_errors(tmp_path, drop, field):
    a = _adapter(tmp_path, True)
    _edit_manifest(a, drop)
    with pytest.raises(AdapterMismatchError, match=f"manifest.json has no field '{field}'") as e:
        patch_load(tiny_qwen3(True), a)
    assert e.value.field == "manifest"


def test_mistyped_manifest_fields_are_adapter_errors(tmp_path):
    a = _adapter(tmp_path, True)
    _edit_manifest(a, lambda m: m["rows"].update(start="0"))
    with pytest.raises(AdapterMismatchError, match=r"field 'rows.start' must be int, got '0'"):
        patch_load(tiny_qwen3(True), a)
    _edit_manifest(a, lambda m: m["token_space"].update(file=["token_space.json"]))
    with pytest.raises(AdapterMismatchError, match=r"field 'token_space.file' must be str"):
        patch_load(tiny_qwen3(True), a)


def test_a_corrupt_tensor_file_is_an_adapter_error(tmp_path):
    a = _adapter(tmp_path, True)
    (a / "adapter.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(AdapterMismatchError, match=r"^patch_load: tensors: cannot read .*adapter\.safetensors"):
        patch_load(tiny_qwen3(True), a)
    (a / "adapter.safetensors").unlink()
    with pytest.raises(FileNotFoundError):
        patch_load(tiny_qwen3(True), a)


def test_a_good_adapter_still_loads(tmp_path):
    a = _adapter(tmp_path, False)
    model = patch_load(tiny_qwen3(False), a)
    want = load_file(str(a / "adapter.safetensors"))["lm_head.new_rows"]
    assert torch.equal(model.get_output_embeddings().new_weight.detach(), want)
