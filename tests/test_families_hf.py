"""Hugging Face *transformers* folders (``config.json`` + ``model.safetensors``) as ``weights:`` of the
``timm`` plugin (``plugins/uisbench_builtins/_hf_layout.py``).

For DINOv2 (with and without registers, and its SwiGLU variant), ViT-MAE, CLIP and SigLIP (the
vision model alone and the vision part of the two-tower model), a tiny random transformers model is
saved with ``save_pretrained``; ``platform weights inspect FOLDER`` prints the entry, the registry
accepts it, and the backbone it builds must agree with transformers' *own* forward
(``modeling_dinov2.py``, ``modeling_dinov2_with_registers.py``, ``modeling_vit_mae.py``,
``modeling_clip.py``, ``modeling_siglip.py``): the final hidden states, and the key facet against the
block's key projection (transformers' ``key`` / ``k_proj`` module) applied to the block's normed
input as transformers computes it. The loader itself never imports transformers: it is the
independent reference here, installed by the ``test`` extra.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

import uisbench
from helpers import weights_inspect

transformers = pytest.importorskip("transformers")

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


def _perturb(model) -> None:
    """Non-trivial norms, biases and layer scales (transformers initialises them to constants)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def _vision(model):
    """The vision transformer inside a saved class (CLIPModel/SiglipModel: vision_model; MAE pre-training: vit)."""
    return getattr(model, "vision_model", None) or getattr(model, "vit", None) or model


