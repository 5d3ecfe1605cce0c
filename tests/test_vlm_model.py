"""LumoVLM (freeze audit, injection, placeholder checks) and the collator (template, labels, truncation)."""

from __future__ import annotations

import pytest
import torch

import lumo_uti
from lumo_model.vlm import (
    LumoVLM,
    PlaceholderMismatchError,
    TruncationError,
    VLMCollator,
    VLMExample,
    patchify,
)
from lumo_model.vlm.train import to_device
from test_vlm_tiny import IMAGE, PATCH, squares, tiny_vlm

IMAGE_ID = 151940


def test_image_patch_id_is_beyond_the_text_embedding():
    model, _ = tiny_vlm()
    assert model.image_token_id == IMAGE_ID == lumo_uti.load().token_space.id_of("<|image_patch|>")
    assert model.image_token_id >= model.embed_rows


@pytest.mark.parametrize("kind", ["siglip2", "siglip"])
def test_forward_backward_only_the_connector_learns(kind):
    model, collator = tiny_vlm(kind)
    model.train()
    assert not model.text_model.training and not model.vision_model.training and model.connector.training
    audit = model.freeze_audit()
    assert audit["trainable"] and all(n.startswith("connector.") for n in audit["trainable"])
    assert audit["trainable_params"] == sum(p.numel() for p in model.connector.parameters())
    batch = to_device(collator(squares(3, seed=0)), torch.device("cpu"))
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.num_tokens == int((batch["labels"][:, 1:] != -100).sum())
    out.loss.backward()
    model.assert_towers_have_no_grad()
    assert all(p.grad is not None for p in model.connector.parameters())


def test_freeze_audit_catches_a_trainable_tower():
    model, _ = tiny_vlm()
    model.text_model.model.norm.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="frozen towers have trainable parameters.*text_model.model.norm.weight"):
        model.freeze_audit()


def test_injection_puts_connector_output_at_the_placeholders():
    model, collator = tiny_vlm()
    batch = collator(squares(2, seed=1))
    ids = batch["input_ids"]
    tokens = torch.randn(2, 8, 64)
    embeds = model.embed(ids)
    out = model.inject(embeds, ids, tokens)
    for i in range(2):
        pos = torch.nonzero(ids[i] == IMAGE_ID).flatten()
        assert len(pos) == 8 and torch.equal(out[i, pos], tokens[i])
        other = ids[i] != IMAGE_ID
        assert torch.equal(out[i, other], embeds[i, other])
    # Placeholder positions were embedded as the pad ID before the overwrite.
    assert torch.equal(embeds[0, pos[0]], model.text_model.get_input_embeddings().weight[model.pad_id])


def test_loss_with_labels_equals_full_logits_loss():
    model, collator = tiny_vlm()
    batch = to_device(collator(squares(2, seed=4)), torch.device("cpu"))
    with torch.no_grad():
        fast = model(**batch).loss
        full = model(**{**batch, "labels": None}).logits
    lab = batch["labels"][:, 1:]
    want = torch.nn.functional.cross_entropy(full[:, :-1].reshape(-1, full.shape[-1]).float(), lab.reshape(-1))
    torch.testing.assert_close(fast, want, atol=1e-5, rtol=1e-5)


def test_placeholder_mismatch_names_sample_and_cause():
    model, collator = tiny_vlm()
    batch = to_device(collator(squares(3, seed=2)), torch.device("cpu"))
    ids = batch["input_ids"].clone()
    # Missing image: sample 1 has a block but no image.
    with pytest.raises(PlaceholderMismatchError, match=r"sample 1 has 8 <\|image_patch\|> placeholders, expected "
                                                       r"0 image\(s\) x 8 latents = 0; likely cause: more placeholder"):
        model.check_placeholders(ids, [1, 0, 1])
    # A cut block (as truncation inside the block would leave).
    cut = ids.clone()
    pos = torch.nonzero(cut[2] == IMAGE_ID).flatten()
    cut[2, pos[-3:]] = 0
    with pytest.raises(PlaceholderMismatchError, match=r"sample 2 has 5 .*likely cause: a placeholder block was cut"):
        model.check_placeholders(cut, [1, 1, 1])
    # No block at all (wrong template).
    none = ids.clone()
    none[0][none[0] == IMAGE_ID] = 0
    with pytest.raises(PlaceholderMismatchError, match=r"sample 0 has 0 .*wrong chat template"):
        model(**{**batch, "input_ids": none})
    # Checked before the forward pass: a wrong count never reaches the towers.
    with pytest.raises(ValueError, match="image_counts sum to 2 but 3 images"):
        model(**{**batch, "image_counts": [1, 1, 0]})


def test_foreign_ids_beyond_the_embedding_are_refused():
    model, collator = tiny_vlm()
    batch = collator(squares(1, seed=2))
    ids = batch["input_ids"].clone()
    ids[0, 1] = 151941  # another UTI special, not the placeholder
    with pytest.raises(ValueError, match="sample 0 position 1: ID 151941 is outside the text model's 151936"):
        model.embed(ids)


