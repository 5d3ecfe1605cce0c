"""Constrained generation with a tiny random Qwen3 model and the UTI LogitsProcessor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lumo_uti
from lumo_uti import UTIDecodeError
from uti_strategies import grammar_for, small_space

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def setup():
    ts = small_space(image=(6, 1), audio=(5, 2), grid_max=3)
    config = transformers.Qwen3Config(
        vocab_size=ts.padded_vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        tie_word_embeddings=True,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    model = transformers.Qwen3ForCausalLM(config).eval()
    with torch.no_grad():  # make UTI tokens likely so the spans get exercised
        model.model.embed_tokens.weight[ts.base_rows :] *= 30
    return ts, grammar_for(ts), model


@pytest.mark.parametrize("opener", ["<|image_start|>", "<|audio_start|>", None])
def test_generation_stays_inside_the_grammar(setup, opener):
    ts, g, model = setup
    prompt = g.encode(["Describe:"])
    if opener:
        prompt.append(ts.id_of(opener))
    torch.manual_seed(1)
    out = model.generate(
        torch.tensor([prompt, prompt]),
        attention_mask=torch.ones(2, len(prompt), dtype=torch.long),
        logits_processor=[g.logits_processor()],
        do_sample=True,
        top_k=0,
        max_new_tokens=40,
        pad_token_id=151643,
    )
    for row in out.tolist():
        try:
            g.decode(row)
        except UTIDecodeError as e:  # only an unfinished span at the length limit
            assert (e.rule, e.position) == ("span.unterminated", len(row))
        if opener == "<|image_start|>":
            kinds = g.layout.kinds(np.array(row[len(prompt) : len(prompt) + 2]))
            assert (kinds == lumo_uti.grammar.Kind.GRID).all()


def test_processor_masks_equal_allowed_next(setup):
    ts, g, _ = setup
    processor = g.logits_processor()
    doc = ["hi", lumo_uti.ImageCodes([[1, 2], [3, 4]]), "x", lumo_uti.AudioCodes([[1, 2], [3, 4]])]
    ids = g.encode(doc)
    for n in range(1, len(ids) + 1):  # one token at a time: the incremental path
        scores = processor(torch.tensor([ids[:n]]), torch.zeros(1, ts.padded_vocab_size + 64))
        allowed = torch.isfinite(scores[0]).numpy()
        assert not allowed[ts.padded_vocab_size :].any()
        assert (allowed[: ts.padded_vocab_size] == g.allowed_next(ids[:n])).all(), n
    fresh = g.logits_processor()  # and the from-scratch path on a long prefix
    scores = fresh(torch.tensor([ids[:9]]), torch.zeros(1, ts.padded_vocab_size))
    assert (torch.isfinite(scores[0]).numpy() == g.allowed_next(ids[:9])).all()


def test_processor_rejects_a_too_small_vocab(setup):
    ts, g, _ = setup
    with pytest.raises(ValueError, match="expand the model's vocabulary"):
        g.logits_processor()(torch.tensor([[1]]), torch.zeros(1, ts.base_rows))


def test_processor_survives_a_damaged_prompt(setup):
    ts, g, _ = setup
    damaged = [ts.id_of("<|image_start|>"), -5, 10**12, ts.id_of("<|audio_start|>")]
    scores = g.logits_processor()(torch.tensor([damaged]), torch.zeros(1, ts.padded_vocab_size))
    allowed = torch.isfinite(scores[0]).numpy()
    audio = ts.block("audio")
    assert allowed[audio.offset : audio.offset + audio.codebook_size].all() and allowed.sum() == audio.codebook_size + 1
