"""An example uisbench plugin: the pattern a vendor copies.

It registers
- a backbone ``example-gradients``: image gradients and colour pooled per patch (no weights, no
  download; a stand-in for your model), and
- a metric ``example-masks-per-image``: the mean number of predicted masks per image.

Only the public ``uisbench`` API is used; torch is imported inside the factories' objects.
"""

from __future__ import annotations

import uisbench


class GradientBackbone(uisbench.Backbone):
    """Per patch: mean colour and mean absolute x/y gradients of each channel (9 channels)."""

    facet = "token"
    layer = 0

    def __init__(self, size: int = 224, patch_size: int = 16) -> None:
        self.preprocessing = uisbench.Preprocessing(
            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=size, patch_size=patch_size
        )

    def extract(self, pixels, image_ids):
        import torch.nn.functional as F

        dx = (pixels[..., :, 1:] - pixels[..., :, :-1]).abs()
        dy = (pixels[..., 1:, :] - pixels[..., :-1, :]).abs()
        dx = F.pad(dx, (0, 1))
        dy = F.pad(dy, (0, 0, 0, 1))
        p = self.patch_size
        feats = F.avg_pool2d(torch_cat([pixels, dx, dy]), p)
        return uisbench.FeatureMap(feats, list(image_ids), p, self.facet, self.layer)

    def provenance(self):
        return {"pretrained": False, "weights": None, "note": "hand-made features, no learning"}


def torch_cat(tensors):
    import torch

    return torch.cat(tensors, dim=1)


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
            uisbench.Param("size", "int", 224, "square input side in pixels"),
            uisbench.Param("patch_size", "int", 16, "patch side in pixels"),
        ),
    )


@uisbench.hookimpl
def uisbench_metrics():
    yield uisbench.MetricSpec(
        name="example-masks-per-image",
        description="Example vendor metric: mean number of predicted masks per image.",
        factory=MasksPerImage,
        needs=frozenset({"predictions"}),
    )
