"""``timm``: any timm Vision Transformer (or CNN) by name, with its weights: a vendor with a
timm-compatible model needs only a registry entry, no code::

    backbones:
      acme-vitb16:
        plugin: timm
        model: vit_base_patch16_224      # any timm ViT name, with or without a weights tag
        weights: /models/acme_vitb16.pth  # timm's layout, an SSL family's official file (_families.py),
                                          # or a Hugging Face transformers folder (_hf_layout.py)

The ViT machinery here is public: the ``dino`` and ``mae`` plugins are this plugin with their own
default model and choices (:class:`TimmViT`, :func:`vit_params`, :func:`check_vit_params`).

A ViT backbone is a timm model built at the chosen square input side (position embeddings are
resampled once, when the weights are loaded, by timm's own checkpoint filter). Its features are one
*facet* of one block:

- ``key`` / ``query`` / ``value``: the attention's projection of the block's normed input, heads
  concatenated (what MaskCut and deep spectral methods use). It is computed here from the block's own
  weights on the input ``blocks[layer].attn`` receives (a forward pre-hook, removed after every
  batch), so it is the same quantity for every attention layout timm has: a fused ``qkv`` Linear
  (ViT, DINOv2, CLIP, SigLIP, SAM), a fused weight with separate q/k/v biases applied through
  ``F.linear`` (EVA-02, DINOv3 ``_qkvb``: a hook on ``attn.qkv`` never fires there), or separate
  ``q_proj``/``k_proj``/``v_proj``. It is the projection itself: before any q/k norm and before the
  rotary position embedding (RoPE) of EVA-02 and DINOv3;
- ``token``: the output tokens of ``blocks[layer]`` after the final norm (SAM: after its neck);
- ``stage`` (CNNs such as ResNet-50 and ConvNeXt): the output of stage ``layer`` of timm's
  ``feature_info`` (ResNet: 0 = stem at stride 2, ..., 3 = C4 at stride 16, 4 = C5 at stride 32);
  the stage's stride plays the patch size.

Prefix tokens (CLS, registers, DINOv3's storage tokens) are counted by the model itself (timm's
``num_prefix_tokens``; none for SigLIP, I-JEPA and SAM, whose blocks work on a ``(B, H, W, C)``
grid) and dropped; the tokens are laid out as a ``(B, C, h, w)`` grid. SAM's windowed blocks see
padded windows: they are put back on the grid and the padding cropped away. Weights come from a local file (``weights: PATH``, read with
:func:`uisbench.weights.read_checkpoint`) or timm's Hugging Face hub download when online; offline
without them the factory raises :class:`uisbench.BackboneUnavailable` saying which file to get.
Random initialisation only happens with an explicit ``pretrained: false``.

torch, timm, safetensors and huggingface_hub are imported inside functions only.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uisbench

from ._families import FAMILIES, backbone_state_dict, check_model, family_named, inspect_entry, recognise, weights_dir
from ._hf_layout import HFFolder, inspect_folder, read_folder

if TYPE_CHECKING:
    import torch

__all__ = [
    "FACETS",
    "PRECISIONS",
    "TimmViT",
    "vit_params",
    "check_vit_params",
    "vit_spec",
    "load_weights",
    "hub_weights",
    "cached_weights",
    "offline",
    "autocast_context",
]

FACETS = ("key", "query", "value", "token", "stage")
#: the facets of a transformer's blocks; a CNN has only ``stage``
BLOCK_FACETS = ("key", "query", "value", "token")
_QKV_INDEX = {"query": 0, "key": 1, "value": 2}
PRECISIONS = ("auto", "fp32", "bf16")
_INIT_SEED = 0


# ---------------------------------------------------------------------------------------------
# Parameters shared by the ViT plugins
# ---------------------------------------------------------------------------------------------


def vit_params(model_default: Any, model_help: str, model_choices: tuple[str, ...] | None = None) -> tuple[uisbench.Param, ...]:
    """The parameters of the ``dino``, ``mae`` and ``timm`` plugins (they differ only in ``model``)."""
    P = uisbench.Param
    return (
        P("model", "str", model_default, model_help, choices=model_choices),
        P("weights", "path", None, "local checkpoint (.pth/.bin/.safetensors); official SSL layouts are recognised and unwrapped"),
        P("family", "str", None, "the SSL family whose official file layout `weights` has (null: recognised from the file); "
          "sets the normalisation and checks the head count", choices=tuple(FAMILIES), nullable=True),
        P("pretrained", "bool", True, "false = random initialisation on purpose (recorded in every result)"),
        P("facet", "str", "key", "which features: attention key/query/value of the block, its output token, or a CNN's stage", choices=FACETS),
        # layer: its range is the model's depth, known once timm has built it (the factory checks it)
        P("layer", "int", -1, "block (CNN: stage) whose features are taken; negative counts from the end (-1 = last)"),
        P("size", "int", 480, "square input side in pixels (a multiple of the patch size)", ge=1),
        P("resize", "str", "square", "square: stretch to size x size (MaskCut); pad: keep aspect ratio, pad", choices=uisbench.grid.RESIZE_POLICIES),
        P("mean", "list[float]", None, "RGB normalisation mean; null = the weights' timm pretrained_cfg"),
        P("std", "list[float]", None, "RGB normalisation std; null = the weights' timm pretrained_cfg", gt=0),
        P("precision", "str", "auto", "auto: bf16 autocast on CUDA, fp32 on CPU; fp32 or bf16 to force", choices=PRECISIONS),
        P("model_kwargs", "dict", None, "extra timm.create_model arguments (architecture overrides such as depth)"),
    )


#: timm.create_model arguments the plugin's own parameters decide
_RESERVED_KWARGS = ("pretrained", "img_size", "num_classes", "pretrained_cfg_overlay")
_PATCH_IN_NAME = re.compile(r"patch(\d+)")


def check_vit_params(params: Mapping[str, Any]) -> Iterator[tuple[str | None, str]]:
    """Parameter problems the ViT factory would raise, found without timm (``platform validate``)."""
    kwargs = params.get("model_kwargs") or {}
    clash = sorted(set(kwargs) & set(_RESERVED_KWARGS))
    if clash:
        yield "model_kwargs", f"may not set {', '.join(clash)}; use the plugin's own parameters (size:, pretrained:, weights:)"
    if params.get("weights") is not None and params.get("pretrained") is False:
        yield "pretrained", f"`pretrained: false` contradicts `weights: {params['weights']}`; drop one"
    for name in ("mean", "std"):
        value = params.get(name)
        if value is not None and len(value) != 3:
            yield name, f"must be three numbers (R, G, B), got {list(value)}"
    yield from _check_facet(str(params.get("model") or ""), params.get("facet"))
    fam = FAMILIES.get(params.get("family") or "")
    kind = architecture_kind(str(params.get("model") or "")) if fam is not None else None
    if fam is not None and kind is not None and kind != fam.kind:
        yield "family", f"{fam.title} files hold a {fam.kind}, {params.get('model')} is a {kind}; use e.g. model: {fam.model}"
    found = _PATCH_IN_NAME.search(str(params.get("model") or ""))
    patch = kwargs.get("patch_size", int(found.group(1)) if found else None)
    size = params.get("size")
    if isinstance(patch, int) and patch > 0 and isinstance(size, int):
        yield from uisbench.grid.check_grid_params({"size": size, "patch_size": patch})


#: timm modules whose models are transformers with ``blocks[i].attn`` / CNNs with stages: what
#: `platform validate` knows without building the model (others are found out when it is built)
_TRANSFORMER_MODULES = frozenset({"vision_transformer", "eva", "vision_transformer_sam", "deit", "beit"})
_CNN_MODULES = frozenset({"resnet", "convnext", "resnetv2", "regnet", "efficientnet", "mobilenetv3", "densenet", "vgg"})


def architecture_kind(model: str) -> str | None:
    """``"transformer"``, ``"cnn"`` or ``None`` (unknown name or module) for a timm model name,
    from the module that registers it: no model is built."""
    try:
        import timm

        module = timm.models.model_entrypoint(model.split(".")[0]).__module__.rsplit(".", 1)[-1]
    except Exception:  # unknown name: the factory says so with suggestions
        return None
    return "transformer" if module in _TRANSFORMER_MODULES else "cnn" if module in _CNN_MODULES else None


def _facet_problem(model: str, kind: str, facet: str | None) -> str | None:
    if kind == "cnn" and facet in BLOCK_FACETS:
        return (f"{model} is a CNN: it has no attention {facet}s or tokens; use facet: stage "
                "(layer: -1 = the last stage at stride 32, -2 = the one before at stride 16)")
    if kind == "transformer" and facet == "stage":
        return f"{model} is a transformer: it has no CNN stages; use facet: key (attention keys) or token"
    return None


def _check_facet(model: str, facet: str | None) -> Iterator[tuple[str | None, str]]:
    if not model or facet is None:
        return
    problem = _facet_problem(model, architecture_kind(model) or "", facet)
    if problem:
        yield "facet", problem


def autocast_context(device_type: str, precision: str):
    """bf16 autocast on CUDA (``auto``/``bf16``), on CPU only when ``bf16`` is asked; else a no-op."""
    import torch

    if precision == "bf16" or (precision == "auto" and device_type == "cuda"):
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def load_weights(model: Any, state_dict: dict[str, Any], source: str, model_name: str) -> list[str]:
    """Convert ``state_dict`` with timm's checkpoint filter of ``model``'s family and load it strictly.

    Missing keys, unexpected keys and shape mismatches are all listed in one :class:`uisbench.ConfigError`.
    """
    notes: list[str] = []
    family = sys.modules.get(type(model).__module__)
    filter_fn = getattr(family, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state_dict = filter_fn(state_dict, model)
        except Exception as err:
            raise uisbench.ConfigError(
                f"weights file {source}: timm's {family.__name__}.checkpoint_filter_fn could not convert it for "
                f"{model_name!r} ({type(err).__name__}: {err}); check that `model:` names the architecture it was trained with."
            ) from err
        notes.append(f"converted by {family.__name__}.checkpoint_filter_fn")
    expected = model.state_dict()
    # the classifier timm names in the model's cfg (ViT: head, ResNet: fc, ConvNeXt: head.fc), built without one
    classifier = str((getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head")
    for name in dict.fromkeys((classifier.split(".")[0], "head")):
        if not any(k.startswith(name + ".") for k in expected) and any(k.startswith(name + ".") for k in state_dict):
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(name + ".")}
            notes.append(f"dropped the classification/projection head '{name}' (features only)")
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        problems = (
            [f"missing key {k}" for k in missing]
            + [f"unexpected key {k}" for k in unexpected]
            + [f"shape mismatch {s}" for s in shapes]
        )

        def show(items: list[str]) -> str:
            return ", ".join(items[:12]) + (f" ... ({len(items)} in all)" if len(items) > 12 else "")

        parts = [f"weights file {source} does not fit timm model {model_name!r}:"]
        if missing:
            parts.append(f"missing keys: {show(missing)};")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)};")
        if shapes:
            parts.append(f"shape mismatches: {show(shapes)};")
        parts.append("check that `model:` (and `model_kwargs:`) name the architecture this checkpoint was trained with.")
        raise uisbench.ConfigError(" ".join(parts), problems)
    model.load_state_dict(state_dict, strict=True)
    return notes


# ---------------------------------------------------------------------------------------------
# Hub weights: cache first, never hang offline
# ---------------------------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}


def offline() -> bool:
    """True when downloads are disabled (HF_HUB_OFFLINE, UISBENCH_OFFLINE) or the hub does not answer fast."""
    for var in ("UISBENCH_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return True
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return True
        endpoint = constants.ENDPOINT
    except Exception:
        endpoint = "https://huggingface.co"
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False  # behind a proxy a direct probe proves nothing; a failed download is reported instead
    host = urlparse(endpoint).hostname or "huggingface.co"
    port = urlparse(endpoint).port or 443
    result: list[bool] = []

    def probe() -> None:
        import socket

        try:
            socket.create_connection((host, port), timeout=3).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(4.0)  # DNS lookups ignore socket timeouts; never wait longer than this
    return not (result and result[0])


def _hub_candidates(cfg: Mapping[str, Any]) -> list[str]:
    name = cfg.get("hf_hub_filename")
    return [name] if name else ["model.safetensors", "pytorch_model.bin"]


def cached_weights(cfg: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(path, label)`` of weights already on disk: the Hugging Face cache or torch hub's cache."""
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub is a timm dependency
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            for filename in _hub_candidates(cfg):
                found = try_to_load_from_cache(hub_id, filename)
                if isinstance(found, str) and os.path.isfile(found):
                    return found, f"hf-hub:{hub_id}/{filename}"
    url = cfg.get("url")
    if url:
        from urllib.parse import urlparse

        import torch

        local = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if local.is_file():
            return str(local), url
    return None


