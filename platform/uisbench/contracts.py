"""The contracts that the objects built by plugin factories fulfil.

Data flows through the pipeline as plain typed records::

    Dataset --ImageRecord, GroundTruth--> Backbone --FeatureMap--> Masker --Prediction--> Student
                                                                                     \\-> Metric

Every stage works on any subset of image ids, so a run can be split across processes (shards).
Masks travel as COCO RLE dicts (``{"size": [h, w], "counts": str}``), the format pycocotools reads.
torch and numpy are imported only under ``TYPE_CHECKING``: this module is free to import.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = [
    "ImageRecord",
    "GroundTruth",
    "Prediction",
    "Preprocessing",
    "FeatureMap",
    "EvalSample",
    "StageCost",
    "Dataset",
    "Backbone",
    "Masker",
    "EnsembleMasker",
    "Student",
    "Metric",
]

Split = Literal["train", "val"]


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset. ``file`` is ``None`` for images generated in memory."""

    id: int
    file: str | None
    width: int
    height: int


@dataclass(frozen=True)
class GroundTruth:
    """One class-agnostic ground-truth instance (COCO annotation, category collapsed to "object").

    ``category`` keeps the original class name for the instance-awareness analysis.
    ``bbox`` is COCO ``[x, y, w, h]`` in pixels.
    """

    id: int
    image_id: int
    segmentation: dict[str, Any]
    bbox: tuple[float, float, float, float]
    area: float
    iscrowd: int = 0
    category: str = "object"


@dataclass(frozen=True)
class Prediction:
    """One predicted instance (a pseudo-mask or a student detection), COCO results format."""

    image_id: int
    segmentation: dict[str, Any]
    bbox: tuple[float, float, float, float]
    score: float

    def to_coco(self, category_id: int = 1) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "category_id": category_id,
            "segmentation": dict(self.segmentation),
            "bbox": [float(v) for v in self.bbox],
            "score": float(self.score),
        }

    @classmethod
    def from_coco(cls, item: Mapping[str, Any]) -> Prediction:
        return cls(
            image_id=int(item["image_id"]),
            segmentation=dict(item["segmentation"]),
            bbox=tuple(float(v) for v in item["bbox"]),  # type: ignore[arg-type]
            score=float(item["score"]),
        )


