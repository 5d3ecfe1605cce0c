"""The on-disk form of the lumo codecs (``lumo-vq``, ``lumo-rvq``): one directory.

``config.json`` (the model's hyper-parameters, ``format`` and ``name``) and
``model.safetensors`` (the weights in float16; never pickled), each written
atomically. Loading checks, before anything is allocated: the format tag, each
hyper-parameter's type and range (``ConfigKey``), and that the tensors the
config implies are exactly those in the safetensors header (read without
loading the tensors), with their shapes. Any problem is a ``CodecError`` that
names the file and the key or tensor.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import torch

from .hf_common import CodecError

M = TypeVar("M", bound=torch.nn.Module)

# A safetensors header larger than this is refused unread (ours are a few KiB).
MAX_HEADER_BYTES = 16 << 20
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


@dataclass(frozen=True)
class ConfigKey:
    """One integer hyper-parameter of a codec config and its accepted range (inclusive)."""

    name: str
    low: int
    high: int


def check_config(config: Any, keys: tuple[ConfigKey, ...], where: str) -> dict[str, Any]:
    """``config`` when it is a JSON object whose ``keys`` are integers in range; CodecError otherwise.

    ``where`` names the file in messages (e.g. ``"lumo-vq: /m/config.json"``).
    """
    if not isinstance(config, dict):
        raise CodecError(f"{where}: expected a JSON object, got {type(config).__name__}")
    for key in keys:
        if key.name not in config:
            raise CodecError(f"{where}: missing key {key.name!r} (an integer in [{key.low}, {key.high}])")
        value = config[key.name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise CodecError(f"{where}: key {key.name!r} must be an integer in [{key.low}, {key.high}], "
                             f"got {value!r}")
        if not key.low <= value <= key.high:
            raise CodecError(f"{where}: key {key.name!r} must be in [{key.low}, {key.high}], got {value}")
    return config


def read_safetensors_header(path: str | Path) -> dict[str, dict[str, Any]]:
    """The tensor entries (name -> {"dtype", "shape", "data_offsets"}) of a safetensors file, tensors unread.

    Raises:
        CodecError: not a readable safetensors file (the message names it).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CodecError(f"{path}: not a safetensors file (only {len(head)} bytes)")
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise CodecError(f"{path}: not a safetensors file (header of {length} bytes in a file of {size})")
            header = json.loads(f.read(length))
    except OSError as e:
        raise CodecError(f"cannot read {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CodecError(f"{path}: not a safetensors file (header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise CodecError(f"{path}: not a safetensors file (header is not a JSON object)")
    header.pop("__metadata__", None)
    for name, entry in header.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if (not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                   for n in shape)):
            raise CodecError(f"{path}: tensor {name!r} has no valid shape in the header")
    return header


def save_model_dir(model: torch.nn.Module, directory: str | Path, *, fmt: str, name: str,
                   extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (float16) of ``model`` (which has ``config()``)."""
    from safetensors.torch import save

    from .._io import atomic_write_bytes, atomic_write_text

    directory = Path(directory)
    state = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(directory / "model.safetensors", save(state, metadata={"format": fmt}))
    config = dict(model.config(), name=name, **(extra or {}))
    atomic_write_text(directory / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def _expected_shapes(from_config: Callable[[dict[str, Any]], M], config: dict[str, Any]) -> dict[str, list[int]]:
    """The state-dict shapes ``from_config(config)`` has, found on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = from_config(config)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def load_model_dir(directory: str | Path, *, fmt: str, from_config: Callable[[dict[str, Any]], M],
                   keys: tuple[ConfigKey, ...] = ()) -> tuple[M, dict[str, Any]]:
    """Read a directory written by ``save_model_dir`` -> (float32 model in eval mode, config).

    ``keys``: the config's integer hyper-parameters and ranges, checked before
    ``from_config`` is called; then the weights' header is checked against the
    shapes the config implies, and only then is the model built and loaded.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    config_file, weights = directory / "config.json", directory / "model.safetensors"
    for f in (config_file, weights):
        if not f.is_file():
            raise CodecError(f"{fmt}: missing {f}" if not os.path.lexists(f) else f"{fmt}: {f} is not a regular file")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CodecError(f"{fmt}: {config_file} is not valid JSON: {e}") from None
    where = f"{fmt}: {config_file}"
    if not isinstance(config, dict):
        raise CodecError(f"{where}: expected a JSON object, got {type(config).__name__}")
    if config.get("format") != fmt:
        raise CodecError(f"{where} has format {config.get('format')!r}, expected {fmt!r}")
    check_config(config, keys, where)
    header = read_safetensors_header(weights)
    expected = _expected_shapes(from_config, config)
    bad = sorted(k for k in set(header) | set(expected)
                 if k not in header or k not in expected or header[k]["shape"] != expected[k])
    if bad:
        detail = ", ".join(f"{k}: {header[k]['shape'] if k in header else 'absent'} in the weights, "
                           f"{expected[k] if k in expected else 'absent'} from the config" for k in bad[:5])
        raise CodecError(f"{fmt}: {weights} does not match {config_file} ({detail})")
    odd = sorted(k for k, e in header.items() if e.get("dtype") not in _FLOAT_DTYPES)
    if odd:
        raise CodecError(f"{fmt}: {weights}: tensors {odd[:5]} are not floating point "
                         f"({[header[k].get('dtype') for k in odd[:5]]})")
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types
        raise CodecError(f"{fmt}: cannot read {weights}: {e}") from None
    model = from_config(config)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval(), config


def config_keys(spec: Mapping[str, tuple[int, int]]) -> tuple[ConfigKey, ...]:
    """``{"name": (low, high)}`` -> ConfigKey tuple (the form the codec modules declare)."""
    return tuple(ConfigKey(name, low, high) for name, (low, high) in spec.items())