def _run(name, model, pixels):
    """transformers' forward: ``(final hidden states as timm's forward_features gives them, hidden_states)``."""
    base = _vision(model)
    kwargs = {}
    if name.startswith("mae"):  # ViTMAE shuffles and masks by random noise: ascending noise keeps every token in order
        n = (pixels.shape[-1] // base.config.patch_size) ** 2
        kwargs["noise"] = torch.arange(n, dtype=torch.float32).expand(len(pixels), n)
    with torch.no_grad():
        out = base(pixel_values=pixels, output_hidden_states=True, **kwargs)
    last = out.last_hidden_state
    if name.startswith("clip"):  # CLIP's post_layernorm is applied to the pooled token only; timm's norm to all
        last = base.post_layernorm(last)
    return last, out.hidden_states


def _layer_parts(name, model, i):
    """(the block's first norm, its key projection) as transformers' modules (transformers 4 and 5 name them differently)."""
    mods = dict(_vision(model).named_modules())
    layer = next(p for p in (f"encoder.layer.{i}", f"layers.{i}", f"encoder.layers.{i}") if p in mods)
    norm = next(mods[f"{layer}.{n}"] for n in ("norm1", "layernorm_before", "layer_norm1") if f"{layer}.{n}" in mods)
    key = next(mods[f"{layer}.{n}"] for n in ("attention.attention.key", "attention.k_proj", "self_attn.k_proj") if f"{layer}.{n}" in mods)
    return norm, key


def _cases():
    T = transformers
    cases = {
        # name: (model class, config, image size, prefix tokens (CLS + registers))
        "dinov2": (T.Dinov2Model, T.Dinov2Config(**TINY, image_size=56, patch_size=14), 56, 1),
        "dinov2_swiglu": (T.Dinov2Model, T.Dinov2Config(**{**TINY, "hidden_size": 48}, image_size=56, patch_size=14, use_swiglu_ffn=True), 56, 1),
        "mae": (T.ViTMAEModel, T.ViTMAEConfig(**TINY, image_size=64, patch_size=16, mask_ratio=0.0), 64, 1),
        "mae_pretraining": (T.ViTMAEForPreTraining, T.ViTMAEConfig(
            **TINY, image_size=64, patch_size=16, mask_ratio=0.0, decoder_hidden_size=16, decoder_num_hidden_layers=1,
            decoder_num_attention_heads=2, decoder_intermediate_size=32), 64, 1),
        "clip": (T.CLIPVisionModel, T.CLIPVisionConfig(**TINY, image_size=64, patch_size=16), 64, 1),
        "clip_two_tower": (T.CLIPModel, T.CLIPConfig(vision_config=dict(TINY, image_size=64, patch_size=16), projection_dim=16,
                                                     text_config=dict(TINY, num_hidden_layers=1, vocab_size=64, bos_token_id=0,
                                                                      eos_token_id=1, pad_token_id=1)), 64, 1),
        "siglip": (T.SiglipVisionModel, T.SiglipVisionConfig(**TINY, image_size=64, patch_size=16), 64, 0),
        "siglip_two_tower": (T.SiglipModel, T.SiglipConfig(vision_config=dict(TINY, image_size=64, patch_size=16),
                                                           text_config=dict(TINY, num_hidden_layers=1, vocab_size=64, bos_token_id=0,
                                                                            eos_token_id=1, pad_token_id=1)), 64, 0),
    }
    if hasattr(T, "Dinov2WithRegistersModel"):  # transformers >= 4.48
        cases["dinov2_registers"] = (T.Dinov2WithRegistersModel, T.Dinov2WithRegistersConfig(
            **TINY, image_size=56, patch_size=14, num_register_tokens=2), 56, 3)
    return cases


NAMES = ["dinov2", "dinov2_registers", "dinov2_swiglu", "mae", "mae_pretraining", "clip", "clip_two_tower", "siglip", "siglip_two_tower"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for name, (cls, config, size, prefix) in _cases().items():
            model = cls(config).eval()
            _perturb(model)
            model.save_pretrained(root / name)
            out[name] = (root / name, model, size, prefix)
    return out


def _entry(host, tmp_path, folder):
    """`platform weights inspect FOLDER`'s entry, loaded as `platform validate` loads a registry file."""
    code, out = weights_inspect(folder)
    assert code == 0, out
    mine = tmp_path / "mine.yaml"
    mine.write_text(out)
    from uisbench.cli import main

    assert main(["validate", str(mine)]) == 0  # the folder is a valid `weights:` path
    reg = uisbench.host.load_registry([str(mine)], host)
    ((entry_name, entry),) = yaml.safe_load(out)["backbones"].items()
    params = reg.resolved_params(reg.entry("backbones", entry_name), host)
    return entry, {k: v for k, v in params.items() if k not in ("plugin", "description")}


@pytest.mark.parametrize("name", NAMES)
def test_folder_loads_and_agrees_with_transformers(host, folders, tmp_path, name):
    if name not in folders:
        pytest.skip("this transformers has no Dinov2WithRegistersModel")
    folder, model, size, prefix = folders[name]
    entry, params = _entry(host, tmp_path, folder)
    family = {"dinov2": "dinov2", "mae": "mae", "clip": "clip", "siglip": "siglip"}[name.split("_")[0]]
    assert entry["family"] == family and entry["weights"] == str(folder)
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    last, hidden = _run(name, model, pixels)
    for layer in (0, 1):
        # built at the config's image size: no position-embedding resampling on either side
        bb = host.spec("backbones", "timm").build(**{**params, "size": size, "precision": "fp32", "layer": layer})
        prov = bb.provenance()
        assert prov["family"] == family and prov["pretrained"] and prov["prefix_tokens"] == prefix
        assert len(prov["weights_sha256"]) == 64
        if layer == 1:
            with torch.no_grad():
                torch.testing.assert_close(bb.model.forward_features(pixels), last, atol=1e-5, rtol=0)
        fm = bb.extract(pixels, [1, 2])
        norm, key = _layer_parts(name, model, layer)
        with torch.no_grad():  # hidden_states[layer] is what encoder layer `layer` receives
            k = torch.nn.functional.linear(norm(hidden[layer]), key.weight, key.bias)[:, prefix:]
        g = size // bb.patch_size
        torch.testing.assert_close(fm.features, k.reshape(2, g, g, -1).permute(0, 3, 1, 2), atol=1e-5, rtol=0)


def test_parts_of_other_networks_are_left_out_and_noted(host, folders, tmp_path):
    _, params = _entry(host, tmp_path, folders["clip_two_tower"][0])
    bb = host.spec("backbones", "timm").build(**{**params, "size": 64, "precision": "fp32"})
    notes = " ".join(bb.load_notes)
    assert "took 'vision_model.'" in notes and "text_model" in notes and "visual_projection" in notes
    _, params = _entry(host, tmp_path, folders["mae_pretraining"][0])
    bb = host.spec("backbones", "timm").build(**{**params, "size": 64, "precision": "fp32"})
    assert "left out decoder" in " ".join(bb.load_notes)
    assert "LayerNorm epsilon set to config.json's layer_norm_eps 1e-12" in " ".join(bb.load_notes)  # ViTMAEConfig's default


def test_defaults_match_transformers_config_classes():
    """A saved nested vision_config may leave defaults out: the loader's table must be transformers'."""
    from uisbench_builtins._hf_layout import DEFAULTS

    classes = {"dinov2": "Dinov2Config", "dinov2_with_registers": "Dinov2WithRegistersConfig", "vit_mae": "ViTMAEConfig",
               "clip_vision_model": "CLIPVisionConfig", "siglip_vision_model": "SiglipVisionConfig"}
    for model_type, fields in DEFAULTS.items():
        cls = getattr(transformers, classes[model_type], None)
        if cls is None:
            continue
        config = cls()
        assert config.model_type == model_type
        assert {k: getattr(config, k) for k in fields} == fields, model_type


def _copy(folders, name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(folders[name][0], dst)
    return dst


def test_wrong_heads_fail_naming_config_json_and_the_fix(host, folders, tmp_path):
    folder = _copy(folders, "dinov2", tmp_path)
    _, params = _entry(host, tmp_path, folder)
    timm_bb = host.spec("backbones", "timm")
    # the entry's model with another head count: the weights would load, the attention would be wrong
    wrong = {**params, "model_kwargs": {**params["model_kwargs"], "num_heads": 2}, "size": 56}
    with pytest.raises(uisbench.ConfigError, match=r"config\.json .*attention heads: config/weights 4, timm model 2.*Use model: vit_\w+dinov2, model_kwargs: .*\"num_heads\": 4"):
        timm_bb.build(**wrong)
    # config.json saying 8 heads (width 32): the entry written for 4 no longer fits
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "num_attention_heads": 8}))
    with pytest.raises(uisbench.ConfigError, match=r"attention heads: config/weights 8, timm model 4.*\"num_heads\": 8"):
        timm_bb.build(**{**params, "size": 56})
    (folder / "config.json").write_text(json.dumps({**cfg, "num_attention_heads": 5}))
    with pytest.raises(uisbench.ConfigError, match=r"config\.json: num_attention_heads 5 does not divide the width 32; fix config\.json"):
        timm_bb.build(**{**params, "size": 56})
    (folder / "config.json").write_text(json.dumps({**cfg, "num_attention_heads": "four"}))
    with pytest.raises(uisbench.ConfigError, match=r"config\.json: `num_attention_heads` is 'four'; expected int"):
        timm_bb.build(**{**params, "size": 56})


