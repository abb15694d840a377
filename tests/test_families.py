"""Dense features that mean the same thing across SSL families: the attention key of every attention
layout timm has (fused qkv, fused weight + separate q/v biases through F.linear, separate q/k/v
projections, SAM's windowed blocks), the prefix-token count taken from the model, and a CNN's stage.

Every reference here is computed from the block's own modules on the block's own input (a forward
pre-hook on the *block*, then its ``norm1``, then the attention's modules called as timm's attention
calls them), independently of the plugin, which slices the projection weights itself. Tiny models
(depth 2, width 64) at 64 px keep it fast.
"""

from __future__ import annotations

import pytest
import torch

import uisbench
from uisbench_builtins import timm_vit

SIZE = 64
PIXELS = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def _build(host, **params):
    return host.spec("backbones", "timm").build(**{"pretrained": False, "size": SIZE, "precision": "fp32", **params})


def _perturb(model) -> None:
    """Non-trivial biases and norms (timm initialises q/v biases and norms to constants)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def _block_input(model, layer: int, pixels) -> torch.Tensor:
    """What ``blocks[layer]`` receives (a pre-hook on the block, not on its attention)."""
    seen = []
    handle = model.blocks[layer].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            model.forward_features(pixels)
    finally:
        handle.remove()
    return seen[0]


def _reference_key(model, layer: int, pixels, facet: str = "key") -> torch.Tensor:
    """The facet as timm's attention computes it before q/k norm and rotation, ``(B, C, g, g)``."""
    blk = model.blocks[layer]
    attn = blk.attn
    i = {"query": 0, "key": 1, "value": 2}[facet]
    with torch.no_grad():
        x = blk.norm1(_block_input(model, layer, pixels))
        grid = x.ndim == 4  # SAM: (B, H, W, C), attention over the whole grid here (token-wise projection)
        if grid:
            b, h, w, c = x.shape
            x = x.reshape(b, h * w, c)
        b, n, _ = x.shape
        if getattr(attn, "qkv", None) is not None:
            if getattr(attn, "q_bias", None) is not None:  # EVA / DINOv3 qkvb: F.linear with the cat of the biases
                qkv = torch.nn.functional.linear(x, attn.qkv.weight, torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)))
            else:
                qkv = attn.qkv(x)
            t = qkv.reshape(b, n, 3, attn.num_heads, -1)[:, :, i].reshape(b, n, -1)
        else:
            t = getattr(attn, ("q_proj", "k_proj", "v_proj")[i])(x)
        if grid:
            return t.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        prefix = model.num_prefix_tokens
        g = int((n - prefix) ** 0.5)
        return t[:, prefix:].reshape(b, g, g, -1).permute(0, 3, 1, 2)


TINY_VIT = {"depth": 2, "embed_dim": 64, "num_heads": 4}
LAYOUTS = [
    # (timm model, model_kwargs, prefix tokens the model says it has, attention layout)
    ("vit_small_patch16_224", TINY_VIT, 1, "fused qkv with bias"),
    ("vit_small_patch14_reg4_dinov2", TINY_VIT, 5, "DINOv2 + registers: fused qkv, CLS + 4 registers"),
    ("vit_base_patch16_siglip_224", TINY_VIT, 0, "fused qkv, no CLS (MAP head)"),
    ("eva02_small_patch14_224", TINY_VIT, 1, "fused weight + separate q/v biases via F.linear, RoPE"),
    ("eva02_small_patch14_224", {**TINY_VIT, "qkv_fused": False}, 1, "separate q/k/v projections, RoPE"),
    ("vit_small_patch16_dinov3_qkvb", TINY_VIT, 5, "DINOv3 qkvb: F.linear with q/k/v biases, RoPE, 4 storage tokens"),
    ("vit_small_patch16_dinov3", TINY_VIT, 5, "DINOv3: fused qkv without bias, RoPE"),
    ("samvit_base_patch16", {**TINY_VIT, "window_size": 3, "global_attn_indexes": (1,), "neck_chans": 32}, 0,
     "SAM: 3x3 windows over a 4x4 grid (padded to 6x6), then a global block"),
]


