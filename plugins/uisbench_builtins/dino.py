"""``dino``: DINO ViTs (Caron et al., ICCV 2021) through timm's ``*.dino`` weights.

Features default to the keys of the last attention block, as MaskCut uses them. Weights come from
``weights: PATH`` (DINO's published files, backbone-only or full checkpoints with ``teacher``/``student``,
or timm's ``model.safetensors``), else from timm's Hugging Face hub when online; offline without them
the factory raises :class:`uisbench.BackboneUnavailable` naming the file to get.
"""

from __future__ import annotations

from typing import Any

import uisbench

from ._vit import check_vit_params, vit_params

#: timm tag -> registry entry in registry.yaml
TAGS = {
    "vit_small_patch16_224.dino": "dino-vits16",
    "vit_small_patch8_224.dino": "dino-vits8",
    "vit_base_patch16_224.dino": "dino-vitb16",
    "vit_base_patch8_224.dino": "dino-vitb8",
}


def build(**params: Any) -> uisbench.Backbone:
    from ._vit import build_vit

    return build_vit("dino", **params)


@uisbench.hookimpl
def uisbench_backbones():
    yield uisbench.BackboneSpec(
        name="dino",
        description="DINO self-distilled ViT (timm *.dino weights); attention keys of the last block by default.",
        factory=build,
        params=vit_params("vit_small_patch16_224.dino", "timm DINO weights tag", tuple(TAGS)),
        check=check_vit_params,
        version="1",
    )
