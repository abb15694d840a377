"""Backbones: parity with direct timm computations, weight loading and its failures, offline behaviour,
calibration backbones, and a conformance test over every installed backbone plugin.

Everything runs on tiny ViTs (depth 2, width 48) at 64 px with checkpoints the tests write themselves.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pytest
import torch

import uisbench
import uisbench.testing
from uisbench_builtins import timm_vit

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 2}
SIZE = 64  # 4 x 4 grid of 16 px patches
ARCH = "vit_small_patch16_224"


def _backbone_names():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host = uisbench.host.load_plugins()
    return sorted(host.specs("backbones"))


# ---------------------------------------------------------------------------------------------
# Checkpoints written by the tests, in the layouts DINO and MAE publish
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny ViT's weights saved as DINO full checkpoint, MAE checkpoint, plain .pth and .safetensors.

    The source model is built at 224 px (a 14 x 14 position grid, as published) so loading at 64 px
    exercises the position-embedding resampling.
    """
    import timm
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(123)
    src = timm.create_model(ARCH, pretrained=False, num_classes=0, **TINY)
    with torch.no_grad():  # non-trivial biases and norms
        for p in src.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    paths = {}
    paths["plain"] = d / "plain.pth"
    torch.save(sd, paths["plain"])
    paths["safetensors"] = d / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(paths["safetensors"]))
    head = {"head.mlp.0.weight": torch.randn(32, 48), "head.mlp.0.bias": torch.randn(32), "head.last_layer.weight_g": torch.ones(1, 16)}
    teacher = {**{"backbone." + k: v for k, v in sd.items()}, **head}
    student = {"module." + k: torch.zeros_like(v) for k, v in teacher.items()}
    paths["dino"] = d / "dino_full_checkpoint.pth"
    torch.save({"student": student, "teacher": teacher, "epoch": 3, "args": argparse.Namespace(arch="vit_small")}, paths["dino"])
    decoder = {"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.randn(32, 48), "decoder_pred.bias": torch.randn(768)}
    paths["mae"] = d / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": {**sd, **decoder}}, paths["mae"])
    return paths


@pytest.fixture(scope="module")
def reference(ckpt):
    """The same weights loaded by timm itself (``pretrained_cfg_overlay=dict(file=...)``) at 64 px."""
    import timm

    model = timm.create_model(
        ARCH + ".dino", pretrained=True, pretrained_cfg_overlay={"file": str(ckpt["plain"])}, num_classes=0, img_size=SIZE, **TINY
    )
    return model.eval()


def _reference_qkv(model, pixels, layer: int, facet: str) -> torch.Tensor:
    """x -> blocks before ``layer`` -> norm1 -> qkv linear -> split; prefix dropped, heads concatenated,
    as ``(B, C, h, w)``. Written from timm's Attention definition, independently of the plugin."""
    with torch.no_grad():
        x = model.patch_embed(pixels)
        x = model._pos_embed(x)
        x = model.norm_pre(x)
        for blk in model.blocks[:layer]:
            x = blk(x)
        blk = model.blocks[layer]
        y = blk.norm1(x)
        qkv = torch.nn.functional.linear(y, blk.attn.qkv.weight, blk.attn.qkv.bias)
        b, n, _ = qkv.shape
        heads = blk.attn.num_heads
        qkv = qkv.reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)  # 3, B, heads, N, head_dim
        t = qkv[{"query": 0, "key": 1, "value": 2}[facet]]
        t = t.transpose(1, 2).reshape(b, n, -1)[:, model.num_prefix_tokens :]
    g = int((n - model.num_prefix_tokens) ** 0.5)
    return t.reshape(b, g, g, -1).permute(0, 3, 1, 2)


def _build(host, plugin, **params):
    spec = host.spec("backbones", plugin)
    return spec.build(**params)


def _vit_params(**extra):
    return {"size": SIZE, "model_kwargs": dict(TINY), "precision": "fp32", **extra}


