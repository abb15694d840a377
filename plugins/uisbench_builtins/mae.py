"""``mae``: masked-autoencoder ViTs (He et al., CVPR 2022) through timm's ``*.mae`` weights.

Same extraction as ``dino`` (keys of the last block by default). ``weights: PATH`` takes MAE's
published ``mae_pretrain_vit_*.pth`` (a ``{"model": ...}`` checkpoint; a decoder, if present, is dropped)
or timm's ``model.safetensors``.
"""

from __future__ import annotations

from typing import Any

import uisbench

from ._vit import check_vit_params, vit_params

#: timm tag -> registry entry in registry.yaml (timm.list_pretrained('vit_*.mae'))
TAGS = {
    "vit_base_patch16_224.mae": "mae-vitb16",
    "vit_large_patch16_224.mae": "mae-vitl16",
    "vit_huge_patch14_224.mae": "mae-vith14",
}


def build(**params: Any) -> uisbench.Backbone:
    from ._vit import build_vit

    return build_vit("mae", **params)


@uisbench.hookimpl
def uisbench_backbones():
    yield uisbench.BackboneSpec(
        name="mae",
        description="MAE masked-autoencoder ViT encoder (timm *.mae weights); attention keys of the last block by default.",
        factory=build,
        params=vit_params("vit_base_patch16_224.mae", "timm MAE weights tag", tuple(TAGS)),
        check=check_vit_params,
        version="1",
    )