@dataclass(frozen=True)
class Preprocessing:
    """How a backbone wants its pixels, and where they land on its patch grid.

    ``resize="square"`` is the MaskCut way (every image to ``size x size``, aspect ratio not kept);
    ``resize="pad"`` keeps the aspect ratio, scales the long side to ``size`` and pads the bottom and
    right to a square, so the content sits at the top left. ``size`` is a multiple of ``patch_size``.

    The geometry of the ``grid x grid`` patch grid (every stage reads it from here):

    - :meth:`content_size`: the content's size in pixels inside the ``size x size`` frame;
    - :meth:`content_grid`: the patch rows and columns holding content (partly covered ones count),
      i.e. the valid rectangle ``[0, rows) x [0, cols)`` that :attr:`FeatureMap.valid` marks;
    - :meth:`coverage`: the share of that rectangle the content covers (below 1 when the last patch
      row or column is partly padding).

    Example, a 100 x 70 (width x height) image in a 64 px frame of 16 px patches::

        prep = Preprocessing((0, 0, 0), (1, 1, 1), size=64, patch_size=16, resize="pad")
        prep.content_size(70, 100)  # (45, 64): height, width in pixels
        prep.content_grid(70, 100)  # (3, 4): patch rows, columns with content
        prep.coverage(70, 100)      # (45 / 48, 1.0)
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int
    patch_size: int
    resize: Literal["square", "pad"] = "square"

    @property
    def grid(self) -> int:
        """Patches per side of the frame (``size // patch_size``)."""
        return self.size // self.patch_size

    def content_size(self, height: int, width: int) -> tuple[int, int]:
        """Size ``(h, w)`` in pixels of an image's content after resizing, before any padding."""
        if self.resize == "square":
            return self.size, self.size
        scale = self.size / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def content_grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch rows and columns ``(rows, cols)`` that hold content of a ``height x width`` image."""
        h, w = self.content_size(height, width)
        return -(-h // self.patch_size), -(-w // self.patch_size)

    def coverage(self, height: int, width: int, grid: tuple[int, int] | None = None) -> tuple[float, float]:
        """Share of a patch rectangle's height and width that a ``height x width`` image's content
        covers; the rectangle is ``grid`` ``(rows, cols)`` patches from the top left, by default the
        valid one (:meth:`content_grid`). ``(1.0, 1.0)`` for ``square``."""
        rows, cols = self.content_grid(height, width) if grid is None else grid
        h, w = self.content_size(height, width)
        p = self.patch_size
        return min(1.0, h / max(1, rows * p)), min(1.0, w / max(1, cols * p))


@dataclass
class FeatureMap:
    """Dense patch features of a batch: ``features`` is ``(B, C, h, w)``.

    ``valid`` (optional, ``(B, h, w)`` bool) marks patches that cover image pixels when the
    backbone padded (``resize: pad``, see :class:`Preprocessing`: content at the top left); maskers
    ignore the rest. ``facet`` / ``layer`` name where the features come from, for backbones that have
    such a thing (a ViT's attention keys of its last block); ``None`` otherwise.

    Geometry for maskers: :meth:`valid_rect` (the patches to use), :meth:`crop`, :meth:`content_size`
    (the pixels those patches hold, to upsample masks without stretching a partly padded edge).
    """

    features: torch.Tensor
    image_ids: list[int]
    patch_size: int
    facet: str | None = None
    layer: int | None = None
    valid: torch.Tensor | None = None

    @property
    def grid(self) -> tuple[int, int]:
        """``(h, w)``: patch rows and columns of the feature grid."""
        return int(self.features.shape[-2]), int(self.features.shape[-1])

    def check_geometry(self, preprocessing: Preprocessing, where: str) -> None:
        """Refuse a feature map off the grid its backbone declares: ``preprocessing.size`` px in
        ``patch_size`` px patches is a ``grid x grid`` map (a 32 x 32 map for 8 px patches on 128 px
        input would put every mask in the wrong place). A :class:`uisbench.PluginError` naming both."""
        from .errors import PluginError

        g, p = preprocessing.grid, int(preprocessing.patch_size)
        problems = []
        if self.grid != (g, g):
            problems.append(f"a {self.grid[0]} x {self.grid[1]} feature grid, but its preprocessing declares "
                            f"{preprocessing.size} px input in {p} px patches, a {g} x {g} grid")
        if int(self.patch_size) != p:
            problems.append(f"feature maps of {self.patch_size} px patches, but its preprocessing declares {p} px")
        if self.valid is not None and tuple(self.valid.shape[-2:]) != self.grid:
            problems.append(f"a valid mask of {tuple(self.valid.shape[-2:])} for a {self.grid[0]} x {self.grid[1]} grid")
        if problems:
            raise PluginError(f"{where} returned {'; and '.join(problems)}. Make extract() return the declared grid "
                              "(uisbench.GridBackbone.feature_map) or declare the size and patch_size it uses.")

    def valid_rect(self, index: int) -> tuple[int, int, int, int]:
        """``(row0, row1, col0, col1)``: bounding rectangle of image ``index``'s valid patches (the
        whole grid without ``valid``, or when no patch is valid)."""
        h, w = self.grid
        if self.valid is None:
            return 0, h, 0, w
        valid = self.valid[index]
        rows = valid.any(dim=1).nonzero().flatten()
        cols = valid.any(dim=0).nonzero().flatten()
        if rows.numel() == 0 or cols.numel() == 0:
            return 0, h, 0, w
        return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1

    def crop(self, index: int) -> torch.Tensor:
        """Image ``index``'s features on its :meth:`valid_rect`: ``(C, row1 - row0, col1 - col0)``."""
        r0, r1, c0, c1 = self.valid_rect(index)
        return self.features[index, :, r0:r1, c0:c1]

    def content_size(self, index: int, height: int, width: int) -> tuple[int, int] | None:
        """Pixels ``(h, w)`` of content inside image ``index``'s valid rectangle, for an image of
        ``height x width`` padded as :class:`Preprocessing` ``resize: pad`` does (into a square frame of
        ``grid x patch_size`` pixels, content at the top left). ``None`` without ``valid`` (every patch
        is content) or when ``valid`` does not follow that policy."""
        if self.valid is None:
            return None
        g_h, g_w = self.grid
        if g_h != g_w:
            return None
        p = int(self.patch_size)
        prep = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), size=g_h * p, patch_size=p, resize="pad")
        rows, cols = prep.content_grid(height, width)
        if self.valid_rect(index) != (0, rows, 0, cols):
            return None
        return prep.content_size(height, width)


@dataclass
class EvalSample:
    """What a metric sees for one image at one stage.

    ``features`` ``(C, h, w)`` are the patch features on the image's valid rectangle (only for metrics
    that need them); ``preprocessing`` is the backbone's, which says how that grid lines up with the
    image's pixels (e.g. :meth:`Preprocessing.coverage` with ``grid=(h, w)``).
    """

    record: ImageRecord
    ground_truth: list[GroundTruth] | None
    predictions: list[Prediction]
    features: torch.Tensor | None = None
    preprocessing: Preprocessing | None = None


