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


class _MaskSpy(transformers.LogitsProcessor):
    """Runs after the UTI processor and records each row's prefix with the IDs left allowed."""

    def __init__(self):
        self.calls: list[tuple[list[int], np.ndarray]] = []

    def __call__(self, input_ids, scores):
        for row, s in zip(input_ids.tolist(), scores):
            self.calls.append((row, torch.isfinite(s).numpy().copy()))
        return scores


_MODES = {
    "greedy": dict(do_sample=False),
    "sampling": dict(do_sample=True, top_k=0),
    "sampling_3_returns": dict(do_sample=True, top_k=0, num_return_sequences=3),
    "beam_4": dict(num_beams=4, num_return_sequences=4, do_sample=False),
    "beam_sampling": dict(num_beams=3, num_return_sequences=2, do_sample=True, top_k=0),
}


@pytest.mark.parametrize("mode", sorted(_MODES))
def test_every_mask_equals_allowed_next_under_any_decoding_strategy(setup, mode):
    """Rows are reordered, duplicated and dropped by beam search: each mask must still be its own prefix's."""
    ts, g, model = setup
    prompts = [g.encode(["Describe:"]) + [ts.id_of("<|audio_start|>")],
               g.encode(["Draw"]) + [ts.id_of("<|image_start|>")]]
    prompts[1] = [151643] * (len(prompts[0]) - len(prompts[1])) + prompts[1]  # left-pad to one length
    mask = torch.ones(2, len(prompts[0]), dtype=torch.long)
    mask[1, : (torch.tensor(prompts[1]) == 151643).sum()] = 0
    spy = _MaskSpy()
    torch.manual_seed(3)
    out = model.generate(torch.tensor(prompts), attention_mask=mask, logits_processor=[g.logits_processor(), spy],
                         max_new_tokens=24, pad_token_id=151643, **_MODES[mode])
    assert len(spy.calls) >= 24
    for row, allowed in spy.calls:
        want = g.allowed_next(row)
        assert (allowed[: ts.padded_vocab_size] == want).all(), (mode, len(row))
    for row in out.tolist():
        try:
            g.decode(row)
        except UTIDecodeError as e:  # only an unfinished span at the length limit
            assert (e.rule, e.position) == ("span.unterminated", len(row))


def test_rows_are_matched_by_content_not_by_position(setup):
    """Swapping two rows between calls (as beam search does) keeps each row's own state, even when
    both rows end in the same ID and have the same length."""
    ts, g, _ = setup
    text = g.encode(["hi"])[0]
    a = [text, text]  # in text
    b = [ts.id_of("<|audio_start|>"), text]  # inside audio (the text ID is dropped leniently)
    audio = ts.block("audio")
    p = g.logits_processor()
    p(torch.tensor([a, b]), torch.zeros(2, ts.padded_vocab_size))
    nxt = torch.tensor([b + [audio.offset], a + [text]])  # swapped, each one token longer
    got = torch.isfinite(p(nxt, torch.zeros(2, ts.padded_vocab_size)))
    fresh = torch.isfinite(g.logits_processor()(nxt, torch.zeros(2, ts.padded_vocab_size)))
    assert torch.equal(got, fresh)
    assert got[0, audio.offset + audio.codebook_size] and not got[0, text]  # audio codebook 1 next
