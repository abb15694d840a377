"""What ``platform weights inspect`` says of a checkpoint file for the ``timm`` plugin: its family,
wrappers and prefixes, the architecture read from the weights' shapes (:func:`describe`; a big_vision
``.npz`` from its arrays' headers, :func:`describe_npz`) and the registry entry that loads it
(:func:`inspect_entry`).

Private helper of :mod:`uisbench_builtins.timm_vit`. Nothing here imports torch at module level.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import uisbench

from ._families import FAMILIES, Family
from ._family_layouts import any_prefixed, backbone_state_dict, nonzero_qkv_bias, recognise, top_keys

__all__ = ["describe", "describe_npz", "inspect_entry"]


def describe(checkpoint: Any) -> dict[str, Any]:
    """What ``platform weights inspect`` prints: family, wrappers, prefixes and the architecture read
    from the weights' shapes (patch size, depth, width, heads where the family says, registers)."""
    fam = recognise(checkpoint)
    if isinstance(checkpoint, uisbench.weights.NpzArchive):
        return describe_npz(checkpoint, fam)
    top = top_keys(checkpoint)
    info: dict[str, Any] = {"family": fam.name if fam else None, "top_level_keys": top[:12]}
    try:
        if fam is not None:
            sd, notes = backbone_state_dict(checkpoint, fam, "<file>")
        else:
            sd, notes = uisbench.weights.unwrap_state_dict(checkpoint, "<file>")
    except uisbench.UisbenchError as err:
        info["problem"] = str(err)
        return info
    info["notes"] = notes
    sd = _timm_view(sd)
    info.update(_architecture(sd, fam))
    return info


def _timm_view(sd: dict[str, Any]) -> dict[str, Any]:
    """Key names as timm's filters leave them, enough to read the architecture (SAM, CLIP trunk)."""
    for p in ("image_encoder.", "visual.trunk.", "module.visual.trunk."):
        if any_prefixed(list(sd), p):
            return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    return sd


def _architecture(sd: Mapping[str, Any], fam: Family | None) -> dict[str, Any]:
    import re

    out: dict[str, Any] = {}
    if "conv1.weight" in sd and "layer1.0.conv1.weight" in sd:
        stages = sorted({int(m.group(1)) for k in sd if (m := re.match(r"layer(\d+)\.(\d+)\.", k))})
        blocks = [len({int(m.group(1)) for k in sd if (m := re.match(rf"layer{s}\.(\d+)\.", k))}) for s in stages]
        out.update(kind="cnn", stages=blocks, width=int(sd["conv1.weight"].shape[0]))
        # bottleneck blocks: resnet50's (other stage counts go to model_kwargs layers); basic blocks: resnet18's
        out["model"] = "resnet50" if "layer1.0.conv3.weight" in sd else "resnet18"
        return out
    w = sd.get("patch_embed.proj.weight")
    if w is None:
        if "visual.conv1.weight" in sd:  # OpenAI CLIP naming
            w = sd["visual.conv1.weight"]
            depth = len({int(m.group(1)) for k in sd if (m := re.match(r"visual\.transformer\.resblocks\.(\d+)\.", k))})
            out.update(kind="transformer", patch_size=int(w.shape[-1]), width=int(w.shape[0]), depth=depth)
            out["heads"] = fam.heads.get(out["width"]) if fam else None
            out["model"] = _vit_name(out, fam)
        return out
    depth = len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    width = int(w.shape[0])
    registers = 0
    for k in ("register_tokens", "reg_token", "storage_tokens"):
        if k in sd:
            registers = int(sd[k].shape[1])
    out.update(kind="transformer", patch_size=int(w.shape[-1]), depth=depth, width=width, cls_token="cls_token" in sd,
               registers=registers, heads=(fam.heads.get(width) if fam else None), qkv_bias=nonzero_qkv_bias(sd))
    out["model"] = _vit_name(out, fam)
    return out


#: timm ViT size names by width, their depth and head count in timm
_SIZES = {384: ("small", 12, 6), 768: ("base", 12, 12), 1024: ("large", 24, 16), 1280: ("huge", 32, 16), 1536: ("giant", 40, 24),
          1152: ("so400m", 27, 16)}  # SigLIP's shape-optimised ViT only


def _vit_name(a: Mapping[str, Any], fam: Family | None) -> str | None:
    size = _SIZES.get(a.get("width"))
    if size is None:
        return None
    size_name = size[0]
    if size_name == "so400m" and (fam is None or fam.name != "siglip"):
        return None
    p = a.get("patch_size")
    name = fam.name if fam else None
    if name == "dinov2":
        return f"vit_{size_name}_patch{p}_reg{a['registers']}_dinov2" if a.get("registers") else f"vit_{size_name}_patch{p}_dinov2"
    if name == "dinov3":  # q/v biases that are not all zero need timm's _qkvb variant
        return f"vit_{size_name}_patch{p}_dinov3" + ("_qkvb" if a.get("qkv_bias") else "")
    if name == "sam":
        return f"samvit_{size_name}_patch{p}"
    if name == "eva02":
        return f"eva02_{size_name}_patch{p}_224"
    if name == "clip":
        return f"vit_{size_name}_patch{p}_clip_224"
    if name == "siglip":
        return f"vit_{size_name}_patch{p}_siglip_224"
    if not a.get("cls_token", True) and size_name == "huge" and p == 14:
        return "vit_huge_patch14_gap_224"  # I-JEPA's
    return f"vit_{size_name}_patch{p}_224"


#: a timm ViT without CLS token, as I-JEPA's (timm's vit_huge_patch14_gap_224: no fc_norm, the final norm kept)
_NO_CLS = {"class_token": False, "global_pool": "avg", "fc_norm": False}


