"""Base classes for plugins that work on a square patch grid: :class:`GridBackbone` and :class:`GridMasker`.

A grid backbone turns each ``size x size`` frame (see :class:`uisbench.Preprocessing`) into one
feature vector per ``patch_size`` patch; a grid masker cuts that grid into masks. What every such
plugin shares lives here, so a plugin writes only its own step:

- :class:`GridBackbone`: the :data:`GRID_PARAMS` (``size``, ``patch_size``, ``resize``) and their
  check (:func:`check_grid_params`), the :class:`uisbench.Preprocessing`, the bound dataset, and the
  ``valid`` patches of padded frames (:meth:`GridBackbone.valid`, :meth:`GridBackbone.feature_map`);
- :class:`GridMasker`: grouping a batch by the size of each image's valid patch rectangle,
  memory-bounded chunking (:data:`MEMORY_PARAM`), moving to the masker's device, checking the
  features are finite, and upsampling grid masks to image size (:func:`grid_predictions`).

torch and numpy are imported inside the functions: importing this module is free.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .contracts import Backbone, FeatureMap, ImageRecord, Masker, Prediction, Preprocessing
from .errors import ConfigError, DataError, raise_problems
from .types import Param, ParamProblem

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .contracts import Dataset

__all__ = ["RESIZE_POLICIES", "GRID_PARAMS", "MEMORY_PARAM", "check_grid_params", "GridBackbone", "GridMasker", "grid_predictions"]

#: The resize policies of :class:`uisbench.Preprocessing`.
RESIZE_POLICIES = ("square", "pad")

#: Input geometry of a grid backbone, sized for synth-instances on CPU: add them to the spec's params.
GRID_PARAMS = (
    Param("size", "int", 128, "square input side in pixels (a multiple of patch_size)", ge=1),
    Param("patch_size", "int", 8, "patch side in pixels", ge=1),
    Param("resize", "str", "square", "square: stretch to size x size; pad: keep aspect ratio, pad", choices=RESIZE_POLICIES),
)

#: How much memory one chunk of images may take in a :class:`GridMasker`: add it to the spec's params.
MEMORY_PARAM = Param(
    "memory_gb", "float", None, "memory per chunk of images; null = 2 GiB on CPU, 1/4 of free GPU memory", nullable=True,
    gt=0,
)


def check_grid_params(params: Mapping[str, Any], *, patch_size: int | None = None) -> Iterator[ParamProblem]:
    """Problems of the :data:`GRID_PARAMS` values in ``params`` (``resize`` optional): usable as a
    spec's ``check``, or chained from one (``yield from check_grid_params(params)``).

    A backbone with a fixed patch size (no ``patch_size`` parameter) passes it:
    ``check=lambda p: check_grid_params(p, patch_size=14)``; ``params["patch_size"]`` wins if both."""
    size, patch = params.get("size"), params.get("patch_size", patch_size)
    if size is None or patch is None:
        missing = "size" if size is None else "patch_size"
        yield missing, (f"check_grid_params needs {missing!r}: declare the parameter (uisbench.grid.GRID_PARAMS)"
                        + (", or pass the fixed one: check_grid_params(params, patch_size=N)" if missing == "patch_size" else ""))
        return
    if patch <= 0:
        yield "patch_size", f"must be positive, got {patch}"
    elif size <= 0 or size % patch:
        lo = max(patch, size // patch * patch)
        yield "size", f"{size} is not a positive multiple of the patch size {patch}; use e.g. {lo} or {lo + patch}"
    resize = params.get("resize", "square")
    if resize not in RESIZE_POLICIES:
        yield "resize", f"must be one of {', '.join(RESIZE_POLICIES)}, got {resize!r}"


# ---------------------------------------------------------------------------------------------
# Backbones
# ---------------------------------------------------------------------------------------------


class GridBackbone(Backbone):
    """A backbone giving one feature vector per patch of its ``size x size`` input frame.

    ``__init__`` checks the :data:`GRID_PARAMS` values (a :class:`uisbench.ConfigError` naming
    ``where``) and sets :attr:`preprocessing`; :meth:`bind` keeps the dataset in :attr:`dataset`. A
    subclass implements :meth:`extract` and returns :meth:`feature_map`, which marks the ``valid``
    patches of padded frames (``resize: pad``). Example, mean colour per patch::

        class MeanColour(uisbench.GridBackbone):
            def __init__(self, size=224, patch_size=16, resize="square"):
                super().__init__(size=size, patch_size=patch_size, resize=resize, where="backbone mean-colour")

            def extract(self, pixels, image_ids):
                import torch.nn.functional as F

                features = F.avg_pool2d(pixels.to(self.device), self.patch_size)  # (B, 3, grid, grid)
                return self.feature_map(features, pixels, image_ids)

            def provenance(self):
                no_weights = {"pretrained": False, "weights": None, "weights_sha256": None}
                return {"model": "mean-colour", **no_weights, **super().provenance()}

        spec = uisbench.BackboneSpec(name="mean-colour", description="Mean colour per patch.", factory=MeanColour,
                                     params=uisbench.grid.GRID_PARAMS, check=uisbench.grid.check_grid_params)
    """

    #: the dataset given to :meth:`bind` (``None`` before)
    dataset: Dataset | None = None

    def __init__(
        self,
        *,
        size: int,
        patch_size: int,
        resize: str = "square",
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        where: str = "backbone",
    ) -> None:
        raise_problems(where, check_grid_params({"size": size, "patch_size": patch_size, "resize": resize}))
        self.preprocessing = Preprocessing(
            mean=tuple(mean), std=tuple(std), size=size, patch_size=patch_size, resize=resize  # type: ignore[arg-type]
        )
        self.dataset = None

    def bind(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def provenance(self) -> dict[str, Any]:
        """The frame's geometry (``size``, ``patch_size``, ``resize``). A subclass adds what produced
        its features: ``{"model": ..., "pretrained": ..., "weights": ..., **super().provenance()}``."""
        prep = self.preprocessing
        return {"size": prep.size, "patch_size": prep.patch_size, "resize": prep.resize}

    def valid(self, pixels: torch.Tensor, image_ids: Sequence[int]) -> torch.Tensor | None:
        """``(B, grid, grid)`` bool on ``pixels``' device: the patches holding content for ``resize:
        pad`` (:meth:`uisbench.Preprocessing.content_grid`); ``None`` for ``square`` (all of them).

        The image sizes come from the bound dataset's records; without a dataset, padding is
        recognised as the all-zero bottom rows / right columns that :meth:`preprocess` writes.
        """
        import torch

        prep = self.preprocessing
        if prep.resize == "square":
            return None
        g, p = prep.grid, prep.patch_size
        valid = torch.zeros((len(image_ids), g, g), dtype=torch.bool)
        for i, image_id in enumerate(image_ids):
            if self.dataset is not None:
                rec = self.dataset.record(int(image_id))
                rows, cols = prep.content_grid(rec.height, rec.width)
            else:
                nonzero = pixels[i].detach().abs().sum(0).cpu() > 0
                last_row = torch.nonzero(nonzero.any(1)).flatten()
                last_col = torch.nonzero(nonzero.any(0)).flatten()
                rows = -(-(int(last_row.max()) + 1) // p) if len(last_row) else g
                cols = -(-(int(last_col.max()) + 1) // p) if len(last_col) else g
            valid[i, :rows, :cols] = True
        return valid.to(pixels.device)

    def feature_map(self, features: torch.Tensor, pixels: torch.Tensor, image_ids: Sequence[int]) -> FeatureMap:
        """The :class:`uisbench.FeatureMap` of ``features`` ``(B, C, grid, grid)`` computed from
        ``pixels``: this backbone's patch size, facet and layer, and :meth:`valid`."""
        ids = [int(i) for i in image_ids]
        return FeatureMap(features, ids, self.patch_size, self.facet, self.layer, self.valid(pixels, ids))


