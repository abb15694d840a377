"""The official checkpoint layouts of the SSL families, and their conversion to timm's layout.

Private helper of :mod:`uisbench_builtins.timm_vit`; the families themselves are the table in
``_families.py``.

Each family publishes its backbone in a layout of its own: wrapper keys (``teacher``,
``state_dict``, ``target_encoder`` ...), a sub-network among several (DINO's teacher, MoCo's query
encoder, I-JEPA's and MSN's target encoder), prefixes (``module.``, ``backbone.``,
``base_encoder.``, ``image_encoder.``, ``visual.``), heads and decoders to leave out. A
:class:`~uisbench_builtins._families.Family` says all of that plus the family's normalisation and
head count; :func:`recognise` finds the family of a checkpoint from its keys alone,
:func:`backbone_state_dict` takes the backbone out (strictly: a wrong wrapper or prefix is a
:class:`uisbench.ConfigError` naming what the file holds), :func:`check_model` checks the built model
against the family and the file, and timm's own checkpoint filter of the model then renames what
differs (DINOv2 registers and SwiGLU, DINOv3 storage tokens and biases, OpenAI/open_clip CLIP, SAM):
the plugin's :func:`~uisbench_builtins.timm_vit.load_weights`. Nothing here imports torch at module level.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import uisbench

from ._families import FAMILIES, Family

__all__ = ["recognise", "backbone_state_dict", "prefix_tokens_of", "check_model"]


def top_keys(obj: Any) -> list[str]:
    return [str(k) for k in obj] if isinstance(obj, Mapping) else []


def any_prefixed(keys: list[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def recognise(checkpoint: Any) -> Family | None:
    """The family whose official layout ``checkpoint`` has, from its keys; ``None`` for a flat timm
    (or DINO backbone-only, which is the same) state dict and for layouts nobody here knows."""
    if isinstance(checkpoint, uisbench.weights.NpzArchive):
        return _npz_family(checkpoint)
    top = top_keys(checkpoint)
    if "target_encoder" in top:
        return FAMILIES["msn"] if "prototypes" in top else FAMILIES["ijepa"]
    if "teacher" in top and "student" in top:
        # main_ibot.py's save_dict has ibot_loss where main_dino.py's has dino_loss; iBOT's student
        # (not its teacher) carries masked_embed
        student = top_keys(checkpoint["student"])
        ibot = "ibot_loss" in top or "module.backbone.masked_embed" in student or "backbone.masked_embed" in student
        return FAMILIES["ibot"] if ibot else FAMILIES["dino"]
    if "state_dict" in top and isinstance(checkpoint["state_dict"], Mapping):
        inner = top_keys(checkpoint["state_dict"])
        if any_prefixed(inner, "module.base_encoder."):
            return FAMILIES["mocov3"]
        if any_prefixed(inner, "module.encoder_q."):
            return FAMILIES["mocov2"]
        if "author" in top and any_prefixed(inner, "layer1."):
            return FAMILIES["densecl"]
        # iBOT's extract_backbone_weights.py writes {'state_dict': backbone} and nothing else (a
        # student backbone has masked_embed)
        if "masked_embed" in inner or (top == ["state_dict"] and "cls_token" in inner and "patch_embed.proj.weight" in inner):
            return FAMILIES["ibot"]
    for wrapper in ("module", "model"):  # EVA-02 (run_class_finetuning.py --model_key model|module); before MAE's `model`
        if wrapper in top and isinstance(checkpoint[wrapper], Mapping) and _eva02(top_keys(checkpoint[wrapper])):
            return FAMILIES["eva02"]
    if "model" in top and isinstance(checkpoint["model"], Mapping):
        inner = top_keys(checkpoint["model"])
        if any_prefixed(inner, "decoder_") or ("cls_token" in inner and "blocks.0.attn.qkv.weight" in inner):
            return FAMILIES["mae"]
    if "storage_tokens" in top:
        return FAMILIES["dinov3"]
    if _eva02(top):
        return FAMILIES["eva02"]
    if "mask_token" in top and not any_prefixed(top, "decoder_"):
        return FAMILIES["dinov2"]
    if any_prefixed(top, "decoder_") and "cls_token" in top:
        return FAMILIES["mae"]
    if "image_encoder.patch_embed.proj.weight" in top:
        return FAMILIES["sam"]
    if any_prefixed(top, "visual.trunk.") or any_prefixed(top, "module.visual.trunk."):
        return FAMILIES["siglip"] if not any(k.endswith("visual.trunk.cls_token") for k in top) else FAMILIES["clip"]
    if "visual.class_embedding" in top or "module.visual.class_embedding" in top:
        return FAMILIES["clip"]
    return None


def _eva02(keys: list[str]) -> bool:
    """EVA-02's official keys: q/v biases apart from the projections (BEiT and EVA-01 have those too)
    plus its RoPE buffers or its SwiGLU's ``w3`` (modeling_finetune.py Attention, SwiGLU; rope.py)."""
    return (any(k.endswith("attn.q_bias") for k in keys)
            and any(k.endswith("rope.freqs_cos") or k.endswith("mlp.w3.weight") for k in keys))


