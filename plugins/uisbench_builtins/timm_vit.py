"""``timm``: any timm Vision Transformer by name, with its weights: a vendor with a timm-compatible
model needs only a registry entry, no code::

    backbones:
      acme-vitb16:
        plugin: timm
        model: vit_base_patch16_224      # any timm ViT name, with or without a weights tag
        weights: /models/acme_vitb16.pth  # state dict in timm's layout (or DINO/MAE published layouts)

The ViT machinery here is public: the ``dino`` and ``mae`` plugins are this plugin with their own
default model and choices (:class:`TimmViT`, :func:`vit_params`, :func:`check_vit_params`).

A ViT backbone is a timm model built at the chosen square input side (position embeddings are
resampled once, when the weights are loaded, by timm's own checkpoint filter). Its features are one
*facet* of one block:

- ``key`` / ``query`` / ``value``: the output of ``blocks[layer].attn.qkv`` (a forward hook, removed
  after every batch), split in three, heads concatenated (what MaskCut and deep spectral methods use);
- ``token``: the output tokens of ``blocks[layer]`` after the final norm (``forward_features`` for the
  last block).

Prefix tokens (CLS, registers: timm's ``num_prefix_tokens``) are dropped and the tokens are laid out
as a ``(B, C, h, w)`` grid. Weights come from a local file (``weights: PATH``, read with
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

FACETS = ("key", "query", "value", "token")
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
        P("weights", "path", None, "local checkpoint (.pth/.bin/.safetensors); DINO/MAE published layouts are unwrapped"),
        P("pretrained", "bool", True, "false = random initialisation on purpose (recorded in every result)"),
        P("facet", "str", "key", "which features: attention key/query/value of the block, or its output token", choices=FACETS),
        # layer: its range is the model's depth, known once timm has built it (the factory checks it)
        P("layer", "int", -1, "block whose features are taken; negative counts from the end (-1 = last)"),
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
    found = _PATCH_IN_NAME.search(str(params.get("model") or ""))
    patch = kwargs.get("patch_size", int(found.group(1)) if found else None)
    size = params.get("size")
    if isinstance(patch, int) and patch > 0 and isinstance(size, int):
        yield from uisbench.grid.check_grid_params({"size": size, "patch_size": patch})


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
    if not any(k.startswith("head.") for k in expected):
        heads = [k for k in state_dict if k.startswith("head.")]
        if heads:
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
            notes.append("dropped the classification/projection head (features only)")
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
    """Raised by the qkv hook once it has what it needs: the rest of the network is not run."""


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
        plugin: str = "timm",
    ) -> None:
        import torch

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
            mean=None if mean is None else list(mean), std=None if std is None else list(std),
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
        if weights is not None:
            weights_path = Path(os.path.expandvars(str(weights))).expanduser()
            problem = uisbench.io.regular_file_problem(weights_path)  # a FIFO or /dev/zero is refused unopened
            if problem and problem != "not found":
                raise uisbench.ConfigError(f"{where}: weights file {weights_path} {problem}; fix `weights:` in your registry file.")
            if not weights_path.is_file():
                raise uisbench.ConfigError(f"{where}: weights file {weights_path} not found; fix `weights:` in your registry file.")
            self.weights_source = "file"
        elif pretrained:
            path_str, self.weights_source = hub_weights(model, plugin, cfg)
            weights_path = Path(path_str)

        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_INIT_SEED)
                net = timm.create_model(model, pretrained=False, num_classes=0, img_size=size, **kwargs)
        except TypeError as err:
            raise uisbench.ConfigError(f"{where}: timm.create_model rejected the arguments ({err}); check model_kwargs.") from err

        blocks = getattr(net, "blocks", None)
        patch_embed = getattr(net, "patch_embed", None)
        if blocks is None or patch_embed is None or not hasattr(patch_embed, "patch_size"):
            raise uisbench.ConfigError(f"{where}: not a plain ViT (no blocks/patch_embed); the ViT plugins take timm ViTs.")
        ps = patch_embed.patch_size
        ps = tuple(ps) if isinstance(ps, (tuple, list)) else (ps, ps)
        if ps[0] != ps[1]:
            raise uisbench.ConfigError(f"{where}: non-square patches {ps} are not supported.")
        patch = int(ps[0])
        net_cfg = dict(getattr(net, "pretrained_cfg", None) or cfg)
        mean = tuple(float(v) for v in (mean if mean is not None else net_cfg.get("mean", (0.485, 0.456, 0.406))))
        std = tuple(float(v) for v in (std if std is not None else net_cfg.get("std", (0.229, 0.224, 0.225))))
        super().__init__(size=size, patch_size=patch, resize=resize, mean=mean, std=std, where=where)
        depth = len(blocks)
        if not -depth <= layer < depth:
            raise uisbench.ConfigError(f"{where}: layer {layer} is out of range for {depth} blocks (use -{depth}..{depth - 1}).")
        self.layer = layer % depth
        self._last = self.layer == depth - 1
        if facet != "token":
            qkv = getattr(getattr(blocks[self.layer], "attn", None), "qkv", None)
            if not isinstance(qkv, torch.nn.Linear):
                raise uisbench.ConfigError(f"{where}: blocks[{self.layer}].attn has no fused qkv Linear; use facet: token.")
        elif not self._last and not hasattr(net, "forward_intermediates"):
            raise uisbench.ConfigError(f"{where}: this timm model has no forward_intermediates; use the last layer.")
        self.num_prefix_tokens = int(getattr(net, "num_prefix_tokens", 1))

        self.pretrained = weights_path is not None
        self.weights: str | None = None
        self.weights_sha256: str | None = None
        self.load_notes: list[str] = []
        if weights_path is not None:
            self._load_file(net, weights_path)

        net.eval()
        net.requires_grad_(False)
        self.model = net

    def _load_file(self, net: Any, path: Path) -> None:
        checkpoint = uisbench.weights.read_checkpoint(path)
        state_dict, notes = uisbench.weights.unwrap_state_dict(checkpoint, str(path))
        notes += load_weights(net, state_dict, str(path), self.model_name)
        self.weights = str(path)
        self.weights_sha256 = uisbench.io.file_sha256(path)
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
            "init_seed": None if self.pretrained else _INIT_SEED,
            "model_kwargs": dict(self.model_kwargs),
            "facet": self.facet,
            "layer": self.layer,
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
            if self.facet == "token":
                tokens = self._tokens(pixels)  # (B, h*w, D), prefix tokens dropped
            else:
                tokens = self._qkv_facet(pixels)[:, self.num_prefix_tokens :]
        if tokens.shape[1] != g * g:
            raise uisbench.DataError(f"backbone {self.model_name}: {tokens.shape[1]} patch tokens for a {g}x{g} grid.")
        features = tokens.float().reshape(len(pixels), g, g, -1).permute(0, 3, 1, 2).contiguous()
        return self.feature_map(features, pixels, image_ids)

    def _qkv_facet(self, pixels: torch.Tensor) -> torch.Tensor:
        """Output of ``blocks[layer].attn.qkv`` for the facet, heads concatenated: ``(B, N, D)``."""
        captured: list[Any] = []

        def hook(module: Any, inputs: Any, output: Any) -> None:
            captured.append(output)
            raise _StopForward

        handle = self.model.blocks[self.layer].attn.qkv.register_forward_hook(hook)
        try:
            self.model.forward_features(pixels)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise uisbench.ConfigError(
                f"backbone {self.model_name}: blocks[{self.layer}].attn.qkv was never called: this model computes its "
                f"attention without that module (e.g. EVA's separate q/v biases); use facet: token."
            )
        qkv = captured[0]
        dim = qkv.shape[-1] // 3
        i = _QKV_INDEX[self.facet]
        # timm's Attention reshapes qkv to (B, N, 3, heads, head_dim): a contiguous slice of width dim
        # per facet, heads in order, i.e. the heads already concatenated.
        return qkv[..., i * dim : (i + 1) * dim]

    def _tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch tokens of ``blocks[layer]`` after the final norm: ``(B, h*w, D)``, prefix dropped."""
        if self._last:
            return self.model.forward_features(pixels)[:, self.num_prefix_tokens :]
        (out,) = self.model.forward_intermediates(
            pixels, indices=[self.layer], norm=True, stop_early=True, output_fmt="NLC", intermediates_only=True
        )
        return out


def vit_spec(
    plugin: str, description: str, model_default: Any, model_help: str, model_choices: tuple[str, ...] | None = None
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
    )


@uisbench.hookimpl
def uisbench_backbones():
    yield vit_spec(
        "timm", "Any timm Vision Transformer by name plus a local weights file or timm's pretrained tag.",
        uisbench.REQUIRED, "timm model name, e.g. vit_base_patch16_224 or vit_small_patch14_reg4_dinov2.lvd142m",
    )