# ---------------------------------------------------------------------------------------------
# Maskers
# ---------------------------------------------------------------------------------------------


def grid_predictions(
    record: ImageRecord,
    masks: Sequence[np.ndarray],
    scores: Sequence[float],
    patch_size: int,
    content: tuple[int, int] | None = None,
) -> list[Prediction]:
    """Masks on a patch grid -> :class:`uisbench.Prediction` at ``record``'s resolution, best score first.

    ``content`` ``(h, w)``: the pixels of image content the grid holds (:meth:`uisbench.FeatureMap.content_size`)
    when its last row/column of patches is partly padding; each grid cell is then expanded to
    ``patch_size`` pixels and cut to those ``h x w`` pixels before the (nearest) resize, so masks do
    not stretch. Without it the grid is resized to the image as it is. Masks that are empty on the
    grid or after resizing are dropped.
    """
    import numpy as np

    from . import masks as mask_utils

    preds = []
    for m, sc in zip(masks, scores, strict=False):
        if not m.any():
            continue
        m = m.astype(np.uint8)
        if content is not None:
            rows, cols = content
            m = np.repeat(np.repeat(m, patch_size, axis=0), patch_size, axis=1)[:rows, :cols]
        full = mask_utils.resize_mask(m, record.height, record.width)
        if not full.any():
            continue
        rle = mask_utils.encode(full)
        preds.append(Prediction(record.id, rle, mask_utils.to_bbox(rle), float(sc)))
    preds.sort(key=lambda p: -p.score)
    return preds


