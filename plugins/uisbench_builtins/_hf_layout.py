"""Hugging Face *transformers* folders (``config.json`` + ``model.safetensors``) as timm ViTs.

Private helper of :mod:`uisbench_builtins.timm_vit`: ``weights: FOLDER`` of the ``timm`` plugin and
``platform weights inspect FOLDER``. Vendors publish DINOv2 (``Dinov2Model``,
``Dinov2WithRegistersModel``), ViT-MAE (``ViTMAEModel``, ``ViTMAEForPreTraining``), CLIP
(``CLIPVisionModel``, ``CLIPModel``: its vision part) and SigLIP (``SiglipVisionModel``,
``SiglipModel``: its vision part) in that layout. Such a folder is read without transformers and
without unpickling anything: ``config.json`` as bounded, validated JSON and the weights with
safetensors (sharded ``model.safetensors.index.json`` too); its keys are renamed to timm's layout
(separate q/k/v projections -> one fused ``qkv``; CLIP's ``pre_layrnorm`` -> ``norm_pre``; SigLIP's
MAP head -> ``attn_pool``; DINOv2's registers as timm's ``reg_token`` with the CLS position folded
in, as timm's own ``_convert_dinov2`` does) and loaded strictly into the timm model the registry
entry names. That model must match the config: width, depth, patch size, MLP width, registers,
CLS token, layer scale (all from the weights' shapes) and the attention heads, activation and
LayerNorm epsilon (from ``config.json``, which the weights do not carry); a mismatch is a
:class:`uisbench.ConfigError` naming ``config.json`` and the ``model:``/``model_kwargs:`` that fit.
The epsilon is not a timm argument: the model's LayerNorms take the config's value (a load note).

So the ``transformers`` extra is needed only to *make* such folders (and by the tests, whose
reference is transformers' own forward); loading one needs timm and safetensors only.

The key conversion is in ``_hf_convert.py``. torch, timm and safetensors are imported inside functions
only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uisbench

from ._families import FAMILIES, Family
from ._hf_convert import convert_keys

__all__ = ["HFFolder", "read_folder", "timm_architecture", "inspect_folder"]

#: config.json and the shard index are small JSON; anything bigger is not one
_MAX_JSON_BYTES = 1 << 20
_MAX_SHARDS = 256
_SHARD_NAME = re.compile(r"[A-Za-z0-9_.-]+\.safetensors")

#: model_type -> (family, whose config is nested under ``vision_config``)
_MODEL_TYPES = {
    "dinov2": ("dinov2", False),
    "dinov2_with_registers": ("dinov2", False),
    "vit_mae": ("mae", False),
    "clip_vision_model": ("clip", False),
    "clip": ("clip", True),
    "siglip_vision_model": ("siglip", False),
    "siglip": ("siglip", True),
}

#: transformers' config defaults for the fields read here (a saved config leaves out defaults of a
#: nested ``vision_config``); tests/test_families_hf.py checks them against transformers' classes
DEFAULTS: dict[str, dict[str, Any]] = {
    "dinov2": {"num_attention_heads": 12, "hidden_act": "gelu", "layer_norm_eps": 1e-6},
    "dinov2_with_registers": {"num_attention_heads": 12, "hidden_act": "gelu", "layer_norm_eps": 1e-6},
    "vit_mae": {"num_attention_heads": 12, "hidden_act": "gelu", "layer_norm_eps": 1e-12},
    "clip_vision_model": {"num_attention_heads": 12, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
    "siglip_vision_model": {"num_attention_heads": 12, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6},
}

#: transformers' activation names -> timm's (same function: gelu_new and gelu_pytorch_tanh are the tanh form)
_ACTS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
         "silu": "silu", "swish": "silu"}

#: timm size names by width (SigLIP's so400m / giantopt widths included)
_SIZE_NAMES = {384: "small", 768: "base", 1024: "large", 1152: "so400m", 1280: "huge", 1536: "giant"}


def _json(path: Path, what: str) -> Any:
    problem = uisbench.io.regular_file_problem(path)
    if problem:
        raise uisbench.ConfigError(f"{what}: {path} {problem}; a transformers folder holds config.json and model.safetensors "
                                   "(as save_pretrained writes them).")
    if path.stat().st_size > _MAX_JSON_BYTES:
        raise uisbench.ConfigError(f"{what}: {path} is {path.stat().st_size} bytes, more than a config file ever is; check the folder.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise uisbench.ConfigError(f"{what}: {path} is not valid JSON ({err}); re-download it.") from err


def _field(cfg: Mapping[str, Any], defaults: Mapping[str, Any], name: str, kind: type, lo: float, hi: float, source: Path) -> Any:
    """``cfg[name]`` (transformers' default when left out), of ``kind`` within ``[lo, hi]`` (strings: any)."""
    value = cfg.get(name, defaults.get(name))
    if kind is str:
        if isinstance(value, str):
            return value
        raise uisbench.ConfigError(f"{source}: `{name}` is {value!r}; expected a string. Fix config.json.")
    number = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    if not (number and lo <= value <= hi):
        raise uisbench.ConfigError(f"{source}: `{name}` is {value!r}; expected {kind.__name__} in [{lo:g}, {hi:g}]. Fix config.json.")
    return kind(value)


@dataclass
class HFFolder:
    """A transformers folder read and converted to timm's layout (nothing of transformers imported)."""

    path: Path
    model_type: str
    family: Family
    #: the vision config's fields used here: heads, activation (timm's name), LayerNorm epsilon
    heads: int
    act: str
    eps: float
    #: timm-layout state dict of the vision backbone (its MAP head for SigLIP)
    state_dict: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    def sha256(self) -> str:
        """One digest of the config and the weights files (what ``weights_sha256`` records)."""
        h = hashlib.sha256()
        for f in [self.config_file, *self.files]:
            h.update(f"{f.name}\0{uisbench.io.file_sha256(f)}\n".encode())
        return h.hexdigest()

    def structure(self) -> dict[str, Any]:
        """The architecture the weights and config.json fix (compared with a timm model's :func:`_structure`)."""
        sd = self.state_dict
        w = sd["patch_embed.proj.weight"]
        return {
            "embed_dim": int(w.shape[0]),
            "depth": len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}),
            "num_heads": self.heads,
            "patch_size": int(w.shape[-1]),
            "mlp_hidden": int(sd["blocks.0.mlp.fc1.weight"].shape[0]),
            "reg_tokens": int(sd["reg_token"].shape[1]) if "reg_token" in sd else 0,
            "class_token": "cls_token" in sd,
            "layer_scale": "blocks.0.ls1.gamma" in sd,
            "qkv_bias": "blocks.0.attn.qkv.bias" in sd,
            "pre_norm": "norm_pre.weight" in sd,
            "map_head": "attn_pool.latent" in sd,
            "act": self.act,
        }

    def fit(self, net: Any, model_name: str) -> tuple[dict[str, Any], list[str]]:
        """The state dict for ``net`` (timm's filter and strict load follow in the plugin), after
        checking that ``net`` is the config's architecture; LayerNorms take the config's epsilon."""
        import torch

        problems = _differences(self.structure(), _structure(net))
        if problems:
            fix = _fix_text(self)
            raise uisbench.ConfigError(
                f"weights folder {self.path}: {self.config_file.name} and its weights describe another ViT than timm model "
                f"{model_name!r} ({'; '.join(problems)}). {fix} (`platform weights inspect {self.path}` prints the whole entry.)",
                problems,
            )
        notes = list(self.notes)
        changed = 0
        for m in net.modules():
            if isinstance(m, torch.nn.LayerNorm) and m.eps != self.eps:
                m.eps = self.eps
                changed += 1
        if changed:
            notes.append(f"LayerNorm epsilon set to config.json's layer_norm_eps {self.eps:g} ({changed} norms)")
        return dict(self.state_dict), notes


