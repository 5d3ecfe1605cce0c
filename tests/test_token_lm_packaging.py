"""Rows-only adapters: save -> patch_load gives identical logits; mismatches refused; merge."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lumo_model.token_lm import (
    AdapterMismatchError,
    expand,
    merge,
    patch_load,
    read_manifest,
    save_trainable_rows,
    trainable_parameters,
)
from lumo_model.token_lm.identity import config_sha256, tensor_sha256
from lumo_model.token_lm.training import forbidden_columns, rows_loss
from test_token_lm_helpers import BASE_ROWS, mixed_ids, tiny_qwen3, token_space

TIED = pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])


def _trained(tied: bool, steps: int = 3, bias: bool = False):
    ts = token_space()
    model = expand(tiny_qwen3(tied, bias=bias), ts, noise_std=0.02, seed=5)
    opt = torch.optim.AdamW(trainable_parameters(model), lr=5e-2)
    forbidden = forbidden_columns(ts, ts.padded_vocab_size)
    for step in range(steps):
        ids = mixed_ids(ts, seed=10 + step)
        loss = rows_loss(model(ids).logits, ids, forbidden).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@TIED
def test_save_then_patch_load_gives_identical_logits(tmp_path, tied: bool) -> None:
    model = _trained(tied)
    out = save_trainable_rows(model, tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == ["adapter.safetensors", "manifest.json", "token_space.json"]
    tensors = load_file(str(out / "adapter.safetensors"))
    new_rows = token_space().padded_vocab_size - BASE_ROWS
    want = {"embed.new_rows"} if tied else {"embed.new_rows", "lm_head.new_rows"}
    assert set(tensors) == want and all(t.shape == (new_rows, 16) for t in tensors.values())
    manifest = read_manifest(out)
    assert manifest["rows"] == {"start": BASE_ROWS, "count": new_rows, "end": BASE_ROWS + new_rows,
                                "vocab_size": token_space().vocab_size, "padded_vocab_size": token_space().padded_vocab_size}
    assert manifest["base"]["tied"] is tied and manifest["dtype"] == "float32"

    fresh = tiny_qwen3(tied)  # same seed: the same base weights, built anew
    loaded = patch_load(fresh, out).eval()
    ids = mixed_ids(token_space(), seed=99)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_patch_load_with_head_bias(tmp_path) -> None:
    model = _trained(False, steps=1, bias=True)
    save_trainable_rows(model, tmp_path / "a")
    assert "lm_head.new_bias" in load_file(str(tmp_path / "a" / "adapter.safetensors"))
    loaded = patch_load(tiny_qwen3(False, bias=True), tmp_path / "a")
    ids = mixed_ids(token_space())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


@TIED
def test_another_base_is_refused_naming_the_hash(tmp_path, tied: bool) -> None:
    save_trainable_rows(_trained(tied, steps=1), tmp_path / "a")
    with pytest.raises(AdapterMismatchError, match=r"^patch_load: base.embed_sha256: the adapter was made for sha256:[0-9a-f]{64}, this base has sha256:[0-9a-f]{64}$") as e:
        patch_load(tiny_qwen3(tied, seed=1), tmp_path / "a")
    assert e.value.field == "base.embed_sha256"
    other_cfg = tiny_qwen3(tied)
    other_cfg.config.rms_norm_eps = 1e-5
    with pytest.raises(AdapterMismatchError, match=r"^patch_load: base.config_sha256: "):
        patch_load(other_cfg, tmp_path / "a")
    with pytest.raises(AdapterMismatchError, match=r"^patch_load: base.config_sha256: "):
        patch_load(tiny_qwen3(not tied), tmp_path / "a")  # tie_word_embeddings is in the config
    if not tied:
        head_changed = tiny_qwen3(tied)
        with torch.no_grad():
            head_changed.lm_head.weight[7, 3] += 1
        with pytest.raises(AdapterMismatchError, match=r"^patch_load: base.lm_head_sha256: "):
            patch_load(head_changed, tmp_path / "a")


def test_tampered_adapter_and_manifest_refused(tmp_path) -> None:
    a = save_trainable_rows(_trained(False, steps=1), tmp_path / "a")
    tensors = load_file(str(a / "adapter.safetensors"))
    tensors["lm_head.new_rows"][0, 0] += 1
    save_file(tensors, str(a / "adapter.safetensors"))
    with pytest.raises(AdapterMismatchError, match=r"^patch_load: tensors.lm_head.new_rows.sha256: "):
        patch_load(tiny_qwen3(False), a)

    b = save_trainable_rows(_trained(False, steps=1), tmp_path / "b")
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["schema"] = "something.else"
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AdapterMismatchError, match=r"^patch_load: manifest: expected schema 'lumo.token_lm.adapter'"):
        patch_load(tiny_qwen3(False), b)

    c = save_trainable_rows(_trained(False, steps=1), tmp_path / "c")
    manifest = json.loads((c / "manifest.json").read_text())
    manifest["token_space"]["fingerprint"] = "sha256:" + "0" * 64
    (c / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AdapterMismatchError, match=r"^patch_load: token_space.fingerprint: "):
        patch_load(tiny_qwen3(False), c)


def test_patch_load_refuses_an_expanded_model(tmp_path) -> None:
    model = _trained(True, steps=1)
    save_trainable_rows(model, tmp_path / "a")
    with pytest.raises(AdapterMismatchError, match="expanded already"):
        patch_load(model, tmp_path / "a")


def test_save_overwrites_atomically(tmp_path) -> None:
    first = _trained(True, steps=1)
    second = _trained(True, steps=2)
    save_trainable_rows(first, tmp_path / "a")
    save_trainable_rows(second, tmp_path / "a")
    got = load_file(str(tmp_path / "a" / "adapter.safetensors"))["embed.new_rows"]
    assert torch.equal(got, second.get_input_embeddings().new_weight.detach())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temp dirs left


def test_identity_hashes() -> None:
    a, b = tiny_qwen3(True), tiny_qwen3(True)
    assert config_sha256(a.config) == config_sha256(b.config)
    b.config.num_hidden_layers = 2
    assert config_sha256(a.config) != config_sha256(b.config)
    t = torch.arange(12, dtype=torch.bfloat16).reshape(3, 4)
    assert tensor_sha256(t) == tensor_sha256(t.clone()) != tensor_sha256(t.float())
    assert tensor_sha256(t.t()) == tensor_sha256(t.t().contiguous())


@TIED
def test_merge_writes_a_plain_hf_checkpoint(tmp_path, tied: bool) -> None:
    from transformers import AutoModelForCausalLM

    model = _trained(tied, steps=2)
    reference = copy.deepcopy(model)
    path = merge(model, tmp_path / "merged")
    assert (path / "config.json").exists() and (path / "token_space.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(path).eval()
    assert plain.config.vocab_size == token_space().padded_vocab_size
    assert type(plain.get_input_embeddings()) is torch.nn.Embedding
    assert (plain.lm_head.weight is plain.get_input_embeddings().weight) == tied
    ids = mixed_ids(token_space(), seed=3)
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, reference(ids).logits)
        assert torch.equal(model(ids).logits, reference(ids).logits)  # restored after merge
    with pytest.raises(FileExistsError, match="exists"):
        merge(model, tmp_path / "merged")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