def test_missing_files_and_wrong_family_fail_with_the_fix(host, folders, tmp_path):
    folder = _copy(folders, "siglip", tmp_path)
    _, params = _entry(host, tmp_path, folder)
    timm_bb = host.spec("backbones", "timm")
    with pytest.raises(uisbench.ConfigError, match=r"model_type 'siglip_vision_model' \(SigLIP\), the entry says `family: clip`; write `family: siglip`"):
        timm_bb.build(**{**params, "family": "clip", "size": 64})
    (folder / "model.safetensors").unlink()
    with pytest.raises(uisbench.ConfigError, match=r"weights folder .*siglip: no model\.safetensors .* copy the whole folder"):
        timm_bb.build(**{**params, "size": 64})
    code, out = weights_inspect(folder)
    assert code == 1 and "# missing:" in out and "no model.safetensors" in out
    (folder / "config.json").unlink()
    with pytest.raises(uisbench.ConfigError, match=r"is not a regular file \(a folder\) \(a Hugging Face transformers folder holds config\.json and model\.safetensors\)"):
        timm_bb.build(**{**params, "size": 64})
    code, out = weights_inspect(folder)
    assert code == 1 and "config.json not found; a transformers folder holds config.json and model.safetensors" in out


def test_unknown_keys_are_refused_not_dropped(host, folders, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(folders, "mae", tmp_path)
    _, params = _entry(host, tmp_path, folder)
    sd = load_file(str(folder / "model.safetensors"))
    save_file({**sd, "encoder.layer.0.attention.attention.extra_gate.weight": torch.zeros(2)}, str(folder / "model.safetensors"))
    with pytest.raises(uisbench.ConfigError, match=r"1 weights of an unknown layout \(encoder\.layer\.0\.attention\.attention\.extra_gate\.weight\)"):
        host.spec("backbones", "timm").build(**{**params, "size": 64})


def test_sharded_and_bin_folders_load_the_same_weights(host, folders, tmp_path):
    """``model.safetensors.index.json`` + shards (large models), and ``pytorch_model.bin`` (older
    exports, read with the weights-only unpickler) give the same model as ``model.safetensors``."""
    from safetensors.torch import load_file, save_file

    _, params = _entry(host, tmp_path, folders["clip"][0])
    build = host.spec("backbones", "timm").build
    reference = build(**{**params, "size": 64, "precision": "fp32"}).model.state_dict()
    sd = load_file(str(folders["clip"][0] / "model.safetensors"))
    keys = sorted(sd)
    sharded = _copy(folders, "clip", tmp_path)
    (sharded / "model.safetensors").unlink()
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2], "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    for name, part in halves.items():
        save_file({k: sd[k] for k in part}, str(sharded / name))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: n for n, part in halves.items() for k in part}}))
    binary = tmp_path / "clip_bin"
    shutil.copytree(sharded, binary)
    for name in [*halves, "model.safetensors.index.json"]:
        (binary / name).unlink()
    torch.save(sd, binary / "pytorch_model.bin")
    for folder in (sharded, binary):
        loaded = build(**{**params, "weights": str(folder), "size": 64, "precision": "fp32"}).model.state_dict()
        assert set(loaded) == set(reference)
        for k, v in reference.items():
            torch.testing.assert_close(loaded[k], v, atol=0, rtol=0, msg=f"{folder.name}: {k}")
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../elsewhere.safetensors"}}))
    with pytest.raises(uisbench.ConfigError, match=r"model\.safetensors\.index\.json names no valid shard files"):
        build(**{**params, "weights": str(sharded), "size": 64})
