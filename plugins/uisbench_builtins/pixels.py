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

from ._vit import GRID_PARAMS, RESIZE_POLICIES, check_grid_params, valid_patches

if TYPE_CHECKING:
    import torch


def check_params(params):
    """Problems the factory would raise (``platform validate`` runs this too)."""
    yield from check_grid_params(params)
    for name in ("position_weight", "histogram_bins"):
        if params[name] < 0:
            yield name, f"must be >= 0, got {params[name]}"


class PixelsBackbone(uisbench.Backbone):
    """Mean colour, position and optional colour histogram of each patch."""

    facet = "token"
    layer = 0

    def __init__(
        self,
        *,
        size: int = 128,
        patch_size: int = 8,
        resize: str = "square",
        position_weight: float = 1.0,
        histogram_bins: int = 0,
    ) -> None:
        where = "backbone pixels"
        uisbench.raise_problems(where, check_params(dict(size=size, patch_size=patch_size, position_weight=position_weight,
                                                         histogram_bins=histogram_bins)))
        if resize not in RESIZE_POLICIES:
            raise uisbench.ConfigError(f"{where}: resize {resize!r} is not one of {', '.join(RESIZE_POLICIES)}.")
        self.position_weight = float(position_weight)
        self.histogram_bins = int(histogram_bins)
        # mean 0 / std 1: the pixels arrive in [0, 1]
        self.preprocessing = uisbench.Preprocessing(
            mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), size=size, patch_size=patch_size, resize=resize  # type: ignore[arg-type]
        )
        self._dataset: uisbench.Dataset | None = None

    def bind(self, dataset: uisbench.Dataset) -> None:
        self._dataset = dataset

    def provenance(self) -> dict[str, Any]:
        return {
            "model": "pixels",
            "pretrained": False,
            "weights": None,
            "weights_sha256": None,
            "note": "mean colour and position per patch, no learning",
            "position_weight": self.position_weight,
            "histogram_bins": self.histogram_bins,
            "size": self.preprocessing.size,
            "patch_size": self.patch_size,
            "resize": self.preprocessing.resize,
        }

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
        features = torch.cat(parts, dim=1).contiguous()
        valid = valid_patches(pixels, image_ids, self.preprocessing, self._dataset)
        return uisbench.FeatureMap(features, [int(i) for i in image_ids], p, self.facet, self.layer, valid)


@uisbench.hookimpl
def uisbench_backbones():
    P = uisbench.Param
    yield uisbench.BackboneSpec(
        name="pixels",
        description="Baseline without learning: mean colour and position of each patch (optionally a colour histogram).",
        factory=PixelsBackbone,
        params=(
            *GRID_PARAMS,
            P("position_weight", "float", 1.0, "scale of the x, y channels relative to colour"),
            P("histogram_bins", "int", 0, "bins per channel of a colour histogram per patch (0 = none)"),
        ),
        version="1",
        check=check_params,
    )