PIXELS = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------
# Parity with timm
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout, plugin, model",
    [
        ("dino", "dino", ARCH + ".dino"),
        ("mae", "mae", "vit_base_patch16_224.mae"),
        ("plain", "timm", ARCH),
        ("safetensors", "timm", ARCH),
    ],
)
def test_key_facet_matches_direct_qkv_computation(host, ckpt, reference, layout, plugin, model):
    bb = _build(host, plugin, **_vit_params(model=model, weights=str(ckpt[layout])))
    fm = bb.extract(PIXELS, [1, 2])
    assert fm.features.shape == (2, 48, 4, 4) and fm.features.dtype == torch.float32
    assert (fm.facet, fm.layer, fm.patch_size, fm.image_ids, fm.valid) == ("key", 1, 16, [1, 2], None)
    torch.testing.assert_close(fm.features, _reference_qkv(reference, PIXELS, 1, "key"), atol=1e-5, rtol=0)
    prov = bb.provenance()
    assert prov["pretrained"] is True and prov["weights"] == str(ckpt[layout]) and len(prov["weights_sha256"]) == 64
    assert prov["model"] == model


def test_query_value_and_earlier_layer_match(host, ckpt, reference):
    for facet in ("query", "value", "key"):
        for layer in (0, -1):
            bb = _build(host, "dino", **_vit_params(weights=str(ckpt["dino"]), facet=facet, layer=layer))
            expected = _reference_qkv(reference, PIXELS, layer % 2, facet)
            torch.testing.assert_close(bb.extract(PIXELS, [1, 2]).features, expected, atol=1e-5, rtol=0)


def test_token_facet_matches_forward_features(host, ckpt, reference):
    bb = _build(host, "mae", **_vit_params(model="vit_base_patch16_224.mae", weights=str(ckpt["mae"]), facet="token"))
    with torch.no_grad():
        tokens = reference.forward_features(PIXELS)[:, reference.num_prefix_tokens :]
    expected = tokens.reshape(2, 4, 4, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(bb.extract(PIXELS, [1, 2]).features, expected, atol=1e-5, rtol=0)
    # an earlier layer: that block's output after the final norm
    bb0 = _build(host, "mae", **_vit_params(model="vit_base_patch16_224.mae", weights=str(ckpt["mae"]), facet="token", layer=0))
    with torch.no_grad():
        x = reference.norm_pre(reference._pos_embed(reference.patch_embed(PIXELS)))
        x = reference.norm(reference.blocks[0](x))[:, 1:]
    torch.testing.assert_close(bb0.extract(PIXELS, [1, 2]).features, x.reshape(2, 4, 4, -1).permute(0, 3, 1, 2), atol=1e-5, rtol=0)


def test_tag_plugin_and_generic_timm_plugin_agree(host, ckpt):
    a = _build(host, "dino", **_vit_params(weights=str(ckpt["dino"])))
    imagenet = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # the bare arch's default tag uses 0.5
    b = _build(host, "timm", **_vit_params(model=ARCH, weights=str(ckpt["dino"]), **imagenet))
    c = _build(host, "mae", **_vit_params(model="vit_base_patch16_224.mae", weights=str(ckpt["mae"])))
    fa, fb, fc = (x.extract(PIXELS, [1, 2]).features for x in (a, b, c))
    assert torch.equal(fa, fb) and torch.equal(fa, fc)
    assert a.preprocessing == b.preprocessing
    assert any("teacher" in n for n in a.provenance()["load_notes"])
    assert any("decoder" in n for n in c.provenance()["load_notes"])


def test_bf16_autocast_path_close_to_fp32(host, ckpt):
    fp32 = _build(host, "dino", **_vit_params(weights=str(ckpt["dino"])))
    bf16 = _build(host, "dino", **_vit_params(weights=str(ckpt["dino"]), precision="bf16"))  # the CUDA default, here on CPU
    a, b = fp32.extract(PIXELS, [1, 2]).features, bf16.extract(PIXELS, [1, 2]).features
    assert b.dtype == torch.float32 and not torch.equal(a, b)
    assert (torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1) > 0.99).all()


