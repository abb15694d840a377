"""Shared code of the ViT backbones (``dino``, ``mae``, ``timm``) and of the grid geometry that the
calibration backbones (``oracle``, ``pixels``) share with them.

A ViT backbone is a timm model built at the chosen square input side (position embeddings are
resampled once, when the weights are loaded, by timm's own checkpoint filter). Its features are one
*facet* of one block:

- ``key`` / ``query`` / ``value``: the output of ``blocks[layer].attn.qkv`` (a forward hook, removed
  after every batch), split in three, heads concatenated (what MaskCut and deep spectral methods use);
- ``token``: the output tokens of ``blocks[layer]`` after the final norm (``forward_features`` for the
  last block).

Prefix tokens (CLS, registers: timm's ``num_prefix_tokens``) are dropped and the tokens are laid out
as a ``(B, C, h, w)`` grid. Weights come from a local file (``weights: PATH``) or timm's Hugging Face
hub download when online; offline without them the factory raises :class:`uisbench.BackboneUnavailable`
saying which file to get. Random initialisation only happens with an explicit ``pretrained: false``.

torch, timm, safetensors and huggingface_hub are imported inside functions only.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
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

FACETS = ("key", "query", "value", "token")
_QKV_INDEX = {"query": 0, "key": 1, "value": 2}
RESIZE_POLICIES = ("square", "pad")

#: Input geometry of the hand-built backbones (oracle, pixels), sized for synth-instances on CPU.
GRID_PARAMS = (
    uisbench.Param("size", "int", 128, "square input side in pixels (a multiple of patch_size)"),
    uisbench.Param("patch_size", "int", 8, "patch side in pixels"),
    uisbench.Param(
        "resize", "str", "square", "square: stretch to size x size; pad: keep aspect ratio, pad", choices=RESIZE_POLICIES
    ),
)
PRECISIONS = ("auto", "fp32", "bf16")
#: Keys under which published checkpoints wrap their state dict, in the order we look for them:
#: DINO's full checkpoints hold ``teacher`` (the network DINO evaluates) and ``student``; MAE's hold
#: ``model``; Lightning and many others ``state_dict``.
WRAPPER_KEYS = ("teacher", "model", "state_dict", "model_ema", "state_dict_ema", "module")
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
        P("layer", "int", -1, "block whose features are taken; negative counts from the end (-1 = last)"),
        P("size", "int", 480, "square input side in pixels (a multiple of the patch size)"),
        P("resize", "str", "square", "square: stretch to size x size (MaskCut); pad: keep aspect ratio, pad", choices=RESIZE_POLICIES),
        P("mean", "list[float]", None, "RGB normalisation mean; null = the weights' timm pretrained_cfg"),
        P("std", "list[float]", None, "RGB normalisation std; null = the weights' timm pretrained_cfg"),
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
        if value is not None and (len(value) != 3 or (name == "std" and min(value) <= 0)):
            yield name, f"must be three numbers{' > 0' if name == 'std' else ''}, got {list(value)}"
    found = _PATCH_IN_NAME.search(str(params.get("model") or ""))
    patch = kwargs.get("patch_size", int(found.group(1)) if found else None)
    size = params.get("size")
    if isinstance(patch, int) and patch > 0 and isinstance(size, int) and (size <= 0 or size % patch):
        lo = max(patch, size // patch * patch)
        yield "size", f"{size} is not a positive multiple of the patch size {patch}; use e.g. {lo} or {lo + patch}"


# ---------------------------------------------------------------------------------------------
# Grid geometry (follows uisbench.Preprocessing.content_size)
# ---------------------------------------------------------------------------------------------


def content_grid(height: int, width: int, prep: uisbench.Preprocessing) -> tuple[int, int]:
    """Number of patch rows and columns that hold image content (partially covered ones count)."""
    h, w = prep.content_size(height, width)
    return math.ceil(h / prep.patch_size), math.ceil(w / prep.patch_size)


def valid_patches(
    pixels: torch.Tensor, image_ids: Sequence[int], prep: uisbench.Preprocessing, dataset: uisbench.Dataset | None
) -> torch.Tensor | None:
    """``(B, h, w)`` bool of patches with image content for ``resize: pad``; ``None`` for ``square``.

    The image sizes come from the bound dataset's records; without a dataset, padding is recognised
    as the all-zero bottom rows / right columns that :meth:`preprocess` writes.
    """
    import torch

    if prep.resize == "square":
        return None
    g = prep.size // prep.patch_size
    valid = torch.zeros((len(image_ids), g, g), dtype=torch.bool)
    for i, image_id in enumerate(image_ids):
        if dataset is not None:
            rec = dataset.record(int(image_id))
            gh, gw = content_grid(rec.height, rec.width, prep)
        else:
            nonzero = pixels[i].detach().abs().sum(0).cpu() > 0
            rows = torch.nonzero(nonzero.any(1)).flatten()
            cols = torch.nonzero(nonzero.any(0)).flatten()
            gh = math.ceil((int(rows.max()) + 1) / prep.patch_size) if len(rows) else g
            gw = math.ceil((int(cols.max()) + 1) / prep.patch_size) if len(cols) else g
        valid[i, :gh, :gw] = True
    return valid.to(pixels.device)


def check_grid_params(params: Mapping[str, Any]) -> Iterator[tuple[str | None, str]]:
    """Problems of the :data:`GRID_PARAMS` of a hand-built backbone (``oracle``, ``pixels``)."""
    size, patch = params["size"], params["patch_size"]
    if patch <= 0:
        yield "patch_size", f"must be positive, got {patch}"
    elif size <= 0 or size % patch:
        lo = max(patch, size // patch * patch)
        yield "size", f"{size} is not a positive multiple of the patch size {patch}; use e.g. {lo} or {lo + patch}"


def check_size(size: int, patch_size: int, where: str) -> None:
    uisbench.raise_problems(where, check_grid_params({"size": size, "patch_size": patch_size}))


def autocast_context(device_type: str, precision: str):
    """bf16 autocast on CUDA (``auto``/``bf16``), on CPU only when ``bf16`` is asked; else a no-op."""
    import torch

    if precision == "bf16" or (precision == "auto" and device_type == "cuda"):
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# Weights: reading, unwrapping, checking
# ---------------------------------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: How torch.save files begin: its zip format, and its legacy format (the magic number pickled with protocol 2).
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


def read_checkpoint(path: Path, param: str = "weights") -> Any:
    """Load a ``.safetensors`` file or a ``torch.save`` file with torch's weights-only unpickler.

    Weights files are downloaded and shared, so nothing in one may run code: only tensors and plain
    containers are rebuilt, plus ``argparse.Namespace`` (DINO's full checkpoints store their
    ``args``). Everything else is a :class:`uisbench.DataError` that says which case it is and what
    to do, ``param`` naming the registry parameter that points at the file:

    - empty, or not a torch or safetensors file at all (a plain pickle, an HTML error page, ...);
    - a torch file that is damaged (truncated zip, broken pickle);
    - a torch file holding Python objects the weights-only loader refuses (named in the message).
    """
    import argparse

    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:
            raise uisbench.DataError(f"{param} file {path}: not a readable safetensors file ({err}); re-download it.") from err
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_LEGACY_MAGIC))
    except OSError as err:
        raise uisbench.DataError(f"{param} file {path}: cannot be read ({err.strerror}); check the path.") from err
    if not head:
        raise uisbench.DataError(f"{param} file {path}: the file is empty; re-download it.")
    if head[:1] == b"\x80" and not head.startswith(_LEGACY_MAGIC):
        raise uisbench.DataError(
            f"{param} file {path}: a plain Python pickle, not a torch checkpoint; uisbench never unpickles those "
            "(unpickling can run code). Save the weights with torch.save(state_dict, ...) or as '.safetensors'."
        )
    if not head.startswith((_ZIP_MAGIC, _LEGACY_MAGIC)):
        raise uisbench.DataError(
            f"{param} file {path}: not a torch checkpoint (it starts with bytes {head[:8].hex(' ')}); expected a file "
            "written by torch.save or a '.safetensors' file. Check the path, and re-download the file if it is a damaged copy."
        )
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if safe_globals is not None:
        allow = safe_globals([argparse.Namespace])
    else:  # torch 2.4: process-wide allow-list
        torch.serialization.add_safe_globals([argparse.Namespace])
        allow = contextlib.nullcontext()
    try:
        with allow:
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        refused = _refused_globals(path, err)
        # Not chained: torch's own message recommends turning the safe loader off, which is exactly
        # what must not be done with a file of unknown origin; ours names what matters.
        if refused:
            raise uisbench.DataError(
                f"{param} file {path}: besides weights it holds Python objects ({', '.join(refused)}) that the safe "
                "(weights-only) loader refuses to rebuild, because rebuilding them can run code. Get a "
                "'.safetensors' or state-dict-only version from its publisher; or, only for a file from a source "
                "you trust, load it once as its authors document, save the state dict alone with "
                f"torch.save(checkpoint['model'], 'weights_only.pth') and set `{param}:` to weights_only.pth."
            ) from None
        raise uisbench.DataError(
            f"{param} file {path}: damaged torch checkpoint ({_torch_reason(err)}); it is truncated or corrupt: "
            "re-download it."
        ) from None


def _refused_globals(path: Path, err: Exception) -> list[str]:
    """The Python globals (``module.name``) a torch file needs beyond what the weights-only loader
    accepts: listed from the zip's pickle without running it where torch can, else from the error."""
    import torch

    names = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
    if scan is not None:
        try:
            names = [n for n in scan(str(path)) if n != "argparse.Namespace"] or names
        except Exception:  # a legacy (non-zip) or damaged file: keep what the error said
            pass
    return sorted(set(names))