def _fix_text(folder: HFFolder) -> str:
    try:
        name, kwargs = timm_architecture(folder)
    except uisbench.ConfigError as err:
        return str(err)
    return f"Use model: {name}" + (f", model_kwargs: {json.dumps(kwargs)}" if kwargs else "") + "."


def read_folder(path: str | Path, family: Family | None = None, where: str = "") -> HFFolder:
    """Read a transformers folder: config.json (validated), the safetensors weights, converted to timm's layout.

    ``family``: the registry entry's ``family:``; it must be the folder's. Errors name the file and the fix.
    """
    path = Path(path)
    what = f"{where + ': ' if where else ''}weights folder {path}"
    config = _json(path / "config.json", what)
    if not isinstance(config, dict):
        raise uisbench.ConfigError(f"{path / 'config.json'}: a JSON object expected, got {type(config).__name__}; re-download it.")
    model_type = config.get("model_type")
    if model_type not in _MODEL_TYPES:
        raise uisbench.ConfigError(
            f"{path / 'config.json'}: model_type {model_type!r} is not a layout uisbench converts (it reads "
            f"{', '.join(sorted(_MODEL_TYPES))}); export the model with timm instead, or give its state dict as `weights:`."
        )
    fam_name, nested = _MODEL_TYPES[model_type]
    fam = FAMILIES[fam_name]
    if family is not None and family is not fam:
        raise uisbench.ConfigError(
            f"{what}: config.json says model_type {model_type!r} ({fam.title}), the entry says `family: {family.name}`; "
            f"write `family: {fam.name}` or drop it."
        )
    vision = config
    if nested:
        vision = config.get("vision_config") or {}
        if not isinstance(vision, dict):
            raise uisbench.ConfigError(f"{path / 'config.json'}: `vision_config` is not an object; re-download it.")
    defaults = DEFAULTS.get(model_type) or DEFAULTS[f"{model_type}_vision_model"]  # CLIPModel / SiglipModel: their vision config's
    source = path / "config.json"
    heads = _field(vision, defaults, "num_attention_heads", int, 1, 1024, source)
    act_name = _field(vision, defaults, "hidden_act", str, 0, 0, source)
    eps = _field(vision, defaults, "layer_norm_eps", float, 1e-20, 0.1, source)
    if act_name not in _ACTS:
        raise uisbench.ConfigError(f"{source}: hidden_act {act_name!r} has no timm counterpart here (known: {', '.join(sorted(_ACTS))}).")
    swiglu = bool(vision.get("use_swiglu_ffn", False))
    hf_sd, files = _read_weights(path, what)
    sd, notes = convert_keys(hf_sd, fam_name, swiglu, path)
    absent = [k for k in ("patch_embed.proj.weight", "pos_embed", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight") if k not in sd]
    if absent:
        raise uisbench.ConfigError(f"{what}: the weights lack {', '.join(absent)} (timm's names); not a whole {fam.title} vision model, re-download it.")
    width = int(sd["patch_embed.proj.weight"].shape[0])
    declared = vision.get("hidden_size")
    if declared is not None and declared != width:
        raise uisbench.ConfigError(f"{source}: hidden_size {declared} but the weights are {width} wide; the folder is mixed up, re-download it.")
    if width % heads:
        raise uisbench.ConfigError(f"{source}: num_attention_heads {heads} does not divide the width {width}; fix config.json.")
    folder = HFFolder(path, model_type, fam, heads, "silu" if swiglu else _ACTS[act_name], float(eps), sd, notes, files)
    depth = folder.structure()["depth"]
    declared_depth = vision.get("num_hidden_layers")
    if declared_depth is not None and declared_depth != depth:
        raise uisbench.ConfigError(f"{source}: num_hidden_layers {declared_depth} but the weights hold {depth} blocks; re-download the folder.")
    return folder


def _read_weights(path: Path, what: str) -> tuple[dict[str, Any], list[Path]]:
    """The folder's tensors: ``model.safetensors``, or the shards its index names, or (weights-only
    unpickler) ``pytorch_model.bin``."""
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if single.exists():
        files = [single]
    elif index.exists():
        data = _json(index, what)
        names = sorted(set((data.get("weight_map") or {}).values())) if isinstance(data, dict) and isinstance(data.get("weight_map"), dict) else []
        if not names or len(names) > _MAX_SHARDS or not all(isinstance(n, str) and _SHARD_NAME.fullmatch(n) for n in names):
            raise uisbench.ConfigError(f"{what}: {index.name} names no valid shard files (plain file names in this folder); re-download it.")
        files = [path / n for n in names]
    elif (path / "pytorch_model.bin").exists():
        sd = uisbench.weights.read_checkpoint(path / "pytorch_model.bin")
        if not isinstance(sd, Mapping):
            raise uisbench.ConfigError(f"{what}: pytorch_model.bin holds no state dict; re-download it.")
        return dict(sd), [path / "pytorch_model.bin"]
    else:
        raise uisbench.ConfigError(
            f"{what}: no model.safetensors (nor model.safetensors.index.json or pytorch_model.bin) next to config.json; "
            "copy the whole folder that save_pretrained wrote (or `hf download REPO --local-dir FOLDER`)."
        )
    sd: dict[str, Any] = {}
    for f in files:
        problem = uisbench.io.regular_file_problem(f)
        if problem:
            raise uisbench.ConfigError(f"{what}: weights file {f} {problem}; re-download the folder.")
        sd.update(uisbench.weights.read_checkpoint(f))  # safetensors: no code runs
    return sd, files


# ---------------------------------------------------------------------------------------------
# The timm model that matches
# ---------------------------------------------------------------------------------------------


def _act_name(module: Any) -> str | None:
    """Which of timm's activations ``module`` computes, found by value (timm has several GELU classes)."""
    import torch
    from timm.layers import get_act_layer

    if not isinstance(module, torch.nn.Module):
        return None
    x = torch.linspace(-5, 5, 101)
    with torch.no_grad():
        y = module(x)
        for name in ("gelu", "gelu_tanh", "quick_gelu", "silu"):
            if torch.allclose(get_act_layer(name)()(x), y, atol=1e-6, rtol=0):
                return name
    return None


def _structure(net: Any) -> dict[str, Any]:
    """The same fields as :meth:`HFFolder.structure`, read from a built timm ViT."""
    import torch

    if not hasattr(net, "blocks") or not hasattr(net, "patch_embed"):
        return {}
    blk = net.blocks[0]
    ps = getattr(net.patch_embed, "patch_size", None)
    attn, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
    qkv = getattr(attn, "qkv", None)
    fc1 = getattr(mlp, "fc1", None)  # other timm ViTs (EVA's SwiGLU ...) differ here: reported, never a crash
    return {
        "embed_dim": getattr(net, "embed_dim", None),
        "depth": len(net.blocks),
        "num_heads": getattr(attn, "num_heads", None),
        "patch_size": int(ps[0] if isinstance(ps, (tuple, list)) else ps) if ps is not None else None,
        "mlp_hidden": fc1.out_features if isinstance(fc1, torch.nn.Linear) else None,
        "reg_tokens": int(getattr(net, "num_reg_tokens", 0) or 0),
        "class_token": getattr(net, "cls_token", None) is not None,
        "layer_scale": not isinstance(getattr(blk, "ls1", torch.nn.Identity()), torch.nn.Identity),
        "qkv_bias": isinstance(qkv, torch.nn.Linear) and qkv.bias is not None,
        "pre_norm": not isinstance(getattr(net, "norm_pre", torch.nn.Identity()), torch.nn.Identity),
        "map_head": getattr(net, "attn_pool", None) is not None,
        "act": _act_name(getattr(mlp, "act", None)),
    }


_LABELS = {"embed_dim": "width", "depth": "depth", "num_heads": "attention heads", "patch_size": "patch size",
           "mlp_hidden": "MLP hidden width", "reg_tokens": "register tokens", "class_token": "CLS token",
           "layer_scale": "layer scale", "qkv_bias": "q/k/v bias", "pre_norm": "pre-norm (CLIP's pre_layrnorm)",
           "map_head": "MAP attention-pool head", "act": "activation"}


def _differences(want: Mapping[str, Any], have: Mapping[str, Any]) -> list[str]:
    if not have:
        return ["not a timm ViT (no blocks / patch_embed)"]
    return [f"{_LABELS[k]}: config/weights {want[k]}, timm model {have.get(k)}" for k in want if have.get(k) != want[k]]


def _base_name(folder: HFFolder, s: Mapping[str, Any]) -> str:
    import timm

    size = _SIZE_NAMES.get(s["embed_dim"], "base")
    p = s["patch_size"]
    fam = folder.family.name
    if fam == "dinov2":  # timm's only SwiGLU DINOv2 is the giant
        reg = "reg4_" if s["reg_tokens"] else ""
        candidates = [f"vit_giant_patch14_{reg}dinov2"] if s["act"] == "silu" else [f"vit_{size}_patch14_{reg}dinov2", f"vit_small_patch14_{reg}dinov2"]
    elif fam == "mae":
        candidates = [f"vit_{size}_patch{p}_224", f"vit_{size}_patch16_224", "vit_base_patch16_224"]
    elif fam == "clip":
        quick = "_quickgelu" if s["act"] == "quick_gelu" else ""
        candidates = [f"vit_{size}_patch{p}_clip{quick}_224", f"vit_base_patch{p}_clip{quick}_224", f"vit_base_patch16_clip{quick}_224"]
    else:
        gap = "" if s["map_head"] else "_gap"
        candidates = [n for n in sorted(timm.list_models(f"vit_{size}_patch{p}_siglip{gap}_*")) if re.fullmatch(rf"vit_{size}_patch{p}_siglip{gap}_\d+", n)]
        candidates += [f"vit_base_patch16_siglip{gap}_224"]
    name = next((n for n in candidates if timm.is_model(n)), None)
    if name is None:
        raise uisbench.ConfigError(f"weights folder {folder.path}: this timm has none of {', '.join(candidates)}; upgrade timm.")
    return name


def _meta_model(name: str, kwargs: Mapping[str, Any]) -> Any:
    import timm
    import torch

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost worth the name
        return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


def timm_architecture(folder: HFFolder) -> tuple[str, dict[str, Any]]:
    """``(timm model name, model_kwargs)`` whose model is the folder's architecture (built on the
    meta device to check); a :class:`uisbench.ConfigError` where timm has none."""
    want = folder.structure()
    name = _base_name(folder, want)
    have = _structure(_meta_model(name, {}))
    kwargs: dict[str, Any] = {}
    for key in ("embed_dim", "depth", "num_heads", "patch_size", "reg_tokens", "class_token", "qkv_bias", "pre_norm"):
        if have[key] != want[key]:
            kwargs[key] = want[key]
    if have["mlp_hidden"] != want["mlp_hidden"] or "embed_dim" in kwargs:
        # timm's fc1 has int(embed_dim * mlp_ratio) rows (a SwiGLU's both halves): the plain ratio where
        # that gives them back, else half a row of margin (6 digits)
        ratio = round(want["mlp_hidden"] / want["embed_dim"], 6)
        if int(want["embed_dim"] * ratio) != want["mlp_hidden"]:
            ratio = round((want["mlp_hidden"] + 0.5) / want["embed_dim"], 6)
        kwargs["mlp_ratio"] = ratio
    if have["layer_scale"] != want["layer_scale"]:
        kwargs["init_values"] = 1e-5 if want["layer_scale"] else None
    if have["act"] != want["act"]:
        kwargs["act_layer"] = want["act"]
    if "mlp_ratio" in kwargs and _structure(_meta_model(name, {k: v for k, v in kwargs.items() if k != "mlp_ratio"}))["mlp_hidden"] == want["mlp_hidden"]:
        del kwargs["mlp_ratio"]
    if "pre_norm" in kwargs:
        raise uisbench.ConfigError(f"weights folder {folder.path}: {'a' if want['pre_norm'] else 'no'} pre-norm, unlike timm's {name}; no timm model here fits.")
    problems = _differences(want, _structure(_meta_model(name, kwargs)))
    if problems:
        raise uisbench.ConfigError(f"weights folder {folder.path}: no timm model fits ({'; '.join(problems)} with {name} {kwargs}).", problems)
    return name, kwargs


def inspect_folder(path: str | Path) -> dict[str, Any]:
    """``platform weights inspect FOLDER``: what the folder holds and the registry entry that loads it
    (the keys of :func:`uisbench_builtins._family_inspect.inspect_entry`'s answer)."""
    path = Path(path)
    files = sorted(p.name for p in path.iterdir())[:12] if path.is_dir() else []
    info: dict[str, Any] = {"family": None, "top_level_keys": files}  # a folder's "top level": its files
    try:
        folder = read_folder(path)
        info["family"] = folder.family.name
        info["notes"] = [f"transformers folder, model_type {folder.model_type}", *folder.notes]
        s = folder.structure()
        info.update(kind="transformer", patch_size=s["patch_size"], depth=s["depth"], width=s["embed_dim"], heads=s["num_heads"],
                    cls_token=s["class_token"], registers=s["reg_tokens"])
        name, kwargs = timm_architecture(folder)
    except uisbench.UisbenchError as err:
        info["missing"] = str(err)
        return info
    fam = folder.family
    info["mean_std"] = f"{list(fam.mean)} / {list(fam.std)} ({fam.title}'s)"
    entry = fam.entry(weights=str(path), model=name, model_kwargs=kwargs)
    entry["size"] = max(s["patch_size"], round(int(entry.get("size", 480)) / s["patch_size"]) * s["patch_size"])
    info["entry"] = entry
    return info
