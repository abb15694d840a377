"""The official checkpoint layouts of the SSL families, and their conversion to timm's layout.

Private helper of :mod:`uisbench_builtins.timm_vit` (the ``timm`` plugin, whose ``family:`` parameter,
weights loading and ``platform weights inspect`` answer use it).

Each family publishes its backbone in a layout of its own: wrapper keys (``teacher``,
``state_dict``, ``target_encoder`` ...), a sub-network among several (DINO's teacher, MoCo's query
encoder, I-JEPA's and MSN's target encoder), prefixes (``module.``, ``backbone.``,
``base_encoder.``, ``image_encoder.``, ``visual.``), heads and decoders to leave out. A
:class:`Family` says all of that plus the family's normalisation and head count; :func:`recognise`
finds the family of a checkpoint from its keys alone, :func:`backbone_state_dict` takes the
backbone out (strictly: a wrong wrapper or prefix is a :class:`uisbench.ConfigError` naming what the
file holds), and timm's own checkpoint filter of the model then renames what differs (DINOv2
registers and SwiGLU, DINOv3 storage tokens and biases, OpenAI/open_clip CLIP, SAM): the plugin's
:func:`~uisbench_builtins.timm_vit.load_weights`.

big_vision's ``.npz`` (SigLIP's release) is never unpickled: :func:`uisbench.weights.read_npz` checks
it from its headers, :func:`load_npz` hands it to timm's own big_vision loader and checks that every
parameter was set and every array read.

The layouts were read from the official training code (cited per family in ``source``) and from
timm's converters (``timm/models/vision_transformer.py::checkpoint_filter_fn``, ``eva.py``,
``vision_transformer_sam.py``). Nothing here imports torch at module level.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uisbench

__all__ = ["Family", "FAMILIES", "family_named", "weights_dir", "recognise", "backbone_state_dict", "prefix_tokens_of", "check_model", "describe",
           "load_npz"]

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass(frozen=True)
class Family:
    """One SSL family's official file layout and what loading it needs."""

    name: str
    title: str
    #: the main released checkpoint: file name, where to get it, the timm model it loads into
    official: str
    url: str
    model: str
    #: the official code that writes the layout (what the tests' tiny checkpoints follow)
    source: str
    #: wrapper keys to descend into, the first present wins (``()``: a flat state dict)
    wrappers: tuple[str, ...] = ()
    #: key prefix of the backbone inside the (unwrapped) state dict; keys outside it are dropped
    prefix: str = ""
    #: the prefix under a given wrapper where it differs from ``prefix`` (iBOT: ``teacher`` keys are
    #: ``backbone.*``, its released ``state_dict`` file has the prefix stripped)
    wrapper_prefix: Mapping[str, str] = field(default_factory=dict)
    #: True: the wrapper may be absent, a flat state dict is the backbone itself (EVA-02: ``module``/``model`` or none)
    flat_ok: bool = False
    #: keys (or key prefixes ending in ``.``) of the backbone that are not part of timm's encoder
    drop: tuple[str, ...] = ()
    mean: tuple[float, float, float] = IMAGENET[0]
    std: tuple[float, float, float] = IMAGENET[1]
    #: heads the family's ViTs use, by width, where timm's model of that width differs or may
    heads: Mapping[int, int] = field(default_factory=dict)
    kind: str = "transformer"
    #: model_kwargs of the registry entry (heads timm's name does not have)
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    facet: str = "key"
    size: int = 480
    resize: str = "square"
    pitfall: str = ""
    #: True: timm has the release as a pretrained tag (the registry entry downloads it); else a local file
    timm_tag: str | None = None

    def entry(self, weights: str | None = None, model: str | None = None, model_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The registry entry (parameters of ``plugin: timm``) that loads this family's file."""
        params: dict[str, Any] = {"plugin": "timm", "model": model or self.model, "family": self.name}
        kwargs = dict(self.model_kwargs if model_kwargs is None else model_kwargs)
        if kwargs:
            params["model_kwargs"] = kwargs
        if weights is not None:
            params["weights"] = weights  # else: the official file in weights_dir() (see TimmViT)
        if self.facet != "key":
            params["facet"] = self.facet
        params["size"] = self.size
        if self.resize != "square":
            params["resize"] = self.resize
        return params


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("dino", "DINO", "dino_deitsmall16_pretrain_full_checkpoint.pth",
               "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain_full_checkpoint.pth",
               "vit_small_patch16_224", "facebookresearch/dino main_dino.py (save_dict: student, teacher, optimizer, epoch, args, dino_loss)",
               wrappers=("teacher",), prefix="backbone.", heads={384: 6, 768: 12},
               pitfall="the backbone-only file is flat timm layout; the full checkpoint's teacher is the evaluated network"),
        Family("dinov2", "DINOv2", "dinov2_vits14_pretrain.pth",
               "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
               "vit_small_patch14_dinov2", "facebookresearch/dinov2 dinov2/models/vision_transformer.py (cls_token, mask_token, register_tokens, mlp.w12/w3)",
               heads={384: 6, 768: 12, 1024: 16, 1536: 24}, size=476, timm_tag="vit_small_patch14_dinov2.lvd142m",
               pitfall="without registers a few high-norm tokens appear in the background (use the reg4 models)"),
        Family("dinov3", "DINOv3", "dinov3_vits16_pretrain_lvd1689m.pth", "https://ai.meta.com/dinov3/ (request access)",
               "vit_small_patch16_dinov3", "facebookresearch/dinov3 dinov3/models/vision_transformer.py (storage_tokens, rope_embed, qkv.bias_mask)",
               heads={384: 6, 768: 12, 1024: 16}, timm_tag="vit_small_patch16_dinov3.lvd1689m",
               pitfall="RoPE: keys are taken before the rotation; 4 storage tokens are prefix tokens"),
        Family("mae", "MAE", "mae_pretrain_vit_base.pth", "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth",
               "vit_base_patch16_224", "facebookresearch/mae main_pretrain.py / util/misc.py save_model ({'model': ...}); models_mae.py (decoder_*, mask_token)",
               wrappers=("model",), drop=("mask_token", "decoder_"), heads={768: 12, 1024: 16, 1280: 16},
               pitfall="a training checkpoint holds the decoder and mask_token: dropped, never read as DINOv2"),
        Family("ibot", "iBOT", "checkpoint_teacher.pth", "https://github.com/bytedance/ibot#pre-trained-models (ViT-S/16 checkpoint_teacher.pth)",
               "vit_small_patch16_224", "bytedance/ibot extract_backbone_weights.py (the released backbone: {'state_dict': teacher backbone, "
               "'backbone.' stripped}) and main_ibot.py (full checkpoint: student, teacher, optimizer, epoch, args, ibot_loss)",
               wrappers=("state_dict", "teacher"), prefix="backbone.", wrapper_prefix={"state_dict": ""}, drop=("masked_embed",),
               heads={384: 6, 768: 12, 1024: 16},
               pitfall="the teacher is the evaluated network; a student backbone carries masked_embed (dropped)"),
        Family("mocov3", "MoCo v3", "vit-s-300ep.pth.tar", "https://dl.fbaipublicfiles.com/moco-v3/vit-s-300ep/vit-s-300ep.pth.tar",
               "vit_small_patch16_224", "facebookresearch/moco-v3 main_moco.py (state_dict: module.base_encoder., module.momentum_encoder.) and vits.py (vit_small: 12 heads)",
               wrappers=("state_dict",), prefix="module.base_encoder.", heads={384: 12, 768: 12}, model_kwargs={"num_heads": 12},
               pitfall="its ViT-S has 12 heads, not timm's 6; fixed sin-cos position embeddings"),
        Family("msn", "MSN", "vits16_800ep.pth.tar", "https://dl.fbaipublicfiles.com/msn/vits16_800ep.pth.tar",
               "vit_small_patch16_224", "facebookresearch/msn src/msn_train.py (save_dict: encoder, target_encoder, prototypes, opt)",
               wrappers=("target_encoder",), prefix="module.", drop=("fc.",), heads={384: 6, 768: 12, 1024: 16},
               pitfall="the target encoder is the evaluated one; the encoder's projection head fc is dropped"),
        Family("ijepa", "I-JEPA", "IN1K-vit.h.14-300e.pth.tar", "https://dl.fbaipublicfiles.com/ijepa/IN1K-vit.h.14-300e.pth.tar",
               "vit_huge_patch14_gap_224", "facebookresearch/ijepa src/train.py (save_dict: encoder, predictor, target_encoder, opt, scaler)",
               wrappers=("target_encoder",), prefix="module.", heads={1280: 16}, size=476, timm_tag=None,
               pitfall="no CLS token; the paper evaluates the target encoder (timm's own filter takes the context encoder)"),
        Family("clip", "CLIP (open_clip)", "open_clip_pytorch_model.bin", "https://huggingface.co/timm/vit_base_patch16_clip_224.openai",
               "vit_base_patch16_clip_224", "mlfoundations/open_clip (visual.* / visual.trunk.*); timm vision_transformer.py::_convert_openai_clip",
               mean=CLIP[0], std=CLIP[1], heads={768: 12, 1024: 16}, size=224, timm_tag="vit_base_patch16_clip_224.openai",
               pitfall="patch tokens are weakly trained (only CLS meets the text); OpenAI's .pt is TorchScript: use open_clip's state dict"),
        Family("siglip", "SigLIP", "webli_en_b16_224_63724782.npz",
               "https://storage.googleapis.com/big_vision/siglip/webli_en_b16_224_63724782.npz",
               "vit_base_patch16_siglip_224", "google-research/big_vision big_vision/models/vit.py (embedding, pos_embedding, "
               "Transformer/encoderblock_N, MAPHead_0; no cls) under two_towers.py's 'img' (params/img/...), read by timm "
               "vision_transformer.py::_load_weights; or open_clip's timm trunk (visual.trunk.*)",
               mean=HALF[0], std=HALF[1], heads={768: 12}, size=224, timm_tag="vit_base_patch16_siglip_224.webli",
               pitfall="no CLS token (MAP head); mean/std 0.5; big_vision's release is a .npz (read without unpickling)"),
        Family("sam", "SAM image encoder", "sam_vit_b_01ec64.pth", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
               "samvit_base_patch16", "facebookresearch/segment-anything segment_anything/build_sam.py (image_encoder., prompt_encoder., mask_decoder.)",
               heads={768: 12, 1024: 16, 1280: 16}, size=1024, resize="pad", timm_tag="samvit_base_patch16.sa1b",
               pitfall="no prefix token; 14x14 windows with 4 global blocks; 1024 px longest side then padding"),
        Family("eva02", "EVA-02", "eva02_S_pt_in21k_p14.pt", "https://huggingface.co/Yuxin-CV/EVA-02/blob/main/eva02/pt/eva02_S_pt_in21k_p14.pt",
               "eva02_small_patch14_224", "baaivision/EVA EVA-02/asuka/modeling_pretrain.py, modeling_finetune.py (Attention: qkv or "
               "q_proj/k_proj/v_proj without bias plus q_bias, v_bias; rope.freqs_cos/sin; mask_token, lm_head), run_class_finetuning.py "
               "(--model_key model|module); timm eva.py::checkpoint_filter_fn",
               wrappers=("module", "model"), flat_ok=True, mean=CLIP[0], std=CLIP[1], heads={384: 6, 768: 12, 1024: 16}, size=476,
               timm_tag="eva02_small_patch14_224.mim_in22k",
               pitfall="RoPE: keys are taken before the rotation; separate q/v biases (k has none)"),
        Family("mocov2", "MoCo v2 ResNet-50", "moco_v2_800ep_pretrain.pth.tar",
               "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar",
               "resnet50", "facebookresearch/moco main_moco.py (state_dict: module.encoder_q., module.encoder_k., queue) and main_lincls.py",
               wrappers=("state_dict",), prefix="module.encoder_q.", drop=("fc.",), kind="cnn", facet="stage", size=480,
               pitfall="dense features come from a stage (C5 at stride 32, C4 at 16: layer -2), not tokens"),
        Family("densecl", "DenseCL ResNet-50", "densecl_r50_imagenet_200ep.pth", "https://github.com/WXinlong/DenseCL#models",
               "resnet50", "WXinlong/DenseCL tools/extract_backbone_weights.py ({'state_dict': backbone, 'author': ...})",
               wrappers=("state_dict",), drop=("fc.",), kind="cnn", facet="stage", size=480),
    )
}


