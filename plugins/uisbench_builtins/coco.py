"""``coco``: any COCO-style folder (images + annotations json), converted to class-agnostic ground truth.

Every category becomes the one class "object" (``iscrowd`` kept); the original category name is
kept in ``GroundTruth.category`` for the instance-awareness analysis. Polygons and uncompressed
RLE are converted to compressed RLE with pycocotools.

Presets need only the local root folder (``root:``, else ``$UISBENCH_COCO_ROOT``, else
``~/datasets/coco``), laid out as cocodataset.org ships it::

    <root>/val2017/*.jpg           <root>/annotations/instances_val2017.json
    <root>/train2014/*.jpg         <root>/annotations/instances_train2014.json    (coco20k)
    <root>/train2017/*.jpg         <root>/annotations/lvis_v1_val.json            (lvis-val)

The data is checked when the dataset is built: a malformed or truncated json (with the position),
annotations pointing at missing images or image files that are absent, polygons with fewer than
3 points, empty masks, negative or out-of-image boxes. Decoding errors and size mismatches are
found when an image is loaded. Strict by default (a :class:`uisbench.DataError` naming the file
and the ids); ``skip_bad_images: true`` records each problem in ``dataset.skipped`` and leaves the
image out.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import uisbench

from ._imageio import SkipPolicy, apply_preset, digest, expand, first

DEFAULT_ROOT = "~/datasets/coco"
ROOT_ENV = "UISBENCH_COCO_ROOT"
#: Box coordinates may leave the image by this share of its size (float rounding in real files).
BOX_TOLERANCE = 0.01

PRESETS: dict[str, dict[str, Any]] = {
    "coco-val2017": {
        "images": "val2017",
        "annotations": "annotations/instances_val2017.json",
    },
    "coco20k": {
        "images": "train2014",
        "annotations": "annotations/instances_train2014.json",
        "file_list": "coco20k",
    },
    "lvis-val": {
        # LVIS v1 val images come from COCO train2017 and val2017; its json names them by coco_url.
        "images": ".",
        "annotations": "annotations/lvis_v1_val.json",
        "max_dets": 300,
    },
}

_DOWNLOADS = {
    "coco-val2017": "http://images.cocodataset.org/zips/val2017.zip and "
    "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
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
    uisbench.Param("train_images", "path", None, "image folder of the train split (default: images)", nullable=True),
    uisbench.Param("train_annotations", "path", None, "annotations of the train split (default: annotations)",
                   nullable=True),
    uisbench.Param("val_images", "path", None, "image folder of the val split (default: images)", nullable=True),
    uisbench.Param("val_annotations", "path", None, "annotations of the val split (default: annotations)",
                   nullable=True),
    uisbench.Param("file_list", "path", None, "text file of image file names to keep (one a line); "
                   "'coco20k' = the shipped COCO20K list", nullable=True),
    uisbench.Param("max_dets", "int", 100, "detections per image the evaluation keeps (LVIS: 300)"),
    uisbench.Param("skip_bad_images", "bool", False, "record bad images in dataset.skipped and go on instead of failing"),
)


def builtin_file_list(name: str) -> Path | None:
    """Path of a file list shipped with the plugin (``coco20k`` -> ``data/coco20k_filenames.txt``)."""
    candidate = resources.files("uisbench_builtins") / "data" / f"{name}_filenames.txt"
    return Path(str(candidate)) if candidate.is_file() else None


def read_json(path: Path) -> Any:
    """Parse an annotation file; malformed or truncated json -> DataError with the position."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise uisbench.DataError(f"{path}: annotation file not found.") from err
    except UnicodeDecodeError as err:
        raise uisbench.DataError(f"{path}: annotation file is not UTF-8 text (byte {err.start}); is it a json file?") from err
    except OSError as err:
        raise uisbench.DataError(f"{path}: cannot read annotation file ({err.strerror}).") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        # an unterminated string runs to the end of the file, so it also means "cut short"
        truncated = err.pos >= len(text.rstrip()) - 1 or err.msg.startswith("Unterminated string")
        why = " The file ends there: it looks truncated (re-download or re-export it)." if truncated else ""
        raise uisbench.DataError(
            f"{path}: malformed JSON at line {err.lineno} column {err.colno} (char {err.pos} of {len(text)}): "
            f"{err.msg}.{why}"
        ) from err


