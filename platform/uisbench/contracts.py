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
    """How a backbone wants its pixels.

    ``resize="square"`` is the MaskCut way (every image to ``size x size``, aspect ratio not kept);
    ``resize="pad"`` keeps the aspect ratio, scales the long side to ``size`` and pads to a square.
    ``size`` is a multiple of ``patch_size``.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int
    patch_size: int
    resize: Literal["square", "pad"] = "square"

    def content_size(self, height: int, width: int) -> tuple[int, int]:
        """Size ``(h, w)`` in pixels of an image's content after resizing, before any padding."""
        if self.resize == "square":
            return self.size, self.size
        scale = self.size / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))


@dataclass
class FeatureMap:
    """Dense patch features of a batch: ``features`` is ``(B, C, h, w)``.

    ``valid`` (optional, ``(B, h, w)`` bool) marks patches that cover image pixels when the
    backbone padded; maskers ignore the rest.
    """

    features: torch.Tensor
    image_ids: list[int]
    patch_size: int
    facet: str
    layer: int
    valid: torch.Tensor | None = None


@dataclass
class EvalSample:
    """What a metric sees for one image at one stage."""

    record: ImageRecord
    ground_truth: list[GroundTruth] | None
    predictions: list[Prediction]
    features: torch.Tensor | None = None  # (C, h, w) patch features, when the metric needs them
    #: share of the feature grid's height and width that the image covers: 1 unless the backbone
    #: padded (``resize: pad``) and the last patch row/column is partly padding
    coverage: tuple[float, float] = (1.0, 1.0)


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

    The engine calls :meth:`preprocess` per image (in data-loader workers), stacks the results,
    moves them to :attr:`device` and calls :meth:`extract`.
    """

    preprocessing: Preprocessing
    facet: str = "key"
    layer: int = -1
    #: True for backbones that read ground truth (oracles). Set from the spec by the engine too.
    calibration: bool = False
    device: str = "cpu"

    @property
    def patch_size(self) -> int:
        return self.preprocessing.patch_size

    def to(self, device: str) -> Backbone:
        """Move to ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``); returns ``self``."""
        self.device = str(device)
        return self

    def bind(self, dataset: Dataset) -> None:  # noqa: B027 - optional hook
        """Called once with the dataset being processed; oracles read its ground truth here."""

    def provenance(self) -> dict[str, Any]:
        """What produced these features: weights file and hash, ``pretrained`` flag, timm tag."""
        return {}

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """uint8 ``(H, W, 3)`` -> normalised float ``(3, S, S)`` per :attr:`preprocessing`."""
        from ._imaging import preprocess_image

        return preprocess_image(image, self.preprocessing)

    @abc.abstractmethod
    def extract(self, pixels: torch.Tensor, image_ids: Sequence[int]) -> FeatureMap:
        """Features of a preprocessed batch ``(B, 3, S, S)`` on :attr:`device`."""


class Masker(abc.ABC):
    """Turns patch features into pseudo instance masks at image resolution."""

    device: str = "cpu"

    def to(self, device: str) -> Masker:
        self.device = str(device)
        return self

    @abc.abstractmethod
    def predict(self, features: FeatureMap, records: Sequence[ImageRecord]) -> list[list[Prediction]]:
        """For each image of the batch, its masks (COCO RLE at ``record.height x record.width``) with scores."""


class Student(abc.ABC):
    """A detector trained on pseudo-masks that predicts instances on new images."""

    device: str = "cpu"

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
    ) -> int | None:
        """Train on ``dataset``'s images with ``pseudo_masks`` (image id -> masks) as targets.

        Checkpoints go under ``workdir`` (atomically), so a killed run resumes from the last one.
        Returns the number of training samples this call processed (iterations run x batch size,
        resumed parts not included): the bench's training images/s is that over the call's wall time.
        ``None`` when unknown (then no throughput is reported).
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
