"""Track A VLM: frozen text and vision towers joined by a trainable connector.

``PerceiverResampler`` + ``MLPProjector`` = ``Connector``; ``LumoVLM`` injects
the connector's tokens at ``<|image_patch|>`` positions; ``VLMCollator``
builds chat-template batches with label masking and safe truncation;
``train.train_stage1`` trains the connector; ``ablate.ablate`` checks that it
uses the image. See docs/vlm.md.

Names load lazily, so that ``lumo --help`` (which imports ``lumo_model.vlm.cli``)
does not import torch.
"""

from __future__ import annotations

from lumo_uti._lazy import lazy_exports

_EXPORTS = {
    "Connector": "projector",
    "CoverageReport": "collator",
    "LumoVLM": "model",
    "MLPProjector": "projector",
    "PerceiverResampler": "resampler",
    "PlaceholderMismatchError": "model",
    "TruncationError": "collator",
    "VLMCollator": "collator",
    "VLMExample": "collator",
    "VLMOutput": "model",
    "load_image": "collator",
    "patchify": "model",
    "read_examples": "collator",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
