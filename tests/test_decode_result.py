"""UTI.decode / decode_codes return one type, strict or lenient: the segments (a list) with .repairs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import lumo_uti
from lumo_uti import DecodeResult, ImageCodes, UTIDecodeError


@pytest.fixture(scope="module")
def setup():
    uti = lumo_uti.load()
    doc = ["a caption", ImageCodes(np.arange(4, dtype=np.int64).reshape(1, 2, 2)), " after"]
    return uti, doc, uti.encode(doc)


@pytest.mark.parametrize("method", ["decode", "decode_codes"])
def test_strict_and_lenient_return_the_same_type(setup, method):
    uti, doc, ids = setup
    decode = getattr(uti, method)
    strict, lenient = decode(ids), decode(ids, strict=False)
    for result in (strict, lenient):
        assert type(result) is DecodeResult and isinstance(result, list) and result.repairs == []
        assert len(result) == 3 and result[0] == "a caption"
    broken = ids[:-4] + [-1]  # the image loses a code and its end marker, then a negative ID
    with pytest.raises(UTIDecodeError):
        decode(broken)
    repaired = decode(broken, strict=False)
    assert type(repaired) is DecodeResult and len(repaired.repairs) >= 2
    assert repaired.segments == list(repaired) and type(repaired.segments) is list


def test_equality_is_a_lists_and_pickling_keeps_the_repairs(setup):
    uti, doc, ids = setup
    clean, dirty = uti.decode_codes(ids, strict=False), uti.decode_codes(ids + [-1], strict=False)
    assert clean == dirty == doc and clean.repairs == [] and [r.rule for r in dirty.repairs] == ["id.negative"]
    back = pickle.loads(pickle.dumps(dirty))
    assert type(back) is DecodeResult and back == dirty and back.repairs == dirty.repairs
    assert repr(dirty).startswith("DecodeResult([")


def test_segment_types_are_enumerated_once():
    """Every kind in SEGMENT_TYPES encodes, decodes, has a JSON form and a description; media has none."""
    from PIL import Image

    from lumo_uti.docjson import describe_segment, document_from_json, segment_to_json
    from lumo_uti.segments import SEGMENT_TYPES, AudioCodes, ImagePlaceholder, segment_kind

    uti = lumo_uti.load()
    samples = {"text": "hello", "image_codes": ImageCodes(np.ones((1, 2, 2), dtype=np.int64)),
               "audio_codes": AudioCodes(np.ones((2, 8), dtype=np.int64)), "image_placeholder": ImagePlaceholder(3)}
    assert set(samples) == set(SEGMENT_TYPES)
    for kind, segment in samples.items():
        assert segment_kind(segment) == kind
        assert document_from_json([segment_to_json(segment)]) == [segment]
        assert describe_segment(segment) != type(segment).__name__
        assert uti.decode_codes(uti.encode([segment])) == [segment]
    image = Image.new("RGB", (8, 8))
    assert segment_kind(image) is None and describe_segment(image) == "Image"
    with pytest.raises(TypeError, match="expected str, ImageCodes, AudioCodes or ImagePlaceholder"):
        uti.grammar.encode([image])