def missing_weights_message(model_name: str, plugin: str, cfg: Mapping[str, Any], reason: str) -> str:
    hub_id = cfg.get("hf_hub_id")
    url = cfg.get("url")
    gets = []
    if hub_id:
        gets.append(f"{hub_id}/{_hub_candidates(cfg)[0]} (https://huggingface.co/{hub_id})")
    if url:
        gets.append(f"the original checkpoint {url}")
    filename = os.path.basename(url) if url else _hub_candidates(cfg)[0]
    return (
        f"Backbone {model_name!r}: no weights on this machine ({reason}). Get "
        + " or ".join(gets)
        + ", then name the file in a registry file passed with `--registry mine.yaml`:\n"
        f"  version: 1\n  backbones:\n    my-{plugin}:\n      plugin: {plugin}\n      model: {model_name}\n"
        f"      weights: /path/to/{filename}\n"
        + (f"(or fill the Hugging Face cache: `hf download {hub_id}`). " if hub_id else "")
        + "Write `pretrained: false` only to score random weights on purpose."
    )


def hub_weights(model_name: str, plugin: str, cfg: Mapping[str, Any]) -> tuple[str, str]:
    """``(path, label)`` of timm's pretrained weights for ``cfg``: cached, else downloaded when online."""
    if not cfg.get("hf_hub_id") and not cfg.get("url"):
        raise uisbench.BackboneUnavailable(
            f"Backbone {model_name!r}: timm knows no pretrained weights for this name. Give `weights: PATH` "
            "(a local checkpoint) or write `pretrained: false` for random initialisation on purpose."
        )
    found = cached_weights(cfg)
    if found:
        return found
    if offline():
        raise uisbench.BackboneUnavailable(missing_weights_message(model_name, plugin, cfg, "offline, not in the cache"))
    hub_id = cfg.get("hf_hub_id")
    try:
        if hub_id:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            last: Exception | None = None
            for filename in _hub_candidates(cfg):
                try:
                    return hf_hub_download(hub_id, filename), f"hf-hub:{hub_id}/{filename}"
                except EntryNotFoundError as err:
                    last = err
            raise last or FileNotFoundError(hub_id)
        from urllib.parse import urlparse

        import torch

        dst = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg["url"]).path)
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(cfg["url"], str(dst), progress=False)
        return str(dst), cfg["url"]
    except uisbench.UisbenchError:
        raise
    except Exception as err:
        raise uisbench.BackboneUnavailable(
            missing_weights_message(model_name, plugin, cfg, f"download failed: {type(err).__name__}: {err}")
        ) from err