def test_hook_removed_after_use_even_on_error(host, ckpt, monkeypatch):
    bb = _build(host, "dino", **_vit_params(weights=str(ckpt["dino"])))
    bb.extract(PIXELS, [1, 2])
    assert all(not m._forward_hooks for m in bb.model.modules())

    def boom(x):
        raise RuntimeError("boom")

    monkeypatch.setattr(bb.model, "forward_features", boom)
    with pytest.raises(RuntimeError, match="boom"):
        bb.extract(PIXELS, [1, 2])
    assert all(not m._forward_hooks for m in bb.model.modules())


# ---------------------------------------------------------------------------------------------
# Weight files that do not fit, and weights that are not there
# ---------------------------------------------------------------------------------------------


def test_wrong_file_lists_mismatched_keys(host, ckpt, tmp_path):
    sd = torch.load(ckpt["plain"], weights_only=True)
    del sd["blocks.1.mlp.fc2.weight"]
    sd["blocks.0.attn.qkv.weight"] = torch.zeros(10, 48)
    sd["extra.weight"] = torch.zeros(3)
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(uisbench.ConfigError) as info:
        _build(host, "timm", **_vit_params(model=ARCH, weights=str(bad)))
    msg = str(info.value)
    assert str(bad) in msg and "blocks.1.mlp.fc2.weight" in msg and "extra.weight" in msg
    assert "blocks.0.attn.qkv.weight: file (10, 48) vs model (144, 48)" in msg
    assert len(info.value.problems) == 3
    # a checkpoint of another width: every shape is listed (first ones shown, with a count)
    with pytest.raises(uisbench.ConfigError, match="shape mismatches: .*in all"):
        _build(host, "dino", **_vit_params(weights=str(ckpt["dino"]), model_kwargs={**TINY, "embed_dim": 64}))
    with pytest.raises(uisbench.ConfigError, match="not found"):
        _build(host, "dino", **_vit_params(weights=str(tmp_path / "missing.pth")))
    with pytest.raises(uisbench.ConfigError, match="contradict"):
        _build(host, "dino", **_vit_params(weights=str(ckpt["dino"]), pretrained=False))


def test_untrusted_pickle_is_refused_with_a_fix(host, tmp_path):
    import fractions

    path = tmp_path / "pickled.pth"
    torch.save({"model": {}, "obj": fractions.Fraction(1, 3)}, path)  # a global torch will not unpickle safely
    with pytest.raises(uisbench.DataError, match="weights_only.pth"):
        _build(host, "timm", **_vit_params(model=ARCH, weights=str(path)))


