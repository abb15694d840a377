"""The parameters of the ViT plugins (``timm``, ``dino``, ``mae``) and the checks ``platform validate``
runs on them without building a model: :func:`vit_params`, :func:`check_vit_params`, and which facets a
timm model has (:func:`architecture_kind`, :func:`facet_problem`).

Private helper of :mod:`uisbench_builtins.timm_vit`, which re-exports the public names; timm is
imported inside functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import uisbench

from ._families import FAMILIES

FACETS = ("key", "query", "value", "token", "stage")
#: the facets of a transformer's blocks; a CNN has only ``stage``
BLOCK_FACETS = ("key", "query", "value", "token")
PRECISIONS = ("auto", "fp32", "bf16")


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


def facet_problem(model: str, kind: str, facet: str | None) -> str | None:
    if kind == "cnn" and facet in BLOCK_FACETS:
        return (f"{model} is a CNN: it has no attention {facet}s or tokens; use facet: stage "
                "(layer: -1 = the last stage at stride 32, -2 = the one before at stride 16)")
    if kind == "transformer" and facet == "stage":
        return f"{model} is a transformer: it has no CNN stages; use facet: key (attention keys) or token"
    return None


def _check_facet(model: str, facet: str | None) -> Iterator[tuple[str | None, str]]:
    if not model or facet is None:
        return
    problem = facet_problem(model, architecture_kind(model) or "", facet)
    if problem:
        yield "facet", problem