class GridMasker(Masker):
    """A masker that computes masks on the patch grid, a chunk of images at a time.

    :meth:`predict` does what every grid masker shares: it groups the batch by the size of each
    image's valid patch rectangle (:meth:`uisbench.FeatureMap.valid_rect`: padding never enters),
    cuts each group into chunks that fit ``memory_gb`` (:meth:`chunk_size`), moves them to
    :attr:`device` as float32, checks they are finite (a :class:`uisbench.DataError` naming the
    images), calls :meth:`grid_masks` per chunk and upsamples its masks to each image's size
    (:func:`grid_predictions`). A subclass implements :meth:`grid_masks`, sets :attr:`name` (for
    messages) and, when its memory per image is not ~40 bytes per pair of patches,
    :attr:`bytes_per_token_pair`. Example, the patches brighter than the mean::

        class Brightest(uisbench.GridMasker):
            name = "brightest"

            def __init__(self, *, memory_gb=None):
                super().__init__(memory_gb=memory_gb)  # checks it

            def grid_masks(self, features, image_ids, patch_size):
                out = []
                for norms in features.norm(dim=1):  # (h, w) per image
                    mask = (norms > norms.mean()).cpu().numpy()
                    out.append(([mask], [float(mask.mean())]))
                return out

        spec = uisbench.MaskerSpec(name="brightest", description="Patches brighter than the mean.",
                                   factory=Brightest, params=(uisbench.grid.MEMORY_PARAM,))
    """

    #: the masker's name in error messages
    name: str = "masker"
    #: bytes one image of a chunk needs per pair of its patch tokens (an ``n x n`` graph in a few
    #: precisions); with the grid's token count it sizes the chunks
    bytes_per_token_pair: int = 40
    #: memory budget of a chunk in GiB; ``None``: 2 GiB on the CPU, a quarter of the free memory on CUDA
    memory_gb: float | None = None

    def __init__(self, *, memory_gb: float | None = None) -> None:
        if memory_gb is not None and not memory_gb > 0:
            raise ConfigError(f"masker {self.name}: memory_gb must be > 0 or null, got {memory_gb}.")
        self.memory_gb = memory_gb

    @abc.abstractmethod
    def grid_masks(
        self, features: torch.Tensor, image_ids: Sequence[int], patch_size: int
    ) -> list[tuple[list[np.ndarray], list[float]]]:
        """Masks of one chunk: ``features`` is ``(B, C, h, w)`` float32 on :attr:`device`, one grid
        size, valid patches only (finite); ``image_ids`` its images; ``patch_size`` in pixels. Returns
        per image its masks (bool ``(h, w)`` arrays on that grid) and their scores in ``[0, 1]``."""

    def chunk_size(self, n_tokens: int) -> int:
        """How many images of ``n_tokens`` patches one chunk takes: ``memory_gb`` (or the default
        budget) over ``bytes_per_token_pair * n_tokens ** 2``, at least 1."""
        if self.memory_gb is not None:
            budget = int(self.memory_gb * (1 << 30))
        elif str(self.device).startswith("cuda"):
            import torch

            free, _ = torch.cuda.mem_get_info(torch.device(self.device))
            budget = int(free // 4)
        else:
            budget = 2 << 30
        return max(1, int(budget // max(1, self.bytes_per_token_pair * n_tokens * n_tokens)))

    def patch_masks(self, features: FeatureMap) -> list[tuple[list[np.ndarray], list[float]]]:
        """Per image of the batch, :meth:`grid_masks`' masks and scores on its valid patch rectangle."""
        import torch

        from .spectral import check_finite

        groups: dict[tuple[int, int, int, int], list[int]] = {}
        for b in range(features.features.shape[0]):
            groups.setdefault(features.valid_rect(b), []).append(b)
        results: list[Any] = [None] * len(features.image_ids)
        for (r0, r1, c0, c1), idx in groups.items():
            feats = features.features[idx][:, :, r0:r1, c0:c1].to(self.device, torch.float32)
            step = self.chunk_size(feats.shape[2] * feats.shape[3])
            for start in range(0, len(idx), step):
                part = idx[start : start + step]
                ids = [features.image_ids[i] for i in part]
                chunk = feats[start : start + step]
                check_finite(chunk, ids)
                out = self.grid_masks(chunk, ids, int(features.patch_size))
                if len(out) != len(part):
                    raise ValueError(f"masker {self.name}: grid_masks returned {len(out)} results for {len(part)} images")
                for i, r in zip(part, out, strict=True):
                    results[i] = r
        return results

    def predict(self, features: FeatureMap, records: Sequence[ImageRecord]) -> list[list[Prediction]]:
        if len(records) != len(features.image_ids):
            raise DataError(
                f"masker {self.name}: {len(records)} records for {len(features.image_ids)} feature maps; "
                "pass one record per image."
            )
        p = int(features.patch_size)
        return [
            grid_predictions(rec, masks, scores, p, features.content_size(b, rec.height, rec.width))
            for b, (rec, (masks, scores)) in enumerate(zip(records, self.patch_masks(features), strict=True))
        ]
