"""Rows-only adapters: save the new rows, patch them onto a fresh base, merge to plain HF.

An adapter directory holds::

    adapter.safetensors   new rows only: "embed.new_rows" [N, D], plus
                          "lm_head.new_rows" [N, D] when untied and
                          "lm_head.new_bias" [N] when the head has a bias
    token_space.json      the UTI token space the rows belong to
    manifest.json         base identity (config hash, table hashes), row
                          range, dtype, tensor hashes, library versions

``patch_load`` recomputes every hash and refuses a mismatch with an
``AdapterMismatchError`` that names the field. Directories are written to a
temporary sibling and renamed into place, so a reader never sees a half-written
adapter. See docs/token_lm.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

import lumo_uti
from lumo_uti._io import atomic_dir, atomic_write_bytes, atomic_write_text, usual_modes
from lumo_uti.token_space import TokenSpace

from .expansion import expand, expansion_of
from .identity import config_sha256, tensor_sha256
from ..errors import AdapterMismatchError

__all__ = ["AdapterMismatchError", "MANIFEST_SCHEMA", "save_trainable_rows", "patch_load", "merge", "read_manifest"]

MANIFEST_SCHEMA = "lumo.token_lm.adapter"
MANIFEST_VERSION = (1, 0)
ADAPTER_FILE = "adapter.safetensors"
MANIFEST_FILE = "manifest.json"
TOKEN_SPACE_FILE = "token_space.json"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _base_tables(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if hasattr(emb, "base_weight"):
        return emb.base_weight, head.base_weight, head.base_bias
    return emb.weight, head.weight, head.bias


def _base_identity(model: nn.Module, config_hash: str) -> dict[str, Any]:
    emb, head, bias = _base_tables(model)
    tied = head is emb
    return {
        "architecture": type(model).__name__,
        "model_type": getattr(model.config, "model_type", None),
        "config_sha256": config_hash,
        "embed_sha256": tensor_sha256(emb),
        "lm_head_sha256": tensor_sha256(head),
        "lm_head_bias_sha256": None if bias is None else tensor_sha256(bias),
        "rows": int(emb.shape[0]),
        "hidden_size": int(emb.shape[1]),
        "dtype": _dtype_name(emb.dtype),
        "tied": tied,
    }


def _adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    out = {"embed.new_rows": emb.new_weight}
    if head.new_weight is not emb.new_weight:
        out["lm_head.new_rows"] = head.new_weight
    if head.new_bias is not None:
        out["lm_head.new_bias"] = head.new_bias
    return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}


def save_trainable_rows(model: nn.Module, out_dir: str | os.PathLike) -> Path:
    """Write the adapter directory of an expanded ``model`` (DDP-wrapped is fine); returns it.

    Raises:
        TypeError: ``model`` was not expanded.
    """
    from safetensors.torch import save as st_save

    model = getattr(model, "module", model)
    info = expansion_of(model)
    tensors = _adapter_tensors(model)
    ts = info.token_space
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "schema_version": list(MANIFEST_VERSION),
        "library": {"lumo": lumo_uti.__version__, "torch": torch.__version__, "transformers": _transformers_version()},
        "base": _base_identity(model, info.base_config_sha256),
        "rows": {
            "start": info.base_rows,
            "count": info.new_rows,
            "end": info.total_rows,
            "vocab_size": ts.vocab_size,
            "padded_vocab_size": ts.padded_vocab_size,
        },
        "dtype": _dtype_name(tensors["embed.new_rows"].dtype),
        "token_space": {"file": TOKEN_SPACE_FILE, "fingerprint": ts.fingerprint},
        "tensors": {
            k: {"shape": list(v.shape), "dtype": _dtype_name(v.dtype), "sha256": tensor_sha256(v)}
            for k, v in tensors.items()
        },
    }
    with atomic_dir(out_dir) as tmp:
        atomic_write_bytes(tmp / ADAPTER_FILE, st_save(tensors, metadata={"format": "pt", "schema": MANIFEST_SCHEMA}))
        ts.save(tmp / TOKEN_SPACE_FILE)
        atomic_write_text(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return Path(out_dir)


def _transformers_version() -> str | None:
    try:
        import transformers

        return transformers.__version__
    except ImportError:  # pragma: no cover - transformers is a runtime dependency
        return None


def _regular_file(path: Path, field: str) -> Path:
    """``path`` when it is a regular file; FileNotFoundError when absent, AdapterMismatchError for a device or pipe."""
    if not path.is_file():
        if not os.path.lexists(path):
            raise FileNotFoundError(f"patch_load: {path} not found")
        raise AdapterMismatchError(field, f"{path} is not a regular file")
    return path


def read_manifest(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an adapter directory, schema-checked.

    Raises:
        FileNotFoundError: no manifest.json.
        AdapterMismatchError: not JSON, or another schema / major version.
    """
    path = _regular_file(Path(adapter_dir) / MANIFEST_FILE, "manifest")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterMismatchError("manifest", f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        raise AdapterMismatchError("manifest", f"expected schema {MANIFEST_SCHEMA!r} in {path}, got {manifest.get('schema') if isinstance(manifest, dict) else manifest!r}")
    version = manifest.get("schema_version")
    if not isinstance(version, list) or not version or version[0] != MANIFEST_VERSION[0]:
        raise AdapterMismatchError("manifest", f"expected schema_version {MANIFEST_VERSION[0]}.x, got {version}")
    return manifest


def _expect(field: str, adapter_value: Any, base_value: Any, what: str = "the adapter was made for") -> None:
    if adapter_value != base_value:
        raise AdapterMismatchError(field, f"{what} {adapter_value}, this base has {base_value}")


_MISSING = object()


def _field(manifest: dict[str, Any], *path: str, kind: type | tuple[type, ...] | None = None) -> Any:
    """``manifest[path[0]][path[1]]...``; AdapterMismatchError("manifest") when absent or not of ``kind``."""
    node: Any = manifest
    for part in path:
        node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        if node is _MISSING:
            raise AdapterMismatchError("manifest", f"{MANIFEST_FILE} has no field {'.'.join(path)!r}")
    if kind is not None and (not isinstance(node, kind) or (isinstance(node, bool) and bool not in (
            kind if isinstance(kind, tuple) else (kind,)))):
        names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise AdapterMismatchError("manifest", f"field {'.'.join(path)!r} must be {names}, got {node!r}")
    return node


def _inside_adapter(adapter_dir: Path, rel: str, field: str) -> Path:
    """The file ``rel`` names, refused unless it is a plain relative path that stays inside ``adapter_dir``."""
    from pathlib import PurePosixPath

    parts = PurePosixPath(rel)
    path = adapter_dir / rel
    if (not rel or "\\" in rel or parts.is_absolute() or ".." in parts.parts
            or not path.resolve().is_relative_to(adapter_dir.resolve())):
        raise AdapterMismatchError(field, f"must name a file inside the adapter folder {adapter_dir}, got {rel!r}")
    return _regular_file(path, field)


def patch_load(base_model: nn.Module, adapter_dir: str | os.PathLike) -> nn.Module:
    """Expand a fresh base model and load the adapter's rows into it; returns the model.

    Checks, in order: manifest schema and fields, token space file (inside the
    adapter folder) and fingerprint, architecture, config hash, table shapes
    and dtype, embedding / LM-head (/ bias) hashes, the row range, then every
    adapter tensor's name, shape (``rows.count x hidden_size``), dtype and
    hash. The result's logits equal the trained model's exactly.

    Raises:
        AdapterMismatchError: a check failed or the manifest lacks a field
            (``field`` says which; the message gives both values).
        FileNotFoundError: a file of the adapter is missing.
    """
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    manifest = read_manifest(adapter_dir)
    ts_file = _inside_adapter(adapter_dir, _field(manifest, "token_space", "file", kind=str), "token_space.file")
    ts = TokenSpace.load(ts_file)
    _expect("token_space.fingerprint", _field(manifest, "token_space", "fingerprint", kind=str), ts.fingerprint,
            "the manifest names token space")
    if hasattr(base_model, "lumo_expansion"):
        raise AdapterMismatchError("base", "the model is expanded already; patch_load needs a fresh base model")

    def want(key: str, kind=None) -> Any:
        return _field(manifest, "base", key, kind=kind)

    _expect("base.architecture", want("architecture"), type(base_model).__name__)
    _expect("base.config_sha256", want("config_sha256"), config_sha256(base_model.config))
    emb, head, bias = _base_tables(base_model)
    _expect("base.rows", want("rows"), int(emb.shape[0]))
    _expect("base.hidden_size", want("hidden_size"), int(emb.shape[1]))
    _expect("base.dtype", want("dtype"), _dtype_name(emb.dtype))
    _expect("base.tied", want("tied"), head is emb)
    _expect("base.embed_sha256", want("embed_sha256"), tensor_sha256(emb))
    _expect("base.lm_head_sha256", want("lm_head_sha256"), tensor_sha256(head))
    _expect("base.lm_head_bias_sha256", want("lm_head_bias_sha256"), None if bias is None else tensor_sha256(bias))

    rows = {k: _field(manifest, "rows", k, kind=int) for k in ("start", "count", "end")}
    if (rows["end"] not in (ts.vocab_size, ts.padded_vocab_size) or rows["start"] != ts.base_rows
            or rows["count"] != rows["end"] - rows["start"]):
        raise AdapterMismatchError("rows", f"row range [{rows['start']}, {rows['end']}) of {rows['count']} rows does "
                                           f"not fit the token space (base rows {ts.base_rows}, vocab {ts.vocab_size}, "
                                           f"padded {ts.padded_vocab_size})")
    hidden = int(emb.shape[1])
    needed = {"embed.new_rows": [rows["count"], hidden]}
    if head is not emb:
        needed["lm_head.new_rows"] = [rows["count"], hidden]
    if bias is not None:
        needed["lm_head.new_bias"] = [rows["count"]]
    listed = _field(manifest, "tensors", kind=dict)
    _expect("tensors", sorted(listed), sorted(needed), "the manifest lists tensors")
    tensors_file = _regular_file(adapter_dir / ADAPTER_FILE, "tensors")
    try:
        tensors = load_file(str(tensors_file))
    except Exception as e:  # safetensors raises its own error types
        raise AdapterMismatchError("tensors", f"cannot read {tensors_file}: {e}") from None
    _expect("tensors", sorted(listed), sorted(tensors), "the manifest lists tensors")
    for name, shape in needed.items():
        t, meta = tensors[name], listed[name]
        for key in ("shape", "dtype", "sha256"):
            if not isinstance(meta, dict) or key not in meta:
                raise AdapterMismatchError("manifest", f"{MANIFEST_FILE} has no field 'tensors.{name}.{key}'")
        if list(t.shape) != shape:
            raise AdapterMismatchError(f"tensors.{name}.shape", f"the adapter holds {list(t.shape)}, this base needs "
                                                                f"{shape} (rows.count x hidden_size)")
        _expect(f"tensors.{name}.shape", meta["shape"], list(t.shape), "the manifest says")
        _expect(f"tensors.{name}.dtype", meta["dtype"], _dtype_name(t.dtype), "the manifest says")
        _expect(f"tensors.{name}.sha256", meta["sha256"], tensor_sha256(t), "the manifest says")

    model = expand(base_model, ts, init="zeros", padded=rows["end"] == ts.padded_vocab_size)
    new_emb, new_head = model.get_input_embeddings(), model.get_output_embeddings()
    with torch.no_grad():
        new_emb.new_weight.copy_(tensors["embed.new_rows"])
        if "lm_head.new_rows" in tensors:
            new_head.new_weight.copy_(tensors["lm_head.new_rows"])
        if "lm_head.new_bias" in tensors:
            new_head.new_bias.copy_(tensors["lm_head.new_bias"])
    return model


def merge(model: nn.Module, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a plain Hugging Face checkpoint with the full expanded tables.

    ``model`` is an expanded model (e.g. from ``patch_load``). The full tables
    ``cat(base, new)`` exist only while saving; the model is restored after.
    ``save_pretrained`` writes into a temp directory that is renamed to
    ``out_dir``; ``token_space.json`` is written beside the weights.

    Raises:
        TypeError: ``model`` was not expanded.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
    """
    model = getattr(model, "module", model)
    info = expansion_of(model)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    with torch.no_grad():
        full_emb = nn.Embedding(info.total_rows, emb.embedding_dim, device="meta")
        full_emb.weight = nn.Parameter(torch.cat([emb.base_weight, emb.new_weight.to(emb.base_weight.dtype)]), requires_grad=False)
        full_head = nn.Linear(head.in_features, info.total_rows, bias=head.base_bias is not None, device="meta")
        if info.tied:
            full_head.weight = full_emb.weight
        else:
            full_head.weight = nn.Parameter(torch.cat([head.base_weight, head.new_weight.to(head.base_weight.dtype)]), requires_grad=False)
        if head.base_bias is not None:
            full_head.bias = nn.Parameter(torch.cat([head.base_bias, head.new_bias.to(head.base_bias.dtype)]), requires_grad=False)
    expansion = model.__dict__.pop("lumo_expansion")
    try:
        model.set_input_embeddings(full_emb)
        model.set_output_embeddings(full_head)
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            model.save_pretrained(tmp)
            info.token_space.save(tmp / TOKEN_SPACE_FILE)
            usual_modes(tmp)  # save_pretrained leaves some files 0o600
    finally:
        model.set_input_embeddings(emb)
        model.set_output_embeddings(head)
        model.lumo_expansion = expansion
    return Path(out_dir)
