"""lumo-vq / lumo-rvq config.json is validated (types, ranges, weights header) before anything is built."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lumo_uti import codecs
from lumo_uti.codecs import CodecError
from lumo_uti.codecs.lumo_rvq import MdctRVQ
from lumo_uti.codecs.lumo_rvq import save_model as save_rvq
from lumo_uti.codecs.lumo_vq import PatchVQ
from lumo_uti.codecs.lumo_vq import save_model as save_vq
from lumo_uti.codecs.model_files import read_safetensors_header


class _NoLargeTensors(TorchDispatchMode):
    """Fails as soon as an op makes a real (non-meta) tensor of more than ``limit`` elements."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta" and t.numel() > self.limit:
                raise MemoryError(f"{func} made a tensor of {t.numel()} elements")
        return out


@pytest.fixture()
def vq_dir(tmp_path):
    model = PatchVQ(patch=8, codebook_size=64, decoder_channels=16, decoder_blocks=1)
    d = tmp_path / "vq"
    d.mkdir()
    save_vq(model, d, name="tiny-vq")
    return d


@pytest.fixture()
def rvq_dir(tmp_path):
    model = MdctRVQ(sample_rate=8000, hop=32, num_codebooks=3, codebook_size=16, postfilter_channels=8,
                    postfilter_blocks=1)
    d = tmp_path / "rvq"
    d.mkdir()
    save_rvq(model, d, name="tiny-rvq")
    return d


def _edit(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    for k, v in changes.items():
        if v is _DROP:
            config.pop(k)
        else:
            config[k] = v
    (directory / "config.json").write_text(json.dumps(config))


_DROP = object()

VQ_CASES = [
    ({"patch": _DROP}, r"missing key 'patch'"),
    ({"decoder_blocks": _DROP}, r"missing key 'decoder_blocks'"),
    ({"patch": "8"}, r"key 'patch' must be an integer in \[1, 64\], got '8'"),
    ({"codebook_size": 64.5}, r"key 'codebook_size' must be an integer"),
    ({"decoder_channels": None}, r"key 'decoder_channels' must be an integer"),
    ({"decoder_blocks": True}, r"key 'decoder_blocks' must be an integer"),
    ({"patch": -8}, r"key 'patch' must be in \[1, 64\], got -8"),
    ({"patch": 0}, r"key 'patch' must be in \[1, 64\], got 0"),
    ({"decoder_blocks": 1000000}, r"key 'decoder_blocks' must be in \[0, 64\], got 1000000"),
    ({"codebook_size": 1 << 20}, r"does not match .*codebook: \[64, 192\] in the weights, \[1048576, 192\] from the config"),
    ({"decoder_blocks": 2}, r"does not match .*decoder\.blocks\.1\.conv1\.bias: absent in the weights"),
]


@pytest.mark.parametrize("changes, message", VQ_CASES, ids=[str(i) for i in range(len(VQ_CASES))])
def test_bad_vq_configs_are_codec_errors_naming_file_and_key(vq_dir, changes, message):
    _edit(vq_dir, **changes)
    with _NoLargeTensors(limit=1 << 16), pytest.raises(CodecError, match=message) as exc:
        codecs.load(f"lumo-vq:{vq_dir}")
    assert str(vq_dir / ("model.safetensors" if "does not match" in message else "config.json")) in str(exc.value)


RVQ_CASES = [
    ({"hop": _DROP}, r"missing key 'hop'"),
    ({"sample_rate": "16k"}, r"key 'sample_rate' must be an integer"),
    ({"sample_rate": 0}, r"key 'sample_rate' must be in \[1, 768000\], got 0"),
    ({"hop": 100000}, r"key 'hop' must be in \[1, 4096\], got 100000"),
    ({"num_codebooks": -1}, r"key 'num_codebooks' must be in \[1, 64\]"),
    ({"postfilter_blocks": 1000000}, r"key 'postfilter_blocks' must be in \[0, 64\]"),
    ({"postfilter_channels": [8]}, r"key 'postfilter_channels' must be an integer"),
    ({"hop": 4096}, r"does not match .*codebooks: \[3, 16, 32\] in the weights, \[3, 16, 4096\] from the config"),
]


@pytest.mark.parametrize("changes, message", RVQ_CASES, ids=[str(i) for i in range(len(RVQ_CASES))])
def test_bad_rvq_configs_are_codec_errors_naming_file_and_key(rvq_dir, changes, message):
    _edit(rvq_dir, **changes)
    with _NoLargeTensors(limit=1 << 16), pytest.raises(CodecError, match=message):
        codecs.load(f"lumo-rvq:{rvq_dir}")


def test_a_config_that_is_not_an_object(vq_dir):
    (vq_dir / "config.json").write_text("[1, 2]")
    with pytest.raises(CodecError, match=r"config\.json: expected a JSON object, got list"):
        codecs.load(f"lumo-vq:{vq_dir}")


def _rewrite_header(path, edit):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8: 8 + n])
    body = data[8 + n:]
    new = json.dumps(edit(header)).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + body)


def test_weights_headers_are_checked_unread(vq_dir):
    weights = vq_dir / "model.safetensors"
    assert read_safetensors_header(weights)["codebook"]["shape"] == [64, 192]
    good = weights.read_bytes()
    weights.write_bytes(struct.pack("<Q", 1 << 40) + good[8:])
    with pytest.raises(CodecError, match=r"model\.safetensors: not a safetensors file \(header of 1099511627776 bytes"):
        codecs.load(f"lumo-vq:{vq_dir}")
    weights.write_bytes(b"\x03")
    with pytest.raises(CodecError, match=r"not a safetensors file \(only 1 bytes\)"):
        codecs.load(f"lumo-vq:{vq_dir}")
    weights.write_bytes(good)

    def to_int(h):
        h["codebook"]["dtype"] = "I16"
        return h

    _rewrite_header(weights, to_int)
    with pytest.raises(CodecError, match=r"tensors \['codebook'\] are not floating point"):
        codecs.load(f"lumo-vq:{vq_dir}")


@pytest.mark.parametrize("options, message", [
    ({"max_side": "big"}, r"max_side must be an integer in \[1, 16384\], got 'big'"),
    ({"max_side": 10**9}, r"max_side must be an integer in \[1, 16384\]"),
    ({"max_side": True}, r"max_side must be an integer"),
])
def test_bad_vq_options(vq_dir, options, message):
    with pytest.raises(CodecError, match=message):
        codecs.load(f"lumo-vq:{vq_dir}", **options)


@pytest.mark.parametrize("value", ["2", 2.5, True, 0, 4])
def test_bad_rvq_num_quantizers(rvq_dir, value):
    with pytest.raises(CodecError, match=r"num_quantizers must be an integer in \[1, 3\]"):
        codecs.load(f"lumo-rvq:{rvq_dir}", num_quantizers=value)


def test_valid_directories_still_load(vq_dir, rvq_dir):
    import numpy as np

    vq = codecs.load(f"lumo-vq:{vq_dir}", max_side=np.int64(64))
    assert vq.max_side == 64 and vq.codebook_size == 64
    assert codecs.load(f"lumo-rvq:{rvq_dir}", num_quantizers=2).num_codebooks == 2
