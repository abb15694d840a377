"""Each SSL family's *official* checkpoint layout, written here as a tiny file, is recognised, read
strictly into the right sub-network, and `platform weights inspect` prints the registry entry that
loads it; a wrong wrapper, head count or prefix-token count fails loudly.

The layouts follow the official code (cited per case in ``SOURCE``); the tiny networks are one
block deep at 64 px (the families' real widths, so the head counts are the families'), written
with torch.save and read back through uisbench.weights.read_checkpoint (no code runs). Every loaded
model is compared weight by weight with the network the file was made from, and its key facet with
a reference computed from that source network's own block (tests/test_families.py).
"""

from __future__ import annotations

import argparse

import pytest
import torch
import yaml

import uisbench
from helpers import weights_inspect
from test_families import _block_input, _reference_key

SIZE = 64
PIXELS = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def _source(model: str, **kwargs):
    import timm

    torch.manual_seed(7)
    net = timm.create_model(model, pretrained=False, num_classes=0, **kwargs).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def _noise_like(sd):
    return {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in sd.items()}


def _prefixed(prefix, sd):
    return {prefix + k: v for k, v in sd.items()}


VIT = {"depth": 1, "img_size": SIZE}


def _dino(sd):
    head = {"head.mlp.0.weight": torch.randn(16, 384), "head.last_layer.weight_g": torch.ones(1, 16)}
    return {"student": _prefixed("module.backbone.", _noise_like(sd)), "teacher": {**_prefixed("backbone.", sd), **head},
            "optimizer": {}, "epoch": 100, "args": argparse.Namespace(arch="vit_small", patch_size=16)}


def _dinov2_reg(sd):
    # the official model adds pos_embed[:, 0] to the CLS token and keeps registers apart (timm's
    # reg4 model is no_embed_class: timm's _convert_dinov2 folds it back); mlp names as in the release
    p0 = torch.randn(1, 1, sd["pos_embed"].shape[-1])
    out = {k: v for k, v in sd.items() if k not in ("cls_token", "reg_token", "pos_embed")}
    out.update(cls_token=sd["cls_token"] - p0, pos_embed=torch.cat([p0, sd["pos_embed"]], 1), register_tokens=sd["reg_token"],
               mask_token=torch.zeros(1, sd["pos_embed"].shape[-1]))
    return out


