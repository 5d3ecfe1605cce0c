"""Token IDs and codes of every integer dtype, and tensors that hold no values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lumo_uti
from lumo_uti import AudioCodes, ImageCodes, UTIDecodeError, ops

UTI = lumo_uti.UTI(lumo_uti.load().token_space, lumo_uti.load().text_tokenizer)
TS = UTI.token_space
TEXT = [100, 200, 33]  # text IDs that fit in every unsigned dtype
U64_BIG = [2**64 - 1, 2**63]  # beyond int64: a plain cast would wrap them to negative IDs

NUMPY_UNSIGNED = [np.uint8, np.uint16, np.uint32, np.uint64]
TORCH_UNSIGNED = [torch.uint8, torch.uint16, torch.uint32, torch.uint64]


def _as(dtype, values):
    """Small non-negative ``values`` as a numpy array or tensor of ``dtype``."""
    if isinstance(dtype, torch.dtype):
        return torch.tensor(values, dtype=torch.int64).to(dtype)
    return np.array(values, dtype=dtype)


@pytest.mark.parametrize("dtype", NUMPY_UNSIGNED + TORCH_UNSIGNED, ids=str)
def test_unsigned_ids_decode_like_int64(dtype):
    ids = _as(dtype, TEXT)
    assert UTI.decode(ids) == UTI.decode(TEXT)
    lenient, want = UTI.decode_codes(ids, strict=False), UTI.decode_codes(TEXT, strict=False)
    assert lenient == want and lenient.repairs == want.repairs
    assert (UTI.allowed_next(ids) == UTI.allowed_next(TEXT)).all()
    assert UTI.grammar.state_after(ids) == UTI.grammar.state_after(TEXT)
    assert TS.classify(ids).tolist() == TS.classify(np.array(TEXT)).tolist()


@pytest.mark.parametrize("make", [np.array, torch.from_numpy], ids=["numpy", "torch"])
def test_uint64_ids_beyond_int64_are_out_of_range_not_wrapped(make):
    ids = make(np.array(U64_BIG + TEXT, dtype=np.uint64))
    with pytest.raises(UTIDecodeError) as info:
        UTI.decode(ids)
    assert (info.value.position, info.value.rule) == (0, "id.out_of_range")
    segments = UTI.decode_codes(ids, strict=False)
    repairs = segments.repairs
    assert segments == UTI.decode(TEXT)
    assert [(r.position, r.end, r.rule) for r in repairs] == [(0, 2, "id.out_of_range")]
    assert TS.classify(ids).tolist()[:2] == [-1, -1]
    with pytest.raises(UTIDecodeError, match="id.out_of_range"):
        UTI.allowed_next(ids)


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64], ids=str)
def test_classify_op_takes_wide_unsigned_tensors(dtype):
    ids = torch.tensor([0, 3, 5, 200], dtype=torch.int64).to(dtype)
    assert ops.classify_ids(ids, [0, 3, 100]).tolist() == [0, 1, 1, -1]


def test_classify_op_saturates_uint64_tensors():
    ids = torch.from_numpy(np.array([2**64 - 1, 2**63, 2**63 - 1, 5], dtype=np.uint64))
    # A wrapped 2**64 - 1 would be -1 and fall in [-10, 3).
    assert ops.classify_ids(ids, [-10, 3, 100]).tolist() == [-1, -1, -1, 1]


@pytest.mark.parametrize("cls, shape", [(ImageCodes, (1, 1)), (AudioCodes, (1, 1))], ids=["image", "audio"])
@pytest.mark.parametrize("make", [np.array, torch.from_numpy, "object"], ids=["numpy", "torch", "object"])
def test_codes_beyond_int64_are_refused_by_value(cls, shape, make):
    big = 2**64 - 1
    codes = np.array([big], dtype=np.uint64).reshape(shape)
    codes = np.array([[big]], dtype=object) if make == "object" else make(codes)
    with pytest.raises(ValueError, match=f"code {big} is beyond int64"):
        cls(codes)


@pytest.mark.parametrize("dtype", NUMPY_UNSIGNED + TORCH_UNSIGNED, ids=str)
def test_unsigned_codes_encode_like_int64(dtype):
    codes = _as(dtype, [1, 2, 3, 4, 5, 6])
    grid = codes.reshape(2, 3)
    assert UTI.encode([ImageCodes(grid)]) == UTI.encode([ImageCodes(np.arange(1, 7).reshape(2, 3))])


def test_meta_tensors_are_refused_with_a_clear_error():
    meta = torch.empty(3, dtype=torch.int64, device="meta")
    for call in (UTI.decode, lambda t: UTI.decode_codes(t, strict=False), UTI.allowed_next, TS.classify):
        with pytest.raises(ValueError, match="meta tensor, which has no values"):
            call(meta)
    with pytest.raises(ValueError, match="meta tensor"):
        ImageCodes(torch.empty(2, 2, dtype=torch.int64, device="meta"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.bool, torch.complex64], ids=str)
def test_non_integer_tensors_are_type_errors(dtype):
    with pytest.raises(TypeError, match=f"expected integers, got dtype {dtype}"):
        UTI.decode(torch.zeros(3, dtype=dtype))
    with pytest.raises(TypeError, match=f"expected integers, got dtype {dtype}"):
        UTI.decode_codes(torch.zeros(3, dtype=dtype), strict=False)


def test_sparse_tensors_are_refused():
    with pytest.raises(TypeError, match="expected a dense"):
        UTI.decode(torch.tensor([1, 2, 3]).to_sparse())
