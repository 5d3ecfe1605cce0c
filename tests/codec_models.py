"""Tiny random Hugging Face codec models, saved with ``save_pretrained`` for the codec tests."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as hf

# name -> (backend kind, model class, config kwargs)
TINY = {
    "janus": (
        "hf-janus",
        "JanusVQVAE",
        dict(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32, channel_multiplier=[1, 2],
             num_res_blocks=1, num_patches=4, projection_dim=16, image_token_embed_dim=16),
    ),
    "chameleon": (
        "hf-chameleon",
        "ChameleonVQVAE",
        dict(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32, channel_multiplier=[1, 2],
             num_res_blocks=1, resolution=8, attn_resolutions=[]),
    ),
    "emu3": (
        "hf-emu3",
        "Emu3VQVAE",
        dict(codebook_size=64, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 2],
             num_res_blocks=1, attn_resolutions=[], temporal_downsample_factor=4, hidden_size=64,
             num_attention_heads=1),
    ),
    "encodec": (
        "hf-encodec",
        "EncodecModel",
        dict(num_filters=4, hidden_size=8, codebook_dim=8, codebook_size=1024, upsampling_ratios=[4, 2],
             num_lstm_layers=1, target_bandwidths=[10.0, 20.0], sampling_rate=8000),
    ),
    "dac": (
        "hf-dac",
        "DacModel",
        dict(encoder_hidden_size=4, downsampling_ratios=[2, 2], decoder_hidden_size=8, n_codebooks=3,
             codebook_size=32, codebook_dim=4, hidden_size=16, sampling_rate=8000, upsampling_ratios=[2, 2]),
    ),
    "mimi": (
        "hf-mimi",
        "MimiModel",
        dict(hidden_size=16, num_filters=4, codebook_size=32, codebook_dim=8, num_quantizers=4,
             num_semantic_quantizers=1, upsampling_ratios=[4, 2], num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=2, head_dim=8, intermediate_size=32, sliding_window=16, sampling_rate=8000,
             vector_quantization_hidden_dimension=8, upsample_groups=16),
    ),
}


def make(name: str, root: Path, seed: int = 0) -> Path:
    """Build the tiny model ``name`` with random weights and save it under ``root/name``."""
    kind, class_name, kwargs = TINY[name]
    torch.manual_seed(seed)
    config = getattr(hf, class_name.replace("Model", "") + "Config" if class_name.endswith("Model") else class_name + "Config")(**kwargs)
    model = getattr(hf, class_name)(config).eval()
    randomize_codebooks(name, model)
    path = root / name
    model.save_pretrained(path, safe_serialization=True)
    return path


def randomize_codebooks(name: str, model) -> None:
    """Random codebooks for EnCodec and Mimi, whose configs start all-zero (every search one big tie):
    every code gets a distinct, non-degenerate centroid."""
    with torch.no_grad():
        if name == "mimi":
            split = model.quantizer
            for rvq in (split.semantic_residual_vector_quantizer, split.acoustic_residual_vector_quantizer):
                for layer in rvq.layers:
                    layer.codebook.embed_sum.normal_()
                    layer.codebook.cluster_usage.fill_(1.0)
        if name == "encodec":
            for layer in model.quantizer.layers:
                layer.codebook.embed.normal_()


def hf_model(name: str, path: Path):
    """The untouched Hugging Face model saved at ``path``."""
    return getattr(hf, TINY[name][1]).from_pretrained(path).eval()


def model_codes(name: str, model, x: torch.Tensor, **options) -> torch.Tensor:
    """Codes from the Hugging Face model's own ``encode``, in lumo's layout."""
    with torch.no_grad():
        if name in ("janus", "chameleon"):
            side = x.shape[-1] // 2 ** (len(model.config.channel_multiplier) - 1)
            return model.encode(x).image_tokens.view(x.shape[0], side, side)
        if name == "emu3":
            sizes = torch.tensor([list(x.shape[-2:])] * x.shape[0])
            return torch.stack(model.encode(x, image_sizes=sizes).image_tokens)
        if name == "encodec":
            bandwidth = options.get("bandwidth", model.config.target_bandwidths[-1])
            return model.encode(x, bandwidth=bandwidth).audio_codes[0].transpose(1, 2)
        if name == "dac":
            return model.encode(x, n_quantizers=options.get("num_quantizers")).audio_codes.transpose(1, 2)
        return model.encode(x, num_quantizers=options.get("num_quantizers")).audio_codes.transpose(1, 2)


def reference_codes(name: str, path: Path, x: torch.Tensor, **options) -> torch.Tensor:
    """``model_codes`` of a freshly loaded untouched model."""
    return model_codes(name, hf_model(name, path), x, **options)
