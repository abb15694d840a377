"""``pixels``: the colour and position of each patch, no learning: the baseline any SSL backbone must beat.

Per patch: the mean RGB (in ``[0, 1]``), the patch centre's normalised ``x, y`` in ``[0, 1]`` times
``position_weight``, and, with ``histogram_bins > 0``, a per-channel colour histogram
(``3 * histogram_bins`` channels, each channel's bins summing to 1). Same resize policies as the other
backbones; with ``resize: pad`` the coordinates are those of the padded square.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import uisbench

if TYPE_CHECKING:
    import torch


PARAMS = (
    *uisbench.grid.GRID_PARAMS,
    uisbench.Param("position_weight", "float", 1.0, "scale of the x, y channels relative to colour", ge=0),
    uisbench.Param("histogram_bins", "int", 0, "bins per channel of a colour histogram per patch (0 = none)", ge=0),
)


def check_params(params):
    """Problems the factory would raise (``platform validate`` runs this too)."""
    yield from uisbench.grid.check_grid_params(params)  # size a multiple of patch_size: two parameters


class PixelsBackbone(uisbench.GridBackbone):
    """Mean colour, position and optional colour histogram of each patch."""

    def __init__(self, *, size: int = 128, patch_size: int = 8, resize: str = "square", position_weight: float = 1.0,
                 histogram_bins: int = 0) -> None:
        where = "backbone pixels"
        uisbench.complete_params(where, PARAMS, dict(size=size, patch_size=patch_size, resize=resize,
                                                     position_weight=position_weight, histogram_bins=histogram_bins), check_params)
        super().__init__(size=size, patch_size=patch_size, resize=resize, where=where)  # mean 0, std 1: pixels in [0, 1]
        self.position_weight = float(position_weight)
        self.histogram_bins = int(histogram_bins)

    def provenance(self) -> dict[str, Any]:
        note = "mean colour and position per patch, no learning"
        return {"model": "pixels", "pretrained": False, "weights": None, "weights_sha256": None, "note": note,
                "position_weight": self.position_weight, "histogram_bins": self.histogram_bins, **super().provenance()}

    def extract(self, pixels: torch.Tensor, image_ids: Sequence[int]) -> uisbench.FeatureMap:
        import torch
        import torch.nn.functional as F

        p = self.patch_size
        x = pixels.to(self.device).float()
        b, _, s, _ = x.shape
        g = s // p
        parts = [F.avg_pool2d(x, p)]  # (B, 3, g, g)
        centres = (torch.arange(g, device=x.device, dtype=torch.float32) + 0.5) / g
        yy, xx = torch.meshgrid(centres, centres, indexing="ij")
        parts.append((self.position_weight * torch.stack([xx, yy])).expand(b, 2, g, g))
        if self.histogram_bins:
            n = self.histogram_bins
            q = (x.clamp(0, 1) * n).long().clamp_max(n - 1)  # (B, 3, S, S) bin per pixel and channel
            one_hot = F.one_hot(q, n).permute(0, 1, 4, 2, 3).reshape(b, 3 * n, s, s).float()
            parts.append(F.avg_pool2d(one_hot, p))
        return self.feature_map(torch.cat(parts, dim=1).contiguous(), pixels, image_ids)


@uisbench.hookimpl
def uisbench_backbones():
    description = "Baseline without learning: mean colour and position of each patch (optionally a colour histogram)."
    yield uisbench.BackboneSpec(name="pixels", description=description, factory=PixelsBackbone, params=PARAMS, check=check_params)