def test_collator_template_and_label_masking():
    uti = lumo_uti.load()
    col = VLMCollator(uti, num_latents=4, image_size=IMAGE, patch_size=PATCH)
    ex = squares(2, seed=5)
    ex[1] = VLMExample(ex[1].images, "Describe the image in detail please.", "a long caption " * 3)
    batch = col(ex)
    ids, labels, att = batch["input_ids"], batch["labels"], batch["attention_mask"]
    im_start, im_end = uti.token_space.id_of("<|im_start|>"), uti.token_space.id_of("<|im_end|>")
    for i, e in enumerate(ex):
        n = int(att[i].sum())
        row, lab = ids[i, :n].tolist(), labels[i, :n].tolist()
        assert row[0] == im_start and row[-1] == im_end and row.count(IMAGE_ID) == 4
        caption = uti.encode(e.caption, allow_special=False) + [im_end]
        # Labels are exactly the caption and <|im_end|>, at the end; -100 elsewhere.
        assert [x for x in lab if x != -100] == caption and lab[-len(caption):] == caption
        assert all(x == -100 for x in lab[: n - len(caption)])
        assert all(x == -100 for x in labels[i, n:].tolist())
    assert batch["coverage"]["samples"] == 2 and 0 < batch["coverage"]["supervised_fraction"] < 1
    assert batch["pixel_values"].shape == (2, (IMAGE // PATCH) ** 2, PATCH * PATCH * 3)


def test_truncation_never_cuts_a_placeholder_block():
    uti = lumo_uti.load()
    ex = VLMExample([torch.rand(3, IMAGE, IMAGE)], "word " * 30, "caption word " * 30)
    full, _, _ = VLMCollator(uti, num_latents=8, image_size=IMAGE, patch_size=PATCH, max_seq_len=1000).encode(ex)
    for max_len in range(len(full) - 1, 18, -3):
        col = VLMCollator(uti, num_latents=8, image_size=IMAGE, patch_size=PATCH, max_seq_len=max_len)
        ids, labels, info = col.encode(ex)
        assert len(ids) == max_len and info["truncated"]
        assert ids.count(IMAGE_ID) == 8  # the whole block survives
        first = ids.index(IMAGE_ID)
        assert ids[first:first + 8] == [IMAGE_ID] * 8
        assert sum(x != -100 for x in labels) >= 1  # at least one supervised token
    col = VLMCollator(uti, num_latents=8, image_size=IMAGE, patch_size=PATCH, max_seq_len=20)
    ids, labels, info = col.encode(ex)
    assert info["prompt_shortened"] and len(ids) == 20
    col(([ex]))
    assert col.report.samples_truncated == 1 and col.report.prompts_shortened == 1
    with pytest.raises(TruncationError, match=r"1 image block\(s\) of 8 placeholders need 18 tokens.*max_seq_len=17"):
        VLMCollator(uti, num_latents=8, image_size=IMAGE, patch_size=PATCH, max_seq_len=17).encode(ex)


def test_coverage_report_accumulates():
    uti = lumo_uti.load()
    col = VLMCollator(uti, num_latents=4, image_size=IMAGE, patch_size=PATCH, max_seq_len=64)
    sq = squares(1, seed=0)[0]
    batch = col([VLMExample([torch.rand(3, IMAGE, IMAGE)], "q", ""), sq])
    # An empty caption still supervises <|im_end|>: no sample is left without labels.
    assert batch["coverage"]["samples_without_labels"] == 0
    want = 1 + len(uti.encode(sq.caption)) + 1
    assert batch["coverage"]["supervised_tokens"] == want
    col([sq])
    rep = col.report.as_dict()
    assert rep["samples"] == 3 and rep["supervised_tokens"] == want + len(uti.encode(sq.caption)) + 1
    assert rep["supervised_fraction"] == rep["supervised_tokens"] / rep["tokens"]


def test_patchify_layout_and_padding():
    img = torch.arange(3 * 8 * 12, dtype=torch.float32).reshape(3, 8, 12)
    out = patchify([img, torch.zeros(3, 4, 4)], 4)
    assert out["pixel_values"].shape == (2, 6, 48)
    assert out["spatial_shapes"].tolist() == [[2, 3], [1, 1]]
    assert out["pixel_attention_mask"].tolist() == [[1] * 6, [1, 0, 0, 0, 0, 0]]
    # Patch (row 1, col 2), pixel (y 1, x 3), channel 2 -> flattened [p, p, C].
    assert out["pixel_values"][0, 1 * 3 + 2, (1 * 4 + 3) * 3 + 2] == img[2, 4 + 1, 8 + 3]
    with pytest.raises(ValueError, match="multiples of 4"):
        patchify([torch.zeros(3, 5, 4)], 4)


def test_feature_layer_choice_changes_features():
    model, collator = tiny_vlm()
    batch = collator(squares(2, seed=6))
    args = (batch["pixel_values"], batch["pixel_attention_mask"], batch["spatial_shapes"])
    last, mask = model.vision_features(*args)
    model.feature_layer = 1
    mid, _ = model.vision_features(*args)
    assert last.shape == mid.shape == (2, 16, 32) and mask.all()
    assert not torch.allclose(last, mid)


def test_lumovlm_rejects_bad_pad_id():
    model, _ = tiny_vlm()
    with pytest.raises(ValueError, match="expected pad_id < 151936"):
        LumoVLM(model.text_model, model.vision_model, model.connector, lumo_uti.load().token_space, pad_id=151940)
