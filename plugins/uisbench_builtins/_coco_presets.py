"""What a ``coco`` entry can say: its parameters (:data:`PARAMS`), the presets that fill them
(:data:`PRESETS`, with where to download each), the default root folder and the file lists the
plugin ships (:func:`builtin_file_list`).

Private helper of :mod:`uisbench_builtins.coco`, which re-exports these names.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import uisbench
from uisbench.data import SAFETY_PARAMS

DEFAULT_ROOT = "~/datasets/coco"
ROOT_ENV = "UISBENCH_COCO_ROOT"

PRESETS: dict[str, dict[str, Any]] = {
    "coco-val2017": {
        "images": "val2017",
        "annotations": "annotations/instances_val2017.json",
        "train_images": "train2017",
        "train_annotations": "annotations/instances_train2017.json",
    },
    "coco20k": {
        "images": "train2014",
        "annotations": "annotations/instances_train2014.json",
        "file_list": "coco20k",
        "transductive": True,
    },
    "lvis-val": {
        # LVIS v1 val images come from COCO train2017 and val2017; its json names them by coco_url.
        "images": ".",
        "annotations": "annotations/lvis_v1_val.json",
        "max_dets": 300,
        "transductive": True,
    },
}

DOWNLOADS = {
    "coco-val2017": "http://images.cocodataset.org/zips/val2017.zip (and train2017.zip for the student's train "
    "split) and http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
    "coco20k": "http://images.cocodataset.org/zips/train2014.zip and "
    "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
    "lvis-val": "https://www.lvisdataset.org/dataset (lvis_v1_val.json) plus COCO 2017 train and val images",
}

PARAMS = (
    uisbench.Param("preset", "str", None, "coco-val2017, coco20k or lvis-val: fills images/annotations/file_list/max_dets",
                   choices=tuple(PRESETS), nullable=True),
    uisbench.Param("root", "path", None, f"dataset folder; null = ${ROOT_ENV} or {DEFAULT_ROOT}", nullable=True),
    uisbench.Param("images", "path", "images", "image folder (relative to root, or absolute)"),
    uisbench.Param("annotations", "path", "annotations.json", "COCO annotations json (relative to root, or absolute)"),
    uisbench.Param("train_images", "path", None, "image folder of the train split (default: images, see transductive)",
                   nullable=True),
    uisbench.Param("train_annotations", "path", None, "annotations of the train split (default: annotations)",
                   nullable=True),
    uisbench.Param("train_max_images", "int", None, "train split: keep the first N images by id (null = all)",
                   nullable=True, ge=1),
    uisbench.Param("train_unlabelled", "bool", False, "train split: also every image file of train_images that no "
                   "annotation file names, without ground truth (pseudo-labelled only; fine-tuning never draws it)"),
    uisbench.Param("transductive", "bool", False, "the train split is the evaluation split, on purpose (recorded "
                   "in results); also the case when no train_* path is given"),
    uisbench.Param("val_images", "path", None, "image folder of the val split (default: images)", nullable=True),
    uisbench.Param("val_annotations", "path", None, "annotations of the val split (default: annotations)",
                   nullable=True),
    uisbench.Param("file_list", "path", None, "text file of image file names to keep (one a line); "
                   "'coco20k' = the shipped COCO20K list", nullable=True),
    uisbench.Param("max_dets", "int", 100, "detections per image the evaluation keeps (LVIS: 300); the coco metric entry must match",
                   ge=10),
    uisbench.Param("skip_bad_images", "bool", False, "record bad images in dataset.skipped and go on instead of failing"),
    *SAFETY_PARAMS,
)


def builtin_file_list(name: str) -> Path | None:
    """Path of a file list shipped with the plugin (``coco20k`` -> ``data/coco20k_filenames.txt``)."""
    candidate = resources.files("uisbench_builtins") / "data" / f"{name}_filenames.txt"
    return Path(str(candidate)) if candidate.is_file() else None