def _file_name(image: dict[str, Any]) -> str | None:
    name = image.get("file_name")
    if isinstance(name, str) and name:
        return name
    url = image.get("coco_url")  # LVIS: http://images.cocodataset.org/val2017/000000397133.jpg
    if isinstance(url, str) and url:
        return "/".join(url.rstrip("/").split("/")[-2:])
    return None


def _number_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


class CocoDataset(SkipPolicy, uisbench.Dataset):
    """One split of a COCO-format dataset, class-agnostic."""

    def __init__(self, *, split: str, images_dir: Path, annotations: Path, file_list: Path | None,
                 max_dets: int, skip_bad_images: bool, label: str) -> None:
        self._init_skip(skip_bad_images)
        self.split = split
        self.images_dir = images_dir
        self.annotations_path = annotations
        self.file_list = file_list
        self.max_dets = int(max_dets)
        self.label = label
        self._load()

    def __repr__(self) -> str:
        return f"CocoDataset({self.label}, split={self.split!r}, {len(self.image_ids())} images)"

    # -- construction ----------------------------------------------------------------------------

    def _load(self) -> None:
        from pycocotools import mask as mask_utils

        where = str(self.annotations_path)
        data = read_json(self.annotations_path)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise uisbench.DataError(f"{where}: not a COCO annotation file (needs a top-level 'images' list).")
        anns = data.get("annotations")
        self.has_ground_truth = anns is not None
        if anns is not None and not isinstance(anns, list):
            raise uisbench.DataError(f"{where}: 'annotations' must be a list.")
        self.categories = {}
        for cat in data.get("categories") or []:
            if isinstance(cat, dict) and "id" in cat:
                self.categories[cat["id"]] = str(cat.get("name", cat["id"]))

        problems: list[tuple[int | None, str | None, str]] = []
        self._records: dict[int, uisbench.ImageRecord] = {}
        stats: list[tuple[int, str, int]] = []
        self._listed: set[int] = set()
        for index, image in enumerate(data["images"]):
            if not isinstance(image, dict) or not isinstance(image.get("id"), int):
                problems.append((None, None, f"images[{index}] has no integer 'id'"))
                continue
            image_id = image["id"]
            self._listed.add(image_id)
            name = _file_name(image)
            width, height = image.get("width"), image.get("height")
            if name is None:
                problems.append((image_id, None, f"image id {image_id}: no 'file_name' (or 'coco_url')"))
                continue
            path = self.images_dir / name
            if image_id in self._records:
                problems.append((image_id, str(path), f"image id {image_id} appears twice in the images list"))
                continue
            if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
                problems.append((image_id, str(path), f"image id {image_id} ({name}): missing or invalid width/height"))
                continue
            self._records[image_id] = uisbench.ImageRecord(image_id, str(path), width, height)

        if self.file_list is not None:
            self._apply_file_list()

        for image_id, rec in self._records.items():
            try:
                size = os.stat(rec.file).st_size
            except OSError:
                problems.append((image_id, rec.file, f"image id {image_id}: image file {rec.file} is missing"))
                continue
            stats.append((image_id, Path(rec.file).name, size))

        self._gt: dict[int, list[uisbench.GroundTruth]] = {i: [] for i in self._records}
        for index, ann in enumerate(anns or []):
            problem = self._convert(index, ann, mask_utils)
            if problem is not None:
                problems.append(problem)
        self.settle(problems, where)
        self._ids = sorted(i for i in self._records if not self.is_bad(i))
        if not self._ids:
            raise uisbench.DataError(f"{where}: no usable images (images folder {self.images_dir}).")
        self._fingerprint = digest("coco", self.split, str(self.annotations_path), os.stat(self.annotations_path).st_size,
                                   os.stat(self.annotations_path).st_mtime_ns, sorted(stats), self._ids)

    def _apply_file_list(self) -> None:
        path = self.file_list
        assert path is not None
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise uisbench.DataError(f"{path}: cannot read the file list ({err.strerror}).") from err
        wanted = {Path(line.strip()).name for line in lines if line.strip() and not line.lstrip().startswith("#")}
        by_name = {Path(rec.file).name: image_id for image_id, rec in self._records.items()}
        absent = sorted(wanted - set(by_name))
        if absent:
            raise uisbench.DataError(
                f"{path}: {len(absent)} of its {len(wanted)} files are not in {self.annotations_path} "
                f"({first(absent)}); use the annotation file the list was made for."
            )
        keep = {by_name[name] for name in wanted}
        self._records = {i: r for i, r in self._records.items() if i in keep}

    def _convert(self, index: int, ann: Any, mask_utils: Any) -> tuple[int | None, str | None, str] | None:
        """Validate one annotation and store it as GroundTruth; return a problem or None."""
        if not isinstance(ann, dict):
            return None, None, f"annotations[{index}] is not an object"
        ann_id, image_id = ann.get("id", f"#{index}"), ann.get("image_id")
        if image_id not in self._records:
            if image_id in self._listed:
                return None  # an image left out by the file list, or already reported as bad
            return None, None, f"annotation {ann_id} points at image id {image_id!r}, which is not in the images list"
        rec = self._records[image_id]
        tag = f"annotation {ann_id} of image id {image_id} ({rec.file})"
        h, w = rec.height, rec.width
        seg = ann.get("segmentation")
        try:
            if isinstance(seg, list):
                if not seg:
                    return image_id, rec.file, f"{tag}: empty segmentation"
                for k, poly in enumerate(seg):
                    if not _number_list(poly) or len(poly) % 2:
                        return image_id, rec.file, f"{tag}: polygon {k} is not an even-length list of numbers"
                    if len(poly) < 6:
                        return image_id, rec.file, f"{tag}: polygon {k} has {len(poly) // 2} point(s); a polygon needs at least 3"
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
                if list(seg["size"]) != [h, w]:
                    return image_id, rec.file, f"{tag}: RLE size {list(seg['size'])} differs from the image's [{h}, {w}]"
                counts = seg["counts"]
                if isinstance(counts, list):
                    rle = mask_utils.frPyObjects(seg, h, w)
                else:
                    rle = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
            else:
                return image_id, rec.file, f"{tag}: no segmentation (need polygons or RLE)"
            area = float(mask_utils.area(rle))
        except Exception as err:  # pycocotools rejects malformed RLE/polygons with various errors
            return image_id, rec.file, f"{tag}: invalid segmentation ({type(err).__name__}: {err})"
        stated = ann.get("area")
        tiny_polygon = isinstance(seg, list) and isinstance(stated, (int, float)) and stated > 0
        if area <= 0 and not tiny_polygon:  # real COCO has sub-pixel polygons that rasterise to nothing: kept
            return image_id, rec.file, f"{tag}: empty mask (no pixel inside the image)"
        bbox = ann.get("bbox")
        if bbox is None:
            bbox = [float(v) for v in mask_utils.toBbox(rle)]
        if not _number_list(bbox) or len(bbox) != 4:
            return image_id, rec.file, f"{tag}: bbox {bbox!r} is not [x, y, width, height]"
        x, y, bw, bh = (float(v) for v in bbox)
        if bw < 0 or bh < 0:
            return image_id, rec.file, f"{tag}: bbox {bbox} has a negative width or height"
        tol_x, tol_y = BOX_TOLERANCE * w + 1.0, BOX_TOLERANCE * h + 1.0
        if x < -tol_x or y < -tol_y or x + bw > w + tol_x or y + bh > h + tol_y:
            return image_id, rec.file, f"{tag}: bbox {bbox} lies outside the {w}x{h} image"
        counts = rle["counts"]
        segmentation = {"size": [h, w], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
        category = self.categories.get(ann.get("category_id"), str(ann.get("category_id", "object")))
        self._gt[image_id].append(
            uisbench.GroundTruth(
                id=int(ann_id) if isinstance(ann_id, int) else index + 1,
                image_id=int(image_id),
                segmentation=segmentation,
                bbox=(x, y, bw, bh),
                area=float(ann.get("area", area)),
                iscrowd=int(ann.get("iscrowd", 0) or 0),
                category=category,
            )
        )
        return None

    # -- the Dataset contract ----------------------------------------------------------------------

    def image_ids(self) -> list[int]:
        return [i for i in self._ids if not self.is_bad(i)]

    def record(self, image_id: int) -> uisbench.ImageRecord:
        try:
            return self._records[image_id]
        except KeyError:
            raise uisbench.DataError(f"{self.annotations_path}: no image id {image_id} in this dataset.") from None

    def ground_truth(self, image_id: int) -> list[uisbench.GroundTruth]:
        self.record(image_id)
        return list(self._gt.get(image_id, ()))

    def fingerprint(self) -> str:
        # fixed at construction: images found bad while decoding later do not change cache keys
        return self._fingerprint


def _resolve(base: Path, value: str | None) -> Path | None:
    path = expand(value)
    if path is None:
        return None
    return path if path.is_absolute() else base / path


def build(split: str = "val", **params: Any) -> CocoDataset:
    """Factory: resolve the preset and the paths, report every missing file at once, then load."""
    defaults = {p.name: p.default for p in PARAMS}
    params = apply_preset("coco", PRESETS, defaults, {**defaults, **params})
    unknown = set(params) - set(defaults)
    if unknown:
        raise uisbench.ConfigError(f"coco: unknown parameter(s) {sorted(unknown)}; known: {sorted(defaults)}.")
    if split not in ("train", "val"):
        raise uisbench.UnknownNameError("split", split, ("train", "val"))
    root_value = params["root"] or os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    root = expand(root_value)
    assert root is not None
    images = _resolve(root, params[f"{split}_images"] or params["images"])
    annotations = _resolve(root, params[f"{split}_annotations"] or params["annotations"])
    assert images is not None and annotations is not None
    file_list = None
    if params["file_list"]:
        file_list = builtin_file_list(str(params["file_list"])) if "/" not in str(params["file_list"]) else None
        file_list = file_list or _resolve(root, params["file_list"])
    preset = params["preset"] or next(
        (name for name, values in PRESETS.items() if all(params.get(k) == v for k, v in values.items())), None
    )
    label = f"coco preset {preset!r}" if preset else "coco dataset"
    missing = []
    if not annotations.is_file():
        missing.append(f"annotations: {annotations}")
    if not images.is_dir():
        missing.append(f"image folder: {images}{os.sep}")
    if file_list is not None and not file_list.is_file():
        missing.append(f"file list: {file_list}")
    if missing:
        source = f"root {root} (from {'the root parameter' if params['root'] else ROOT_ENV if os.environ.get(ROOT_ENV) else 'the default'})"
        hint = f" Download: {_DOWNLOADS[preset]}." if preset in _DOWNLOADS else ""
        raise uisbench.DataError(
            f"{label} (split {split}): missing files under {source}:\n  - " + "\n  - ".join(missing) + "\n"
            f"Set `root:` in your registry entry (or ${ROOT_ENV}) to the folder holding them.{hint}"
        )
    return CocoDataset(split=split, images_dir=images, annotations=annotations, file_list=file_list,
                       max_dets=int(params["max_dets"]), skip_bad_images=bool(params["skip_bad_images"]), label=label)


@uisbench.hookimpl
def uisbench_datasets():
    yield uisbench.DatasetSpec(
        name="coco",
        description="A COCO-format folder (images + annotations json), class-agnostic; presets for val2017, COCO20K, LVIS.",
        factory=build,
        params=PARAMS,
        presets=PRESETS,
        version="1",
    )
