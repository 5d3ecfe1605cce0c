"""Every exception type of ``lumo_model``, in one module (docs/errors.md describes each).

All derive from ``LumoModelError``, itself a ``lumo_uti.errors.UTIError``, so
the ``lumo`` command reports them as one line with exit status 2. Each also
derives from the built-in type callers caught before (``ValueError``).
"""

from __future__ import annotations

from lumo_uti.errors import UTIError


class LumoModelError(UTIError):
    """Base of every ``lumo_model`` error."""


class AdapterMismatchError(LumoModelError, ValueError):
    """The adapter does not fit this base model; ``field`` names the check that failed."""

    def __init__(self, field: str, message: str):
        super().__init__(f"patch_load: {field}: {message}")
        self.field = field


class PlaceholderMismatchError(LumoModelError, ValueError):
    """A sample's ``<|image_patch|>`` count does not match its images x latents."""


class TruncationError(LumoModelError, ValueError):
    """The template and the image placeholder blocks alone exceed ``max_seq_len``."""


class CheckpointError(LumoModelError, ValueError):
    """A checkpoint folder is missing, incomplete, or does not fit what loads it."""


class TimeUp(LumoModelError):
    """A training run stopped after a checkpoint because its time limit passed (run it again to continue)."""

    def __init__(self, stage: str, position: int):
        super().__init__(f"time limit reached after {stage} {position}; the checkpoint is saved, "
                         f"run the same command again to continue")
        self.stage, self.position = stage, position


__all__ = [
    "AdapterMismatchError", "CheckpointError", "LumoModelError", "PlaceholderMismatchError", "TimeUp", "TruncationError",
]