def _npz_family(archive: Mapping[str, Any]) -> Family | None:
    """SigLIP: big_vision's image tower under ``params/img/`` with a MAP head and no ``cls``
    (vit.py ``pool_type="map"``); other JAX ViTs (AugReg's ``cls`` + ``Transformer/...``): no family."""
    if "params/img/embedding/kernel" in archive and "params/img/MAPHead_0/probe" in archive and "params/img/cls" not in archive:
        return FAMILIES["siglip"]
    return None


def backbone_state_dict(checkpoint: Any, fam: Family, source: str) -> tuple[dict[str, Any], list[str]]:
    """The backbone of ``fam`` inside ``checkpoint`` (a state dict for timm's filter), plus notes.

    Strict: the family's wrapper must be there and its prefix on the backbone's keys, else a
    :class:`uisbench.ConfigError` saying what the file holds and which family it looks like.
    """
    notes: list[str] = []
    obj = checkpoint
    top = top_keys(obj)
    found = recognise(checkpoint)
    if found is not None and found is not fam:
        raise uisbench.ConfigError(mismatch_message(checkpoint, fam, source, f"it holds {found.title}'s layout"))
    if found is None and _flat(checkpoint):
        # a flat state dict (DINO's backbone-only release, timm's hub file, an extracted backbone): the backbone itself
        sd, notes = uisbench.weights.unwrap_state_dict(checkpoint, source)
        return _drop(sd, fam, notes + [f"{fam.title}: a flat state dict, taken as the backbone"])
    if fam.wrappers:
        key = next((k for k in fam.wrappers if k in top and isinstance(obj[k], Mapping)), None)
        if key is None and not (fam.flat_ok and _flat(obj)):
            raise uisbench.ConfigError(mismatch_message(checkpoint, fam, source, f"no {' or '.join(map(repr, fam.wrappers))} wrapper (top-level keys: {top[:8]})"))
        if key is not None:
            obj = obj[key]
            notes.append(f"{fam.title}: took '{key}'")
    else:
        key = None
    sd = dict(obj)
    prefix = fam.wrapper_prefix.get(key or "", fam.prefix)
    if prefix:
        if not any_prefixed(list(sd), prefix) and any_prefixed(list(sd), "module." + prefix):
            prefix = "module." + prefix  # e.g. a DDP-wrapped teacher
        elif not any_prefixed(list(sd), prefix) and prefix.startswith("module.") and any_prefixed(list(sd), prefix[len("module."):]):
            prefix = prefix[len("module."):]  # saved without DDP
        if not any_prefixed(list(sd), prefix):
            raise uisbench.ConfigError(mismatch_message(checkpoint, fam, source, f"no key starts with {fam.prefix!r} (keys: {list(sd)[:6]})"))
        others = sorted({k[: k.find(".", len("module.") if k.startswith("module.") else 0) + 1] or k for k in sd if not k.startswith(prefix)})
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        notes.append(f"stripped '{prefix}'" + (f", left out {', '.join(others[:6])}" if others else ""))
    else:
        for p in ("module.", "_orig_mod."):
            if sd and all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                notes.append(f"stripped '{p}'")
    return _drop(sd, fam, notes)


