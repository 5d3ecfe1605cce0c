"""PerceiverResampler / Connector vs straightforward Idefics2 and Flamingo perceivers with the same weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lumo_model.vlm import Connector, PerceiverResampler


def rms(x, w, eps=1e-6):
    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def plain_attention(attn, lat_n, ctx_n, mask):
    """Textbook perceiver attention: concatenate, project, masked softmax."""
    B, L, _ = lat_n.shape
    H, Hkv, d = attn.heads, attn.kv_heads, attn.head_dim
    kv_in = torch.cat([ctx_n, lat_n], dim=1)
    q = (lat_n @ attn.q_proj.weight.T).view(B, L, H, d).transpose(1, 2)
    k = (kv_in @ attn.k_proj.weight.T).view(B, -1, Hkv, d).transpose(1, 2).repeat_interleave(H // Hkv, 1)
    v = (kv_in @ attn.v_proj.weight.T).view(B, -1, Hkv, d).transpose(1, 2).repeat_interleave(H // Hkv, 1)
    scores = q @ k.transpose(-1, -2) / d ** 0.5
    if mask is not None:
        keep = torch.cat([mask, torch.ones(B, L, dtype=torch.bool)], 1)
        scores = scores.masked_fill(~keep[:, None, None], float("-inf"))
    out = scores.softmax(-1) @ v
    return out.transpose(1, 2).reshape(B, L, H * d) @ attn.o_proj.weight.T


def plain_idefics2(r: PerceiverResampler, context, mask):
    lat = r.latents.unsqueeze(0).expand(context.shape[0], -1, -1)
    for layer in r.layers:
        lat_n = rms(lat, layer.latents_norm.weight)
        ctx_n = rms(context, layer.context_norm.weight)
        lat = lat + plain_attention(layer.attn, lat_n, ctx_n, mask)
        h = rms(lat, layer.mlp_norm.weight)
        m = layer.mlp
        lat = lat + (F.silu(h @ m.gate_proj.weight.T) * (h @ m.up_proj.weight.T)) @ m.down_proj.weight.T
    return rms(lat, r.norm.weight)


def plain_flamingo(r: PerceiverResampler, context, mask):
    ln = lambda x, mod: F.layer_norm(x, (x.shape[-1],), mod.weight, mod.bias, mod.eps)  # noqa: E731
    lat = r.latents.unsqueeze(0).expand(context.shape[0], -1, -1)
    for layer in r.layers:
        lat = lat + plain_attention(layer.attn, ln(lat, layer.latents_norm), ln(context, layer.context_norm), mask)
        h = ln(lat, layer.mlp_norm)
        lat = lat + F.gelu(h @ layer.mlp.fc1.weight.T) @ layer.mlp.fc2.weight.T
    return ln(lat, r.norm)


def _randomise_norms(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("flavour,plain", [("idefics2", plain_idefics2), ("flamingo", plain_flamingo)])
def test_resampler_equals_plain_perceiver(flavour, plain, impl):
    r = PerceiverResampler(48, num_latents=6, depth=2, heads=4, kv_heads=2, head_dim=12, flavour=flavour,
                           attn_impl=impl)
    _randomise_norms(r)
    ctx = torch.randn(3, 17, 48)
    mask = torch.ones(3, 17, dtype=torch.bool)
    mask[1, 10:] = False
    mask[2, 3:] = False
    with torch.no_grad():
        torch.testing.assert_close(r(ctx, mask), plain(r, ctx, mask), atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(r(ctx), plain(r, ctx, None), atol=2e-5, rtol=1e-4)
        # Padding content must not matter.
        ctx2 = ctx.clone()
        ctx2[2, 3:] = 100.0
        assert torch.allclose(r(ctx2, mask)[2], r(ctx, mask)[2], atol=1e-5)


def test_resampler_matches_transformers_idefics2():
    idefics2 = pytest.importorskip("transformers.models.idefics2.modeling_idefics2")
    from transformers.models.idefics2.configuration_idefics2 import Idefics2PerceiverConfig

    cfg = Idefics2PerceiverConfig(hidden_size=32, resampler_n_latents=5, resampler_depth=2, resampler_n_heads=4,
                                  resampler_head_dim=8, num_key_value_heads=2, hidden_act="silu", rms_norm_eps=1e-6)
    cfg._attn_implementation = "eager"
    hf = idefics2.Idefics2PerceiverResampler(cfg).eval()
    ours = PerceiverResampler(32, num_latents=5, depth=2, heads=4, kv_heads=2, head_dim=8, flavour="idefics2")
    names = {"input_latents_norm": "latents_norm", "input_context_norm": "context_norm",
             "post_attention_layernorm": "mlp_norm", "self_attn": "attn"}
    state = {}
    for k, v in hf.state_dict().items():
        for a, b in names.items():
            k = k.replace(a, b)
        state[k] = torch.randn_like(v) * 0.2 + (1.0 if "norm" in k else 0.0)
    ours.load_state_dict(state)
    hf.load_state_dict({k: state[kk] for k, kk in zip(hf.state_dict(), state)})
    ctx = torch.randn(2, 9, 32)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        torch.testing.assert_close(ours(ctx, mask.bool()), hf(ctx, mask), atol=3e-5, rtol=1e-4)


def test_fused_and_reference_gradients_agree():
    torch.manual_seed(0)
    c = Connector(24, 40, num_latents=4, depth=2, heads=4, kv_heads=2, head_dim=8)
    feats = torch.randn(2, 11, 24)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[0, 7:] = False
    grads = {}
    for impl in ("fused", "reference"):
        c.zero_grad()
        c.resampler.set_attn_impl(impl)
        c(feats, mask).square().mean().backward()
        grads[impl] = {n: p.grad.clone() for n, p in c.named_parameters()}
    for n in grads["fused"]:
        torch.testing.assert_close(grads["fused"][n], grads["reference"][n], atol=1e-5, rtol=1e-4)


def test_connector_shapes_and_config_roundtrip():
    c = Connector(24, 40, resampler_dim=16, num_latents=4, depth=1, heads=2, kv_heads=1, flavour="flamingo")
    out = c(torch.randn(3, 7, 24))
    assert out.shape == (3, 4, 40)
    c2 = Connector.from_config(c.config)
    c2.load_state_dict(c.state_dict())
    x = torch.randn(1, 5, 24)
    assert torch.equal(c(x), c2(x))


def test_resampler_bad_config_and_inputs():
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        PerceiverResampler(32, heads=4, kv_heads=3)
    with pytest.raises(ValueError, match="expected flavour"):
        PerceiverResampler(32, heads=4, flavour="perceiver-io")
    r = PerceiverResampler(32, num_latents=4, depth=1, heads=4)
    with pytest.raises(ValueError, match=r"expected context \[B, N, 32\]"):
        r(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="expected a bool mask of shape"):
        r(torch.randn(2, 5, 32), torch.ones(2, 5))
