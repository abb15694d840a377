"""``oracle``: calibration features built from the ground truth, so the platform can check itself.

Each pixel's feature is ``a * class_vector + b * instance_vector`` (``a = 1``, ``b = instance_weight``),
background pixels get a background vector of their own; pixel features are averaged over each patch
and per-patch Gaussian noise of standard deviation ``noise`` is added. The vectors are drawn, then made
orthonormal per image (QR, in a fixed order: background, the image's classes sorted by name, its
instances), so that unrelated regions have cosine 0 and two instances of one class exactly
``1 / (1 + instance_weight**2)``. With raw random vectors unrelated regions reach cosines of +-0.3 at
64 channels, above MaskCut's tau (0.15/0.2), and the calibration would measure the draw, not the idea.

- a class vector is drawn per class name (seeded hash of ``seed`` and the name);
- an instance vector is drawn per instance (seeded by ``seed``, the image id and the instance's index
  in ``dataset.ground_truth(id)``);
- the noise is seeded by ``seed`` and the image id.

So the features are deterministic. ``instance_weight: 0`` gives an ideal *semantic* descriptor (two
instances of one class look the same), a large ``instance_weight`` an ideal *instance* descriptor.
The masks are resized with the backbone's resize policy (``square`` or ``pad``, as
:meth:`uisbench.Backbone.preprocess` does with the image), so the grid lines up with the pixels.

Oracles read the ground truth: their spec says ``calibration=True``, results built on them are listed
apart, and students refuse their features at prediction time. A dataset without ground truth is a
:class:`uisbench.IncompatibleError`: a combination that cannot run by design, so the bench records
the oracle's cells as ``skipped`` with the reason (a folder of your own photos exits 0).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import uisbench

if TYPE_CHECKING:
    import numpy as np
    import torch


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little")


def _unit(seed: int, dim: int) -> np.ndarray:
    import numpy as np

    v = np.random.default_rng(seed).standard_normal(dim)
    return v / np.linalg.norm(v)


def _orthonormal_rows(vectors: np.ndarray) -> np.ndarray:
    """Gram-Schmidt (via QR) of the rows in order, each keeping the sign of its drawn vector.

    With more vectors than channels they cannot all be orthogonal: returned as drawn.
    """
    import numpy as np

    if len(vectors) > vectors.shape[1]:
        return vectors
    q, r = np.linalg.qr(vectors.T)
    return (q * np.sign(np.where(np.diag(r) == 0, 1.0, np.diag(r)))).T


def check_params(params):
    """Problems the factory would raise (``platform validate`` runs this too)."""
    yield from uisbench.grid.check_grid_params(params)  # size a multiple of patch_size: two parameters


PARAMS = (
    uisbench.Param("instance_weight", "float", 1.0, "weight b of the instance vector relative to the class vector (0 = semantic only)",
                   ge=0),
    uisbench.Param("noise", "float", 0.05, "standard deviation of the Gaussian noise added to each patch feature", ge=0),
    uisbench.Param("dim", "int", 64, "feature channels", ge=2),
    *uisbench.grid.GRID_PARAMS,
    uisbench.Param("seed", "int", 0, "seed of the class, instance and noise vectors", ge=0),
)


class OracleBackbone(uisbench.GridBackbone):
    """Ground-truth features: class and instance vectors pooled to the patch grid, plus noise."""

    calibration = True

    def __init__(self, *, instance_weight: float = 1.0, noise: float = 0.05, dim: int = 64, size: int = 128,
                 patch_size: int = 8, resize: str = "square", seed: int = 0) -> None:
        where = "backbone oracle"
        uisbench.complete_params(where, PARAMS, dict(instance_weight=instance_weight, noise=noise, dim=dim, size=size,
                                                     patch_size=patch_size, resize=resize, seed=seed), check_params)
        super().__init__(size=size, patch_size=patch_size, resize=resize, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), where=where)
        self.instance_weight = float(instance_weight)
        self.noise = float(noise)
        self.dim = int(dim)
        self.seed = int(seed)
        self._class_vectors: dict[str, np.ndarray] = {}

    def bind(self, dataset: uisbench.Dataset) -> None:
        if not getattr(dataset, "has_ground_truth", False):
            raise uisbench.IncompatibleError(
                f"backbone oracle: dataset {dataset!r} has no ground truth; oracles only run on annotated datasets "
                "(e.g. synth-instances, coco-val2017). Pick a real backbone for this dataset."
            )
        super().bind(dataset)

    def provenance(self) -> dict[str, Any]:
        return {"model": "oracle", "pretrained": False, "weights": None, "weights_sha256": None, "calibration": True,
                "reads": "ground truth", "instance_weight": self.instance_weight, "noise": self.noise, "dim": self.dim,
                "seed": self.seed, **super().provenance()}

    def _class_vector(self, name: str) -> np.ndarray:
        if name not in self._class_vectors:
            self._class_vectors[name] = _unit(_seed("class", self.seed, name), self.dim)
        return self._class_vectors[name]

    def image_features(self, image_id: int) -> np.ndarray:
        """``(dim, g, g)`` float32 features of one image of the bound dataset."""
        import numpy as np

        if self.dataset is None:
            raise uisbench.DataError("backbone oracle: no dataset bound; call backbone.bind(dataset) before extract().")
        prep = self.preprocessing
        rec = self.dataset.record(image_id)
        gts = self.dataset.ground_truth(image_id)
        h, w = prep.content_size(rec.height, rec.width)
        s, p, g = prep.size, prep.patch_size, prep.grid
        # label map at the preprocessed resolution: 0 = background (or padding), i + 1 = instance i;
        # larger instances first so a smaller one lying on top stays visible where they overlap
        labels = np.zeros((s, s), dtype=np.int32)
        order = sorted(range(len(gts)), key=lambda i: -float(gts[i].area))
        for i in order:
            mask = uisbench.masks.decode(gts[i].segmentation)
            if mask.shape != (rec.height, rec.width):
                raise uisbench.DataError(
                    f"backbone oracle: image {image_id}: ground-truth mask {gts[i].id} is {mask.shape}, "
                    f"the image {rec.height}x{rec.width}; fix the annotation file."
                )
            labels[:h, :w][uisbench.masks.resize_mask(mask, h, w) > 0] = i + 1
        # vectors: row 0 background, row i + 1 instance i
        classes = sorted({gt.category for gt in gts})
        drawn = np.stack(
            [self._class_vector("\x00background")]
            + [self._class_vector(c) for c in classes]
            + [_unit(_seed("instance", self.seed, image_id, i), self.dim) for i in range(len(gts))]
        )
        basis = _orthonormal_rows(drawn)
        class_row = {c: basis[1 + k] for k, c in enumerate(classes)}
        instance_rows = basis[1 + len(classes) :]
        vectors = np.empty((len(gts) + 1, self.dim))
        vectors[0] = basis[0]
        for i, gt in enumerate(gts):
            vectors[i + 1] = class_row[gt.category] + self.instance_weight * instance_rows[i]
        # share of each label in each patch, then the pooled features
        rows, cols = np.indices((s, s))
        patch = (rows // p) * g + cols // p
        counts = np.bincount((labels * (g * g) + patch).ravel(), minlength=(len(gts) + 1) * g * g)
        share = counts.reshape(len(gts) + 1, g, g) / float(p * p)  # (K + 1, g, g)
        feats = np.tensordot(vectors.T, share, axes=1)  # (dim, g, g)
        if self.noise > 0:
            feats = feats + self.noise * np.random.default_rng(_seed("noise", self.seed, image_id)).standard_normal(feats.shape)
        return feats.astype(np.float32)

    def extract(self, pixels: torch.Tensor, image_ids: Sequence[int]) -> uisbench.FeatureMap:
        import numpy as np
        import torch

        feats = np.stack([self.image_features(int(i)) for i in image_ids])
        return self.feature_map(torch.from_numpy(feats).to(pixels.device), pixels, image_ids)


@uisbench.hookimpl
def uisbench_backbones():
    description = "Calibration: features built from the ground truth (class vector + instance_weight x instance vector + noise)."
    yield uisbench.BackboneSpec(name="oracle", description=description, factory=OracleBackbone, params=PARAMS, version="2",
                                check=check_params, calibration=True)
