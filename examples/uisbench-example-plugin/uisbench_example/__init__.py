"""An example uisbench plugin: the pattern a vendor copies.

It registers
- a backbone ``example-gradients``: image gradients and colour pooled per patch (no weights, no
  download; a stand-in for your model), and
- a metric ``example-masks-per-image``: the mean number of predicted masks per image.

Only the public ``uisbench`` API is used; torch is imported inside the methods.
"""

from __future__ import annotations

import uisbench


class GradientBackbone(uisbench.GridBackbone):
    """Per patch: mean colour and mean absolute x/y gradients of each channel (9 channels).

    :class:`uisbench.GridBackbone` holds the input geometry (``size``, ``patch_size``, ``resize``),
    checks it, and marks the patches holding image content when frames are padded
    (:meth:`~uisbench.GridBackbone.feature_map`); this class only computes the features.
    """

    def __init__(self, size: int = 224, patch_size: int = 16, resize: str = "square") -> None:
        super().__init__(size=size, patch_size=patch_size, resize=resize, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                         where="backbone example-gradients")

    def extract(self, pixels, image_ids):
        import torch
        import torch.nn.functional as F

        x = pixels.to(self.device)
        dx = F.pad((x[..., :, 1:] - x[..., :, :-1]).abs(), (0, 1))
        dy = F.pad((x[..., 1:, :] - x[..., :-1, :]).abs(), (0, 0, 0, 1))
        feats = F.avg_pool2d(torch.cat([x, dx, dy], dim=1), self.patch_size)
        return self.feature_map(feats, pixels, image_ids)

    def provenance(self):
        # `pretrained` is what the leaderboard shows beside every row
        return {"pretrained": False, "weights": None, "note": "hand-made features, no learning", **super().provenance()}


class MasksPerImage(uisbench.Metric):
    """Mean number of predicted masks per image (no ground truth needed)."""

    higher_is_better = {"masks_per_image": False}
    headline = ("masks_per_image",)

    def __init__(self) -> None:
        super().__init__()
        self.add_state("masks", default={}, merge="union")  # image id -> number of masks

    def update(self, sample: uisbench.EvalSample) -> None:
        self.masks[sample.record.id] = len(sample.predictions)

    def compute(self) -> dict[str, float]:
        return {"masks_per_image": sum(self.masks.values()) / len(self.masks) if self.masks else float("nan")}


@uisbench.hookimpl
def uisbench_backbones():
    yield uisbench.BackboneSpec(
        name="example-gradients",
        description="Example vendor backbone: colour and gradient statistics per patch.",
        factory=GradientBackbone,
        params=(
            # bounds are declared, so `platform validate` refuses what the factory would
            uisbench.Param("size", "int", 224, "square input side in pixels", ge=1),
            uisbench.Param("patch_size", "int", 16, "patch side in pixels", ge=1),
            uisbench.Param("resize", "str", "square", "square: stretch; pad: keep the aspect ratio", choices=("square", "pad")),
        ),
        check=uisbench.grid.check_grid_params,  # the same checks the factory runs, for `platform validate`
    )


@uisbench.hookimpl
def uisbench_metrics():
    yield uisbench.MetricSpec(
        name="example-masks-per-image",
        description="Example vendor metric: mean number of predicted masks per image.",
        factory=MasksPerImage,
        needs=frozenset({"predictions"}),
    )
