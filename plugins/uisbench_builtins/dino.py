"""``dino``: DINO ViTs (Caron et al., ICCV 2021) through timm's ``*.dino`` weights.

Features default to the keys of the last attention block, as MaskCut uses them. Weights come from
``weights: PATH`` (DINO's published files, backbone-only or full checkpoints with ``teacher``/``student``,
or timm's ``model.safetensors``), else from timm's Hugging Face hub when online; offline without them
the factory raises :class:`uisbench.BackboneUnavailable` naming the file to get. The backbone is the
``timm`` plugin's :class:`~uisbench_builtins.timm_vit.TimmViT`.
"""

from __future__ import annotations

import uisbench

from .timm_vit import vit_spec

#: The timm DINO weights tags: the choices of ``model`` (registry.yaml names them dino-vits16, ...).
TAGS = (
    "vit_small_patch16_224.dino",
    "vit_small_patch8_224.dino",
    "vit_base_patch16_224.dino",
    "vit_base_patch8_224.dino",
)


@uisbench.hookimpl
def uisbench_backbones():
    yield vit_spec(
        "dino", "DINO self-distilled ViT (timm *.dino weights); attention keys of the last block by default.",
        TAGS[0], "timm DINO weights tag", TAGS,
    )
