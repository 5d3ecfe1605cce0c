"""One errors module per package: one base, one type per condition, the CLI's one-line exit 2."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import lumo_model.errors as model_errors
import lumo_uti
import lumo_uti.errors as uti_errors
from lumo_uti import AudioCodes, ImageCodes, ImagePlaceholder, TokenSpace
from lumo_uti.cli import main
from lumo_uti.errors import TokenSpaceError, TokenSpaceLookupError, UTIError
from lumo_uti.grammar import Grammar
from uti_strategies import qwen_base
from lumo_uti.token_space import special_block

ROOT = Path(__file__).resolve().parents[1]


def _classes(module) -> list[type]:
    return [c for _, c in inspect.getmembers(module, inspect.isclass)
            if issubclass(c, BaseException) and c.__module__ == module.__name__]


def test_every_error_derives_from_the_base_and_is_listed():
    for module in (uti_errors, model_errors):
        classes = _classes(module)
        assert len(classes) >= 5
        assert all(issubclass(c, UTIError) for c in classes), classes
        assert sorted(module.__all__) == sorted(c.__name__ for c in classes)
    assert all(issubclass(c, model_errors.LumoModelError) for c in _classes(model_errors))


def test_no_exception_class_outside_the_errors_modules():
    found = []
    for package in ("lumo_uti", "lumo_model"):
        for path in sorted((ROOT / "python" / package).rglob("*.py")):
            if path.name == "errors.py" or "ops" in path.relative_to(ROOT / "python" / package).parts:
                continue
            for m in re.finditer(r"^class (\w+)\((\w*(Error|Exception)\w*)", path.read_text(), re.M):
                if not m.group(1).startswith("_"):
                    found.append(f"{path.relative_to(ROOT)}: {m.group(1)}")
    assert sorted(found) == []


def test_every_public_error_is_documented():
    doc = (ROOT / "docs" / "errors.md").read_text()
    for module in (uti_errors, model_errors):
        for c in _classes(module):
            assert f"`{c.__name__}`" in doc, c.__name__


def test_moved_errors_are_still_importable_where_they_were():
    from lumo_model.token_lm import AdapterMismatchError
    from lumo_model.vlm import PlaceholderMismatchError, TruncationError
    from lumo_uti.codecs import CodecError
    from lumo_uti.codecs.hf_common import CodecError as hf_codec_error
    from lumo_uti.datasets import DocumentError, IndexedFormatError, ShardFolderError, TooManyErrors

    assert CodecError is hf_codec_error is uti_errors.CodecError
    assert (AdapterMismatchError, PlaceholderMismatchError, TruncationError) == (
        model_errors.AdapterMismatchError, model_errors.PlaceholderMismatchError, model_errors.TruncationError)
    assert (DocumentError, IndexedFormatError, ShardFolderError, TooManyErrors) == (
        uti_errors.DocumentError, uti_errors.IndexedFormatError, uti_errors.ShardFolderError, uti_errors.TooManyErrors)


def _text_only_space() -> TokenSpace:
    """A token space with no grid, image or audio block (and no <|image_patch|>)."""
    return TokenSpace.build(qwen_base(), [special_block(["<|x|>"])], name="bare")


def test_a_missing_block_is_one_type_wherever_it_is_found():
    ts = _text_only_space()
    grammar = Grammar(ts, lambda s: [], lambda ids: "")
    attempts = [
        lambda: ts.block("image"),
        lambda: ts.id_of("<|image_start|>"),
        lambda: ts.grid_id(3),
        lambda: grammar.encode([ImageCodes(np.zeros((1, 1, 1), dtype=np.int64))]),
        lambda: grammar.encode([AudioCodes(np.zeros((1, 8), dtype=np.int64))]),
        lambda: grammar.encode([ImagePlaceholder(2)]),
    ]
    for attempt in attempts:
        with pytest.raises(TokenSpaceLookupError) as info:
            attempt()
        e = info.value
        assert isinstance(e, KeyError) and isinstance(e, ValueError) and e.rule in ("block", "special")
        assert str(e).startswith("token space [") and not str(e).startswith("'")  # not quoted like a KeyError


def test_code_id_raises_one_type():
    ts = lumo_uti.load().token_space
    image, grid = ts.codes_block("image"), ts.block("grid")
    assert image.code_id(0, 5) == image.offset + 5
    for attempt in (lambda: grid.code_id(0, 0), lambda: image.code_id(1, 0), lambda: image.code_id(0, -1),
                    lambda: image.code_id(0, image.codebook_size)):
        with pytest.raises(TokenSpaceError) as info:
            attempt()
        assert type(info.value) is TokenSpaceError and info.value.rule == "range"


def test_values_beyond_a_block_are_range_errors():
    uti = lumo_uti.load()
    big = uti.token_space.codes_block("image").codebook_size
    for doc in ([ImageCodes(np.full((1, 1, 1), big, dtype=np.int64))],
                [ImageCodes(np.zeros((2, 1, 1), dtype=np.int64))],
                [AudioCodes(np.zeros((1, 3), dtype=np.int64))]):
        with pytest.raises(TokenSpaceError) as info:
            uti.encode(doc)
        assert info.value.rule == "range"
    with pytest.raises(TokenSpaceError, match=r"\[range\]"):
        uti.token_space.grid_id(0)


@pytest.mark.parametrize("error", [
    model_errors.TruncationError("the template alone\nexceeds max_seq_len"),
    uti_errors.GatesError("gates.json: line 3\n  bad"),
    TokenSpaceLookupError("block", "no block 'video'"),
])
def test_the_cli_reports_any_library_error_as_one_line_and_exit_2(capsys, monkeypatch, error):
    def fail(args):
        raise error

    monkeypatch.setattr("lumo_uti.cli._cmd_inspect", fail)
    assert main(["inspect"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lumo inspect: ")
    assert " ".join(str(error).split()) in err


def test_a_bug_is_not_swallowed(monkeypatch):
    def fail(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("lumo_uti.cli._cmd_inspect", fail)
    with pytest.raises(ZeroDivisionError):
        main(["inspect"])
