"""Track B token LM: Qwen3 expanded by the UTI token space, trained rows-only.

- ``expand(model, token_space)``: append the token space's rows to the
  embedding and LM head (base rows frozen, new rows trainable).
- ``TrainableRowsEmbedding`` / ``TrainableRowsLMHead``: the layers it installs.
- ``save_trainable_rows`` / ``patch_load`` / ``merge``: rows-only adapters.
- ``train`` (``lumo tokenlm train``): rows-only training on UTI documents.

See docs/token_lm.md.
"""

from __future__ import annotations

from lumo_uti._lazy import lazy_exports

# Lazy: ``lumo --help`` imports ``lumo_model.token_lm.cli`` and must not pay
# for torch/transformers; the names below load their module on first use.
_EXPORTS = {
    "AdapterMismatchError": "packaging",
    "Expansion": "expansion",
    "TrainConfig": "training",
    "TrainableRowsEmbedding": "layers",
    "TrainableRowsLMHead": "layers",
    "expand": "expansion",
    "expansion_of": "expansion",
    "merge": "packaging",
    "patch_load": "packaging",
    "read_manifest": "packaging",
    "save_trainable_rows": "packaging",
    "train": "training",
    "trainable_parameters": "expansion",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