def _torch_reason(err: Exception) -> str:
    """The informative part of a torch.load error: the unpickler's own complaint when there is one
    (torch wraps it in advice to disable the safe loader), else the first line."""
    text = str(err)
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if found:
        return found.group(1).strip()
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def _is_state_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(checkpoint: Any, source: str) -> tuple[dict[str, Any], list[str]]:
    """The backbone's state dict inside a published checkpoint, plus notes on what was done.

    - wrappers ``teacher`` (DINO), ``model`` (MAE), ``state_dict``, ... are descended into;
    - ``module.`` / ``_orig_mod.`` prefixes (DDP, torch.compile) are stripped;
    - DINO's ``backbone.`` prefix is stripped and the keys outside it (its ``head.`` projection) dropped;
    - MAE's decoder (``decoder_*``, ``mask_token``) is dropped when present.
    """
    notes: list[str] = []
    obj = checkpoint
    for _ in range(4):
        if _is_state_dict(obj):
            break
        if not isinstance(obj, Mapping):
            break
        key = next((k for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if key is None:
            break
        notes.append(f"unwrapped '{key}'")
        obj = obj[key]
    if not _is_state_dict(obj):
        keys = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise uisbench.DataError(
            f"weights file {source}: no state dict found (top-level keys: {keys}); expected a state dict or one "
            f"wrapped in one of {', '.join(WRAPPER_KEYS)}."
        )
    sd = dict(obj)
    for prefix in ("module.", "_orig_mod."):
        if any(k.startswith(prefix) for k in sd):
            sd = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}
            notes.append(f"stripped '{prefix}'")
    if any(k.startswith("backbone.") for k in sd):
        dropped = sorted({k.split(".")[0] for k in sd if not k.startswith("backbone.")})
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        notes.append("stripped 'backbone.'" + (f", dropped {', '.join(dropped)}" if dropped else ""))
    if any(k.startswith("decoder_") for k in sd):
        sd = {k: v for k, v in sd.items() if not (k.startswith("decoder_") or k == "mask_token")}
        notes.append("dropped the MAE decoder")
    return sd, notes


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


class TimmViT(uisbench.Backbone):
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
        if facet not in FACETS:
            raise uisbench.ConfigError(f"{where}: facet {facet!r} is not one of {', '.join(FACETS)}.")
        if resize not in RESIZE_POLICIES:
            raise uisbench.ConfigError(f"{where}: resize {resize!r} is not one of {', '.join(RESIZE_POLICIES)}.")
        if precision not in PRECISIONS:
            raise uisbench.ConfigError(f"{where}: precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
        uisbench.raise_problems(where, check_vit_params(dict(model=model, weights=weights, pretrained=pretrained, size=size,
                                                              mean=mean, std=std, model_kwargs=model_kwargs)))
        kwargs = dict(model_kwargs or {})

        self.model_name = model
        self.plugin = plugin
        self.facet = facet
        self.precision = precision
        self.model_kwargs = kwargs
        self._dataset: uisbench.Dataset | None = None

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
        check_size(size, patch, where)
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

        net_cfg = dict(getattr(net, "pretrained_cfg", None) or cfg)
        mean = tuple(float(v) for v in (mean if mean is not None else net_cfg.get("mean", (0.485, 0.456, 0.406))))
        std = tuple(float(v) for v in (std if std is not None else net_cfg.get("std", (0.229, 0.224, 0.225))))
        self.preprocessing = uisbench.Preprocessing(mean=mean, std=std, size=size, patch_size=patch, resize=resize)  # type: ignore[arg-type]

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
        checkpoint = read_checkpoint(path)
        state_dict, notes = unwrap_state_dict(checkpoint, str(path))
        notes += load_weights(net, state_dict, str(path), self.model_name)
        self.weights = str(path)
        self.weights_sha256 = sha256_file(path)
        self.load_notes = notes

    # -- contract ---------------------------------------------------------------------------------

    def to(self, device: str) -> TimmViT:
        self.model.to(device)
        self.device = str(device)
        return self

    def bind(self, dataset: uisbench.Dataset) -> None:
        self._dataset = dataset

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
            "size": self.preprocessing.size,
            "patch_size": self.patch_size,
            "resize": self.preprocessing.resize,
            "mean": list(self.preprocessing.mean),
            "std": list(self.preprocessing.std),
            "precision": self.precision,
            "timm": timm.__version__,
        }

    def extract(self, pixels: torch.Tensor, image_ids: Sequence[int]) -> uisbench.FeatureMap:
        import torch

        size, p = self.preprocessing.size, self.patch_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise uisbench.DataError(
                f"backbone {self.model_name}: expected pixels (B, 3, {size}, {size}) from preprocess(), got {tuple(pixels.shape)}."
            )
        pixels = pixels.to(self.device, non_blocking=True)
        g = size // p
        with torch.inference_mode(), autocast_context(pixels.device.type, self.precision):
            if self.facet == "token":
                tokens = self._tokens(pixels)  # (B, h*w, D), prefix tokens dropped
            else:
                tokens = self._qkv_facet(pixels)[:, self.num_prefix_tokens :]
        if tokens.shape[1] != g * g:
            raise uisbench.DataError(f"backbone {self.model_name}: {tokens.shape[1]} patch tokens for a {g}x{g} grid.")
        features = tokens.float().reshape(len(pixels), g, g, -1).permute(0, 3, 1, 2).contiguous()
        valid = valid_patches(pixels, image_ids, self.preprocessing, self._dataset)
        return uisbench.FeatureMap(features, [int(i) for i in image_ids], p, self.facet, self.layer, valid)

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


def build_vit(plugin: str, **params: Any) -> TimmViT:
    """Factory shared by the ``dino``, ``mae`` and ``timm`` plugins."""
    return TimmViT(plugin=plugin, **params)