# ---------------------------------------------------------------------------------------------
# The backbone
# ---------------------------------------------------------------------------------------------


class _StopForward(Exception):
    """Raised by the attention pre-hook once it has what it needs: the rest of the network is not run."""


class TimmViT(uisbench.GridBackbone):
    """A timm Vision Transformer giving one facet of one block as a ``(B, C, h, w)`` patch grid.

    ``model`` is a timm name, with its weights tag (``vit_small_patch16_224.dino``) or without.
    ``self.model`` is the timm module (eval mode, no gradients).
    """

    def __init__(
        self,
        *,
        model: str,
        weights: str | None = None,
        pretrained: bool = True,
        facet: str = "key",
        layer: int = -1,
        size: int = 480,
        resize: str = "square",
        precision: str = "auto",
        model_kwargs: Mapping[str, Any] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        family: str | None = None,
        plugin: str = "timm",
    ) -> None:
        try:
            import timm
        except ImportError as err:  # pragma: no cover - timm is a dependency
            raise uisbench.PluginError("the ViT backbones need timm: pip install 'timm>=1.0.9'") from err

        where = f"backbone {plugin} ({model})"
        # types, choices and bounds as declared (vit_params), then the combinations: what `platform validate` checks
        uisbench.complete_params(where, vit_params(uisbench.REQUIRED, "timm model name"), dict(
            model=model, weights=None if weights is None else os.fspath(weights), pretrained=pretrained, facet=facet,
            layer=layer, size=size, resize=resize, precision=precision,
            model_kwargs=None if model_kwargs is None else dict(model_kwargs),
            mean=None if mean is None else list(mean), std=None if std is None else list(std), family=family,
        ), check_vit_params)
        kwargs = dict(model_kwargs or {})

        self.model_name = model
        self.plugin = plugin
        self.facet = facet
        self.precision = precision
        self.model_kwargs = kwargs

        if not timm.is_model(model.split(".")[0]):
            known = set(timm.list_models()) | set(timm.list_pretrained())
            raise uisbench.UnknownNameError(
                "timm model", model, known, hint="`python -c \"import timm; print(timm.list_pretrained('vit*'))\"` lists ViTs."
            )
        try:
            cfg_obj = timm.models.get_pretrained_cfg(model)
        except RuntimeError as err:  # an unknown weights tag
            arch = model.split(".")[0]
            raise uisbench.UnknownNameError(
                "timm weights tag", model, timm.list_pretrained(arch + ".*"), hint=f"timm says: {err}"
            ) from err
        cfg = cfg_obj.to_dict() if cfg_obj is not None else {}

        # -- weights, in order: local file, timm's hub (cache, then download); random init only when asked
        # for. Resolved before the model is built, so a missing file costs nothing.
        weights_path: Path | None = None
        self.weights_source = "random-init"
        fam = family_named(family) if family else None
        if weights is not None:
            weights_path = Path(os.path.expandvars(str(weights))).expanduser()
            problem = uisbench.io.regular_file_problem(weights_path)  # a FIFO or /dev/zero is refused unopened
            hf_folder = weights_path.is_dir() and (weights_path / "config.json").is_file()  # transformers' layout: _hf_layout
            if problem and problem != "not found" and not hf_folder:
                hint = " (a Hugging Face transformers folder holds config.json and model.safetensors)" if weights_path.is_dir() else ""
                raise uisbench.ConfigError(f"{where}: weights file {weights_path} {problem}{hint}; fix `weights:` in your registry file.")
            if not weights_path.is_file() and not hf_folder:
                if fam is not None:  # an official release named by the registry: not on this machine yet
                    raise uisbench.BackboneUnavailable(
                        f"Backbone {model!r} ({fam.title}): weights file {weights_path} is not on this machine. Get "
                        f"{fam.official} from {fam.url} and put it there (or point `weights:` at your copy)."
                    )
                raise uisbench.ConfigError(f"{where}: weights file {weights_path} not found; fix `weights:` in your registry file.")
            self.weights_source = "file"
        elif pretrained and fam is not None and "." not in model:
            # a family entry with an untagged timm name: the family's official file, from the weights folder
            weights_path = weights_dir() / fam.official
            if not weights_path.is_file():
                raise uisbench.BackboneUnavailable(
                    f"{fam.title} official file {fam.official} is not in {weights_dir()} ($UISBENCH_WEIGHTS_DIR): get it "
                    f"from {fam.url} and put it there, or name your copy with `weights: PATH` (model {model})."
                )
            self.weights_source = "file"
        elif pretrained:
            path_str, self.weights_source = hub_weights(model, plugin, cfg)
            weights_path = Path(path_str)

        checkpoint = None
        if weights_path is not None:
            # read first (no code runs: uisbench.weights.read_checkpoint): its family decides the normalisation
            if weights_path.is_dir():  # checked above: it holds config.json
                checkpoint = read_folder(weights_path, fam, where)  # its config.json names the family
            else:
                checkpoint = uisbench.weights.read_checkpoint(weights_path, npz=True)  # a .npz: its arrays' shapes (load_npz)
            fam = fam or getattr(checkpoint, "family", None) or recognise(checkpoint)
        self.family = fam

        net = self._create(timm, model, size, kwargs, where)
        kind = "transformer" if hasattr(net, "blocks") and hasattr(getattr(net, "patch_embed", None), "patch_size") else (
            "cnn" if getattr(net, "feature_info", None) and hasattr(net, "forward_intermediates") else None
        )
        if kind is None:
            raise uisbench.ConfigError(
                f"{where}: neither a ViT (blocks, patch_embed) nor a CNN with feature_info stages; the timm plugin takes those."
            )
        problem = _facet_problem(model, kind, facet)
        if problem:
            raise uisbench.ConfigError(f"{where}: {problem}.")
        self.kind = kind
        if kind == "cnn":
            stages = list(net.feature_info)
            depth = len(stages)
            if not -depth <= layer < depth:
                raise uisbench.ConfigError(f"{where}: stage {layer} is out of range for {depth} stages (use -{depth}..{depth - 1}).")
            patch = int(stages[layer % depth]["reduction"])  # the stage's stride
        else:
            ps = net.patch_embed.patch_size
            ps = tuple(ps) if isinstance(ps, (tuple, list)) else (ps, ps)
            if ps[0] != ps[1]:
                raise uisbench.ConfigError(f"{where}: non-square patches {ps} are not supported.")
            patch = int(ps[0])
            depth = len(net.blocks)
        net_cfg = dict(getattr(net, "pretrained_cfg", None) or cfg)
        # explicit > the family's (an untagged timm name's cfg says 0.5 for weights trained with ImageNet's) > timm's cfg
        mean = tuple(float(v) for v in (mean if mean is not None else fam.mean if fam else net_cfg.get("mean", (0.485, 0.456, 0.406))))
        std = tuple(float(v) for v in (std if std is not None else fam.std if fam else net_cfg.get("std", (0.229, 0.224, 0.225))))
        super().__init__(size=size, patch_size=patch, resize=resize, mean=mean, std=std, where=where)
        if not -depth <= layer < depth:
            raise uisbench.ConfigError(f"{where}: layer {layer} is out of range for {depth} blocks (use -{depth}..{depth - 1}).")
        self.layer = layer % depth
        self._last = self.layer == depth - 1
        if facet in _QKV_INDEX:
            _projection(net.blocks[self.layer].attn, facet, where, self.layer)  # a ConfigError now, not at the first batch
        elif facet == "token" and not self._last and not hasattr(net, "forward_intermediates"):
            raise uisbench.ConfigError(f"{where}: this timm model has no forward_intermediates; use the last layer.")
        # From the model, never guessed: CLS + registers (+ DINOv3's storage tokens) for timm's ViTs and
        # EVAs, 0 for SigLIP and I-JEPA (no CLS token). SAM's blocks keep a (B, H, W, C) grid: no
        # attribute, no prefix tokens. A token sequence of a model without the attribute is refused in extract.
        prefix = getattr(net, "num_prefix_tokens", None)
        grid_tokens = kind == "cnn" or getattr(getattr(net, "patch_embed", None), "flatten", True) is False  # SAM: NHWC
        self.num_prefix_tokens: int | None = int(prefix) if prefix is not None else (0 if grid_tokens else None)

        self.pretrained = weights_path is not None
        self.weights: str | None = None
        self.weights_sha256: str | None = None
        self.load_notes: list[str] = []
        if weights_path is not None:
            self._load_file(net, weights_path, checkpoint)

        net.eval()
        net.requires_grad_(False)
        self.model = net

    @staticmethod
    def _create(timm: Any, model: str, size: int, kwargs: dict[str, Any], where: str) -> Any:
        """``timm.create_model`` at ``size`` px for models that take ``img_size`` (ViTs: position
        embeddings, SAM's relative positions); CNNs take any input size and refuse the argument."""
        import torch

        def create(**extra: Any) -> Any:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_INIT_SEED)
                return timm.create_model(model, pretrained=False, num_classes=0, **extra, **kwargs)

        try:
            try:
                return create(img_size=size)
            except TypeError as err:
                if "img_size" not in str(err):
                    raise
                return create()  # e.g. resnet50, convnext_tiny: "unexpected keyword argument 'img_size'"
        except TypeError as err:
            raise uisbench.ConfigError(f"{where}: timm.create_model rejected the arguments ({err}); check model_kwargs.") from err

    def _load_file(self, net: Any, path: Path, checkpoint: Any) -> None:
        if isinstance(checkpoint, uisbench.weights.NpzArchive):  # big_vision/JAX: timm's own .npz loader, strictly
            from ._families import load_npz

            self.load_notes = load_npz(net, checkpoint, self.family, str(path), self.model_name)
            self.weights, self.weights_sha256 = str(path), uisbench.io.file_sha256(path)
            return
        if isinstance(checkpoint, HFFolder):  # converted to timm's layout; net checked against its config.json
            state_dict, notes = checkpoint.fit(net, self.model_name)
        elif self.family is not None:
            state_dict, notes = backbone_state_dict(checkpoint, self.family, str(path))
        else:
            state_dict, notes = uisbench.weights.unwrap_state_dict(checkpoint, str(path))
        check_model(net, self.family, state_dict, str(path), self.model_name)
        notes += load_weights(net, state_dict, str(path), self.model_name)
        self.weights = str(path)
        self.weights_sha256 = checkpoint.sha256() if isinstance(checkpoint, HFFolder) else uisbench.io.file_sha256(path)
        self.load_notes = notes

    # -- contract ---------------------------------------------------------------------------------

    def to(self, device: str) -> TimmViT:
        self.model.to(device)
        super().to(device)
        return self

    def provenance(self) -> dict[str, Any]:
        import timm

        return {
            "model": self.model_name,
            "plugin": self.plugin,
            "pretrained": self.pretrained,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "weights_source": self.weights_source,
            "load_notes": list(self.load_notes),
            "family": None if self.family is None else self.family.name,
            "init_seed": None if self.pretrained else _INIT_SEED,
            "model_kwargs": dict(self.model_kwargs),
            "facet": self.facet,
            "layer": self.layer,
            "prefix_tokens": self.num_prefix_tokens,
            **super().provenance(),  # size, patch_size, resize
            "mean": list(self.preprocessing.mean),
            "std": list(self.preprocessing.std),
            "precision": self.precision,
            "timm": timm.__version__,
        }

    def extract(self, pixels: torch.Tensor, image_ids: Sequence[int]) -> uisbench.FeatureMap:
        import torch

        size, g = self.preprocessing.size, self.preprocessing.grid
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise uisbench.DataError(
                f"backbone {self.model_name}: expected pixels (B, 3, {size}, {size}) from preprocess(), got {tuple(pixels.shape)}."
            )
        pixels = pixels.to(self.device, non_blocking=True)
        with torch.inference_mode(), autocast_context(pixels.device.type, self.precision):
            if self.facet == "stage":
                (grid,) = self.model.forward_intermediates(pixels, indices=[self.layer], stop_early=True, intermediates_only=True)
            elif self.facet == "token":
                grid = self._tokens(pixels)
            else:
                grid = self._projected(pixels)
        if tuple(grid.shape[2:]) != (g, g):
            raise uisbench.DataError(
                f"backbone {self.model_name}: a {tuple(grid.shape[2:])} feature grid for a {g}x{g} grid of {self.patch_size} px patches."
            )
        return self.feature_map(grid.float().contiguous(), pixels, image_ids)

    def _grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` tokens (prefix first) or a ``(B, h, w, C)`` grid -> ``(B, C, g, g)``, prefix dropped."""
        g = self.preprocessing.grid
        if tokens.ndim == 4:  # SAM: a grid has no prefix tokens
            return tokens.permute(0, 3, 1, 2)
        if self.num_prefix_tokens is None:
            raise uisbench.ConfigError(
                f"backbone {self.model_name}: the model gives a token sequence but no num_prefix_tokens, so which tokens are "
                "patches is unknown; use a timm ViT that declares it."
            )
        n = tokens.shape[1] - self.num_prefix_tokens
        if n != g * g:
            raise uisbench.DataError(
                f"backbone {self.model_name}: {tokens.shape[1]} tokens less {self.num_prefix_tokens} prefix tokens "
                f"(the model's num_prefix_tokens) is {n} patch tokens, not the {g}x{g} grid."
            )
        return tokens[:, self.num_prefix_tokens :].reshape(len(tokens), g, g, -1).permute(0, 3, 1, 2)

    def _attention_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """What ``blocks[layer].attn`` receives (its block's normed input), as ``(B, N, C)`` tokens or a
        ``(B, g, g, C)`` grid: a forward pre-hook captures it and stops the forward there."""
        captured: list[Any] = []

        def hook(module: Any, args: Any, kwargs: Any) -> None:
            captured.append(args[0] if args else kwargs["x"])
            raise _StopForward

        handle = self.model.blocks[self.layer].attn.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            self.model.forward_features(pixels)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise uisbench.ConfigError(
                f"backbone {self.model_name}: blocks[{self.layer}].attn was never called by forward_features; use facet: token."
            )
        x = captured[0]
        g = self.preprocessing.grid
        if x.ndim == 4 and (x.shape[0] != len(pixels) or tuple(x.shape[1:3]) != (g, g)):
            # SAM's windowed blocks: (B * windows, w, w, C) windows of the grid padded to a multiple
            # of w; put them back in place and crop the padding (timm's window_unpartition).
            w = x.shape[1]
            n = -(-g // w)
            x = x.reshape(len(pixels), n, n, w, w, -1).permute(0, 1, 3, 2, 4, 5).reshape(len(pixels), n * w, n * w, -1)
            x = x[:, :g, :g]
        return x

    def _projected(self, pixels: torch.Tensor) -> torch.Tensor:
        """The facet's projection of the attention input, heads concatenated: ``(B, C, g, g)``."""
        import torch.nn.functional as F

        weight, bias = _projection(self.model.blocks[self.layer].attn, self.facet, self.model_name, self.layer)
        x = self._attention_input(pixels)
        return self._grid(F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype)))

    def _tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch tokens of ``blocks[layer]`` after the final norm (SAM: its neck): ``(B, C, g, g)``."""
        if hasattr(self.model, "forward_intermediates"):
            (out,) = self.model.forward_intermediates(
                pixels, indices=[self.layer], norm=True, stop_early=True, output_fmt="NCHW", intermediates_only=True
            )
            return out
        return self._grid(self.model.forward_features(pixels))


def _projection(attn: Any, facet: str, where: str, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, bias)`` of ``attn``'s query/key/value projection, from the module's own parameters:

    - a fused ``qkv`` Linear (rows: q, k, v, each heads-major: timm's reshape to (3, heads, head_dim)),
      its bias slice plus any separate ``q_bias``/``k_bias``/``v_bias`` (EVA-02, DINOv3 ``_qkvb``:
      timm adds those through ``F.linear``; EVA's ``k_bias`` is a zero buffer);
    - separate ``q_proj``/``k_proj``/``v_proj`` Linears (EVA ``qkv_fused=False``).
    """
    import torch

    i = _QKV_INDEX[facet]
    letter = "qkv"[i]
    qkv = getattr(attn, "qkv", None)
    if isinstance(qkv, torch.nn.Linear):
        d = qkv.out_features // 3
        weight = qkv.weight[i * d : (i + 1) * d]
        parts = [b for b in (None if qkv.bias is None else qkv.bias[i * d : (i + 1) * d], getattr(attn, f"{letter}_bias", None)) if b is not None]
        bias = None if not parts else parts[0] if len(parts) == 1 else parts[0] + parts[1]
        return weight, bias
    proj = getattr(attn, f"{letter}_proj", None)
    if isinstance(proj, torch.nn.Linear):
        return proj.weight, proj.bias
    raise uisbench.ConfigError(
        f"{where}: blocks[{layer}].attn ({type(attn).__name__}) has neither a fused qkv Linear nor {letter}_proj; use facet: token."
    )


def vit_spec(
    plugin: str, description: str, model_default: Any, model_help: str, model_choices: tuple[str, ...] | None = None,
    inspect_weights: Any = None,
) -> uisbench.BackboneSpec:
    """The spec of a ViT plugin: :class:`TimmViT` under the plugin's name, with :func:`vit_params`
    (which differ only in ``model``) and :func:`check_vit_params`. ``dino`` and ``mae`` are::

        @uisbench.hookimpl
        def uisbench_backbones():
            yield vit_spec("dino", "DINO self-distilled ViT ...", "vit_small_patch16_224.dino", "timm DINO weights tag", TAGS)
    """
    return uisbench.BackboneSpec(
        name=plugin,
        description=description,
        factory=functools.partial(TimmViT, plugin=plugin),
        params=vit_params(model_default, model_help, model_choices),
        check=check_vit_params,
        version="1",
        inspect_weights=inspect_weights,
    )


@uisbench.hookimpl
def uisbench_backbones():
    yield vit_spec(
        "timm", "Any timm Vision Transformer by name plus a local weights file or timm's pretrained tag.",
        uisbench.REQUIRED, "timm model name, e.g. vit_base_patch16_224 or vit_small_patch14_reg4_dinov2.lvd142m",
        inspect_weights=_inspect_weights,
    )


def _inspect_weights(checkpoint: Any, path: str) -> dict[str, Any] | None:
    """``platform weights inspect``: a folder (``checkpoint`` None) is a transformers one, a file an official layout."""
    if checkpoint is None:
        return inspect_folder(path) if Path(path).is_dir() else None
    return inspect_entry(checkpoint, path)
