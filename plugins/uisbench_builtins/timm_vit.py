"""``timm``: any timm Vision Transformer by name, with its weights: a vendor with a timm-compatible
model needs only a registry entry, no code::

    backbones:
      acme-vitb16:
        plugin: timm
        model: vit_base_patch16_224      # any timm ViT name, with or without a weights tag
        weights: /models/acme_vitb16.pth  # state dict in timm's layout (or DINO/MAE published layouts)

Same features, weight sources and rules as ``dino``/``mae``.
"""

from __future__ import annotations

from typing import Any

import uisbench

from ._vit import check_vit_params, vit_params


def build(**params: Any) -> uisbench.Backbone:
    from ._vit import build_vit

    return build_vit("timm", **params)


@uisbench.hookimpl
def uisbench_backbones():
    yield uisbench.BackboneSpec(
        name="timm",
        description="Any timm Vision Transformer by name plus a local weights file or timm's pretrained tag.",
        factory=build,
        params=vit_params(uisbench.REQUIRED, "timm model name, e.g. vit_base_patch16_224 or vit_small_patch14_reg4_dinov2.lvd142m"),
        check=check_vit_params,
        version="1",
    )
