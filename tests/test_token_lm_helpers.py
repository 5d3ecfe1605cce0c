"""Shared builders for the token LM tests (no tests here): tiny random Qwen3 models."""

from __future__ import annotations

import torch

import lumo_uti

BASE_ROWS = 151936


def token_space():
    """The default bundle's token space (base rows 151936, 24896 UTI IDs, padded to 176896)."""
    return lumo_uti.load().token_space


def tiny_qwen3(tied: bool, seed: int = 0, hidden: int = 16, bias: bool = False):
    """A random 1-layer Qwen3ForCausalLM with the real vocabulary (151936 rows)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=BASE_ROWS, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2, tie_word_embeddings=tied,
        max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    if bias:
        head = model.lm_head
        new = torch.nn.Linear(head.in_features, head.out_features, bias=True)
        with torch.no_grad():
            new.weight.copy_(head.weight)
            new.bias.normal_()
        model.lm_head = new
    return model.eval()


def mixed_ids(ts, batch: int = 2, length: int = 24, seed: int = 0) -> torch.Tensor:
    """[batch, length] IDs mixing text, specials, image and audio codes (no padding IDs)."""
    g = torch.Generator().manual_seed(seed)
    pools = [
        torch.randint(0, ts.text_vocab_size, (batch, length), generator=g),
        torch.randint(ts.base_rows, ts.base_rows + 64, (batch, length), generator=g),
        torch.randint(ts.block("image").offset, ts.block("image").end, (batch, length), generator=g),
        torch.randint(ts.block("audio").offset, ts.block("audio").end, (batch, length), generator=g),
    ]
    which = torch.randint(0, len(pools), (batch, length), generator=g)
    out = pools[0].clone()
    for k, pool in enumerate(pools):
        out = torch.where(which == k, pool, out)
    out[:, 3] = out[:, 5]  # a repeated ID in every row
    return out