def _dinov3(sd):
    # timm's eva.py::checkpoint_filter_fn read backwards: storage_tokens, ls1/ls2.gamma, one qkv.bias
    # with a bias_mask (k masked), rope periods and the mask token as in the release
    out = {}
    for k, v in sd.items():
        if k.endswith("attn.q_bias"):
            stem = k[: -len("q_bias")]
            out[stem + "qkv.bias"] = torch.cat([v, torch.zeros_like(v), sd[stem + "v_bias"]])
            out[stem + "qkv.bias_mask"] = torch.cat([torch.ones_like(v), torch.zeros_like(v), torch.ones_like(v)])
        elif not k.endswith("attn.v_bias"):
            out[k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")] = v
    out["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    out["rope_embed.periods"] = torch.ones(16)
    return out


def _clip_openai(sd):
    # OpenAI CLIP's naming (openai/CLIP clip/model.py VisionTransformer, as open_clip saves it) of timm's
    # keys: timm vision_transformer.py::_convert_openai_clip read backwards; the text tower rides along
    def name(k):
        k = k.replace("blocks.", "transformer.resblocks.").replace("attn.qkv.", "attn.in_proj_").replace("attn.proj", "attn.out_proj")
        k = k.replace("mlp.fc1", "mlp.c_fc").replace("mlp.fc2", "mlp.c_proj").replace(".norm1", ".ln_1").replace(".norm2", ".ln_2")
        return {"patch_embed.proj.weight": "conv1.weight", "norm_pre.weight": "ln_pre.weight", "norm_pre.bias": "ln_pre.bias",
                "norm.weight": "ln_post.weight", "norm.bias": "ln_post.bias"}.get(k, k)

    out = {"visual." + name(k): v for k, v in sd.items() if k not in ("cls_token", "pos_embed")}
    out["visual.class_embedding"] = sd["cls_token"].flatten()
    out["visual.positional_embedding"] = sd["pos_embed"][0]
    out["visual.proj"] = torch.randn(768, 32)
    out.update({"token_embedding.weight": torch.randn(10, 32), "transformer.resblocks.0.ln_1.weight": torch.ones(32), "logit_scale": torch.ones(())})
    return out


def _siglip_open_clip(sd):
    # open_clip's SigLIP: the timm model as `visual.trunk`, the text tower beside it
    return {**_prefixed("visual.trunk.", sd), "text.token_embedding.weight": torch.randn(10, 32), "logit_scale": torch.ones(()),
            "logit_bias": torch.zeros(())}


def _mae(sd):
    decoder = {"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.randn(32, 384), "decoder_pred.bias": torch.randn(768)}
    return {"model": {**sd, **decoder}}


def _ibot(sd):
    # the released checkpoint_teacher.pth: bytedance/ibot extract_backbone_weights.py keeps the teacher's
    # `backbone.*` keys with the prefix stripped, under 'state_dict' (analysis/correspondence/
    # visualize_correspondence.py reads it back with torch.load(...)['state_dict'])
    return {"state_dict": dict(sd)}


def _ibot_full(sd):
    # bytedance/ibot main_ibot.py save_dict: the teacher (a MultiCropWrapper, not DDP: `backbone.` and
    # `head.`) is the evaluated network; the DDP student has `module.` and, with masked image modelling
    # (models/vision_transformer.py), masked_embed
    student = {**_prefixed("module.backbone.", {**_noise_like(sd), "masked_embed": torch.zeros(1, 384)}),
               "module.head.mlp.0.weight": torch.randn(16, 384)}
    teacher = {**_prefixed("backbone.", sd), "head.mlp.0.weight": torch.randn(16, 384), "head.last_layer2.weight_g": torch.ones(1, 16)}
    return {"student": student, "teacher": teacher, "optimizer": {}, "epoch": 800,
            "args": argparse.Namespace(arch="vit_small", patch_size=16), "ibot_loss": {"center": torch.zeros(1, 16)}}


def _eva02_official(sd):
    """EVA-02's pre-training checkpoint (baaivision/EVA EVA-02/asuka/modeling_pretrain.py
    VisionTransformerForMaskedImageModeling, modeling_finetune.py Attention/SwiGLU, rope.py), as
    run_class_finetuning.py reads it (--model_key model|module): timm eva.py::checkpoint_filter_fn
    read backwards. Attention: a bias-free ``qkv`` (S) or bias-free ``q_proj``/``k_proj``/``v_proj``
    (B, L: subln) plus ``q_bias`` and ``v_bias``, no k bias; xformers' SwiGLU ``w12``/``w3`` (S) or the
    naive ``w1``/``w2``/``ffn_ln``/``w3`` (B, L); the final ``norm`` (timm's fc_norm); the MIM
    ``mask_token`` and ``lm_head``; the RoPE tables as buffers, shared by every block."""
    out = {}
    for k, v in sd.items():
        k = k.replace("attn.q_proj.bias", "attn.q_bias").replace("attn.v_proj.bias", "attn.v_bias")
        k = k.replace("mlp.fc1_g", "mlp.w1").replace("mlp.fc1_x", "mlp.w2").replace("mlp.norm", "mlp.ffn_ln")
        k = k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3").replace("fc_norm.", "norm.")
        out[k] = v
    width = sd["cls_token"].shape[-1]
    rope = {"rope.freqs_cos": torch.randn(16, 32), "rope.freqs_sin": torch.randn(16, 32)}
    out.update(rope, **_prefixed("blocks.0.attn.", rope))
    out.update(mask_token=torch.zeros(1, 1, width), **{"lm_head.weight": torch.randn(8, width), "lm_head.bias": torch.zeros(8)})
    return {"module": out}


def _mocov3(sd):
    proj = {"head.0.weight": torch.randn(32, 384), "head.1.weight": torch.ones(32)}
    return {"epoch": 300, "arch": "vit_small", "optimizer": {}, "scaler": {},
            "state_dict": {**_prefixed("module.base_encoder.", {**sd, **proj}), **_prefixed("module.momentum_encoder.", _noise_like(sd)),
                           "module.predictor.0.weight": torch.randn(32, 32)}}


def _msn(sd):
    return {"encoder": _prefixed("module.", {**_noise_like(sd), "fc.fc1.weight": torch.randn(32, 384)}),
            "target_encoder": _prefixed("module.", {**sd, "fc.fc1.weight": torch.randn(32, 384)}),
            "prototypes": torch.randn(16, 32), "opt": {}, "epoch": 600, "loss": 1.0, "batch_size": 8, "world_size": 1, "lr": 0.1}


def _ijepa(sd):
    return {"encoder": _prefixed("module.", _noise_like(sd)), "predictor": {"module.predictor_embed.weight": torch.randn(8, 384)},
            "target_encoder": _prefixed("module.", sd), "opt": {}, "scaler": None, "epoch": 300, "loss": 0.1,
            "batch_size": 8, "world_size": 1, "lr": 0.001}


def _sam(sd):
    enc = {"image_encoder." + k.replace("mlp.fc", "mlp.lin"): v for k, v in sd.items()}
    return {**enc, "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": torch.randn(2, 128),
            "mask_decoder.iou_token.weight": torch.randn(1, 256)}


def _mocov2(sd):
    fc = {"fc.0.weight": torch.randn(32, 2048), "fc.0.bias": torch.randn(32), "fc.2.weight": torch.randn(16, 32)}
    return {"epoch": 800, "arch": "resnet50", "optimizer": {},
            "state_dict": {**_prefixed("module.encoder_q.", {**sd, **fc}), **_prefixed("module.encoder_k.", _noise_like({**sd, **fc})),
                           "module.queue": torch.randn(16, 8), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}}


def _densecl(sd):
    return {"state_dict": dict(sd), "author": "OpenSelfSup"}


# family -> (timm source model, its kwargs, official layout writer, official code it follows)
CASES = {
    "dino": ("vit_small_patch16_224", VIT, _dino, "facebookresearch/dino main_dino.py save_dict"),
    "dinov2": ("vit_small_patch14_reg4_dinov2", {"depth": 1, "img_size": 56}, _dinov2_reg,
               "facebookresearch/dinov2 dinov2/models/vision_transformer.py; timm vision_transformer.py::_convert_dinov2"),
    "dinov3": ("vit_small_patch16_dinov3_qkvb", {"depth": 1}, _dinov3,
               "facebookresearch/dinov3 dinov3/models/vision_transformer.py, layers/attention.py; timm eva.py::checkpoint_filter_fn"),
    "clip": ("vit_base_patch16_clip_224", VIT, _clip_openai, "openai/CLIP clip/model.py; timm vision_transformer.py::_convert_openai_clip"),
    "siglip": ("vit_base_patch16_siglip_224", VIT, _siglip_open_clip, "mlfoundations/open_clip timm_model.py (TimmModel.trunk)"),
    "mae": ("vit_small_patch16_224", VIT, _mae, "facebookresearch/mae util/misc.py save_model, models_mae.py"),
    "ibot": ("vit_small_patch16_224", VIT, _ibot, "bytedance/ibot extract_backbone_weights.py"),
    "ibot:full": ("vit_small_patch16_224", VIT, _ibot_full, "bytedance/ibot main_ibot.py save_dict"),
    "eva02": ("eva02_small_patch14_224", {"depth": 1, "img_size": 56}, _eva02_official,
              "baaivision/EVA EVA-02/asuka/modeling_pretrain.py, modeling_finetune.py; timm eva.py::checkpoint_filter_fn"),
    "eva02:base": ("eva02_base_patch14_224", {"depth": 1, "img_size": 56}, _eva02_official,
                   "baaivision/EVA EVA-02/asuka/modeling_finetune.py (subln: q_proj/k_proj/v_proj, naive SwiGLU)"),
    "mocov3": ("vit_small_patch16_224", {**VIT, "num_heads": 12}, _mocov3, "facebookresearch/moco-v3 main_moco.py, vits.py"),
    "msn": ("vit_small_patch16_224", VIT, _msn, "facebookresearch/msn src/msn_train.py save_dict"),
    "ijepa": ("vit_small_patch16_224", {**VIT, "class_token": False, "global_pool": "avg", "fc_norm": False}, _ijepa,
              "facebookresearch/ijepa src/train.py save_checkpoint"),
    "sam": ("samvit_base_patch16", VIT, _sam, "facebookresearch/segment-anything build_sam.py; timm vision_transformer_sam.py"),
    "mocov2": ("resnet50", {"layers": [1, 1, 1, 1]}, _mocov2, "facebookresearch/moco main_moco.py, main_lincls.py"),
    "densecl": ("resnet50", {"layers": [1, 1, 1, 1]}, _densecl, "WXinlong/DenseCL tools/extract_backbone_weights.py"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("families")
    out = {}
    for name, (model, kwargs, write, _) in CASES.items():
        src = _source(model, **kwargs)
        path = d / f"{name.replace(':', '_')}_official.pth"
        torch.save(write({k: v.clone() for k, v in src.state_dict().items()}), path)
        out[name] = (path, src)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_official_file_inspected_validated_and_loaded(host, files, tmp_path, name):
    path, src = files[name]
    family = name.split(":")[0]  # "ibot:full": another official layout of iBOT
    code, out = weights_inspect(path)
    assert code == 0, out
    registry_text = yaml.safe_load(out)
    ((entry_name, entry),) = registry_text["backbones"].items()
    assert entry["family"] == family and entry["weights"] == str(path), out
    mine = tmp_path / "mine.yaml"
    mine.write_text(out)
    reg = uisbench.host.load_registry([str(mine)], host)  # what `platform validate mine.yaml` checks
    params = reg.resolved_params(reg.entry("backbones", entry_name), host)
    params = {k: v for k, v in params.items() if k not in ("plugin", "description")}
    # built at the tiny files' size (64 px, 56 for patch 14): their position embeddings are for it
    size = CASES[name][1].get("img_size", SIZE)
    bb = host.spec("backbones", "timm").build(**{**params, "size": size, "precision": "fp32", "resize": "square"})
    prov = bb.provenance()
    assert prov["family"] == family and prov["pretrained"] is True
    loaded, expected = bb.model.state_dict(), src.state_dict()
    assert set(loaded) == set(expected)
    for k, v in expected.items():
        torch.testing.assert_close(loaded[k], v, atol=1e-6, rtol=0, msg=f"{name}: {k}")
    pixels = torch.nn.functional.interpolate(PIXELS, size=(size, size), mode="bilinear")
    fm = bb.extract(pixels, [1, 2])
    if bb.kind == "transformer":
        torch.testing.assert_close(fm.features, _reference_key(src, 0, pixels), atol=1e-5, rtol=0)
    else:
        assert fm.facet == "stage" and fm.patch_size == 32


def test_mean_std_come_from_the_family(host, files):
    path, _ = files["mae"]
    # an untagged timm name's cfg says mean/std 0.5; MAE's weights were trained with ImageNet's
    bb = host.spec("backbones", "timm").build(model="vit_small_patch16_224", model_kwargs={"depth": 1}, weights=str(path), size=SIZE)
    assert bb.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406)) and bb.family.name == "mae"


def test_wrong_head_count_fails_loudly(host, files):
    path, _ = files["mocov3"]
    with pytest.raises(uisbench.ConfigError, match=r"MoCo v3 ViTs of width 384 have 12 attention heads.*num_heads: 12"):
        host.spec("backbones", "timm").build(model="vit_small_patch16_224", model_kwargs={"depth": 1}, weights=str(path), size=SIZE)


def test_wrong_wrapper_fails_loudly(host, files):
    path, _ = files["ijepa"]  # {encoder, predictor, target_encoder}: not MSN's {encoder, target_encoder, prototypes}
    with pytest.raises(uisbench.ConfigError, match=r"not in MSN's official layout.*looks like a I-JEPA file: write `family: ijepa`"):
        host.spec("backbones", "timm").build(model="vit_small_patch16_224", model_kwargs={"depth": 1}, family="msn",
                                             weights=str(path), size=SIZE)


def test_dinov3_biases_are_not_dropped_silently(host, files):
    path, _ = files["dinov3"]
    with pytest.raises(uisbench.ConfigError, match=r"DINOv3 attention biases .* use its _qkvb variant"):
        host.spec("backbones", "timm").build(model="vit_small_patch16_dinov3", model_kwargs={"depth": 1}, weights=str(path), size=SIZE)


@pytest.mark.parametrize("name", ["eva02", "eva02:base"])
def test_eva02_key_is_the_official_k_projection_without_bias_before_rope(host, files, name):
    """EVA-02's official attention (modeling_finetune.py Attention.forward) computes
    k = F.linear(x, k weight, bias=None) and rotates it with RoPE afterwards: the key facet is that k
    before the rotation, here computed from the official file's own tensors."""
    path, src = files[name]
    official = uisbench.weights.read_checkpoint(path)["module"]
    width = official["cls_token"].shape[-1]
    assert not any(k.endswith(("k_bias", "k_proj.bias", "qkv.bias")) for k in official)  # the layout has no k bias
    w_k = official.get("blocks.0.attn.k_proj.weight")
    if w_k is None:  # S: one bias-free qkv weight, rows q, k, v
        w_k = official["blocks.0.attn.qkv.weight"][width : 2 * width]
    bb = host.spec("backbones", "timm").build(model=CASES[name][0], model_kwargs={"depth": 1}, weights=str(path), size=56,
                                              precision="fp32", resize="square")
    pixels = torch.nn.functional.interpolate(PIXELS, size=(56, 56), mode="bilinear")
    with torch.no_grad():
        x = src.blocks[0].norm1(_block_input(src, 0, pixels))  # what the attention receives
        k = torch.nn.functional.linear(x, w_k)[:, 1:]  # one CLS token, then a 4x4 grid
    expected = k.reshape(2, 4, 4, width).permute(0, 3, 1, 2)
    torch.testing.assert_close(bb.extract(pixels, [1, 2]).features, expected, atol=1e-5, rtol=0)


def test_wrong_prefix_token_count_fails_loudly(host, files):
    path, _ = files["dinov2"]  # CLS + 4 registers
    with pytest.raises(uisbench.ConfigError, match=r"carries 5 prefix token\(s\).*has 1"):
        host.spec("backbones", "timm").build(model="vit_small_patch14_dinov2", model_kwargs={"depth": 1}, weights=str(path), size=56)


def test_official_file_from_the_weights_folder_else_unavailable_with_the_url(host, files, tmp_path, monkeypatch):
    """A registry entry names the family and an untagged model, no file: the official file is looked
    for in $UISBENCH_WEIGHTS_DIR; absent, the row is unavailable and says where to get it."""
    spec = host.spec("backbones", "timm")
    params = dict(model="vit_small_patch16_224", family="mocov3", model_kwargs={"depth": 1, "num_heads": 12}, size=SIZE)
    monkeypatch.setenv("UISBENCH_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(uisbench.BackboneUnavailable, match=r"vit-s-300ep\.pth\.tar is not in .*https://dl\.fbaipublicfiles\.com/moco-v3"):
        spec.build(**params)
    with pytest.raises(uisbench.BackboneUnavailable, match=r"Get vit-s-300ep\.pth\.tar from https://dl\.fbaipublicfiles\.com/moco-v3"):
        spec.build(**params, weights=str(tmp_path / "elsewhere.pth.tar"))
    (tmp_path / "vit-s-300ep.pth.tar").write_bytes(files["mocov3"][0].read_bytes())
    bb = spec.build(**params)
    assert bb.provenance()["weights"] == str(tmp_path / "vit-s-300ep.pth.tar") and bb.family.name == "mocov3"


def test_inspect_says_what_is_missing(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"blocks.0.attn.qkv.weight": torch.zeros(3 * 40, 40), "patch_embed.proj.weight": torch.zeros(40, 3, 16, 16)}, path)
    code, out = weights_inspect(path)
    assert code == 1 and "missing: the timm model: width 40" in out


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_archive_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "ViT-B-16.pt"  # OpenAI's CLIP release is a torch.jit.save archive
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    with pytest.raises(uisbench.DataError, match=r"a TorchScript archive .*\.state_dict\(\) with torch\.save"):
        uisbench.weights.read_checkpoint(path)


def test_big_vision_npz_is_refused_with_the_fix(tmp_path):
    import numpy as np

    path = tmp_path / "webli_en_b16_224.npz"  # big_vision's SigLIP release: NumPy arrays by parameter path
    np.savez(path, **{"params/img/embedding/kernel": np.zeros((16, 16, 3, 8), np.float32)})
    with pytest.raises(uisbench.DataError, match=r"a NumPy \.npz archive .* timm/vit_base_patch16_siglip_224\.webli"):
        uisbench.weights.read_checkpoint(path)
