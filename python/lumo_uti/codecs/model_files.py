"""The on-disk form of the lumo codecs (``lumo-vq``, ``lumo-rvq``): one directory.

``config.json`` (the model's hyper-parameters, ``format`` and ``name``) and
``model.safetensors`` (the weights in float16; never pickled), each written
atomically. Loading checks the format tag, that every tensor the config
implies is present with its shape, and reports any problem as a
``CodecError`` that names the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from .hf_common import CodecError

M = TypeVar("M", bound=torch.nn.Module)


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


def load_model_dir(directory: str | Path, *, fmt: str, from_config: Callable[[dict[str, Any]], M]
                   ) -> tuple[M, dict[str, Any]]:
    """Read a directory written by ``save_model_dir`` -> (float32 model in eval mode, config)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_file, weights = directory / "config.json", directory / "model.safetensors"
    for f in (config_file, weights):
        if not f.is_file():
            raise CodecError(f"{fmt}: missing {f}")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CodecError(f"{fmt}: {config_file} is not valid JSON: {e}") from None
    if config.get("format") != fmt:
        raise CodecError(f"{fmt}: {config_file} has format {config.get('format')!r}, expected {fmt!r}")
    model = from_config(config)
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types
        raise CodecError(f"{fmt}: cannot read {weights}: {e}") from None
    expected = model.state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        bad = sorted(k for k in set(state) | set(expected)
                     if k not in state or k not in expected or state[k].shape != expected[k].shape)
        raise CodecError(f"{fmt}: {weights} does not match {config_file} (tensors {bad[:5]})")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval(), config
