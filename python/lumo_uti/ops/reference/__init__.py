"""Pure-PyTorch references of the ops: the spec of each op, and the oracle.

One module per op (``reference/<op>.py``, named like ``ops/<op>.py``). The
tests check the native kernels against these functions, and ``lumo_uti.ops``
falls back to them when a native module is missing or
``LUMO_FORCE_REFERENCE=1``. They assume inputs the op fronts have validated.
"""

from __future__ import annotations

from .resampler_attention import resampler_attention_backward_reference, resampler_attention_reference
from .rowmask import rowmask_embedding_backward_reference
from .rows_ce import rows_ce_forward_reference, rows_ce_new_rows_backward_reference
from .token_range import classify_ids_reference
from .vq import (
    dot_seq,
    rvq_decode_reference,
    rvq_encode_reference,
    sqnorm_seq,
    vq_scores_reference,
    vq_search_reference,
)

__all__ = [
    "classify_ids_reference",
    "dot_seq",
    "resampler_attention_backward_reference",
    "resampler_attention_reference",
    "rowmask_embedding_backward_reference",
    "rows_ce_forward_reference",
    "rows_ce_new_rows_backward_reference",
    "rvq_decode_reference",
    "rvq_encode_reference",
    "sqnorm_seq",
    "vq_scores_reference",
    "vq_search_reference",
]
