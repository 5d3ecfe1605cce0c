"""Tiny random towers and the synthetic coloured-squares captioning set, shared by the VLM tests.

The towers are built here from configs (never downloaded): a 2-layer Qwen3
with the full 151936-row vocabulary (the UTI's text IDs must embed) and a
2-layer SigLIP2 (NaFlex) or SigLIP vision model on 16x16 images.
"""

from __future__ import annotations

import torch

import lumo_uti
from lumo_model.vlm import Connector, LumoVLM, VLMCollator, VLMExample

COLOURS = {
    "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0), "white": (1.0, 1.0, 1.0), "purple": (0.5, 0.0, 0.5),
}
IMAGE = 16
PATCH = 4


def tiny_text(seed: int = 0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    # initializer_range 0.5: with the default 0.02 a 64-wide tied head cannot
    # produce logits sharp enough to fit any caption.
    cfg = Qwen3Config(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                      max_position_embeddings=256, initializer_range=0.5)
    return Qwen3ForCausalLM(cfg)


def tiny_vision(kind: str = "siglip2", seed: int = 1):
    torch.manual_seed(seed)
    if kind == "siglip2":
        from transformers import Siglip2VisionConfig, Siglip2VisionModel

        cfg = Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  num_patches=(IMAGE // PATCH) ** 2, patch_size=PATCH)
        return Siglip2VisionModel(cfg)
    from transformers import SiglipVisionConfig, SiglipVisionModel

    cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=IMAGE, patch_size=PATCH)
    return SiglipVisionModel(cfg)


def tiny_vlm(kind: str = "siglip2", num_latents: int = 8, flavour: str = "idefics2", max_seq_len: int = 64):
    uti = lumo_uti.load()
    torch.manual_seed(2)
    connector = Connector(32, 64, num_latents=num_latents, depth=1, heads=4, kv_heads=2, flavour=flavour)
    model = LumoVLM(tiny_text(), tiny_vision(kind), connector, uti.token_space)
    collator = VLMCollator(uti, num_latents=num_latents, image_size=IMAGE,
                           patch_size=PATCH if kind == "siglip2" else None, max_seq_len=max_seq_len)
    return model, collator


def squares(n: int, seed: int) -> list[VLMExample]:
    """A coloured 8x8 square at a random place on grey, captioned "a <colour> square"."""
    g = torch.Generator().manual_seed(seed)
    names = list(COLOURS)
    out = []
    for _ in range(n):
        name = names[int(torch.randint(0, len(names), (1,), generator=g))]
        img = torch.full((3, IMAGE, IMAGE), 0.5) + 0.05 * torch.randn(3, IMAGE, IMAGE, generator=g)
        y, x = torch.randint(0, IMAGE // 2, (2,), generator=g).tolist()
        img[:, y:y + 8, x:x + 8] = torch.tensor(COLOURS[name])[:, None, None]
        out.append(VLMExample([img.clamp(0, 1)], "What is in the picture?", f"a {name} square"))
    return out


def test_squares_are_deterministic_and_captions_follow_the_colour():
    a, b = squares(12, seed=3), squares(12, seed=3)
    for x, y in zip(a, b):
        assert torch.equal(x.images[0], y.images[0]) and x.caption == y.caption
    for ex in a:
        colour = ex.caption.split()[1]
        # The brightest-coloured 8x8 block has the caption's colour.
        img = ex.images[0]
        target = torch.tensor(COLOURS[colour])[:, None, None]
        assert ((img - target).abs().amax(0) < 0.01).sum() >= 64
