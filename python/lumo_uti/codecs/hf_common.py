"""Loading Hugging Face codec models from local directories, and their identity.

Only safetensors weights are read (``use_safetensors=True``, never pickles) and
nothing is downloaded (``local_files_only=True``). A codec's identity records
the backend kind, the model name, the SHA-256 of every weight file (combined
into ``weights_hash``), the config hash and the options; bundles store it in
``token_space.json`` and re-check it on load.

These codecs pickle by reference (``reduce_by_directory``): class, directory,
device, options and weights hash; unpickling re-loads the model from the
directory and checks the hash. Their models can be gigabytes, and some
(EnCodec's weight-normed convolutions) cannot be pickled by value at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .._hashing import canonical_json, sha256_bytes, sha256_file


from ..errors import CodecError  # defined with every other error; imported from here too

def weight_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in directory.glob("*.bin"))
        hint = f" (found {pickled}: pickled weights are refused; convert them to safetensors)" if pickled else ""
        raise CodecError(f"no *.safetensors weights in {directory}{hint}")
    return files


def directory_identity(directory: Path, kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """kind, name, weights_hash (over every weight file), config_hash, options."""
    files = {p.name: sha256_file(p) for p in weight_files(directory)}
    config = directory / "config.json"
    if not config.is_file():
        raise CodecError(f"no config.json in {directory}")
    import json

    meta = json.loads(config.read_text())
    name = meta.get("_name_or_path") or meta.get("name") or directory.name
    return {
        "kind": kind,
        "name": str(name),
        "weights_hash": sha256_bytes(canonical_json(files)),
        "weight_files": files,
        "config_hash": sha256_file(config),
        "options": dict(options),
    }


def load_hf_model(class_name: str, directory: str | Path, device: str | torch.device) -> tuple[Any, Path]:
    """``transformers.<class_name>.from_pretrained(directory)`` in eval mode on ``device``."""
    import transformers

    path = Path(directory)
    if not path.is_dir():
        raise CodecError(f"codec directory not found: {path}")
    weight_files(path)
    cls = getattr(transformers, class_name)
    try:
        model = cls.from_pretrained(str(path), use_safetensors=True, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise CodecError(f"cannot load {class_name} from {path}: {e}") from None
    return model.eval().to(device), path


def reduce_by_directory(codec: Any) -> tuple:
    """``__reduce__`` of a codec loaded from a local directory: reload it there, same weights hash.

    Weights changed in memory after loading are not carried (the reload reads the files).
    """
    return _reload_codec, (type(codec), str(Path(codec.directory).absolute()), str(codec.device),
                           dict(codec.identity["options"]), codec.weights_hash)


def _reload_codec(cls: type, directory: str, device: str, options: dict[str, Any], weights_hash: str) -> Any:
    codec = cls(directory, device=device, **options)
    if codec.weights_hash != weights_hash:
        raise CodecError(
            f"{codec.kind}: the weights in {directory} changed after the codec was pickled "
            f"(weights_hash {weights_hash} when pickled, {codec.weights_hash} now)"
        )
    return codec