@dataclass(frozen=True)
class StageCost:
    """Cost of one pipeline stage, given to metrics that declare ``needs={"cost"}``."""

    stage: str
    images: int
    seconds: float
    peak_host_mb: float
    peak_gpu_mb: float | None
    device: str
    hardware: str


# ---------------------------------------------------------------------------------------------
# Contracts
# ---------------------------------------------------------------------------------------------


class Dataset(abc.ABC):
    """A split of a dataset: images and, when it has them, class-agnostic ground truth."""

    #: ``False`` for image folders without annotations; metrics needing ground truth are skipped.
    has_ground_truth: bool = True
    #: train split only: ``True`` when it holds the evaluation (val) images, so a student trained on it
    #: has seen them. The bench also compares image files and fingerprints, records the answer in
    #: results.json and shows it in the leaderboard.
    transductive: bool = False
    #: ``(id, file, reason)`` of images skipped with ``skip_bad_images``; reported in results.
    skipped: list[dict[str, Any]]

    @abc.abstractmethod
    def image_ids(self) -> list[int]:
        """All image ids of this split, sorted."""

    @abc.abstractmethod
    def record(self, image_id: int) -> ImageRecord:
        """The :class:`ImageRecord` of one image."""

    @abc.abstractmethod
    def load_image(self, image_id: int) -> np.ndarray:
        """The decoded image: ``uint8`` RGB ``(height, width, 3)``, EXIF orientation applied."""

    def ground_truth(self, image_id: int) -> list[GroundTruth]:
        """Class-agnostic instances of one image (empty list when there are none)."""
        return []

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A short hash that changes whenever images or annotations change (enters cache keys)."""

    def coco_ground_truth(self, image_ids: Iterable[int] | None = None) -> dict[str, Any]:
        """Class-agnostic COCO ground-truth dict (one category, id 1) for pycocotools."""
        ids = self.image_ids() if image_ids is None else list(image_ids)
        images, annotations = [], []
        for image_id in ids:
            rec = self.record(image_id)
            images.append({"id": rec.id, "file_name": rec.file or f"{rec.id}.png", "width": rec.width, "height": rec.height})
            for gt in self.ground_truth(image_id):
                annotations.append(
                    {
                        "id": gt.id,
                        "image_id": gt.image_id,
                        "category_id": 1,
                        "segmentation": dict(gt.segmentation),
                        "bbox": list(gt.bbox),
                        "area": float(gt.area),
                        "iscrowd": int(gt.iscrowd),
                    }
                )
        return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}


class Backbone(abc.ABC):
    """Turns a batch of images into dense patch features ``(B, C, h, w)``.

    The engine calls :meth:`bind` with the dataset, :meth:`to` with the run's device, then per image
    :meth:`preprocess` (in data-loader workers), stacks the results, moves them to :attr:`device` and
    calls :meth:`extract`.

    - ``facet`` / ``layer``: where the features are taken (a ViT's attention ``key`` of block ``-1``);
      ``None`` for backbones without such a choice (a CNN, hand-made features).
    - :meth:`provenance` says what produced the features; results.json keeps it whole. The leaderboard
      reads ``pretrained`` (bool: real weights, or a random initialisation or no learning at all) and
      shows it beside every row; ``weights`` (the file) and ``weights_sha256`` identify the weights.
    - Backbones on a square patch grid can start from :class:`uisbench.GridBackbone`.
    """

    preprocessing: Preprocessing
    facet: str | None = None
    layer: int | None = None
    #: True for reference backbones (oracles that read ground truth, controls). Set from the spec by the engine too.
    calibration: bool = False
    device: str = "cpu"

    @property
    def patch_size(self) -> int:
        return self.preprocessing.patch_size

    def to(self, device: str) -> Backbone:
        """Move to ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``) and set :attr:`device`; returns ``self``.

        A backbone holding a torch module moves it too (override, then call ``super().to(device)``)."""
        self.device = str(device)
        return self

    def bind(self, dataset: Dataset) -> None:  # noqa: B027 - optional hook
        """Called once with the dataset being processed; oracles read its ground truth here."""

    def provenance(self) -> dict[str, Any]:
        """What produced these features: ``pretrained`` (read by the leaderboard), ``weights`` and
        ``weights_sha256`` (see :func:`uisbench.io.file_sha256`), the model name or timm tag, ..."""
        return {}

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """uint8 ``(H, W, 3)`` -> normalised float ``(3, S, S)`` per :attr:`preprocessing`."""
        from ._imaging import preprocess_image

        return preprocess_image(image, self.preprocessing)

    @abc.abstractmethod
    def extract(self, pixels: torch.Tensor, image_ids: Sequence[int]) -> FeatureMap:
        """Features of a preprocessed batch ``(B, 3, S, S)`` on :attr:`device`.

        The engine calls it under ``torch.inference_mode()``: no autograd graph is recorded, and the
        returned tensors are inference tensors (they cannot be saved for backward; ``.clone()`` one
        outside inference mode to use it in training). Return float features on :attr:`device`; the
        engine copies them to the CPU as float32.
        """


class Masker(abc.ABC):
    """Turns patch features into pseudo instance masks at image resolution.

    Maskers that compute masks on the patch grid start from :class:`uisbench.GridMasker`, which does
    the grouping, chunking, device moves and upsampling; they implement one step per chunk.
    """

    device: str = "cpu"

    def to(self, device: str) -> Masker:
        self.device = str(device)
        return self

    @abc.abstractmethod
    def predict(self, features: FeatureMap, records: Sequence[ImageRecord]) -> list[list[Prediction]]:
        """For each image of the batch, its masks (COCO RLE at ``record.height x record.width``) with scores."""


class EnsembleMasker(abc.ABC):
    """Combines other cells' pseudo-masks of one image into new ones (e.g. VoteCut's voting).

    Its spec says ``consumes="pseudo-masks"`` and its ``members`` parameter names the
    ``"backbone/masker"`` registry pairs whose masks it combines; the bench computes (and caches)
    those first. An ensemble's masks do not depend on the row's backbone: every row shares them, and
    the student of a cell still trains on that row's features.
    """

    device: str = "cpu"

    def to(self, device: str) -> EnsembleMasker:
        self.device = str(device)
        return self

    @abc.abstractmethod
    def combine(self, candidates: Sequence[Sequence[Prediction]], record: ImageRecord) -> list[Prediction]:
        """One image's masks from ``candidates[i]``, the masks member ``i`` gave it (in ``members``
        order; COCO RLE at ``record.height x record.width``), with scores."""


class Student(abc.ABC):
    """A detector trained on pseudo-masks that predicts instances on new images.

    Under ``torchrun`` (several ranks) the bench initialises ``torch.distributed``'s default process
    group first (gloo on CPU, nccl on CUDA with one device per rank, given to :meth:`to`). What it then
    calls depends on :attr:`distributed`:

    - ``False`` (default): :meth:`fit`, :meth:`predict` and :meth:`provenance` run on rank 0 alone, as
      in one process; the other ranks wait.
    - ``True``: the student is built on every rank, and :meth:`fit` and :meth:`predict` are called on
      every rank with the same arguments (collective calls). :meth:`fit` trains on all ranks and its
      result must not depend on their number (``batch_size``-like settings are global); only rank 0
      writes into ``workdir``, which every rank can read (a shared file system); every rank returns
      the global sample count. :meth:`predict` returns the predictions of every image on rank 0 (the
      other ranks may return an empty dict). :meth:`provenance` is called on rank 0.
    """

    device: str = "cpu"
    #: Whether :meth:`fit` and :meth:`predict` run on every torchrun rank (see the class docstring).
    distributed: bool = False

    def to(self, device: str) -> Student:
        self.device = str(device)
        return self

    @abc.abstractmethod
    def fit(
        self,
        dataset: Dataset,
        pseudo_masks: Mapping[int, list[Prediction]],
        *,
        workdir: Path,
        seed: int = 0,
        init_from: Path | None = None,
    ) -> int | None:
        """Train on ``dataset``'s images with ``pseudo_masks`` (image id -> masks) as targets.

        Checkpoints go under ``workdir`` (atomically), so a killed run resumes from the last one.
        ``init_from`` (optional; the few-label stage passes it) is the ``workdir`` of a finished
        ``fit`` of the same student entry: start from those weights instead of the student's own
        init (fine-tuning); the targets are then ground truth. A student that cannot do this omits
        the argument and the bench skips its pseudo-mask-initialised curve with a reason.
        Returns the number of training samples this call processed (iterations run x batch size,
        resumed parts not included; under torchrun all ranks' together, not one rank's): the bench's
        training images/s is that over the call's wall time. ``None`` when unknown (then no
        throughput is reported).
        """

    @abc.abstractmethod
    def predict(self, dataset: Dataset, image_ids: Sequence[int]) -> dict[int, list[Prediction]]:
        """Detections per image id (COCO results: RLE masks, boxes, scores)."""

    def provenance(self) -> dict[str, Any]:
        """Training recipe as run (DropLoss on/off, self-training rounds, init weights ...)."""
        return {}


#: How a declared metric state combines across shards (torchrun ranks), see :meth:`Metric.add_state`.
MERGE_RULES = ("sum", "max", "min", "extend", "union")


class Metric(abc.ABC):
    """Accumulates per-image evidence in declared states and computes named values (torchmetrics' contract).

    A subclass calls ``super().__init__()``, declares its state with :meth:`add_state`, and implements
    :meth:`update` (mutates state, returns ``None``) and :meth:`compute` (pure). :meth:`reset`,
    :meth:`state` and :meth:`merge` (shards under torchrun) come from the declared states, so
    parameters such as ``max_dets`` are never merged by accident.

    - ``higher_is_better``: the direction of every value :meth:`compute` returns; the one source of
      the directions (a class attribute, or set in ``__init__`` when the names depend on parameters).
    - ``headline``: the values the leaderboard shows by default and reports confidence intervals for.
    - :meth:`resample` (optional): values on bootstrap resamples of the images, for those intervals.

    Example::

        class MaskCount(uisbench.Metric):
            higher_is_better = {"masks_per_image": False}
            headline = ("masks_per_image",)

            def __init__(self):
                super().__init__()
                self.add_state("masks", default={}, merge="union")  # image id -> mask count

            def update(self, sample):
                self.masks[sample.record.id] = len(sample.predictions)

            def compute(self):
                return {"masks_per_image": sum(self.masks.values()) / len(self.masks) if self.masks else math.nan}
    """

    higher_is_better: Mapping[str, bool] = {}
    headline: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._states: dict[str, tuple[Any, str]] = {}

    def add_state(self, name: str, default: Any, merge: str) -> None:
        """Declare state ``name`` (reset to a copy of ``default``) and how shards combine it:
        ``sum`` / ``max`` / ``min`` for numbers, ``extend`` for lists, ``union`` for dicts keyed by
        image id (keys must not repeat across shards: an image belongs to one shard)."""
        import copy

        if merge not in MERGE_RULES:
            raise ValueError(f"{type(self).__name__}.add_state({name!r}): merge must be one of {', '.join(MERGE_RULES)}, got {merge!r}")
        if not hasattr(self, "_states"):
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before add_state()")
        self._states[name] = (copy.deepcopy(default), merge)
        setattr(self, name, copy.deepcopy(default))

    def reset(self) -> None:
        """Every declared state back to its default."""
        import copy

        for name, (default, _) in self._states.items():
            setattr(self, name, copy.deepcopy(default))

    @abc.abstractmethod
    def update(self, sample: EvalSample) -> None:
        """Add one image's evidence."""

    def observe_cost(self, cost: StageCost) -> None:  # noqa: B027 - optional hook
        """Receive the cost of a pipeline stage (only metrics that need ``cost``)."""

    @abc.abstractmethod
    def compute(self) -> dict[str, float]:
        """The metric's values, keyed as in :attr:`higher_is_better`."""

    def describe(self) -> dict[str, str]:
        """Facts about the values as text (e.g. the hardware a cost was measured on); goes into the
        results' ``info``."""
        return {}

    def resample(self, draws: Sequence[Sequence[int]]) -> list[dict[str, float]] | None:
        """The :attr:`headline` values on each bootstrap resample of the images (``draws``: lists of
        image ids, with repeats; an id appearing twice counts twice). ``None``: no intervals."""
        return None

    def state(self) -> dict[str, Any]:
        """The declared states, for merging shards (plain, picklable values)."""
        return {name: getattr(self, name) for name in self._states}

    def merge(self, states: Sequence[Mapping[str, Any]]) -> None:
        """Merge other shards' :meth:`state` into this one, each state by its declared rule."""
        for other in states:
            for name, (_, rule) in self._states.items():
                mine, theirs = getattr(self, name), other[name]
                if rule == "sum":
                    setattr(self, name, mine + theirs)
                elif rule == "max":
                    setattr(self, name, max(mine, theirs))
                elif rule == "min":
                    setattr(self, name, min(mine, theirs))
                elif rule == "extend":
                    mine.extend(theirs)
                else:
                    overlap = mine.keys() & theirs.keys()
                    if overlap:
                        raise ValueError(
                            f"{type(self).__name__}: shards overlap on {name} keys {sorted(overlap)[:5]}; "
                            "each image must be scored by one shard"
                        )
                    mine.update(theirs)
