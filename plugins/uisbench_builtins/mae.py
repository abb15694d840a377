"""``mae``: masked-autoencoder ViTs (He et al., CVPR 2022) through timm's ``*.mae`` weights.

Same extraction as ``dino`` (keys of the last block by default). ``weights: PATH`` takes MAE's
published ``mae_pretrain_vit_*.pth`` (a ``{"model": ...}`` checkpoint; a decoder, if present, is dropped)
or timm's ``model.safetensors``. The backbone is the ``timm`` plugin's
:class:`~uisbench_builtins.timm_vit.TimmViT`.
"""

from __future__ import annotations

import uisbench

from .timm_vit import vit_spec

#: The timm MAE weights tags (``timm.list_pretrained('vit_*.mae')``): the choices of ``model``.
TAGS = ("vit_base_patch16_224.mae", "vit_large_patch16_224.mae", "vit_huge_patch14_224.mae")


@uisbench.hookimpl
def uisbench_backbones():
    yield vit_spec(
        "mae", "MAE masked-autoencoder ViT encoder (timm *.mae weights); attention keys of the last block by default.",
        TAGS[0], "timm MAE weights tag", TAGS,
    )
