"""Trainable-rows embedding and LM head: a frozen base table plus a small trainable table.

The vocabulary is ``[0, base_rows)`` (the frozen base table, never copied and
never given a gradient) followed by ``[base_rows, base_rows + new_rows)`` (the
trainable ``new_weight``). Neither module builds the concatenated full table:
the embedding gathers from each table, the head computes base logits and new
logits and concatenates them. The embedding's backward is
``lumo_uti.ops.rowmask_embedding_backward``: a ``[new_rows, D]`` gradient, no
full-vocabulary gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lumo_uti.ops import rowmask_embedding_backward

__all__ = ["TrainableRowsEmbedding", "TrainableRowsLMHead"]


class _RowsEmbeddingFn(torch.autograd.Function):
    """out = base[ids] for ids < base_rows, new[ids - base_rows] otherwise; grad only for new."""

    @staticmethod
    def forward(ctx, ids: torch.Tensor, base: torch.Tensor, new: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        base_rows = base.shape[0]
        is_new = ids >= base_rows
        out = F.embedding(torch.where(is_new, 0, ids), base)
        if new.shape[0]:
            new_out = F.embedding(torch.where(is_new, ids - base_rows, 0), new)
            out = torch.where(is_new.unsqueeze(-1), new_out, out)
        ctx.save_for_backward(ids)
        ctx.base_rows = base_rows
        ctx.new_shape = new.shape
        ctx.new_dtype = new.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (ids,) = ctx.saved_tensors
        grad_new = None
        if ctx.needs_input_grad[2]:
            grad_new = rowmask_embedding_backward(ids, grad_out, ctx.base_rows, ctx.new_shape[0])
            grad_new = grad_new.to(ctx.new_dtype)
        if ctx.needs_input_grad[1]:
            raise RuntimeError("TrainableRowsEmbedding: the base table is frozen and has no gradient")
        return None, None, grad_new


class TrainableRowsEmbedding(nn.Module):
    """Embedding over a frozen base table and a trainable new-rows table.

    Args:
        base_weight: ``[base_rows, D]`` frozen table (kept as is: same storage,
            ``requires_grad=False``).
        new_weight: ``[new_rows, D]`` trainable table (may be shared with a
            ``TrainableRowsLMHead`` for tied embeddings).

    ``forward(ids [*S]) -> [*S, D]``. IDs outside ``[0, base_rows + new_rows)``
    raise ``IndexError``.
    """

    def __init__(self, base_weight: nn.Parameter, new_weight: nn.Parameter):
        super().__init__()
        if base_weight.dim() != 2 or new_weight.dim() != 2 or base_weight.shape[1] != new_weight.shape[1]:
            raise ValueError(
                "TrainableRowsEmbedding: expected base [B, D] and new [N, D] tables, got "
                f"{tuple(base_weight.shape)} and {tuple(new_weight.shape)}"
            )
        base_weight.requires_grad_(False)
        self.base_weight = base_weight
        self.new_weight = new_weight

    @property
    def base_rows(self) -> int:
        return self.base_weight.shape[0]

    @property
    def num_embeddings(self) -> int:
        return self.base_weight.shape[0] + self.new_weight.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.base_weight.shape[1]

    @property
    def weight(self) -> torch.Tensor:
        """The base table (for code that asks ``get_input_embeddings().weight`` for dtype/device)."""
        return self.base_weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise TypeError(f"TrainableRowsEmbedding: expected integer ids, got {ids.dtype}")
        if ids.numel():
            lo_t, hi_t = torch.aminmax(ids)
            lo, hi = int(lo_t), int(hi_t)
            if lo < 0 or hi >= self.num_embeddings:
                raise IndexError(
                    f"TrainableRowsEmbedding: expected ids in [0, {self.num_embeddings}), got "
                    f"{lo if lo < 0 else hi}"
                )
        return _RowsEmbeddingFn.apply(ids, self.base_weight, self.new_weight)

    def extra_repr(self) -> str:
        return f"base_rows={self.base_rows}, new_rows={self.new_weight.shape[0]}, dim={self.embedding_dim}"


class TrainableRowsLMHead(nn.Module):
    """LM head over a frozen base table and a trainable new-rows table.

    Args:
        base_weight: ``[base_rows, D]`` frozen head (or the tied embedding table).
        new_weight: ``[new_rows, D]`` trainable rows.
        base_bias: ``[base_rows]`` frozen bias of the base head, or None.
        new_bias: ``[new_rows]`` trainable bias of the new rows (required
            exactly when ``base_bias`` is given).

    ``forward(h [*S, D]) -> logits [*S, base_rows + new_rows]``: base logits
    then new-row logits, concatenated.
    """

    def __init__(
        self,
        base_weight: nn.Parameter,
        new_weight: nn.Parameter,
        base_bias: nn.Parameter | None = None,
        new_bias: nn.Parameter | None = None,
    ):
        super().__init__()
        if base_weight.dim() != 2 or new_weight.dim() != 2 or base_weight.shape[1] != new_weight.shape[1]:
            raise ValueError(
                "TrainableRowsLMHead: expected base [B, D] and new [N, D] tables, got "
                f"{tuple(base_weight.shape)} and {tuple(new_weight.shape)}"
            )
        if (base_bias is None) != (new_bias is None):
            raise ValueError("TrainableRowsLMHead: expected both base_bias and new_bias, or neither")
        if base_bias is not None and (
            tuple(base_bias.shape) != (base_weight.shape[0],) or tuple(new_bias.shape) != (new_weight.shape[0],)
        ):
            raise ValueError(
                f"TrainableRowsLMHead: expected biases [{base_weight.shape[0]}] and [{new_weight.shape[0]}], "
                f"got {tuple(base_bias.shape)} and {tuple(new_bias.shape)}"
            )
        base_weight.requires_grad_(False)
        if base_bias is not None:
            base_bias.requires_grad_(False)
        self.base_weight = base_weight
        self.new_weight = new_weight
        self.base_bias = base_bias
        self.new_bias = new_bias

    @property
    def in_features(self) -> int:
        return self.base_weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.base_weight.shape[0] + self.new_weight.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        """The base table (for code that reads ``lm_head.weight`` for dtype/device)."""
        return self.base_weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        base = F.linear(h, self.base_weight, self.base_bias)
        new = F.linear(h, self.new_weight, self.new_bias)
        return torch.cat([base, new], dim=-1)

    def extra_repr(self) -> str:
        return (
            f"base_rows={self.base_weight.shape[0]}, new_rows={self.new_weight.shape[0]}, "
            f"dim={self.in_features}, bias={self.base_bias is not None}"
        )
