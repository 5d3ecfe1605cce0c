"""The token-space ABI: layout rules, validation, fingerprint, compatibility, files."""

from __future__ import annotations

import bisect
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lumo_uti
from lumo_uti import TokenSpace, TokenSpaceError
from lumo_uti.token_space import codes_block, grid_block, special_block
from uti_strategies import qwen_base, small_space, token_spaces

DEFAULT = lumo_uti.load().token_space


def _rehash(data: dict) -> dict:
    """``data`` with a fingerprint recomputed for its (edited) contents."""
    data = dict(data)
    data.pop("fingerprint", None)
    return TokenSpace(data).to_json()


# -- the default space ----------------------------------------------------------------------
def test_default_blocks_are_fixed():
    ts = DEFAULT
    assert ts.base_rows == 151936 and ts.text_vocab_size == 151669
    assert ts.blocks[0].offset == 151936  # UTI IDs start right after Qwen3's rows
    image, audio = ts.block("image"), ts.block("audio")
    assert (image.codebook_size, image.num_codebooks, image.size) == (16384, 1, 16384)
    assert (audio.codebook_size, audio.num_codebooks, audio.size) == (1024, 8, 8192)
    assert audio.code_id(3, 5) == audio.offset + 3 * 1024 + 5
    assert ts.padded_vocab_size % 128 == 0 and ts.padded_vocab_size >= ts.vocab_size == audio.end
    assert ts.id_of("<|endoftext|>") == 151643 and ts.id_of("</think>") == 151668
    names = [r.name for r in ts.regions]
    assert names == ["text", "base_padding", "special", "grid", "image", "audio", "padding"]
    assert ts.regions[1].start == 151669 and ts.regions[1].end == 151936


def test_shipped_default_file_is_what_the_code_builds():
    shipped = TokenSpace.load(lumo_uti.default_bundle_dir() / "token_space.json")
    assert shipped == lumo_uti.build_default_token_space()
    assert shipped.to_json() == lumo_uti.build_default_token_space().to_json()


def test_block_lookup_errors_name_the_blocks():
    with pytest.raises(KeyError, match="no block 'video'.*'image'"):
        DEFAULT.block("video")
    with pytest.raises(KeyError, match="no special token"):
        DEFAULT.id_of("<|video_start|>")
    with pytest.raises(ValueError, match=r"grid size must be in \[1, 256\]"):
        DEFAULT.grid_id(0)
    with pytest.raises(ValueError, match="codebook must be in"):
        DEFAULT.block("audio").code_id(8, 0)


# -- classify ---------------------------------------------------------------------------------
@settings(max_examples=50)
@given(ts=token_spaces(), ids=st.lists(st.integers(-(2**70), 2**70) | st.integers(-5, 152200), max_size=200))
def test_classify_matches_a_bisect_reference(ts, ids):
    starts = [r.start for r in ts.regions]
    expected = []
    for v in ids:
        if v < 0 or v >= ts.padded_vocab_size:
            expected.append(-1)
        else:
            expected.append(bisect.bisect_right(starts, v) - 1)
    got = ts.classify(ids)
    assert got.dtype == np.int32 and got.tolist() == expected


def test_classify_keeps_shape_and_rejects_floats():
    assert DEFAULT.classify(np.zeros((2, 3), dtype=np.int64)).shape == (2, 3)
    with pytest.raises(TypeError, match="expected integers"):
        DEFAULT.classify(np.zeros(3, dtype=np.float32))
    assert DEFAULT.region_name(151700) == "base_padding" and DEFAULT.region_name(-1) is None


# -- fingerprint and files --------------------------------------------------------------------
@settings(max_examples=30)
@given(ts=token_spaces())
def test_save_load_round_trip_keeps_the_fingerprint(tmp_path_factory, ts):
    path = tmp_path_factory.mktemp("ts") / "token_space.json"
    ts.save(path)
    again = TokenSpace.load(path)
    assert again.fingerprint == ts.fingerprint and again == ts
    assert again.to_json() == ts.to_json()
    assert TokenSpace.load(path.parent) == ts  # a directory holding token_space.json


def _block_edits(block: dict):
    for key, value in block.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            yield key, value + 1
        elif isinstance(value, str):
            yield key, value + "x"
        elif isinstance(value, list) and value:
            yield key, value[::-1] if len(value) > 1 else value + ["<|extra|>"]


def test_any_change_to_any_block_changes_the_fingerprint():
    base = DEFAULT.to_json()
    seen = {DEFAULT.fingerprint}
    edits = 0
    for index, block in enumerate(base["blocks"]):
        for key, value in _block_edits(block):
            data = json.loads(json.dumps(base))
            data["blocks"][index][key] = value
            # stored fingerprint no longer matches: refused on load
            with pytest.raises(TokenSpaceError) as info:
                TokenSpace.from_json(data)
            assert info.value.rule in {"fingerprint", "block", "gap", "overlap", "vocab", "special"}
            # the fingerprint of the edited contents (when they are still valid) differs
            data.pop("fingerprint")
            try:
                fp = TokenSpace(data).fingerprint
            except TokenSpaceError:
                continue
            assert fp not in seen
            seen.add(fp)
            edits += 1
    assert edits >= 5


def test_edited_file_fails_the_fingerprint_check(tmp_path):
    path = DEFAULT.save(tmp_path / "token_space.json")
    text = path.read_text().replace('"size": 16384', '"size": 16383', 1)
    text = text.replace('"codebook_size": 16384', '"codebook_size": 16383', 1)
    path.write_text(text)
    with pytest.raises(TokenSpaceError, match=r"\[fingerprint\].*edited") as info:
        TokenSpace.load(path)
    assert info.value.rule == "fingerprint"


