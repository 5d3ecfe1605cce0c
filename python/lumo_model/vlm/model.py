"""LumoVLM: frozen text and vision towers joined by a trainable connector.

The vision tower (SigLIP or SigLIP2, Hugging Face) turns images into features
``[n_img, N, Dv]`` (default: ``last_hidden_state``; SigLIP has no CLS token, so
all N tokens are kept). The connector maps them to ``[n_img, L, Dt]`` (L = 64
latents), which replace the text embeddings at the ``<|image_patch|>``
positions (L per image, in order) before the text model runs. The
placeholder ID lies beyond the base embedding table, so those positions are
embedded as ``pad_id`` first and overwritten.

Both towers are frozen and stay in eval mode whatever ``train()`` is called
with; ``freeze_audit()`` lists what trains and raises if a tower could learn.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from ..errors import PlaceholderMismatchError

__all__ = ["IMAGE_PATCH", "LumoVLM", "PlaceholderMismatchError", "VLMOutput", "patchify"]

IMAGE_PATCH = "<|image_patch|>"

FeatureTransform = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def patchify(images: Sequence[torch.Tensor], patch_size: int) -> dict[str, torch.Tensor]:
    """Images ``[C, H, W]`` (H, W multiples of ``patch_size``) -> SigLIP2 NaFlex inputs.

    Patches are flattened as the SigLIP2 image processor does (row-major
    patches, each ``[p, p, C]`` flattened), padded to the longest image.

    Returns:
        ``pixel_values [n, P, p*p*C]``, ``pixel_attention_mask [n, P]`` (long,
        1 = real patch) and ``spatial_shapes [n, 2]`` (patch rows, columns).
    """
    if not images:
        raise ValueError("patchify: expected at least one image, got none")
    p = patch_size
    rows, shapes = [], []
    for i, img in enumerate(images):
        if img.dim() != 3 or img.shape[1] % p or img.shape[2] % p:
            raise ValueError(f"patchify: expected image {i} as [C, H, W] with H, W multiples of {p}, got {tuple(img.shape)}")
        C, H, W = img.shape
        x = img.reshape(C, H // p, p, W // p, p).permute(1, 3, 2, 4, 0).reshape((H // p) * (W // p), p * p * C)
        rows.append(x)
        shapes.append((H // p, W // p))
    P = max(r.shape[0] for r in rows)
    pv = rows[0].new_zeros(len(rows), P, rows[0].shape[1])
    mask = torch.zeros(len(rows), P, dtype=torch.long)
    for i, r in enumerate(rows):
        pv[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = 1
    return {"pixel_values": pv, "pixel_attention_mask": mask, "spatial_shapes": torch.tensor(shapes, dtype=torch.long)}


def _placeholder_cause(found: int, expected: int, num_images: int, latents: int, blocks_ok: bool) -> str:
    if not blocks_ok:
        return "a placeholder block was cut (truncation inside an image block?)"
    if found == 0:
        return "no placeholder block for the image(s) (wrong chat template?)"
    if found > expected:
        return "more placeholder blocks than images (missing image?)"
    if found % latents:
        return "a partial placeholder block (truncation?)"
    return "fewer placeholder blocks than images (truncation dropped a block, or wrong template?)"


class LumoVLM(nn.Module):
    """Text model + vision model + connector, with injection at ``<|image_patch|>``.

    Args:
        text_model: a Hugging Face causal LM (Qwen3ForCausalLM).
        vision_model: SiglipVisionModel or Siglip2VisionModel.
        connector: ``Connector`` whose ``text_dim`` is the text hidden size.
        token_space: ``lumo_uti.TokenSpace`` (for the placeholder ID).
        feature_layer: None = ``last_hidden_state``; an int k = ``hidden_states[k]``.
        pad_id: ID embedded at placeholder positions before the overwrite
            (default: ``<|endoftext|>``).
    """

    def __init__(self, text_model: nn.Module, vision_model: nn.Module, connector: nn.Module,
                 token_space: Any, *, feature_layer: Optional[int] = None, pad_id: Optional[int] = None):
        super().__init__()
        self.text_model = text_model
        self.vision_model = vision_model
        self.connector = connector
        self.image_token_id = int(token_space.id_of(IMAGE_PATCH))
        self.pad_id = int(token_space.id_of("<|endoftext|>") if pad_id is None else pad_id)
        self.feature_layer = feature_layer
        self.num_latents = int(connector.num_latents)
        self.naflex = "spatial_shapes" in inspect.signature(vision_model.forward).parameters
        self.embed_rows = int(text_model.get_input_embeddings().num_embeddings)
        if self.pad_id >= self.embed_rows:
            raise ValueError(f"LumoVLM: expected pad_id < {self.embed_rows} embedding rows, got {self.pad_id}")
        for tower in (text_model, vision_model):
            tower.requires_grad_(False)
            tower.eval()

    def train(self, mode: bool = True) -> "LumoVLM":
        super().train(mode)
        self.text_model.eval()  # frozen towers: no dropout, fixed statistics
        self.vision_model.eval()
        return self

    # -- audit -------------------------------------------------------------------------
    def freeze_audit(self) -> dict[str, Any]:
        """Trainable parameters by name; raises RuntimeError if a tower parameter is trainable.

        Returns ``{"trainable": {name: numel}, "trainable_params": int, "frozen_params": int}``.
        """
        tower_bad = [
            f"{prefix}.{n}" for prefix, tower in (("text_model", self.text_model), ("vision_model", self.vision_model))
            for n, p in tower.named_parameters() if p.requires_grad
        ]
        if tower_bad:
            raise RuntimeError(f"LumoVLM: frozen towers have trainable parameters: {tower_bad[:5]} ({len(tower_bad)} total)")
        trainable = {n: p.numel() for n, p in self.named_parameters() if p.requires_grad}
        frozen = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        return {"trainable": trainable, "trainable_params": sum(trainable.values()), "frozen_params": frozen}

    def assert_towers_have_no_grad(self) -> None:
        """Raise RuntimeError if a backward pass left a gradient on a tower parameter."""
        for prefix, tower in (("text_model", self.text_model), ("vision_model", self.vision_model)):
            for n, p in tower.named_parameters():
                if p.grad is not None:
                    raise RuntimeError(f"LumoVLM: frozen parameter {prefix}.{n} received a gradient")

    # -- pieces ------------------------------------------------------------------------
    def check_placeholders(self, input_ids: torch.Tensor, image_counts: Sequence[int]) -> None:
        """Raise PlaceholderMismatchError unless sample i holds image_counts[i] whole blocks of L placeholders."""
        if len(image_counts) != input_ids.shape[0]:
            raise ValueError(
                f"LumoVLM: expected image_counts for {input_ids.shape[0]} samples, got {len(image_counts)}"
            )
        L = self.num_latents
        is_ph = (input_ids == self.image_token_id).cpu()
        for i, k in enumerate(image_counts):
            row = is_ph[i]
            found = int(row.sum())
            # Whole blocks: every run of placeholders has a length that is a multiple of L.
            blocks_ok = True
            if found:
                padded = torch.cat([torch.zeros(1, dtype=torch.int8), row.to(torch.int8), torch.zeros(1, dtype=torch.int8)])
                edges = torch.nonzero(padded[1:] != padded[:-1]).flatten()
                runs = edges[1::2] - edges[0::2]
                blocks_ok = bool((runs % L == 0).all())
            if found != int(k) * L or not blocks_ok:
                raise PlaceholderMismatchError(
                    f"LumoVLM: sample {i} has {found} {IMAGE_PATCH} placeholders, expected "
                    f"{int(k)} image(s) x {L} latents = {int(k) * L}; likely cause: "
                    f"{_placeholder_cause(found, int(k) * L, int(k), L, blocks_ok)}"
                )

    @torch.no_grad()
    def vision_features(self, pixel_values: torch.Tensor, pixel_attention_mask: Optional[torch.Tensor] = None,
                        spatial_shapes: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Frozen vision features ``[n_img, N, Dv]`` and their mask ``[n_img, N]`` bool (None = all real)."""
        want_hidden = self.feature_layer is not None
        if self.naflex:
            if pixel_attention_mask is None or spatial_shapes is None:
                raise ValueError("LumoVLM: a SigLIP2 (NaFlex) tower needs pixel_attention_mask and spatial_shapes")
            out = self.vision_model(pixel_values=pixel_values, pixel_attention_mask=pixel_attention_mask,
                                    spatial_shapes=spatial_shapes, output_hidden_states=want_hidden)
            mask = pixel_attention_mask.bool()
        else:
            out = self.vision_model(pixel_values=pixel_values, output_hidden_states=want_hidden)
            mask = None
        feats = out.hidden_states[self.feature_layer] if want_hidden else out.last_hidden_state
        return feats, mask

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Text embeddings ``[B, T, Dt]`` with placeholder positions embedded as ``pad_id``."""
        safe = torch.where(input_ids == self.image_token_id, torch.full_like(input_ids, self.pad_id), input_ids)
        bad = (safe < 0) | (safe >= self.embed_rows)
        if bool(bad.any()):
            b, t = (int(x) for x in torch.nonzero(bad)[0])
            raise ValueError(
                f"LumoVLM: sample {b} position {t}: ID {int(input_ids[b, t])} is outside the text model's "
                f"{self.embed_rows} embedding rows (only {IMAGE_PATCH} may lie beyond them)"
            )
        return self.text_model.get_input_embeddings()(safe)

    def inject(self, embeds: torch.Tensor, input_ids: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Write ``image_tokens [n_img, L, Dt]`` at the placeholder positions of ``embeds [B, T, Dt]``, in order."""
        where = (input_ids == self.image_token_id).unsqueeze(-1)
        src = image_tokens.to(device=embeds.device, dtype=embeds.dtype).reshape(-1, embeds.shape[-1])
        if int(where.sum()) != src.shape[0]:
            raise PlaceholderMismatchError(
                f"LumoVLM: {int(where.sum())} placeholders in the batch but {src.shape[0]} image tokens"
            )
        return embeds.masked_scatter(where, src)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, *, image_counts: Optional[Sequence[int]] = None,
                pixel_values: Optional[torch.Tensor] = None, pixel_attention_mask: Optional[torch.Tensor] = None,
                spatial_shapes: Optional[torch.Tensor] = None,
                feature_transform: Optional[FeatureTransform] = None,
                token_transform: Optional[FeatureTransform] = None, **_: Any):
        """Returns a ``VLMOutput``: ``.loss`` (mean CE over supervised tokens) when labels are given,
        else ``.logits`` ``[B, T, vocab]``.

        ``image_counts[i]``: images of sample i (default: 1 each when pixel_values
        is given, else 0). ``feature_transform(features, mask)`` may replace the
        vision features before the connector, ``token_transform(tokens, None)``
        the connector's output ``[n_img, L, Dt]`` before injection (the ablation
        uses them).
        """
        n_img = 0 if pixel_values is None else int(pixel_values.shape[0])
        if image_counts is None:
            image_counts = [1 if n_img else 0] * input_ids.shape[0]
        if sum(int(k) for k in image_counts) != n_img:
            raise ValueError(f"LumoVLM: image_counts sum to {sum(image_counts)} but {n_img} images were given")
        self.check_placeholders(input_ids, image_counts)
        embeds = self.embed(input_ids)
        if n_img:
            feats, fmask = self.vision_features(pixel_values, pixel_attention_mask, spatial_shapes)
            if feature_transform is not None:
                feats = feature_transform(feats, fmask)
            dtype = next(self.connector.parameters()).dtype
            tokens = self.connector(feats.to(dtype), fmask)
            if token_transform is not None:
                tokens = token_transform(tokens, None)
            embeds = self.inject(embeds, input_ids, tokens)
        return self._text_forward(embeds, attention_mask, labels)

    def _text_forward(self, embeds: torch.Tensor, attention_mask: Optional[torch.Tensor],
                      labels: Optional[torch.Tensor]) -> "VLMOutput":
        base = getattr(self.text_model, "model", None)
        head = self.text_model.get_output_embeddings()
        if labels is None or base is None or head is None:
            out = self.text_model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)
            n = None if labels is None else int((labels[:, 1:] != -100).sum())
            return VLMOutput(loss=getattr(out, "loss", None), logits=out.logits, num_tokens=n)
        # Only supervised positions go through the LM head: [T, vocab] logits
        # for a 151k vocabulary would dominate time and memory otherwise.
        hidden = base(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        target = labels[:, 1:]
        keep = target != -100
        logits = head(hidden[:, :-1][keep]).float()
        n = int(keep.sum())
        if n == 0:
            loss = logits.sum() * 0.0  # keeps the graph: no supervised token in this batch
        else:
            loss = torch.nn.functional.cross_entropy(logits, target[keep], reduction="mean")
        return VLMOutput(loss=loss, logits=None, num_tokens=n)


class VLMOutput:
    """``loss`` (mean over supervised tokens), ``num_tokens`` supervised, ``logits`` (None when only the loss was computed)."""

    def __init__(self, loss: Optional[torch.Tensor], logits: Optional[torch.Tensor], num_tokens: Optional[int]):
        self.loss, self.logits, self.num_tokens = loss, logits, num_tokens