def _flat(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _drop(sd: dict[str, Any], fam: Family, notes: list[str]) -> tuple[dict[str, Any], list[str]]:
    dropped = [k for k in sd if any(k == d or (d.endswith(("_", ".")) and k.startswith(d)) for d in fam.drop)]
    if dropped:
        sd = {k: v for k, v in sd.items() if k not in set(dropped)}
        notes.append(f"dropped {', '.join(sorted({_stem(k) for k in dropped}))} (not part of the {fam.title} encoder)")
    heads = sorted({k.split(".")[0] for k in sd if k.startswith(("head.", "head_"))})
    if heads and fam.kind == "transformer":
        sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "head_"))}
        notes.append("dropped the projection head")
    return sd, notes


def _stem(key: str) -> str:
    return key.split(".")[0] + ("." if "." in key else "")


def mismatch_message(checkpoint: Any, fam: Family, source: str, what: str) -> str:
    found = recognise(checkpoint)
    guess = f" It looks like a {found.title} file: write `family: {found.name}`." if found is not None and found is not fam else ""
    return f"weights file {source} is not in {fam.title}'s official layout: {what}.{guess} (`platform weights inspect {source}` says what it holds.)"


def prefix_tokens_of(sd: Mapping[str, Any]) -> int | None:
    """Prefix tokens a timm-side state dict carries: CLS + registers / storage tokens (``None``: a CNN)."""
    keys = set(sd)
    if "patch_embed.proj.weight" not in keys and "conv1.weight" in keys:
        return None
    n = 1 if "cls_token" in keys else 0
    for k in ("register_tokens", "reg_token", "storage_tokens"):
        if k in keys:
            n += int(sd[k].shape[1])
    return n


def nonzero_qkv_bias(sd: Mapping[str, Any]) -> bool:
    """DINOv3's qkv.bias (k part masked to zero) holds values: only timm's ``_qkvb`` models keep them."""
    return any(k.endswith("attn.qkv.bias") and bool(v.abs().sum() > 0) for k, v in sd.items())


def check_model(net: Any, fam: Family | None, sd: Mapping[str, Any], source: str, model_name: str) -> None:
    """The family's head count and the file's prefix tokens against the built model, loudly."""
    blocks = getattr(net, "blocks", None)
    if "storage_tokens" in sd and blocks is not None and nonzero_qkv_bias(sd) and getattr(blocks[0].attn, "q_bias", None) is None:
        # timm's filter skips the biases for a model without them: the load would "succeed" without them
        raise uisbench.ConfigError(
            f"weights file {source}: DINOv3 attention biases (qkv.bias) that are not zero, timm model {model_name!r} has none; "
            f"use its _qkvb variant (e.g. {model_name.split('.')[0]}_qkvb)."
        )
    if fam is not None and blocks is not None and fam.heads:
        width = int(getattr(net, "embed_dim", 0))
        want = fam.heads.get(width)
        have = getattr(blocks[0].attn, "num_heads", None)
        if want is not None and have is not None and have != want:
            raise uisbench.ConfigError(
                f"weights file {source}: {fam.title} ViTs of width {width} have {want} attention heads, timm model {model_name!r} "
                f"has {have}; add `model_kwargs: {{num_heads: {want}}}` (the weights load either way, the attention would be wrong)."
            )
    if blocks is not None and "image_encoder.patch_embed.proj.weight" not in sd and "patch_embed.proj.weight" in sd:
        have_prefix = getattr(net, "num_prefix_tokens", None)
        file_prefix = prefix_tokens_of(sd)
        if have_prefix is not None and file_prefix is not None and have_prefix != file_prefix:
            raise uisbench.ConfigError(
                f"weights file {source} carries {file_prefix} prefix token(s) (CLS, registers), timm model {model_name!r} has "
                f"{have_prefix}; choose the model with as many (e.g. a *_reg4_* name for 4 registers, a *_gap_* name without CLS)."
            )
