"""lumo_model.token_lm: expansion, trainable-rows layers, gradients vs a dense reference."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lumo_model.token_lm import (
    TrainableRowsEmbedding,
    TrainableRowsLMHead,
    expand,
    expansion_of,
    trainable_parameters,
)
from lumo_model.token_lm.training import forbidden_columns, rows_loss
from test_token_lm_helpers import BASE_ROWS, mixed_ids, tiny_qwen3, token_space

TIED = pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])


@TIED
def test_expand_shapes_config_and_freezing(tied: bool) -> None:
    ts = token_space()
    model = tiny_qwen3(tied)
    base_emb = model.get_input_embeddings().weight
    expand(model, ts)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert isinstance(emb, TrainableRowsEmbedding) and isinstance(head, TrainableRowsLMHead)
    assert emb.base_weight is base_emb  # the same tensor: no copy of the base table
    assert model.config.vocab_size == ts.padded_vocab_size == emb.num_embeddings == head.out_features
    assert (head.new_weight is emb.new_weight) == tied
    info = expansion_of(model)
    assert (info.base_rows, info.new_rows, info.tied) == (BASE_ROWS, ts.padded_vocab_size - BASE_ROWS, tied)
    trainable = {id(p) for p in trainable_parameters(model)}
    named = {n for n, p in model.named_parameters() if p.requires_grad}
    assert named == ({"model.embed_tokens.new_weight"} if tied else {"model.embed_tokens.new_weight", "lm_head.new_weight"})
    assert trainable == {id(p) for p in model.parameters() if p.requires_grad}
    logits = model(mixed_ids(ts)).logits
    assert logits.shape == (2, 24, ts.padded_vocab_size)


def test_expand_to_exact_vocab_size() -> None:
    ts = token_space()
    model = expand(tiny_qwen3(False), ts, padded=False)
    assert model.config.vocab_size == ts.vocab_size
    assert model(mixed_ids(ts)).logits.shape[-1] == ts.vocab_size


@TIED
def test_mean_init_and_seeded_noise(tied: bool) -> None:
    ts = token_space()
    model = tiny_qwen3(tied)
    text = model.get_input_embeddings().weight[: ts.text_vocab_size].detach().clone()
    head_text = model.get_output_embeddings().weight[: ts.text_vocab_size].detach().clone()
    expand(model, ts)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    torch.testing.assert_close(emb.new_weight, text.mean(0).expand_as(emb.new_weight), rtol=0, atol=1e-7)
    torch.testing.assert_close(head.new_weight, head_text.mean(0).expand_as(head.new_weight), rtol=0, atol=1e-7)
    a = expand(tiny_qwen3(tied), ts, noise_std=0.1, seed=3).get_input_embeddings().new_weight
    b = expand(tiny_qwen3(tied), ts, noise_std=0.1, seed=3).get_input_embeddings().new_weight
    c = expand(tiny_qwen3(tied), ts, noise_std=0.1, seed=4).get_input_embeddings().new_weight
    assert torch.equal(a, b) and not torch.equal(a, c)
    spread = (a - text.mean(0)).std()
    assert 0.05 * text.std() < spread < 0.2 * text.std()


def test_expand_rejects_bad_models() -> None:
    ts = token_space()
    model = expand(tiny_qwen3(True), ts)
    with pytest.raises(TypeError, match="expanded already"):
        expand(model, ts)
    small = tiny_qwen3(True)
    small.resize_token_embeddings(1000)
    with pytest.raises(ValueError, match=r"expected embedding and LM head of 151936 rows \(token_space.base_rows\), got 1000 and 1000"):
        expand(small, ts)
    with pytest.raises(ValueError, match="expected init in"):
        expand(tiny_qwen3(True), ts, init="covariance")
    with pytest.raises(TypeError, match="expected a TokenSpace"):
        expand(tiny_qwen3(True), "default")


def test_embedding_rejects_out_of_range_ids() -> None:
    ts = token_space()
    emb = expand(tiny_qwen3(False), ts).get_input_embeddings()
    with pytest.raises(IndexError, match=r"expected ids in \[0, 176896\), got 176896"):
        emb(torch.tensor([1, ts.padded_vocab_size]))
    with pytest.raises(IndexError, match=r"got -1"):
        emb(torch.tensor([-1, 3]))
    with pytest.raises(TypeError, match="expected integer ids"):
        emb(torch.tensor([1.0]))


# ---------------------------------------------------------------------------
# Gradients vs the dense reference (resize_token_embeddings + full backward)
# ---------------------------------------------------------------------------


def _dense_twin(model_base, expanded):
    """The base model resized densely, with the same new rows as ``expanded``."""
    dense = model_base
    ts = expansion_of(expanded).token_space
    dense.resize_token_embeddings(ts.padded_vocab_size, mean_resizing=False)
    emb, head = expanded.get_input_embeddings(), expanded.get_output_embeddings()
    with torch.no_grad():
        dense.get_input_embeddings().weight[BASE_ROWS:] = emb.new_weight
        dense.get_output_embeddings().weight[BASE_ROWS:] = head.new_weight
    return dense


@TIED
@pytest.mark.parametrize("masked_loss", [True, False], ids=["masked", "plain"])
def test_gradients_match_dense_reference(tied: bool, masked_loss: bool) -> None:
    ts = token_space()
    base = tiny_qwen3(tied, hidden=32)
    model = expand(copy.deepcopy(base), ts, noise_std=0.05, seed=1)
    dense = _dense_twin(base, model)
    dense.requires_grad_(False)
    dense.get_input_embeddings().weight.requires_grad_(True)
    dense.get_output_embeddings().weight.requires_grad_(True)
    ids = mixed_ids(ts, seed=2)
    labels = ids.clone()
    labels[:, :4] = -100
    forbidden = forbidden_columns(ts, ts.padded_vocab_size)

    def loss_of(m):
        logits = m(ids).logits
        if masked_loss:
            per = rows_loss(logits, labels, forbidden)
            return per.sum() / (labels[:, 1:] != -100).sum()
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))

    lm, ld = loss_of(model), loss_of(dense)
    torch.testing.assert_close(lm, ld, rtol=1e-6, atol=1e-6)
    lm.backward()
    ld.backward()
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    d_emb = dense.get_input_embeddings().weight.grad
    d_head = dense.get_output_embeddings().weight.grad
    assert emb.base_weight.grad is None and head.base_weight.grad is None
    if tied:
        torch.testing.assert_close(emb.new_weight.grad, d_emb[BASE_ROWS:], rtol=1e-4, atol=2e-6)
    else:
        torch.testing.assert_close(emb.new_weight.grad, d_emb[BASE_ROWS:], rtol=1e-4, atol=2e-6)
        torch.testing.assert_close(head.new_weight.grad, d_head[BASE_ROWS:], rtol=1e-4, atol=2e-6)
    assert emb.new_weight.grad.abs().sum() > 0
    if masked_loss:
        # Padding columns are never a target nor get probability: zero gradient.
        pad = slice(ts.vocab_size - BASE_ROWS, None)
        assert torch.count_nonzero(head.new_weight.grad[pad]) == 0


def test_head_bias_kept_and_trained() -> None:
    ts = token_space()
    model = tiny_qwen3(False, bias=True)
    bias = model.lm_head.bias.detach().clone()
    expand(model, ts)
    head = model.get_output_embeddings()
    assert head.new_bias is not None and torch.equal(head.base_bias, bias)
    torch.testing.assert_close(head.new_bias, bias[: ts.text_vocab_size].mean().expand_as(head.new_bias))
    assert any(p is head.new_bias for p in trainable_parameters(model))
    h = torch.randn(3, head.in_features)
    want = torch.cat([h @ head.base_weight.T + bias, h @ head.new_weight.T + head.new_bias], -1)
    torch.testing.assert_close(head(h), want)
    head(h).sum().backward()
    assert head.new_bias.grad is not None and head.base_bias.grad is None


def test_layers_reject_mismatched_tables() -> None:
    with pytest.raises(ValueError, match=r"expected base \[B, D\] and new \[N, D\] tables, got \(4, 3\) and \(2, 5\)"):
        TrainableRowsEmbedding(torch.nn.Parameter(torch.zeros(4, 3)), torch.nn.Parameter(torch.zeros(2, 5)))
    with pytest.raises(ValueError, match="both base_bias and new_bias, or neither"):
        TrainableRowsLMHead(torch.nn.Parameter(torch.zeros(4, 3)), torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(4)))


# ---------------------------------------------------------------------------
# Optimizer steps: base rows never move
# ---------------------------------------------------------------------------


@TIED
def test_base_rows_bit_identical_after_steps(tied: bool) -> None:
    ts = token_space()
    model = expand(tiny_qwen3(tied), ts)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    new_before = [p.detach().clone() for p in trainable_parameters(model)]
    params = trainable_parameters(model)
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    assert sum(len(g["params"]) for g in opt.param_groups) == (1 if tied else 2)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in params}
    assert all(p.shape[0] == ts.padded_vocab_size - BASE_ROWS for p in params)
    forbidden = forbidden_columns(ts, ts.padded_vocab_size)
    model.train()
    for step in range(4):
        ids = mixed_ids(ts, seed=step)
        loss = rows_loss(model(ids).logits, ids, forbidden).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, before[n]), n
    assert all(not torch.equal(a, b) for a, b in zip(new_before, trainable_parameters(model)))
    assert len(opt.state) == len(params)
    state_elems = sum(t.numel() for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim())
    assert state_elems == 2 * sum(p.numel() for p in params)  # Adam moments of the new rows only


def test_generate_with_the_uti_logits_processor_never_emits_padding() -> None:
    """The expanded model plugs into HF generate; the grammar masks padding rows."""
    import lumo_uti
    from transformers import LogitsProcessorList

    uti = lumo_uti.load()
    ts = uti.token_space
    model = expand(tiny_qwen3(True), ts, noise_std=0.5, seed=0).eval()
    with torch.no_grad():
        # Make the padding rows the most likely outputs, so that only the mask keeps them out.
        model.get_output_embeddings().new_weight[ts.vocab_size - BASE_ROWS :] = 5.0
    prompt = torch.tensor([uti.encode(["hello ", ])], dtype=torch.long)
    out = model.generate(prompt, max_new_tokens=6, do_sample=False, logits_processor=LogitsProcessorList([uti.logits_processor()]), pad_token_id=0)
    new = out[0, prompt.shape[1] :].tolist()
    assert len(new) == 6
    assert all(i < ts.text_vocab_size or ts.base_rows <= i < ts.vocab_size for i in new), new
    raw = model(prompt).logits[0, -1]
    assert int(raw.argmax()) >= ts.vocab_size  # unmasked, a padding row would have won