@pytest.mark.parametrize("model, kwargs, prefix, layout", LAYOUTS, ids=[f"{m}-{d.split(':')[0]}" for m, _, _, d in LAYOUTS])
def test_key_facet_equals_projection_of_the_blocks_weights(host, model, kwargs, prefix, layout):
    patch = 14 if "patch14" in model else 16
    size = 4 * patch
    pixels = torch.nn.functional.interpolate(PIXELS, size=(size, size), mode="bilinear")
    for facet, layer in (("key", 0), ("key", 1), ("query", 1), ("value", 0)):
        bb = _build(host, model=model, model_kwargs=dict(kwargs), facet=facet, layer=layer, size=size)
        if facet == "key" and layer == 0:
            _perturb(bb.model)
            state = bb.model.state_dict()
        else:
            bb.model.load_state_dict(state)
        fm = bb.extract(pixels, [1, 2])
        assert fm.features.shape == (2, 64, 4, 4), layout
        assert bb.provenance()["prefix_tokens"] == prefix, layout
        torch.testing.assert_close(fm.features, _reference_key(bb.model, layer, pixels, facet), atol=1e-5, rtol=0)
        assert all(not m._forward_pre_hooks for m in bb.model.modules()), "pre-hook left on the model"


def test_rope_keys_are_taken_before_the_rotation(host):
    """DINOv3's rotated keys (what scaled_dot_product_attention receives) differ from the facet."""
    bb = _build(host, model="vit_small_patch16_dinov3_qkvb", model_kwargs=dict(TINY_VIT))
    _perturb(bb.model)
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append(k)
        return real(q, k, v, *args, **kwargs)

    bb.model.blocks[1].attn.fused_attn = True
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
        with torch.no_grad():
            bb.model.forward_features(PIXELS)
    rotated = seen[-1][:, :, 5:].transpose(1, 2).reshape(2, 16, -1)  # B, heads, N, hd -> B, N, C; prefix dropped
    ours = bb.extract(PIXELS, [1, 2]).features.flatten(2).transpose(1, 2)
    # same norms per head (a rotation), different vectors
    assert not torch.allclose(ours, rotated, atol=1e-3)
    torch.testing.assert_close(ours.reshape(2, 16, 4, -1).norm(dim=-1), rotated.reshape(2, 16, 4, -1).norm(dim=-1), atol=1e-4, rtol=1e-4)


def test_token_facet_of_sam_is_the_neck_grid(host):
    kwargs = {**TINY_VIT, "window_size": 3, "global_attn_indexes": (1,), "neck_chans": 32}
    bb = _build(host, model="samvit_base_patch16", model_kwargs=kwargs, facet="token")
    with torch.no_grad():
        expected = bb.model.forward_features(PIXELS)  # SAM's image embedding: the neck over the last block
    fm = bb.extract(PIXELS, [1, 2])
    assert fm.features.shape == (2, 32, 4, 4)
    torch.testing.assert_close(fm.features, expected, atol=1e-5, rtol=0)


CNNS = [("resnet50", {}, [(-1, 32, 2048), (3, 16, 1024)]), ("convnext_tiny", {"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64)}, [(-1, 32, 64), (1, 8, 16)])]


@pytest.mark.parametrize("model, kwargs, stages", CNNS, ids=[c[0] for c in CNNS])
def test_cnn_stage_equals_timm_features_only(host, model, kwargs, stages):
    import timm

    for layer, stride, channels in stages:
        bb = _build(host, model=model, model_kwargs=dict(kwargs) or None, facet="stage", layer=layer)
        _perturb(bb.model)
        assert bb.patch_size == stride and bb.provenance()["prefix_tokens"] == 0
        ref = timm.create_model(model, pretrained=False, features_only=True, out_indices=(layer % len(bb.model.feature_info),), **kwargs)
        # features_only flattens sequential containers' names (ConvNeXt's stem.0 -> stem_0); same weights
        sd = bb.model.state_dict()
        ref.load_state_dict({k: sd[k if k in sd else k.replace("_", ".", 1)] for k in ref.state_dict()}, strict=True)
        with torch.no_grad():
            (expected,) = ref.eval()(PIXELS)
        fm = bb.extract(PIXELS, [1, 2])
        assert fm.features.shape == (2, channels, SIZE // stride, SIZE // stride) and fm.patch_size == stride
        torch.testing.assert_close(fm.features, expected, atol=1e-5, rtol=1e-5)


def test_validate_names_the_facet_that_exists(host):
    check = host.spec("backbones", "timm").check
    cnn = list(check({"model": "resnet50", "facet": "key", "size": 224}))
    assert cnn and cnn[0][0] == "facet" and "use facet: stage" in cnn[0][1]
    vit = list(check({"model": "vit_small_patch16_224", "facet": "stage", "size": 224}))
    assert vit and "use facet: key" in vit[0][1]
    assert not list(check({"model": "convnext_tiny", "facet": "stage", "size": 224}))
    with pytest.raises(uisbench.ConfigError, match="use facet: stage"):
        _build(host, model="resnet50", facet="token")
    assert timm_vit.architecture_kind("samvit_base_patch16") == "transformer"
