"""The public API as the README shows it: load, encode, decode, bundles."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import lumo_uti
from lumo_uti import AudioCodes, ImageCodes, TokenizerMismatchError, UTIDecodeError


def test_readme_tour():
    uti = lumo_uti.load()
    assert uti.encode("Hello world") == [9707, 1879]
    grid = np.arange(64).reshape(8, 8)
    frames = np.arange(40).reshape(5, 8)
    doc = ["a caption", ImageCodes(grid), "then sound:", AudioCodes(frames)]
    ids = uti.encode(doc)
    assert isinstance(ids, list) and all(type(i) is int for i in ids)
    assert uti.decode_codes(ids) == doc
    # the default bundle has codecs: decode gives media (8x8 codes -> 64x64 pixels, 5 frames -> 4 hops of audio)
    hop = uti.audio_codec.model.hop
    text, image, text2, audio = uti.decode(ids)
    assert (text, text2) == ("a caption", "then sound:")
    assert image.size == (64, 64) and isinstance(audio, lumo_uti.Audio) and audio.waveform.shape == (1, 4 * hop)
    assert isinstance(uti.token_space, lumo_uti.TokenSpace)
    segments = uti.decode_codes(ids[:-2] + [-7], strict=False)  # lose a code and the end marker
    repairs = segments.repairs
    assert [r.rule for r in repairs] == ["id.negative", "span.unterminated", "audio.truncated_frame"]
    assert segments[:3] == doc[:3] and segments[3] == AudioCodes(frames[:4])
    media = uti.decode(ids[:-2] + [-7], strict=False)
    assert media[3].waveform.shape == (1, 3 * hop)
    assert lumo_uti.encode("text") == uti.encode("text")
    assert lumo_uti.decode(ids)[0] == "a caption"
    with pytest.raises(UTIDecodeError):
        lumo_uti.decode(ids[:-1])


def test_load_returns_the_same_default_object():
    assert lumo_uti.load() is lumo_uti.load()


def test_allow_special_switch():
    uti = lumo_uti.load()
    assert uti.encode("<|im_start|>") == [151644]
    plain = uti.encode("<|im_start|>", allow_special=False)
    assert len(plain) > 1 and max(plain) < 151643
    assert uti.decode(plain) == ["<|im_start|>"]


def test_batch_api():
    uti = lumo_uti.load()
    docs = ["one", ["two", ImageCodes([[3]])]]
    batch = uti.encode_batch(docs)
    assert batch == [uti.encode(d) for d in docs]
    decoded = uti.decode_batch(batch)  # the default bundle decodes image codes to pictures
    assert decoded[0] == ["one"] and decoded[1][0] == "two" and decoded[1][1].size == (8, 8)


def test_bundle_directory_round_trip(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(lumo_uti.default_bundle_dir(), bundle)
    uti = lumo_uti.load(bundle)
    assert uti.token_space == lumo_uti.load().token_space
    assert lumo_uti.load(bundle / "token_space.json").token_space == uti.token_space


def test_bundle_with_a_different_tokenizer_hash_is_refused(tmp_path):
    data = lumo_uti.load().token_space.to_json()
    data.pop("fingerprint")
    data["base"]["tokenizer"]["hash"] = "sha256:" + "ab" * 32
    lumo_uti.TokenSpace(data).save(tmp_path / "token_space.json")
    with pytest.raises(TokenizerMismatchError, match="sha256:abab"):
        lumo_uti.load(tmp_path)


def test_missing_bundle_errors(tmp_path):
    with pytest.raises(lumo_uti.BundleError, match="bundle not found"):
        lumo_uti.load(tmp_path / "nope")
    with pytest.raises(lumo_uti.BundleError, match="no token_space.json"):
        lumo_uti.load(tmp_path)


def test_hf_tokenizer_bundle(tmp_path):
    """A bundle whose base is a local Hugging Face tokenizer.json, not Qwen."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from lumo_uti.text import HFTextTokenizer
    from lumo_uti.token_space import BaseSpec, TokenSpace, default_blocks

    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz ")}
    vocab["[UNK]"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    (tmp_path / "tokenizer").mkdir()
    tok.save(str(tmp_path / "tokenizer" / "tokenizer.json"))
    hf = HFTextTokenizer(tmp_path / "tokenizer")
    identity = dict(hf.identity, path="tokenizer")
    ts = TokenSpace.build(BaseSpec(identity, hf.vocab_size, 32), default_blocks(), name="tiny-text")
    ts.save(tmp_path / "token_space.json")
    uti = lumo_uti.load(tmp_path)
    ids = uti.encode(["ab c", ImageCodes([[5]])])
    assert ids[:4] == [0, 1, 26, 2] and ids[4] == ts.id_of("<|image_start|>") and ids[4] == 32
    assert uti.decode(ids)[1] == ImageCodes([[5]])
    (tmp_path / "tokenizer" / "tokenizer.json").write_text(
        (tmp_path / "tokenizer" / "tokenizer.json").read_text().replace('"z"', '"Z"')
    )
    with pytest.raises(TokenizerMismatchError):
        lumo_uti.load(tmp_path)


def test_decode_result_is_json_friendly():
    uti = lumo_uti.load()
    result = uti.decode([5, -1, 6], strict=False)
    assert json.dumps([r.__dict__ for r in result.repairs])
