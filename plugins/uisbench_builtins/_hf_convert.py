"""Key conversion of a Hugging Face *transformers* vision model's state dict to timm's layout, per
family (the names are transformers' ``modeling_*.py`` module names): separate q/k/v projections ->
one fused ``qkv``, CLIP's ``pre_layrnorm`` -> ``norm_pre``, SigLIP's MAP head -> ``attn_pool``,
DINOv2's registers as timm's ``reg_token`` with the CLS position folded in. Strict: a key nobody
converted is an error, never silently dropped.

Private helper of :mod:`uisbench_builtins.timm_vit`, used by ``_hf_layout.py`` (which reads the
folder); torch is imported inside functions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import uisbench

__all__ = ["convert_keys"]

#: sub-networks of the saved classes that are not the vision backbone (their keys are left out, noted)
_PREFIXES = {"dinov2": ("dinov2.", "dinov2_with_registers."), "mae": ("vit.",), "clip": ("vision_model.",), "siglip": ("vision_model.",)}


def _strip(hf_sd: dict[str, Any], fam: str, source: Path) -> tuple[dict[str, Any], list[str]]:
    for p in _PREFIXES[fam]:
        if any(k.startswith(p) for k in hf_sd):
            left = sorted({k.split(".")[0] for k in hf_sd if not k.startswith(p)})
            sd = {k[len(p):]: v for k, v in hf_sd.items() if k.startswith(p)}
            return sd, [f"took '{p}'" + (f", left out {', '.join(left)}" if left else "")]
    if not any(k.startswith("embeddings.") for k in hf_sd):
        raise uisbench.ConfigError(f"weights folder {source}: no key starts with 'embeddings.' or {' / '.join(map(repr, _PREFIXES[fam]))} "
                                   f"(keys: {sorted(hf_sd)[:6]}); not a transformers {fam} model, re-download it.")
    return dict(hf_sd), []


def _qkv(out: dict[str, Any], hf: dict[str, Any], i: int, q: str, k: str, v: str) -> None:
    import torch

    for kind in ("weight", "bias"):
        parts = [hf.pop(f"{n}.{kind}", None) for n in (q, k, v)]
        if all(p is not None for p in parts):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts, 0)
        elif any(p is not None for p in parts):
            raise uisbench.ConfigError(f"block {i}: only some of the q/k/v {kind}s are in the file; re-download it.")


def _move(out: dict[str, Any], hf: dict[str, Any], pairs: list[tuple[str, str]]) -> None:
    """Rename every key under each HF prefix to the timm prefix (``weight``/``bias``/...)."""
    for src, dst in pairs:
        for key in [k for k in hf if k == src or k.startswith(src + ".")]:
            out[dst + key[len(src):]] = hf.pop(key)


def convert_keys(hf_sd: dict[str, Any], fam: str, swiglu: bool, source: Path) -> tuple[dict[str, Any], list[str]]:
    hf, notes = _strip(hf_sd, fam, source)
    out: dict[str, Any] = {}
    dropped = [k for k in list(hf) if k in ("embeddings.mask_token", "embeddings.position_ids")]
    for k in dropped:
        hf.pop(k)
    depth = len({int(m.group(1)) for k in hf if (m := re.match(r"encoder\.layers?\.(\d+)\.", k))})
    if fam in ("dinov2", "mae"):  # modeling_dinov2.py / modeling_dinov2_with_registers.py / modeling_vit_mae.py
        _move(out, hf, [("embeddings.patch_embeddings.projection", "patch_embed.proj"), ("layernorm", "norm")])
        cls = hf.pop("embeddings.cls_token", None)
        pos = hf.pop("embeddings.position_embeddings", None)
        reg = hf.pop("embeddings.register_tokens", None)
        if cls is None or pos is None:
            raise uisbench.ConfigError(f"weights folder {source}: no embeddings.cls_token / position_embeddings; re-download it.")
        if reg is not None:  # timm's no_embed_class layout of DINOv2 + registers (as its _convert_dinov2)
            out.update(reg_token=reg, cls_token=cls + pos[:, :1], pos_embed=pos[:, 1:])
        else:
            out.update(cls_token=cls, pos_embed=pos)
        for i in range(depth):
            b = f"encoder.layer.{i}."
            a = b + "attention.attention."
            _qkv(out, hf, i, a + "query", a + "key", a + "value")
            t = f"blocks.{i}."
            if fam == "dinov2":
                mlp = [(b + "mlp.weights_in", t + "mlp.fc1"), (b + "mlp.weights_out", t + "mlp.fc2")] if swiglu else [
                    (b + "mlp.fc1", t + "mlp.fc1"), (b + "mlp.fc2", t + "mlp.fc2")]
                _move(out, hf, [(b + "norm1", t + "norm1"), (b + "norm2", t + "norm2"), (b + "attention.output.dense", t + "attn.proj"),
                                (b + "layer_scale1.lambda1", t + "ls1.gamma"), (b + "layer_scale2.lambda1", t + "ls2.gamma"), *mlp])
            else:
                _move(out, hf, [(b + "layernorm_before", t + "norm1"), (b + "layernorm_after", t + "norm2"),
                                (b + "attention.output.dense", t + "attn.proj"), (b + "intermediate.dense", t + "mlp.fc1"),
                                (b + "output.dense", t + "mlp.fc2")])
    else:  # modeling_clip.py / modeling_siglip.py
        _move(out, hf, [("embeddings.patch_embedding", "patch_embed.proj"), ("pre_layrnorm", "norm_pre"), ("post_layernorm", "norm")])
        pos = hf.pop("embeddings.position_embedding.weight", None)
        if pos is None:
            raise uisbench.ConfigError(f"weights folder {source}: no embeddings.position_embedding.weight; re-download it.")
        out["pos_embed"] = pos.unsqueeze(0)
        cls = hf.pop("embeddings.class_embedding", None)
        if cls is not None:
            out["cls_token"] = cls.reshape(1, 1, -1)
        for i in range(depth):
            b, t = f"encoder.layers.{i}.", f"blocks.{i}."
            a = b + "self_attn."
            _qkv(out, hf, i, a + "q_proj", a + "k_proj", a + "v_proj")
            _move(out, hf, [(b + "layer_norm1", t + "norm1"), (b + "layer_norm2", t + "norm2"), (a + "out_proj", t + "attn.proj"),
                            (b + "mlp.fc1", t + "mlp.fc1"), (b + "mlp.fc2", t + "mlp.fc2")])
        if "head.probe" in hf:  # SigLIP's MAP head (nn.MultiheadAttention: in_proj rows q, k, v) -> timm's AttentionPoolLatent
            d = int(hf["head.probe"].shape[-1])
            out["attn_pool.latent"] = hf.pop("head.probe")
            for kind in ("weight", "bias"):
                w = hf.pop(f"head.attention.in_proj_{kind}", None)
                if w is None:
                    raise uisbench.ConfigError(f"weights folder {source}: SigLIP's head has no attention.in_proj_{kind}; re-download it.")
                out[f"attn_pool.q.{kind}"], out[f"attn_pool.kv.{kind}"] = w[:d], w[d:]
            _move(out, hf, [("head.attention.out_proj", "attn_pool.proj"), ("head.layernorm", "attn_pool.norm"), ("head.mlp", "attn_pool.mlp")])
    if hf:
        # strict: a key nobody converted is a layout this code does not know, never silently dropped
        raise uisbench.ConfigError(
            f"weights folder {source}: {len(hf)} weights of an unknown layout ({', '.join(sorted(hf)[:6])}); "
            "this transformers variant is not converted here: export it with timm, or give a state dict in timm's layout."
        )
    notes.append(f"converted from transformers' {fam} layout (q/k/v fused into qkv)")
    return out, notes