@pytest.fixture
def offline(monkeypatch):
    """No network and empty weight caches, whatever this machine has cached."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(timm_vit, "cached_weights", lambda cfg: None)


@pytest.mark.parametrize("plugin, model", [("dino", ARCH + ".dino"), ("mae", "vit_base_patch16_224.mae"), ("timm", ARCH + ".dino")])
def test_offline_without_weights_is_unavailable_and_actionable(host, offline, plugin, model):
    start = time.monotonic()
    with pytest.raises(uisbench.BackboneUnavailable) as info:
        _build(host, plugin, **_vit_params(model=model))  # pretrained left at its default: weights wanted
    assert time.monotonic() - start < 5
    msg = str(info.value)
    hub = "timm/" + model
    assert hub in msg and "weights: /path/to/" in msg and "--registry" in msg and f"plugin: {plugin}" in msg
    assert "https://dl.fbaipublicfiles.com/" in msg  # the original checkpoint URL timm records


def test_hub_weights_from_cache_then_download(host, ckpt, monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty torch hub cache
    # 1. in the Hugging Face cache: used without any network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seen = []

    def cache(repo, filename, **kwargs):
        seen.append((repo, filename))
        return str(ckpt["safetensors"]) if filename == "model.safetensors" else None

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cache)
    bb = _build(host, "dino", **_vit_params())
    prov = bb.provenance()
    assert seen[0] == ("timm/vit_small_patch16_224.dino", "model.safetensors")
    assert prov["pretrained"] is True and prov["weights_source"] == "hf-hub:timm/vit_small_patch16_224.dino/model.safetensors"
    assert prov["weights"] == str(ckpt["safetensors"])
    # 2. not cached, online: timm's hub file is downloaded; a failing download is `unavailable`, not random
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(timm_vit, "offline", lambda: False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, filename, **k: str(ckpt["safetensors"]))
    assert _build(host, "dino", **_vit_params()).provenance()["weights"] == str(ckpt["safetensors"])

    def refused(repo, filename, **kwargs):
        raise OSError("connection reset")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refused)
    with pytest.raises(uisbench.BackboneUnavailable, match="download failed: OSError: connection reset"):
        _build(host, "dino", **_vit_params())


def test_registry_entries_name_real_timm_weights(registry):
    import re

    import timm

    names = {e.name: e for e in registry.entries["backbones"].values()}
    for name in ("dino-vits16", "dino-vits8", "dino-vitb16", "dino-vitb8", "mae-vitb16", "mae-vitl16", "mae-vith14",
                 "oracle-instance", "oracle-semantic", "pixels"):
        assert name in names, f"registry.yaml lacks backbone entry {name}"
    for entry in names.values():
        if entry.plugin in ("dino", "mae"):
            model = entry.params["model"]
            assert model in timm.list_pretrained(), model
            patch = int(re.search(r"patch(\d+)", model).group(1))
            target = 224 if entry.name.endswith("-cpu") else 480  # CPU-sized entries run at 224 px
            assert entry.params["size"] % patch == 0 and abs(entry.params["size"] - target) < patch
    assert names["oracle-semantic"].params["instance_weight"] == 0
    assert names["oracle-instance"].params["instance_weight"] > 0


def test_offline_probe_fails_fast_without_env(monkeypatch):
    import socket

    for var in ("UISBENCH_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    start = time.monotonic()
    assert timm_vit.offline() is True
    assert time.monotonic() - start < 5


def test_random_init_only_when_written_and_recorded(host, offline):
    spec = host.spec("backbones", "dino")
    assert spec.defaults()["pretrained"] is True
    bb = _build(host, "dino", **_vit_params(pretrained=False))
    prov = bb.provenance()
    assert prov["pretrained"] is False and prov["weights"] is None and prov["weights_source"] == "random-init"
    again = _build(host, "dino", **_vit_params(pretrained=False))
    assert torch.equal(bb.extract(PIXELS, [1, 2]).features, again.extract(PIXELS, [1, 2]).features)  # seeded init


def test_unknown_model_and_tag_suggest_names(host):
    with pytest.raises(uisbench.UnknownNameError, match="Did you mean"):
        _build(host, "timm", **_vit_params(model="vit_smal_patch16_224", pretrained=False))
    with pytest.raises(uisbench.UnknownNameError, match="vit_small_patch16_224.dino"):
        _build(host, "timm", **_vit_params(model="vit_small_patch16_224.dion", pretrained=False))
    with pytest.raises(uisbench.ConfigError, match="multiple of the patch size"):
        _build(host, "dino", **_vit_params(size=70, pretrained=False))
    with pytest.raises(uisbench.ConfigError, match="out of range"):
        _build(host, "dino", **_vit_params(layer=5, pretrained=False))


# ---------------------------------------------------------------------------------------------
# Geometry: resize policies
# ---------------------------------------------------------------------------------------------


class TinyDataset(uisbench.Dataset):
    """Two images: 64 x 64 with two 'disc's and a 'star'; 32 x 64 (wide) with one 'disc'."""

    def __init__(self, has_ground_truth: bool = True) -> None:
        self.has_ground_truth = has_ground_truth
        self.skipped = []
        self.sizes = {1: (64, 64), 2: (32, 64)}
        self.boxes = {1: [("disc", 0, 0, 24, 32), ("disc", 32, 0, 56, 32), ("star", 8, 40, 56, 64)], 2: [("disc", 0, 8, 32, 40)]}

    def image_ids(self):
        return [1, 2]

    def record(self, image_id):
        h, w = self.sizes[image_id]
        return uisbench.ImageRecord(image_id, None, w, h)

    def load_image(self, image_id):
        h, w = self.sizes[image_id]
        rng = np.random.default_rng(image_id)
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    def ground_truth(self, image_id):
        h, w = self.sizes[image_id]
        out = []
        for k, (cat, x0, y0, x1, y1) in enumerate(self.boxes[image_id]):
            mask = np.zeros((h, w), np.uint8)
            mask[y0:y1, x0:x1] = 1
            rle = uisbench.masks.encode(mask)
            out.append(uisbench.GroundTruth(image_id * 10 + k, image_id, rle, uisbench.masks.to_bbox(rle), float(mask.sum()), 0, cat))
        return out

    def fingerprint(self):
        return "tiny"


def test_preprocess_geometry_and_normalisation(host):
    from PIL import Image

    rng = np.random.default_rng(3)
    bb = _build(host, "dino", **_vit_params(pretrained=False))
    mean, std = np.asarray(bb.preprocessing.mean), np.asarray(bb.preprocessing.std)
    for policy in ("square", "pad"):
        prep = uisbench.Preprocessing(bb.preprocessing.mean, bb.preprocessing.std, 64, 16, policy)
        bb.preprocessing = prep
        for hw in [(48, 80), (80, 48), (64, 64), (37, 101)]:
            image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
            h, w = prep.content_size(*hw)
            if policy == "square":
                assert (h, w) == (64, 64)
            else:
                assert max(h, w) == 64 and abs(h / w - hw[0] / hw[1]) < 0.05
            resized = np.asarray(Image.fromarray(image).resize((w, h), Image.LANCZOS), np.float32) / 255.0
            expected = np.zeros((64, 64, 3), np.float32)
            expected[:h, :w] = (resized - mean) / std
            ours = bb.preprocess(image)
            assert ours.shape == (3, 64, 64) and ours.dtype == torch.float32
            torch.testing.assert_close(ours, torch.from_numpy(expected).permute(2, 0, 1), atol=1e-5, rtol=0)
    with pytest.raises(uisbench.DataError, match="uint8"):
        bb.preprocess(np.zeros((8, 8), np.uint8))


def test_pad_policy_marks_valid_patches(host):
    ds = TinyDataset()
    bb = _build(host, "timm", **_vit_params(model=ARCH, pretrained=False, resize="pad"))
    pixels = torch.stack([bb.preprocess(ds.load_image(i)) for i in (1, 2)])
    fm_unbound = bb.extract(pixels, [1, 2])
    bb.bind(ds)
    fm = bb.extract(pixels, [1, 2])
    assert fm.valid.shape == (2, 4, 4) and fm.valid.dtype == torch.bool
    assert fm.valid[0].all() and fm.valid[1, :2].all() and not fm.valid[1, 2:].any()
    assert torch.equal(fm.valid, fm_unbound.valid)  # padding recognised from the pixels alone too


# ---------------------------------------------------------------------------------------------
# Calibration: oracle and pixels
# ---------------------------------------------------------------------------------------------


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def _instance_means(fm, index, ds, image_id, patch):
    """Mean feature of the patches fully inside each ground-truth box of one image."""
    out = []
    for _, x0, y0, x1, y1 in ds.boxes[image_id]:
        cell = fm.features[index, :, y0 // patch : y1 // patch, x0 // patch : x1 // patch]
        out.append(cell.reshape(cell.shape[0], -1).mean(1))
    return out


def test_oracle_separates_instances_only_with_instance_weight(host):
    ds = TinyDataset()
    sims = {}
    for weight in (0.0, 2.0):
        bb = _build(host, "oracle", instance_weight=weight, noise=0.01, size=64, patch_size=8)
        assert bb.calibration is True and host.spec("backbones", "oracle").calibration is True
        bb.bind(ds)
        pixels = torch.stack([bb.preprocess(ds.load_image(i)) for i in (1, 2)])
        fm = bb.extract(pixels, [1, 2])
        assert fm.features.shape == (2, 64, 8, 8) and torch.isfinite(fm.features).all()
        disc_a, disc_b, star = _instance_means(fm, 0, ds, 1, 8)
        sims[weight] = (_cos(disc_a, disc_b), _cos(disc_a, star))
        again = _build(host, "oracle", instance_weight=weight, noise=0.01, size=64, patch_size=8)
        again.bind(ds)
        assert torch.equal(again.extract(pixels, [1, 2]).features, fm.features)  # deterministic
    assert sims[0.0][0] > 0.99  # semantic: two discs look the same
    assert sims[2.0][0] < 0.5  # instance: two discs differ
    assert sims[0.0][1] < 0.5 and sims[2.0][1] < 0.5  # a disc and a star differ either way


def test_oracle_needs_ground_truth(host):
    bb = _build(host, "oracle", size=64, patch_size=8)
    with pytest.raises(uisbench.IncompatibleError, match="no ground truth"):  # skipped by design, not failed
        bb.bind(TinyDataset(has_ground_truth=False))
    with pytest.raises(uisbench.DataError, match="bind"):
        bb.extract(torch.zeros(1, 3, 64, 64), [1])


def test_oracle_follows_the_pad_policy(host):
    ds = TinyDataset()
    bb = _build(host, "oracle", instance_weight=1.0, noise=0.0, size=64, patch_size=8, resize="pad")
    bb.bind(ds)
    pixels = torch.stack([bb.preprocess(ds.load_image(i)) for i in (1, 2)])
    fm = bb.extract(pixels, [1, 2])
    # image 2 is 32 x 64 -> 32 x 64 content, rows 0..3 valid; its disc spans x 0..32 (patch cols 0..3), y 8..40 -> 4..20 (rows 0..2)
    assert fm.valid[1, :4].all() and not fm.valid[1, 4:].any()
    disc = fm.features[1, :, 1, 1]
    background = fm.features[1, :, 3, 6]
    assert _cos(disc, background) < 0.5
    assert _cos(fm.features[1, :, 1, 1], fm.features[1, :, 1, 2]) > 0.999


def test_oracle_on_synth_instances(host, registry):
    ds = host.spec("datasets", "synth-instances").build(split="val", images=6)
    stats = {}
    for name in ("oracle-semantic", "oracle-instance"):
        bb = registry.build("backbones", name, host)
        bb.bind(ds)
        sims = []
        for image_id in ds.image_ids():
            gts = ds.ground_truth(image_id)
            fm = bb.extract(bb.preprocess(ds.load_image(image_id))[None], [image_id])
            g = fm.features.shape[-1]
            means = []
            for gt in gts:
                m = uisbench.masks.decode(gt.segmentation)
                cover = torch.from_numpy(uisbench.masks.resize_mask(m, g, g)).bool()
                means.append(fm.features[0][:, cover].mean(1) if cover.any() else None)
            for i in range(len(gts)):
                for j in range(i + 1, len(gts)):
                    if gts[i].category == gts[j].category and means[i] is not None and means[j] is not None:
                        sims.append(_cos(means[i], means[j]))
        assert sims, "synth-instances val should hold images with two instances of one class"
        stats[name] = float(np.mean(sims))
    assert stats["oracle-semantic"] > 0.9 > 0.5 > stats["oracle-instance"]


def test_pixels_colour_position_histogram(host):
    bb = _build(host, "pixels", size=32, patch_size=8, histogram_bins=4)
    image = np.zeros((20, 40, 3), np.uint8)
    image[..., 0] = 255
    image[..., 2] = 64
    fm = bb.extract(bb.preprocess(image)[None], [7])
    f = fm.features[0]
    assert f.shape == (3 + 2 + 12, 4, 4)
    torch.testing.assert_close(f[:3, 0, 0], torch.tensor([1.0, 0.0, 64 / 255]), atol=1e-3, rtol=0)
    torch.testing.assert_close(f[3, 0], torch.tensor([0.125, 0.375, 0.625, 0.875]))  # x of patch centres
    torch.testing.assert_close(f[5:].reshape(3, 4, 4, 4).sum(1), torch.ones(3, 4, 4))  # each channel's bins sum to 1
    assert bb.provenance()["pretrained"] is False


# ---------------------------------------------------------------------------------------------
# Conformance: every installed backbone plugin
# ---------------------------------------------------------------------------------------------


def _tiny_config(spec):
    """A cheap configuration of any backbone plugin: tiny ViT for the ViT plugins, 64 px for the rest."""
    names = {p.name for p in spec.params}
    params = {}
    if spec.name in ("dino", "mae", "timm"):
        params = _vit_params(model={"dino": ARCH + ".dino", "mae": "vit_base_patch16_224.mae", "timm": ARCH}[spec.name])
    elif "size" in names:
        params["size"] = SIZE
        if "patch_size" in names:
            params["patch_size"] = 8
    return params


@pytest.mark.parametrize("name", _backbone_names())
def test_backbone_conformance(host, ckpt, offline, name):
    spec = host.spec("backbones", name)
    assert isinstance(spec, uisbench.BackboneSpec)
    params = _tiny_config(spec)
    has_pretrained = spec.param("pretrained") is not None
    if has_pretrained:
        if spec.param("pretrained").default is not False:
            # weights wanted but none here: unavailable, never a silent random init
            with pytest.raises(uisbench.BackboneUnavailable):
                spec.build(**params)
        if spec.param("weights") is not None and name in ("dino", "mae", "timm"):
            params["weights"] = str(ckpt[{"dino": "dino", "mae": "mae", "timm": "plain"}[name]])
        else:
            params["pretrained"] = False
    # the contract as uisbench.testing states it (a ViT's layer and normalisation mean are unbounded on purpose)
    uisbench.testing.check_backbone(spec, params, host=host, unbounded=("layer", "mean"))
    info = host.provider("backbones", name)
    if info is not None and info.builtin:  # a built-in also identifies its weights
        assert {"pretrained", "weights", "weights_sha256", "model"} <= set(spec.build(**params).provenance())


# ---------------------------------------------------------------------------------------------
# GPU (scripts/gpu_check.sh): bf16 extraction on CUDA
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_extraction_matches_cpu_fp32(host, ckpt):
    cpu = _build(host, "dino", **_vit_params(weights=str(ckpt["dino"])))
    gpu = _build(host, "dino", **{**_vit_params(weights=str(ckpt["dino"])), "precision": "auto"}).to("cuda")
    ref = cpu.extract(PIXELS, [1, 2]).features
    fm = gpu.extract(PIXELS.cuda(), [1, 2])
    assert fm.features.is_cuda and fm.features.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(fm.features.cpu().flatten(1), ref.flatten(1), dim=1)
    assert (cos > 0.99).all(), cos
    assert all(not m._forward_hooks for m in gpu.model.modules())
    # a real-sized random ViT-S/16 at 480 px in bf16
    big = _build(host, "timm", model=ARCH, pretrained=False, size=480).to("cuda")
    out = big.extract(torch.randn(4, 3, 480, 480, device="cuda"), [1, 2, 3, 4])
    assert out.features.shape == (4, 384, 30, 30) and torch.isfinite(out.features).all()
