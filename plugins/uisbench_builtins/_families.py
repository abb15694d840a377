"""The SSL families whose official checkpoint files the ``timm`` plugin reads: :class:`Family` (one
family's file layout, normalisation, head count and registry entry) and the table :data:`FAMILIES`.

Private helper of :mod:`uisbench_builtins.timm_vit` (the ``timm`` plugin, whose ``family:`` parameter,
weights loading and ``platform weights inspect`` answer use it). What a family's fields mean for a
file is applied by its sibling helpers: ``_family_layouts.py`` (recognising a layout, taking the
backbone out, checking the model), ``_family_inspect.py`` (``platform weights inspect``) and
``_family_npz.py`` (big_vision ``.npz`` archives).

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

__all__ = ["Family", "FAMILIES", "family_named", "weights_dir"]

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
