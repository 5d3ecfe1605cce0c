"""token_space.json from untrusted hands: size limits, field types, nesting, the tokenizer."""

from __future__ import annotations

import copy
import json

import pytest

import lumo_uti
from lumo_uti import TokenSpace, TokenSpaceError
from lumo_uti._hashing import canonical_json, sha256_bytes
from lumo_uti.token_space import MAX_CODEBOOKS, MAX_VOCAB_SIZE, BaseSpec, default_blocks
from uti_strategies import qwen_base

DEFAULT = lumo_uti.load().token_space


def _signed(data: dict) -> bytes:
    """``data`` as file bytes with a fingerprint that matches, so only the content is judged."""
    data = copy.deepcopy(data)
    data.pop("fingerprint", None)
    data["fingerprint"] = sha256_bytes(canonical_json(data))
    return json.dumps(data).encode()


def _edited(edit) -> bytes:
    data = DEFAULT.to_json()
    edit(data)
    return _signed(data)


def _grow_audio(data: dict, codebook_size: int, num_codebooks: int = 8) -> None:
    audio = data["blocks"][-1]
    audio.update(codebook_size=codebook_size, num_codebooks=num_codebooks, size=codebook_size * num_codebooks)
    data["vocab_size"] = audio["offset"] + audio["size"]
    data["padded_vocab_size"] = -(-data["vocab_size"] // 128) * 128


def _load_error(raw: bytes) -> TokenSpaceError:
    with pytest.raises(TokenSpaceError) as info:
        TokenSpace.from_json_bytes(raw)
    return info.value


def test_from_json_bytes_reads_what_save_writes():
    assert TokenSpace.from_json_bytes(DEFAULT.to_json_bytes()) == DEFAULT


# -- sizes ---------------------------------------------------------------------------------------
def test_a_block_of_2_to_the_40_rows_is_refused_at_load():
    err = _load_error(_edited(lambda d: _grow_audio(d, 2**37)))  # 8 x 2^37 = 2^40 rows
    assert err.rule == "block"
    assert f"block 'audio': size is {2**40}, beyond the limit of {MAX_VOCAB_SIZE}" in str(err)


def test_a_vocabulary_past_the_limit_is_refused_even_in_small_blocks():
    def edit(d):
        _grow_audio(d, MAX_VOCAB_SIZE // 8)  # the block fits the limit, its end does not

    err = _load_error(_edited(edit))
    assert err.rule == "vocab" and "the end of block 'audio' (vocab_size)" in str(err)


@pytest.mark.parametrize(
    "field, value, rule, words",
    [
        ("text_vocab_size", MAX_VOCAB_SIZE + 1, "base", "base.text_vocab_size is"),
        ("base_rows", 2**40, "base", "base.base_rows is"),
        ("pad_to_multiple_of", 2**30, "vocab", "padded_vocab_size"),
        ("num_codebooks", MAX_CODEBOOKS + 1, "block", "num_codebooks is"),
    ],
)
def test_sizes_beyond_the_limits_name_the_field(field, value, rule, words):
    def edit(d):
        if field in ("text_vocab_size", "base_rows"):
            d["base"][field] = value
        elif field == "pad_to_multiple_of":
            d[field] = value
            d["padded_vocab_size"] = value
        else:
            _grow_audio(d, 1, value)

    err = _load_error(_edited(edit))
    assert err.rule == rule and words in str(err)


def test_build_checks_the_same_limits():
    from lumo_uti.token_space import codes_block

    with pytest.raises(TokenSpaceError, match="beyond the limit"):
        TokenSpace.build(qwen_base(), default_blocks()[:3] + [codes_block("audio", 2**37, 8)])


# -- types and nesting ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tokens",
    [[["<|image_start|>"]], "<|image_start|>", {"a": 1}, [1, 2], None],
    ids=["nested", "string", "object", "ints", "null"],
)
def test_special_tokens_must_be_a_list_of_strings(tokens):
    def edit(d):
        d["blocks"][0]["tokens"] = tokens

    err = _load_error(_edited(edit))
    assert err.rule == "special" and "block 'special': tokens must be a list of strings" in str(err)


@pytest.mark.parametrize("field, value", [("name", ["x"]), ("kind", {"k": 1}), ("modality", [1]), ("layout", 3)])
def test_block_fields_of_the_wrong_type_name_the_field(field, value):
    def edit(d):
        d["blocks"][-1][field] = value

    err = _load_error(_edited(edit))
    assert err.rule == "block" and (field in str(err))


def test_deeply_nested_json_is_a_token_space_error():
    err = _load_error(b"[" * 100_000 + b"]" * 100_000)
    assert err.rule == "schema" and "not valid JSON" in str(err)


def test_deeply_nested_values_are_a_token_space_error():
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    data = DEFAULT.to_json()
    data["codecs"]["image"]["options"] = deep
    with pytest.raises(TokenSpaceError) as info:
        TokenSpace.from_json(data)
    assert info.value.rule == "schema"


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"{", b"NaN", b'{"schema": 1e999}', b"1" * 5000], ids=str)
def test_broken_bytes_are_token_space_errors(raw):
    assert _load_error(raw).rule in ("schema", "fingerprint")


# -- against the tokenizer -----------------------------------------------------------------------
@pytest.mark.parametrize("delta", [+100, -100], ids=["beyond", "short of"])
def test_load_checks_text_vocab_size_against_the_tokenizer(tmp_path, delta):
    tok = qwen_base()
    size = tok.text_vocab_size + delta
    specials = {name: i for name, i in tok.special_tokens.items() if i < size}
    base = BaseSpec(tok.tokenizer, size, 151936, specials)
    TokenSpace.build(base, default_blocks(), name="bad-text").save(tmp_path / "token_space.json")
    with pytest.raises(TokenSpaceError) as info:
        lumo_uti.load(tmp_path)
    assert info.value.rule == "base"
    assert f"base.text_vocab_size is {151669 + delta} but the text tokenizer" in str(info.value)
    assert "has 151669 token IDs" in str(info.value)


def test_a_hand_built_uti_checks_text_vocab_size_too():
    tok = qwen_base()
    size = tok.text_vocab_size - 100
    specials = {name: i for name, i in tok.special_tokens.items() if i < size}
    ts = TokenSpace.build(BaseSpec(tok.tokenizer, size, 151936, specials), default_blocks(), name="bad-text")
    with pytest.raises(TokenSpaceError, match="base.text_vocab_size is 151569"):
        lumo_uti.UTI(ts, lumo_uti.load().text_tokenizer)
