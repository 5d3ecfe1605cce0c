"""Hashes that identify a base model: its config and its embedding / LM-head tables.

A rows-only adapter is only meaningful on the exact base it was trained on, so
the manifest records these and ``patch_load`` recomputes and compares them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from lumo_uti._hashing import PREFIX, canonical_json, sha256_bytes

__all__ = ["config_sha256", "canonical_config", "tensor_sha256"]

# Keys that describe where/how a config was loaded, not the model: a config
# read back by from_pretrained differs from the one built in memory only there.
_VOLATILE = frozenset(
    {
        "transformers_version", "dtype", "torch_dtype", "architectures", "use_cache",
        "output_attentions", "output_hidden_states", "return_dict",
    }
)


def canonical_config(config: Any) -> dict[str, Any]:
    """The base config as a plain dict, without volatile and private (``_``) keys."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in d.items() if not k.startswith("_") and k not in _VOLATILE}


def config_sha256(config: Any) -> str:
    """``sha256:<hex>`` of the canonical JSON of ``canonical_config`` (values JSON lacks, e.g. a dtype, as text)."""
    as_json = json.loads(json.dumps(canonical_config(config), ensure_ascii=True, default=str))
    return sha256_bytes(canonical_json(as_json))


def tensor_sha256(t: torch.Tensor) -> str:
    """``sha256:<hex>`` of a tensor's bytes (row-major, little-endian), any dtype or device."""
    flat = t.detach().reshape(-1).contiguous().to("cpu")
    h = hashlib.sha256()
    if flat.numel():
        # Streamed in chunks so that a multi-GB table is not copied to bytes at once.
        raw = flat.view(torch.uint8).numpy()
        step = 1 << 26
        for i in range(0, raw.size, step):
            h.update(memoryview(raw[i : i + step]))
    return PREFIX + h.hexdigest()
