"""Pickling the UTI, its tokenizers and codecs: DataLoader workers, Ray, ``datasets`` fingerprints.

A UTI from ``lumo_uti.load`` pickles as a small reference to its bundle; a UTI
built by hand pickles by value (codecs without their packed-codebook caches).
Either way, equal UTIs give equal bytes, in this process and in another.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lumo_uti
from lumo_uti import UTI, Audio, BundleError, ImageCodes, TokenizerMismatchError
from lumo_uti.codecs import CodecError
from lumo_uti.text import HFTextTokenizer, qwen3_tokenizer
from lumo_uti.token_space import BaseSpec, TokenSpace, default_blocks


def _document(i: int) -> list:
    """Document ``i``: text, a small photo-like image and a short tone (the same in every process)."""
    rng = np.random.default_rng(i)
    pixels = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
    t = np.arange(1600 + 160 * i) / 16000
    wave = (0.3 * np.sin(2 * np.pi * (220 + 40 * i) * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    return [f"document {i}:", Image.fromarray(pixels), "then", Audio(torch.from_numpy(wave)[None], 16000)]


def _hand_built(uti: UTI) -> UTI:
    """A UTI with the same parts as ``uti`` but built by hand (no source bundle)."""
    return UTI(uti.token_space, uti.text_tokenizer, image_codec=uti.image_codec, audio_codec=uti.audio_codec)


def _tiny_bundle(root: Path, letters: str = "abcdefghijklmnopqrstuvwxyz ") -> Path:
    """A codec-free bundle over a tiny character-level Hugging Face tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(letters)}
    vocab["[UNK]"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    (root / "tokenizer").mkdir(parents=True)
    tok.save(str(root / "tokenizer" / "tokenizer.json"))
    hf = HFTextTokenizer(root / "tokenizer")
    ts = TokenSpace.build(BaseSpec(dict(hf.identity, path="tokenizer"), hf.vocab_size, 32), default_blocks(),
                          name="tiny-text")
    ts.save(root / "token_space.json")
    return root


@pytest.fixture(scope="module")
def uti() -> UTI:
    return lumo_uti.load()


# ------------------------------------------------------------------ loaded UTIs: by reference


def test_loaded_uti_pickles_as_a_small_reference(uti):
    data = pickle.dumps(uti)
    assert len(data) < 300, len(data)
    assert uti.token_space.fingerprint.encode() in data
    # The same default bundle loaded again (a new object) pickles to the same bytes.
    again = lumo_uti.load(lumo_uti.default_bundle_dir())
    assert again is not uti
    assert pickle.dumps(again) == data


@pytest.mark.parametrize("built", ["loaded", "hand-built"])
def test_round_trip_of_a_fresh_and_a_used_uti_gives_the_same_encodes(uti, built):
    u = uti if built == "loaded" else _hand_built(uti)
    docs = [_document(0), _document(1)]
    fresh = pickle.loads(pickle.dumps(u))
    expected = u.encode_batch(docs)
    assert fresh.encode_batch(docs) == expected
    # Used: both codecs now hold a packed codebook, the state that did not pickle.
    assert u.image_codec._codebook._packed is not None and u.audio_codec._codebooks._packed is not None
    data = pickle.dumps(u)
    used = pickle.loads(data)
    if built == "hand-built":
        assert len(data) > 1_000_000  # by value
        assert used.image_codec is not u.image_codec
        assert used.image_codec._codebook._packed is None  # dropped, rebuilt on the next encode
    assert used.encode_batch(docs) == expected
    assert used.decode(expected[0])[0] == "document 0:"
    assert pickle.dumps(used) == data  # a round trip changes nothing


def test_equal_uti_pickles_are_equal_bytes_in_another_process(uti):
    hand = _hand_built(uti)
    here = [hashlib.sha256(pickle.dumps(u)).hexdigest() for u in (uti, hand)]
    assert pickle.dumps(_hand_built(uti)) == pickle.dumps(hand)
    code = (
        "import hashlib, pickle, lumo_uti\n"
        "from lumo_uti import UTI\n"
        "u = lumo_uti.load()\n"
        "h = UTI(u.token_space, u.text_tokenizer, image_codec=u.image_codec, audio_codec=u.audio_codec)\n"
        "print(*(hashlib.sha256(pickle.dumps(x)).hexdigest() for x in (u, h)))\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")  # another string-hash order than this process's
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == here


def test_datasets_fingerprint_is_stable_and_fast(uti):
    fingerprint = pytest.importorskip("datasets.fingerprint")
    hasher = fingerprint.Hasher
    again = lumo_uti.load(lumo_uti.default_bundle_dir())
    assert hasher.hash(uti) == hasher.hash(again) == hasher.hash(pickle.loads(pickle.dumps(uti)))
    hand = _hand_built(uti)
    assert hasher.hash(hand) == hasher.hash(_hand_built(uti)) != hasher.hash(uti)
    best = min(_seconds(lambda: hasher.hash(uti)) for _ in range(3))
    assert best < 0.1, f"Hasher.hash(default UTI) took {best:.3f} s"

    def encode(example):  # what datasets.map fingerprints: a function closing over the UTI
        return {"ids": uti.encode(example["text"])}

    assert hasher.hash(encode) == hasher.hash(encode)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_reference_to_a_changed_or_missing_bundle_is_refused(tmp_path):
    root = _tiny_bundle(tmp_path / "b")
    u = lumo_uti.load(root)
    data = pickle.dumps(u)
    assert str(root.absolute()).encode() in data and len(data) < 300 + len(str(root.absolute()))
    assert pickle.loads(data).encode("ab c") == u.encode("ab c") == [0, 1, 26, 2]
    obj = json.loads((root / "token_space.json").read_text())
    obj.pop("fingerprint")
    obj["name"] = "renamed"
    TokenSpace(obj).save(root / "token_space.json")
    with pytest.raises(BundleError, match="fingerprint"):
        pickle.loads(data)
    (root / "token_space.json").unlink()
    with pytest.raises(BundleError, match="no longer loads"):
        pickle.loads(data)


def test_reference_only_while_as_loaded(uti):
    """A loaded UTI whose parts were replaced pickles what it is now, not what was loaded."""
    u = copy.copy(uti)
    assert pickle.dumps(u) == pickle.dumps(uti)
    u.image_codec = None
    back = pickle.loads(pickle.dumps(u))
    assert back.image_codec is None and back.audio_codec is not None
    assert uti.image_codec is not None  # the copy's change left the original alone


def test_deepcopy_copies_the_codecs_and_keeps_the_reference(uti):
    twin = copy.deepcopy(uti)
    assert twin is not uti and twin.image_codec is not uti.image_codec
    assert twin.image_codec.model.codebook.data_ptr() != uti.image_codec.model.codebook.data_ptr()
    assert pickle.dumps(twin) == pickle.dumps(uti)
    doc = _document(2)
    assert twin.encode(doc) == uti.encode(doc)


# ------------------------------------------------------------------ tokenizers and codecs


def test_qwen_tokenizer_pickles_by_reference():
    tok = qwen3_tokenizer()
    data = pickle.dumps(tok)
    assert len(data) < 200
    assert pickle.loads(data) is tok


def test_hf_tokenizer_pickles_by_reference_with_its_hash(tmp_path):
    root = _tiny_bundle(tmp_path / "b")
    tok = HFTextTokenizer(root / "tokenizer")
    data = pickle.dumps(tok)
    assert len(data) < 400 and pickle.dumps(tok) == data
    assert pickle.loads(data).encode("abc") == [0, 1, 2]
    file = root / "tokenizer" / "tokenizer.json"
    file.write_text(file.read_text().replace('"z"', '"Z"'))
    with pytest.raises(TokenizerMismatchError, match="changed after pickling"):
        pickle.loads(data)


HF_CODECS = ["janus", "chameleon", "emu3", "encodec", "dac", "mimi"]


@pytest.mark.parametrize("name", HF_CODECS)
def test_hf_codec_pickles_by_reference_after_encoding(tmp_path, name):
    pytest.importorskip("transformers")
    import codec_models

    from lumo_uti import codecs

    kind = codec_models.TINY[name][0]
    codec = codecs.load(f"{kind}:{codec_models.make(name, tmp_path)}")
    if codec.modality == "image":
        w, h = codec.pixel_size(16, 16)
        x = torch.rand(2, 3, h, w) * 2 - 1
    else:
        x = torch.randn(2, codec.channels, 800) * 0.1
    codes = codec.encode_tensor(x)  # fills the packed-codebook cache
    data = pickle.dumps(codec)
    assert len(data) < 1000 and pickle.dumps(codec) == data
    back = pickle.loads(data)
    assert type(back) is type(codec) and back.identity == codec.identity
    assert torch.equal(back.encode_tensor(x), codes)
    from safetensors.torch import load_file, save_file

    weights = next((tmp_path / name).glob("*.safetensors"))
    state = load_file(weights)
    first = sorted(state)[0]
    state[first] = state[first] + 1  # same shapes, another weights hash
    save_file(state, weights)
    with pytest.raises(CodecError, match="changed after the codec was pickled"):
        pickle.loads(data)


def test_lumo_codec_pickles_by_value_without_its_cache(uti):
    codec = uti.audio_codec
    codec.encode(_document(3)[3])
    assert codec._codebooks._packed is not None
    back = pickle.loads(pickle.dumps(codec))
    assert back._codebooks._packed is None
    assert back.model.codebooks.dtype == codec.model.codebooks.dtype
    assert torch.equal(back.model.codebooks, codec.model.codebooks)
    assert [n for n, _ in back.model.named_buffers()] == [n for n, _ in codec.model.named_buffers()]
    assert back.encode(_document(3)[3])[0] == codec.encode(_document(3)[3])[0]


# ------------------------------------------------------------------ DataLoader workers (spawn)


class EncodeDocuments(torch.utils.data.Dataset):
    """Encodes ``_document(i)`` with the UTI it holds (pickled into each spawned worker)."""

    def __init__(self, uti: UTI, n: int):
        self.uti, self.n = uti, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(self.uti.encode(_document(i)))


def test_dataloader_spawn_workers_encode_like_the_parent(uti):
    n = 4
    expected = [uti.encode(_document(i)) for i in range(n)]  # the parent has used the codecs
    loader = torch.utils.data.DataLoader(
        EncodeDocuments(uti, n), batch_size=None, num_workers=2, multiprocessing_context="spawn"
    )
    got = [ids.tolist() for ids in loader]
    assert got == expected
    assert all(isinstance(uti.decode_codes(ids)[1], ImageCodes) for ids in expected)  # images were encoded