def test_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = small_space().save(tmp_path / "token_space.json")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        DEFAULT.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["token_space.json"]  # no temp file left


# -- validation names the broken rule ---------------------------------------------------------
def _edited(mutate) -> dict:
    data = DEFAULT.to_json()
    data.pop("fingerprint")
    mutate(data)
    return data


@pytest.mark.parametrize(
    "mutate, rule, message",
    [
        (lambda d: d["blocks"][1].update(offset=d["blocks"][1]["offset"] - 1), "overlap", "inside the IDs before it"),
        (lambda d: d["blocks"][1].update(offset=d["blocks"][1]["offset"] + 1), "gap", "leaving a gap"),
        (lambda d: d["blocks"][0].update(offset=151669), "overlap", "starts at 151669"),
        (lambda d: d.update(schema_version=[2, 0]), "version", "unsupported schema major version 2"),
        (lambda d: d.update(schema_version="1.0"), "version", "schema_version must be"),
        (lambda d: d.update(schema="other"), "schema", "expected schema"),
        (lambda d: d.pop("blocks"), "schema", "missing field 'blocks'"),
        (lambda d: d.update(vocab_size=d["vocab_size"] + 1), "vocab", "end of the last block"),
        (lambda d: d.update(padded_vocab_size=d["vocab_size"]), "vocab", "rounded up"),
        (lambda d: d["blocks"][2].update(size=100), "block", "codebook_size"),
        (lambda d: d["blocks"][2].update(kind="pixels"), "block", "unknown kind"),
        (lambda d: d["blocks"][3].update(modality="image"), "block", "two image code blocks"),
        (lambda d: d["blocks"][3].update(name="image"), "block", "two blocks are called"),
        (lambda d: d["blocks"][0].update(tokens=["<|image_start|>"]), "special", "needs the special tokens"),
        (lambda d: d["blocks"][0].update(tokens=["<|im_end|>", "<|image_start|>"]), "special", "clash"),
        (lambda d: d["base"].update(base_rows=100), "base", "base_rows 100 < text_vocab_size"),
        (lambda d: d["base"].update(tokenizer={"kind": "x"}), "base", "'kind' and 'hash'"),
        (lambda d: d["codecs"].update(video={"kind": "x"}), "block", "no video block"),
    ],
)
def test_validation_names_the_broken_rule(mutate, rule, message):
    with pytest.raises(TokenSpaceError, match=message) as info:
        TokenSpace(_edited(mutate))
    assert info.value.rule == rule
    assert f"[{rule}]" in str(info.value)


def test_image_block_needs_a_grid_block():
    with pytest.raises(TokenSpaceError, match="needs a grid block"):
        TokenSpace.build(qwen_base(), [special_block(["<|image_start|>", "<|image_end|>"]), codes_block("image", 4)])


def test_load_rejects_non_json_and_missing_files(tmp_path):
    bad = tmp_path / "token_space.json"
    bad.write_text("{not json")
    with pytest.raises(TokenSpaceError, match="not valid JSON") as info:
        TokenSpace.load(bad)
    assert info.value.rule == "schema"
    bad.write_text('{"schema": "lumo.token_space", "x": NaN}')
    with pytest.raises(TokenSpaceError, match="not valid JSON"):
        TokenSpace.load(bad)
    with pytest.raises(FileNotFoundError, match="token space file not found"):
        TokenSpace.load(tmp_path / "missing.json")
    no_fp = DEFAULT.to_json()
    no_fp.pop("fingerprint")
    with pytest.raises(TokenSpaceError, match="no fingerprint"):
        TokenSpace.from_json(no_fp)


# -- compatibility ----------------------------------------------------------------------------
def test_appending_a_block_keeps_compatibility_moving_one_breaks_it():
    ts = small_space(audio=None)
    extended = ts.extend([codes_block("audio", 16, 2)])
    assert extended.block("image") == ts.block("image")
    assert ts.is_compatible(extended) and ts.is_compatible(ts)
    assert not extended.is_compatible(ts)  # the older space lacks the new block
    assert "block 'audio' is missing" in extended.compatibility_problems(ts)

    moved = TokenSpace.build(qwen_base(), [special_block(lumo_uti.token_space.DEFAULT_SPECIALS, 9), grid_block(4), codes_block("image", 7)])
    assert not ts.is_compatible(moved)
    assert any("changed" in p for p in ts.compatibility_problems(moved))
    resized = small_space(image=(8, 1), audio=None)
    assert not ts.is_compatible(resized)


def test_naming_a_reserved_special_slot_is_compatible():
    ts = DEFAULT
    data = ts.to_json()
    data.pop("fingerprint")
    data["blocks"][0]["tokens"].append("<|video_start|>")
    named = TokenSpace(data)
    assert ts.is_compatible(named) and named.id_of("<|video_start|>") == ts.id_of("<|image_patch|>") + 1
    renamed = TokenSpace(_edited(lambda d: d["blocks"][0]["tokens"].reverse()))
    assert not ts.is_compatible(renamed)


def test_codec_changes_and_tokenizer_changes():
    ts = small_space()
    with_codec = ts.with_codec("image", {"kind": "hf-janus", "weights_hash": "sha256:aa"})
    assert ts.is_compatible(with_codec)  # a codec for a modality that had none
    other_weights = ts.with_codec("image", {"kind": "hf-janus", "weights_hash": "sha256:bb"})
    assert not with_codec.is_compatible(other_weights)
    data = ts.to_json()
    data.pop("fingerprint")
    data["base"]["tokenizer"]["hash"] = "sha256:" + "0" * 64
    assert not ts.is_compatible(TokenSpace(data))
    with pytest.raises(TokenSpaceError, match="no video block"):
        ts.with_codec("video", {"kind": "x"})
