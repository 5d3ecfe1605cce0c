"""Expand a Hugging Face causal LM to a UTI token space, training only the new rows.

``expand(model, token_space)`` replaces the input embedding and the LM head by
``TrainableRowsEmbedding`` / ``TrainableRowsLMHead``: the base tables stay the
same tensors (frozen, bit-identical forever) and one small table per role
holds the new rows ``[base_rows, vocab)``. See docs/token_lm.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lumo_uti.token_space import TokenSpace

from .identity import config_sha256
from .layers import TrainableRowsEmbedding, TrainableRowsLMHead

__all__ = ["Expansion", "expand", "expansion_of", "trainable_parameters", "INITS"]

INITS = ("mean", "zeros")


@dataclass(frozen=True)
class Expansion:
    """What ``expand`` did: kept on the model as ``model.lumo_expansion``.

    ``base_config_sha256`` is taken before ``config.vocab_size`` changes.
    """

    token_space: TokenSpace
    base_rows: int
    new_rows: int
    tied: bool
    head_bias: bool
    base_config_sha256: str
    base_config: dict[str, Any]

    @property
    def total_rows(self) -> int:
        return self.base_rows + self.new_rows


def expansion_of(model: nn.Module) -> Expansion:
    """The ``Expansion`` of an expanded model (unwraps DDP); TypeError if not expanded."""
    model = getattr(model, "module", model)
    info = getattr(model, "lumo_expansion", None)
    if not isinstance(info, Expansion):
        raise TypeError(f"expected a model expanded by lumo_model.token_lm.expand, got {type(model).__name__}")
    return info


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The new-row parameters (embedding rows, head rows unless tied, head bias rows)."""
    model = getattr(model, "module", model)
    expansion_of(model)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    params = [emb.new_weight]
    if head.new_weight is not emb.new_weight:
        params.append(head.new_weight)
    if head.new_bias is not None:
        params.append(head.new_bias)
    return params


def expand(
    model: nn.Module,
    token_space: TokenSpace,
    *,
    init: str = "mean",
    noise_std: float = 0.0,
    seed: int = 0,
    padded: bool = True,
    freeze_rest: bool = True,
) -> nn.Module:
    """Give ``model`` the vocabulary of ``token_space``, in place; returns ``model``.

    Args:
        model: a ``PreTrainedModel`` with ``get_input_embeddings()`` (an
            ``nn.Embedding`` of ``token_space.base_rows`` rows) and
            ``get_output_embeddings()`` (an ``nn.Linear`` of as many rows, tied
            or not, with or without bias).
        token_space: the UTI token space.
        init: ``"mean"``: new rows = mean of the base text rows
            ``[0, text_vocab_size)`` (padding rows excluded; bias likewise);
            ``"zeros"``: zeros (used by ``patch_load`` before loading rows).
        noise_std: add ``noise_std * std(base text rows) * N(0, 1)`` noise to
            the mean init (0: none), drawn from a generator seeded by ``seed``.
        padded: table width ``padded_vocab_size`` (default) or ``vocab_size``.
        freeze_rest: set ``requires_grad=False`` on every other parameter.

    Raises:
        TypeError: the model lacks an ``nn.Embedding`` / ``nn.Linear`` pair, or
            was expanded already.
        ValueError: the base table size differs from ``token_space.base_rows``,
            or a bad ``init`` / ``noise_std``.
    """
    if not isinstance(token_space, TokenSpace):
        raise TypeError(f"expand: expected a TokenSpace, got {type(token_space).__name__}")
    if init not in INITS:
        raise ValueError(f"expand: expected init in {INITS}, got {init!r}")
    if not noise_std >= 0.0:
        raise ValueError(f"expand: expected noise_std >= 0, got {noise_std}")
    if isinstance(getattr(model, "lumo_expansion", None), Expansion):
        raise TypeError("expand: the model is expanded already")
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(emb, nn.Embedding):
        raise TypeError(f"expand: expected the input embeddings to be nn.Embedding, got {type(emb).__name__}")
    if not isinstance(head, nn.Linear):
        raise TypeError(f"expand: expected the output embeddings to be nn.Linear, got {type(head).__name__}")
    base_rows = emb.weight.shape[0]
    if base_rows != token_space.base_rows or head.weight.shape[0] != base_rows:
        raise ValueError(
            f"expand: expected embedding and LM head of {token_space.base_rows} rows (token_space.base_rows), "
            f"got {base_rows} and {head.weight.shape[0]}"
        )
    total = token_space.padded_vocab_size if padded else token_space.vocab_size
    new_rows = total - base_rows
    tied = head.weight is emb.weight
    text_rows = token_space.text_vocab_size
    base_config = dict(model.config.to_dict())
    cfg_hash = config_sha256(model.config)

    gen = torch.Generator().manual_seed(int(seed))

    def init_rows(table: torch.Tensor, shape: tuple[int, ...]) -> nn.Parameter:
        rows = torch.zeros(shape, dtype=torch.float32)
        if init == "mean":
            ref = table.detach()[:text_rows].to("cpu", torch.float32)
            rows += ref.mean(dim=0)
            if noise_std > 0:
                rows += noise_std * ref.std() * torch.randn(shape, generator=gen)
        return nn.Parameter(rows.to(device=table.device, dtype=table.dtype))

    new_emb = init_rows(emb.weight, (new_rows, emb.weight.shape[1]))
    new_head = new_emb if tied else init_rows(head.weight, (new_rows, head.weight.shape[1]))
    base_bias = head.bias
    new_bias = None
    if base_bias is not None:
        fill = base_bias.detach()[:text_rows].to("cpu", torch.float32).mean() if init == "mean" else 0.0
        new_bias = nn.Parameter(torch.full((new_rows,), float(fill)).to(base_bias.device, base_bias.dtype))

    if freeze_rest:
        for p in model.parameters():
            p.requires_grad_(False)
    model.set_input_embeddings(TrainableRowsEmbedding(emb.weight, new_emb))
    model.set_output_embeddings(TrainableRowsLMHead(head.weight, new_head, base_bias, new_bias))
    model.config.vocab_size = total
    if hasattr(model, "vocab_size"):
        model.vocab_size = total
    model.lumo_expansion = Expansion(
        token_space=token_space,
        base_rows=base_rows,
        new_rows=new_rows,
        tied=tied,
        head_bias=base_bias is not None,
        base_config_sha256=cfg_hash,
        base_config=base_config,
    )
    return model