def weights_dir() -> Path:
    """Where a family entry without ``weights:`` looks for its official file: ``$UISBENCH_WEIGHTS_DIR``,
    else ``~/.cache/uisbench/weights``."""
    return Path(os.environ.get("UISBENCH_WEIGHTS_DIR") or "~/.cache/uisbench/weights").expanduser()


def family_named(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise uisbench.UnknownNameError("family", name, sorted(FAMILIES)) from None


def _keys(obj: Any) -> list[str]:
    return [str(k) for k in obj] if isinstance(obj, Mapping) else []


def _any(keys: list[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def recognise(checkpoint: Any) -> Family | None:
    """The family whose official layout ``checkpoint`` has, from its keys; ``None`` for a flat timm
    (or DINO backbone-only, which is the same) state dict and for layouts nobody here knows."""
    if isinstance(checkpoint, uisbench.weights.NpzArchive):
        return _npz_family(checkpoint)
    top = _keys(checkpoint)
    if "target_encoder" in top:
        return FAMILIES["msn"] if "prototypes" in top else FAMILIES["ijepa"]
    if "teacher" in top and "student" in top:
        # main_ibot.py's save_dict has ibot_loss where main_dino.py's has dino_loss; iBOT's student
        # (not its teacher) carries masked_embed
        student = _keys(checkpoint["student"])
        ibot = "ibot_loss" in top or "module.backbone.masked_embed" in student or "backbone.masked_embed" in student
        return FAMILIES["ibot"] if ibot else FAMILIES["dino"]
    if "state_dict" in top and isinstance(checkpoint["state_dict"], Mapping):
        inner = _keys(checkpoint["state_dict"])
        if _any(inner, "module.base_encoder."):
            return FAMILIES["mocov3"]
        if _any(inner, "module.encoder_q."):
            return FAMILIES["mocov2"]
        if "author" in top and _any(inner, "layer1."):
            return FAMILIES["densecl"]
        # iBOT's extract_backbone_weights.py writes {'state_dict': backbone} and nothing else (a
        # student backbone has masked_embed)
        if "masked_embed" in inner or (top == ["state_dict"] and "cls_token" in inner and "patch_embed.proj.weight" in inner):
            return FAMILIES["ibot"]
    for wrapper in ("module", "model"):  # EVA-02 (run_class_finetuning.py --model_key model|module); before MAE's `model`
        if wrapper in top and isinstance(checkpoint[wrapper], Mapping) and _eva02(_keys(checkpoint[wrapper])):
            return FAMILIES["eva02"]
    if "model" in top and isinstance(checkpoint["model"], Mapping):
        inner = _keys(checkpoint["model"])
        if _any(inner, "decoder_") or ("cls_token" in inner and "blocks.0.attn.qkv.weight" in inner):
            return FAMILIES["mae"]
    if "storage_tokens" in top:
        return FAMILIES["dinov3"]
    if _eva02(top):
        return FAMILIES["eva02"]
    if "mask_token" in top and not _any(top, "decoder_"):
        return FAMILIES["dinov2"]
    if _any(top, "decoder_") and "cls_token" in top:
        return FAMILIES["mae"]
    if "image_encoder.patch_embed.proj.weight" in top:
        return FAMILIES["sam"]
    if _any(top, "visual.trunk.") or _any(top, "module.visual.trunk."):
        return FAMILIES["siglip"] if not any(k.endswith("visual.trunk.cls_token") for k in top) else FAMILIES["clip"]
    if "visual.class_embedding" in top or "module.visual.class_embedding" in top:
        return FAMILIES["clip"]
    return None


def _eva02(keys: list[str]) -> bool:
    """EVA-02's official keys: q/v biases apart from the projections (BEiT and EVA-01 have those too)
    plus its RoPE buffers or its SwiGLU's ``w3`` (modeling_finetune.py Attention, SwiGLU; rope.py)."""
    return (any(k.endswith("attn.q_bias") for k in keys)
            and any(k.endswith("rope.freqs_cos") or k.endswith("mlp.w3.weight") for k in keys))


def backbone_state_dict(checkpoint: Any, fam: Family, source: str) -> tuple[dict[str, Any], list[str]]:
    """The backbone of ``fam`` inside ``checkpoint`` (a state dict for timm's filter), plus notes.

    Strict: the family's wrapper must be there and its prefix on the backbone's keys, else a
    :class:`uisbench.ConfigError` saying what the file holds and which family it looks like.
    """
    notes: list[str] = []
    obj = checkpoint
    top = _keys(obj)
    found = recognise(checkpoint)
    if found is not None and found is not fam:
        raise uisbench.ConfigError(_mismatch(checkpoint, fam, source, f"it holds {found.title}'s layout"))
    if found is None and _flat(checkpoint):
        # a flat state dict (DINO's backbone-only release, timm's hub file, an extracted backbone): the backbone itself
        sd, notes = uisbench.weights.unwrap_state_dict(checkpoint, source)
        return _drop(sd, fam, notes + [f"{fam.title}: a flat state dict, taken as the backbone"])
    if fam.wrappers:
        key = next((k for k in fam.wrappers if k in top and isinstance(obj[k], Mapping)), None)
        if key is None and not (fam.flat_ok and _flat(obj)):
            raise uisbench.ConfigError(_mismatch(checkpoint, fam, source, f"no {' or '.join(map(repr, fam.wrappers))} wrapper (top-level keys: {top[:8]})"))
        if key is not None:
            obj = obj[key]
            notes.append(f"{fam.title}: took '{key}'")
    else:
        key = None
    sd = dict(obj)
    prefix = fam.wrapper_prefix.get(key or "", fam.prefix)
    if prefix:
        if not _any(list(sd), prefix) and _any(list(sd), "module." + prefix):
            prefix = "module." + prefix  # e.g. a DDP-wrapped teacher
        elif not _any(list(sd), prefix) and prefix.startswith("module.") and _any(list(sd), prefix[len("module."):]):
            prefix = prefix[len("module."):]  # saved without DDP
        if not _any(list(sd), prefix):
            raise uisbench.ConfigError(_mismatch(checkpoint, fam, source, f"no key starts with {fam.prefix!r} (keys: {list(sd)[:6]})"))
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


def _mismatch(checkpoint: Any, fam: Family, source: str, what: str) -> str:
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


def _nonzero_qkv_bias(sd: Mapping[str, Any]) -> bool:
    """DINOv3's qkv.bias (k part masked to zero) holds values: only timm's ``_qkvb`` models keep them."""
    return any(k.endswith("attn.qkv.bias") and bool(v.abs().sum() > 0) for k, v in sd.items())


def check_model(net: Any, fam: Family | None, sd: Mapping[str, Any], source: str, model_name: str) -> None:
    """The family's head count and the file's prefix tokens against the built model, loudly."""
    blocks = getattr(net, "blocks", None)
    if "storage_tokens" in sd and blocks is not None and _nonzero_qkv_bias(sd) and getattr(blocks[0].attn, "q_bias", None) is None:
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


def describe(checkpoint: Any) -> dict[str, Any]:
    """What ``platform weights inspect`` prints: family, wrappers, prefixes and the architecture read
    from the weights' shapes (patch size, depth, width, heads where the family says, registers)."""
    fam = recognise(checkpoint)
    if isinstance(checkpoint, uisbench.weights.NpzArchive):
        return _describe_npz(checkpoint, fam)
    top = _keys(checkpoint)
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
        if _any(list(sd), p):
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
               registers=registers, heads=(fam.heads.get(width) if fam else None), qkv_bias=_nonzero_qkv_bias(sd))
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


# ---------------------------------------------------------------------------------------------
# big_vision / JAX ViT .npz archives (SigLIP's official release)
# ---------------------------------------------------------------------------------------------

#: where timm's ``vision_transformer._load_weights`` finds a ViT in an .npz, in its order: the
#: ``embedding/kernel`` anchor under each prefix (big_vision's two-tower SigLIP: ``params/img/``)
_NPZ_PREFIXES = ("opt/target/", "params/", "params/img/", "")


def _npz_prefix(keys: Mapping[str, Any]) -> str | None:
    return next((p for p in _NPZ_PREFIXES if f"{p}embedding/kernel" in keys), None)


def _npz_family(archive: Mapping[str, Any]) -> Family | None:
    """SigLIP: big_vision's image tower under ``params/img/`` with a MAP head and no ``cls``
    (vit.py ``pool_type="map"``); other JAX ViTs (AugReg's ``cls`` + ``Transformer/...``): no family."""
    if "params/img/embedding/kernel" in archive and "params/img/MAPHead_0/probe" in archive and "params/img/cls" not in archive:
        return FAMILIES["siglip"]
    return None


def _describe_npz(archive: Mapping[str, Any], fam: Family | None) -> dict[str, Any]:
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


class _ReadLog:
    """A read-only file that notes where each read starts. Opening a zip member reads its local
    header (``zipfile.sizeFileHeader`` bytes at the member's ``header_offset``) first, so the members
    numpy opened while timm loaded are known exactly, without wrapping numpy or timm."""

    def __init__(self, path: Path):
        import io

        self._fh = io.FileIO(path, "rb")
        self.name = str(path)
        self.reads: set[tuple[int, int]] = set()

    def read(self, size: int = -1) -> bytes:
        self.reads.add((self._fh.tell(), size))
        return self._fh.read(size)

    def __getattr__(self, name: str) -> Any:  # seek, tell, seekable, close ...
        return getattr(self._fh, name)

    def __repr__(self) -> str:
        return repr(self.name)


def load_npz(net: Any, archive: Any, fam: Family | None, source: str, model_name: str) -> list[str]:
    """Load a big_vision/JAX ViT ``.npz`` into timm model ``net`` with timm's own loader
    (``VisionTransformer.load_pretrained`` = ``vision_transformer._load_weights``: flax kernels
    transposed, attention heads flattened, position embeddings resampled), strictly:

    - the file's width, depth, heads, patch size, CLS token and MAP head are checked against the
      model first (timm's loader would leave extra blocks unread and flatten any head split);
    - every parameter of the model is set by the file (they are NaN before the load);
    - every array of the image tower is read by timm, bar the projection head (the zip members
      numpy opened are logged at the file level: :class:`_ReadLog`).

    numpy reads the archive with ``allow_pickle=False`` (timm's ``_load_npz_checkpoint``); the
    archive was checked member by member before (:func:`uisbench.weights.read_npz`).
    """
    import zipfile

    import torch

    if not hasattr(net, "load_pretrained") or not hasattr(net, "blocks") or not hasattr(net, "attn_pool"):
        raise uisbench.ConfigError(
            f"weights file {source}: a big_vision/JAX ViT .npz loads into a timm VisionTransformer (e.g. model: "
            f"vit_base_patch16_siglip_224), not {model_name!r}."
        )
    found = recognise(archive)
    if fam is not None and found is not fam:
        raise uisbench.ConfigError(_mismatch(archive, fam, source, "it is a .npz archive of big_vision/JAX arrays"))
    info = _describe_npz(archive, found)
    if "problem" in info:
        raise uisbench.ConfigError(f"weights file {source}: {info['problem']}.")
    prefix = info["npz_prefix"]
    ps = net.patch_embed.patch_size
    have = {"width": int(net.embed_dim), "depth": len(net.blocks), "heads": int(net.blocks[0].attn.num_heads),
            "patch_size": int(ps[0] if isinstance(ps, (tuple, list)) else ps), "cls_token": net.cls_token is not None,
            "map_head": net.attn_pool is not None}
    wrong = [f"{k} {info[k]} in the file, {v} in the model" for k, v in have.items() if info.get(k) is not None and info[k] != v]
    if wrong:
        raise uisbench.ConfigError(
            f"weights file {source} does not fit timm model {model_name!r}: {'; '.join(wrong)}. "
            f"`platform weights inspect {source}` prints the entry that fits (model {info.get('model')!r}, depth {info['depth']}, "
            f"{info['heads']} heads)."
        )
    with torch.no_grad():
        for param in net.parameters():
            param.fill_(float("nan"))  # what the file leaves unset stays NaN
    log = _ReadLog(archive.path)
    try:
        with torch.no_grad():
            net.load_pretrained(log, prefix=prefix)
    except KeyError as err:
        missing = str(err.args[0]).removesuffix(" is not a file in the archive")  # numpy's NpzFile message
        raise uisbench.ConfigError(
            f"weights file {source}: the array {missing!r} that timm's big_vision loader reads for {model_name!r} is not in "
            "the archive; check that `model:` names the architecture it was trained with."
        ) from None
    except (RuntimeError, ValueError) as err:
        raise uisbench.ConfigError(
            f"weights file {source}: timm's vision_transformer._load_weights could not load it into {model_name!r} ({err}); "
            "check `model:` and `model_kwargs:`."
        ) from None
    finally:
        log.close()
    with zipfile.ZipFile(archive.path) as zf:
        at = {i.header_offset: i.filename[: -len(".npy")] for i in zf.infolist()}
    read = {at[pos] for pos, size in log.reads if size == zipfile.sizeFileHeader and pos in at}
    unset = [k for k, v in net.state_dict().items() if v.is_floating_point() and bool(torch.isnan(v).any())]
    head = {f"{prefix}{h}/{w}" for h in ("head", "pre_logits") for w in ("kernel", "bias")}
    unread = sorted(k for k in archive if k.startswith(prefix) and k not in read and k not in head)
    if unset or unread:
        parts = [f"weights file {source} does not fit timm model {model_name!r}:"]
        if unset:
            parts.append(f"not set by the file: {', '.join(unset[:12])}{' ...' if len(unset) > 12 else ''};")
        if unread:
            parts.append(f"arrays timm's loader did not read: {', '.join(unread[:12])}{' ...' if len(unread) > 12 else ''};")
        parts.append("check that `model:` (and `model_kwargs:`) name the architecture this archive was trained with.")
        raise uisbench.ConfigError(" ".join(parts))
    return list(info["notes"]) + [f"loaded by timm's vision_transformer._load_weights: {len(read)} arrays, every array of '{prefix}' "
                                  "but the projection head"]