def inspect_entry(checkpoint: Any, path: str) -> dict[str, Any] | None:
    """``platform weights inspect``: what :func:`describe` reads plus the registry entry that loads
    the file (``entry``), or what is missing (``missing``). ``None``: not a checkpoint for this plugin."""
    info = describe(checkpoint)
    fam = FAMILIES.get(info.get("family") or "")
    if "problem" in info:
        info["missing"] = info.pop("problem")
        return info
    model = info.get("model")
    if model is None:
        info["missing"] = (f"the timm model: width {info.get('width')}, depth {info.get('depth')} names no timm ViT/ResNet here; "
                           "write `model:` (and `model_kwargs:`) yourself")
        return info
    kwargs: dict[str, Any] = {}
    if info.get("kind") == "cnn":
        if info.get("stages") != ([3, 4, 6, 3] if model == "resnet50" else [2, 2, 2, 2]):
            kwargs["layers"] = list(info["stages"])
    else:
        std_depth, std_heads = _SIZES[info["width"]][1:]
        if model.startswith("vit_") and info["depth"] != std_depth:
            kwargs["depth"] = info["depth"]
        elif info["depth"] != std_depth and info["depth"]:
            kwargs["depth"] = info["depth"]
        if not info.get("cls_token", True) and not model.endswith("_gap_224") and fam is not None and fam.name not in ("siglip", "sam"):
            kwargs.update(_NO_CLS)
        heads = info.get("heads")
        if heads is not None and heads != std_heads:
            kwargs["num_heads"] = heads
        elif heads is None:
            info["note"] = f"attention heads are not in the weights: timm's {std_heads} for width {info['width']} assumed"
    if fam is not None:
        info["mean_std"] = f"{list(fam.mean)} / {list(fam.std)} ({fam.title}'s)"
    else:
        info["note"] = ("no family recognised: a flat timm-layout state dict (e.g. DINO's backbone-only release); add "
                        "`family: NAME` for its normalisation, else the timm name's cfg decides (mean/std 0.5 for untagged ViTs)")
    if fam is None:
        params: dict[str, Any] = {"plugin": "timm", "model": model}
        if kwargs:
            params["model_kwargs"] = kwargs
        params["weights"] = str(path)
        if info.get("kind") == "cnn":
            params["facet"] = "stage"
    else:
        params = fam.entry(weights=str(path), model=model, model_kwargs=kwargs)
    stride = int(info.get("patch_size") or 32)  # a CNN's last stage: stride 32
    size = int(params.get("size", 480))
    params["size"] = max(stride, round(size / stride) * stride)  # the release's size, a multiple of this file's patch
    info["entry"] = params
    return info


#: where timm's ``vision_transformer._load_weights`` finds a ViT in an .npz, in its order: the
#: ``embedding/kernel`` anchor under each prefix (big_vision's two-tower SigLIP: ``params/img/``)
_NPZ_PREFIXES = ("opt/target/", "params/", "params/img/", "")


def _npz_prefix(keys: Mapping[str, Any]) -> str | None:
    return next((p for p in _NPZ_PREFIXES if f"{p}embedding/kernel" in keys), None)


def describe_npz(archive: Mapping[str, Any], fam: Family | None) -> dict[str, Any]:
    """The architecture of a big_vision/JAX ViT from the arrays' shapes (no array read): flax's
    Conv kernel is (p, p, 3, width), an attention kernel (width, heads, head_dim); scanned
    checkpoints (``Transformer/encoderblock/...``) stack the blocks on a leading axis."""
    import re

    groups = sorted({"/".join(k.split("/")[:2]) + ("/" if k.count("/") > 1 else "") for k in archive})
    info: dict[str, Any] = {"family": fam.name if fam else None, "top_level_keys": groups[:12]}
    prefix = _npz_prefix(archive)
    if prefix is None:
        info["problem"] = ("a .npz archive without an `embedding/kernel` array: not a big_vision/JAX ViT (the layouts timm's "
                           "vision_transformer._load_weights reads)")
        return info
    p, _, _, width = archive[f"{prefix}embedding/kernel"].shape
    scanned = f"{prefix}Transformer/encoderblock/LayerNorm_0/scale" in archive
    if scanned:
        depth = int(archive[f"{prefix}Transformer/encoderblock/LayerNorm_0/scale"].shape[0])
        block0 = f"{prefix}Transformer/encoderblock/"
    else:
        depth = len({int(m.group(1)) for k in archive if (m := re.match(re.escape(prefix) + r"Transformer/encoderblock_(\d+)/", k))})
        block0 = f"{prefix}Transformer/encoderblock_0/"
    query = next((k for k in archive if k.startswith(block0) and re.fullmatch(r"MultiHeadDotProductAttention_\d/query/kernel", k[len(block0):])), None)
    heads = int(archive[query].shape[-2]) if query else None
    left = [g for g in groups if not g.startswith(prefix)]  # SigLIP: the text tower params/txt/, params/t, params/b
    notes = [f"big_vision/JAX .npz: took '{prefix}'" + (f" (the image tower), left out {', '.join(left)}" if left else "")]
    if f"{prefix}head/kernel" in archive or f"{prefix}pre_logits/kernel" in archive:
        notes.append("the projection head is left out (features only)")
    info.update(notes=notes, npz_prefix=prefix, kind="transformer", patch_size=int(p), depth=depth, width=int(width),
                cls_token=f"{prefix}cls" in archive, registers=0, heads=heads, map_head=f"{prefix}MAPHead_0/probe" in archive)
    info["model"] = _vit_name(info, fam)
    return info
