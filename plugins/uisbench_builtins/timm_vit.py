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

Its private helpers: ``_timm_params.py`` (parameters, checks without timm), ``_timm_facets.py`` (computing
a facet), ``_timm_checkpoint.py`` (loading a weights file). torch, timm, safetensors and huggingface_hub are
imported inside functions only.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uisbench

from ._families import family_named, weights_dir
from ._family_inspect import inspect_entry
from ._family_layouts import recognise
from ._hf_layout import inspect_folder, read_folder
from ._timm_checkpoint import load_file, load_weights
from ._timm_facets import QKV_INDEX, autocast_context, block_tokens, projected, projection
from ._timm_params import (
    BLOCK_FACETS,
    FACETS,
    PRECISIONS,
    architecture_kind,
    check_vit_params,
    facet_problem,
    vit_params,
)

if TYPE_CHECKING:
    import torch

# the ViT machinery the dino and mae plugins share (some of it defined in the _timm_* helpers)
__all__ = [
    "FACETS", "BLOCK_FACETS", "PRECISIONS", "architecture_kind", "TimmViT", "vit_params", "check_vit_params", "vit_spec",
    "load_weights", "hub_weights", "cached_weights", "offline", "autocast_context",
]

_INIT_SEED = 0


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
        problem = facet_problem(model, kind, facet)
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
        if facet in QKV_INDEX:
            projection(net.blocks[self.layer].attn, facet, where, self.layer)  # a ConfigError now, not at the first batch
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
            self.weights, self.weights_sha256, self.load_notes = load_file(net, weights_path, checkpoint, self.family, self.model_name)

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
                grid = block_tokens(self.model, self.layer, pixels, g, self.num_prefix_tokens, self.model_name)
            else:
                grid = projected(self.model, self.layer, self.facet, pixels, g, self.num_prefix_tokens, self.model_name)
        if tuple(grid.shape[2:]) != (g, g):
            raise uisbench.DataError(
                f"backbone {self.model_name}: a {tuple(grid.shape[2:])} feature grid for a {g}x{g} grid of {self.patch_size} px patches."
            )
        return self.feature_map(grid.float().contiguous(), pixels, image_ids)



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
