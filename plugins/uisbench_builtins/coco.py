"""``coco``: any COCO-style folder (images + annotations json), converted to class-agnostic ground truth.

Every category becomes the one class "object" (``iscrowd`` kept); the original category name is
kept in ``GroundTruth.category`` for the instance-awareness analysis. Polygons and uncompressed
RLE are converted to compressed RLE with pycocotools.

Presets need only the local root folder (``root:``, else ``$UISBENCH_COCO_ROOT``, else
``~/datasets/coco``), laid out as cocodataset.org ships it::

    <root>/val2017/*.jpg           <root>/annotations/instances_val2017.json
    <root>/train2017/*.jpg         <root>/annotations/instances_train2017.json    (coco-val2017's train split)
    <root>/train2014/*.jpg         <root>/annotations/instances_train2014.json    (coco20k)
    <root>/annotations/lvis_v1_val.json                                            (lvis-val; train2017 + val2017 images)

The train split (what a student trains on) is explicit: ``train_images``/``train_annotations``
(``coco-val2017``: train2017, the images the student never sees at evaluation). Without them the
train split *is* the evaluation split; the dataset then says so (``transductive``), results.json
records it and the leaderboard shows it. ``transductive: true`` asks for that on purpose (COCO20K and
LVIS, whose published unsupervised protocols discover objects on the evaluation images themselves,
set it); a preset whose train files are missing is an error naming them, not a silent fallback.

Your own images with a few of them labelled (the realistic case: a team annotates 20 of its 500
photos) are a ``coco`` entry too: the val split is the held-out labelled images (``annotations``),
the train split the labelled ones the few-label stage may draw from (``train_annotations``), and
``train_unlabelled: true`` adds every other image of ``train_images`` to the train split without
ground truth, for pseudo-labelling only. An image that the val annotations name is never added::

    line3: {plugin: coco, root: /data/line3, images: photos, annotations: val-labels.json,
            train_images: photos, train_annotations: train-labels.json, train_unlabelled: true}

The data is checked when the dataset is built: a malformed or truncated json (with the position),
annotations pointing at missing images or image files that are absent, polygons with fewer than
3 points, empty masks, negative or out-of-image boxes. Decoding errors and size mismatches are
found when an image is loaded. Strict by default (a :class:`uisbench.DataError` naming the file
and the ids); ``skip_bad_images: true`` records each problem in ``dataset.skipped`` and leaves the
image out.

An annotation file is untrusted input, so it is held to the COCO format rather than interpreted:

- image file names stay inside the image folder: an absolute ``file_name``, one that climbs out
  with ``..``, or a symbolic link in the folder that points elsewhere is a problem of that image
  (nothing outside is opened), unless the entry sets ``allow_outside_root: true``;
- ``width x height`` (from the json and from the file's header) above ``max_image_pixels`` is a
  problem of that image (see :data:`uisbench.data.DEFAULT_MAX_IMAGE_PIXELS`);
- ids (``images[].id``, ``annotations[].id``, ``image_id``) are integers, never booleans or floats
  (``true`` and ``3.0`` would silently stand for images 1 and 3);
- ``bbox`` and polygons hold finite numbers; RLE counts cover exactly ``height x width`` pixels;
  ``iscrowd`` is 0 or 1 (``false``/``true`` accepted); ``area`` is a finite number >= 0.

The stated ``area`` is kept when valid, the mask's pixel count used only when it is absent: COCOeval
sorts objects into small / medium / large (and ignores those outside a range) by the stated area,
which for COCO is the polygon's area, not the rasterised mask's; keeping it is what makes the
numbers comparable with published ones.

Its private helpers: ``_coco_presets.py`` (parameters, presets, shipped file lists) and
``_coco_checks.py`` (reading the json, the field checks).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import uisbench
from uisbench.data import SkipPolicy, apply_preset, digest, expand_path, outside_root

from ._coco_checks import BOX_TOLERANCE, file_name, first_few, is_int, number_list, read_json, rle_pixels, show
from ._coco_presets import DEFAULT_ROOT, DOWNLOADS, PARAMS, PRESETS, ROOT_ENV, builtin_file_list


class CocoDataset(SkipPolicy, uisbench.Dataset):
    """One split of a COCO-format dataset, class-agnostic."""

    def __init__(self, *, split: str, images_dir: Path, annotations: Path, file_list: Path | None,
                 max_dets: int, skip_bad_images: bool, label: str, allow_outside_root: bool = False,
                 max_image_pixels: int = uisbench.data.DEFAULT_MAX_IMAGE_PIXELS, max_images: int | None = None,
                 transductive: bool = False, unlabelled: bool = False, exclude: frozenset[str] = frozenset()) -> None:
        self.init_skip_policy(skip_bad_images, max_image_pixels)
        self.allow_outside_root = bool(allow_outside_root)
        self.split, self.label = split, label
        self.images_dir, self.annotations_path, self.file_list = images_dir, annotations, file_list
        self.max_images, self.max_dets = max_images, int(max_dets)
        #: a train split made of the evaluation images (see the module docstring)
        self.transductive = bool(transductive)
        #: add the folder's images that no annotation file names (``train_unlabelled``), except ``exclude``
        #: (real paths of the evaluation images)
        self.unlabelled, self.exclude = bool(unlabelled), frozenset(exclude)
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
        categories = data.get("categories")
        #: every id the 'categories' list holds, odd ones ([9], "7") included, as json text
        self._listed_categories = set()
        #: category id (json text) -> annotation ids naming it though the list does not hold it
        self._unlisted: dict[str, list[str]] = {}
        for cat in categories if isinstance(categories, list) else []:
            if isinstance(cat, dict) and is_int(cat.get("id")):
                self.categories[cat["id"]] = str(cat.get("name", cat["id"]))
            if isinstance(cat, dict) and "id" in cat:
                self._listed_categories.add(json.dumps(cat["id"], sort_keys=True))

        problems: list[tuple[int | None, str | None, str]] = []
        self._records: dict[int, uisbench.ImageRecord] = {}
        self._unlabelled: set[int] = set()
        stats: list[tuple[int, str, int]] = []
        self._listed: set[int] = set()
        for index, image in enumerate(data["images"]):
            if not isinstance(image, dict) or not is_int(image.get("id")):
                got = show(image.get("id")) if isinstance(image, dict) else "not an object"
                problems.append((None, None, f"images[{index}]: 'id' must be an integer (got {got})"))
                continue
            image_id = image["id"]
            self._listed.add(image_id)
            problem = self._add_record(image_id, image)
            if problem is not None:
                problems.append(problem)

        if self.file_list is not None:
            self._apply_file_list()
        if self.unlabelled:
            named = {os.path.realpath(self.images_dir / n) for n in (file_name(i) for i in data["images"] if isinstance(i, dict)) if n}
            problems.extend(self._add_unlabelled(named, max(self._listed, default=0) + 1))

        for image_id, rec in self._records.items():
            try:
                st = os.stat(rec.file)
            except OSError:
                problems.append((image_id, rec.file, f"image id {image_id}: image file {rec.file} is missing"))
                continue
            if not stat.S_ISREG(st.st_mode):  # a FIFO would block the loader for ever, /dev/zero never end
                problems.append((image_id, rec.file, f"image id {image_id}: {rec.file} is not a regular file"))
                continue
            stats.append((image_id, Path(rec.file).name, st.st_size))

        self._gt: dict[int, list[uisbench.GroundTruth]] = {i: [] for i in self._records}
        for index, ann in enumerate(anns or []):
            problem = self._convert(index, ann, mask_utils)
            if problem is not None:
                problems.append(problem)
        if self._unlisted:
            # Not skippable: the file contradicts itself, and taking such an instance for "object" moves
            # the per-category metrics (recall_single became "-") without a word.
            ids = sorted(self._unlisted, key=lambda k: (len(k), k))
            named = "; ".join(f"category id {k}: annotation{'s' if len(v) > 1 else ''} {first_few(v)}" for k, v in
                              ((k, self._unlisted[k]) for k in ids))
            raise uisbench.DataError(
                f"{where}: {sum(map(len, self._unlisted.values()))} annotation(s) name categories the file does not list "
                f"(category id{'s' if len(ids) > 1 else ''} {', '.join(ids)} {'are' if len(ids) > 1 else 'is'} not in its "
                f"'categories' list): {named}. Add the categories to the list, fix category_id, or leave category_id out "
                "for class-agnostic ground truth."
            )
        self.settle(problems, where)
        self._ids = sorted(i for i in self._records if not self.is_bad(i))
        if self.max_images is not None:
            self._ids = self._ids[: max(0, int(self.max_images))]
        if not self._ids:
            raise uisbench.DataError(f"{where}: no usable images (images folder {self.images_dir}).")
        self._fingerprint = digest("coco", self.split, str(self.annotations_path), os.stat(self.annotations_path).st_size,
                                   os.stat(self.annotations_path).st_mtime_ns, sorted(stats), self._ids, sorted(self._unlabelled))

    def _add_record(self, image_id: int, image: dict[str, Any]) -> tuple[int, str | None, str] | None:
        """Check one entry of the images list and record it; return its problem, if any."""
        name = file_name(image)
        width, height = image.get("width"), image.get("height")
        if name is None:
            return image_id, None, f"image id {image_id}: no 'file_name' (or 'coco_url')"
        if "\0" in name:
            return image_id, None, f"image id {image_id}: file_name {show(name)} holds a NUL character"
        path = self.images_dir / name
        if image_id in self._records:
            return image_id, str(path), f"image id {image_id} appears twice in the images list"
        if not (is_int(width) and is_int(height) and width > 0 and height > 0):
            return image_id, str(path), f"image id {image_id} ({name}): missing or invalid width/height"
        if width * height > self.max_image_pixels:
            return image_id, str(path), (
                f"image id {image_id} ({name}): {width} x {height} = {width * height:,} pixels is over max_image_pixels "
                f"({self.max_image_pixels:,}); raise max_image_pixels in the dataset entry if the image is real"
            )
        real = None if self.allow_outside_root else outside_root(self.images_dir, path)
        if real is not None:
            return image_id, str(path), (
                f"image id {image_id}: file_name {name!r} leads to {real}, outside the image folder {self.images_dir} "
                "(not opened); set `allow_outside_root: true` in the dataset entry if that is intended"
            )
        self._records[image_id] = uisbench.ImageRecord(image_id, str(path), width, height)
        return None

    def _add_unlabelled(self, named: set[str], next_id: int) -> list[tuple[int | None, str | None, str]]:
        """``train_unlabelled``: the folder's other images, numbered after the annotated ones."""
        problems = []
        for path in uisbench.data.image_files(self.images_dir):
            real = os.path.realpath(path)
            if real in named or real in self.exclude:
                continue
            image_id, next_id = next_id, next_id + 1
            outside = None if self.allow_outside_root else outside_root(self.images_dir, path)
            if outside is not None:
                problems.append((image_id, str(path), f"image id {image_id}: {path} leads to {outside} through a symbolic "
                                 f"link, outside the image folder {self.images_dir} (not opened); set `allow_outside_root: true` "
                                 "in the dataset entry if that is intended"))
                continue
            try:
                width, height = uisbench.data.image_size(path, max_pixels=self.max_image_pixels)
            except uisbench.DataError as err:
                problems.append((image_id, str(path), f"image id {image_id} (unlabelled): {err}"))
                continue
            self._records[image_id] = uisbench.ImageRecord(image_id, str(path), width, height)
            self._unlabelled.add(image_id)
        return problems

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
                f"({first_few(absent)}); use the annotation file the list was made for."
            )
        keep = {by_name[name] for name in wanted}
        self._records = {i: r for i, r in self._records.items() if i in keep}

    def _convert(self, index: int, ann: Any, mask_utils: Any) -> tuple[int | None, str | None, str] | None:
        """Validate one annotation and store it as GroundTruth; return a problem or None."""
        if not isinstance(ann, dict):
            return None, None, f"annotations[{index}] is not an object"
        ann_id, image_id = ann.get("id"), ann.get("image_id")
        name = f"annotation {ann_id}" if is_int(ann_id) else f"annotations[{index}]"
        if not is_int(image_id):
            # 3.0 and true equal the ids 3 and 1: that image would silently lose this object, so it is blamed
            meant = image_id if isinstance(image_id, (int, float)) and image_id in self._records else None
            rec = self._records[meant] if meant is not None else None
            return (None if meant is None else int(meant), rec.file if rec else None,
                    f"{name}: field 'image_id' must be an integer (got {show(image_id)})")
        if image_id not in self._records:
            if image_id in self._listed:
                return None  # an image left out by the file list, or already reported as bad
            return None, None, f"{name} points at image id {image_id!r}, which is not in the images list"
        rec = self._records[image_id]
        tag = f"{name} of image id {image_id} ({rec.file})"
        if "id" in ann and not is_int(ann_id):
            return image_id, rec.file, f"{tag}: field 'id' must be an integer (got {show(ann_id)})"
        h, w = rec.height, rec.width
        seg = ann.get("segmentation")
        try:
            if isinstance(seg, list):
                if not seg:
                    return image_id, rec.file, f"{tag}: empty segmentation"
                for k, poly in enumerate(seg):
                    if not number_list(poly) or len(poly) % 2:
                        return image_id, rec.file, f"{tag}: polygon {k} is not an even-length list of finite numbers"
                    if len(poly) < 6:
                        return image_id, rec.file, f"{tag}: polygon {k} has {len(poly) // 2} point(s); a polygon needs at least 3"
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
                if list(seg["size"]) != [h, w]:
                    return image_id, rec.file, f"{tag}: RLE size {show(seg['size'])} differs from the image's [{h}, {w}]"
                counts = seg["counts"]
                if isinstance(counts, list):
                    if not all(is_int(c) and c >= 0 for c in counts) or sum(counts) != h * w:
                        return image_id, rec.file, (
                            f"{tag}: uncompressed RLE counts must be integers >= 0 adding up to height x width = {h * w}"
                        )
                    rle = mask_utils.frPyObjects(seg, h, w)
                elif isinstance(counts, str):
                    if rle_pixels(counts) != h * w:
                        return image_id, rec.file, (
                            f"{tag}: compressed RLE counts do not decode to height x width = {h * w} pixels; the string is corrupt"
                        )
                    rle = {"size": [h, w], "counts": counts.encode("ascii")}
                else:
                    return image_id, rec.file, f"{tag}: RLE counts must be a string or a list of integers"
            else:
                return image_id, rec.file, f"{tag}: segmentation is neither polygons (a list) nor RLE ({{size, counts}})"
            area = float(mask_utils.area(rle))
        except Exception as err:  # pycocotools rejects malformed RLE/polygons with various errors
            return image_id, rec.file, f"{tag}: invalid segmentation ({type(err).__name__}: {err})"
        stated = ann.get("area")
        if stated is not None and not (number_list([stated]) and stated >= 0):
            return image_id, rec.file, (
                f"{tag}: field 'area' is {show(stated)}; it must be a finite number >= 0 (COCOeval sorts objects "
                "into small/medium/large by it) or left out (then the mask's area is used)"
            )
        tiny_polygon = isinstance(seg, list) and stated is not None and stated > 0
        if area <= 0 and not tiny_polygon:  # real COCO has sub-pixel polygons that rasterise to nothing: kept
            return image_id, rec.file, f"{tag}: empty mask (no pixel inside the image)"
        bbox = ann.get("bbox")
        if bbox is None:
            bbox = [float(v) for v in mask_utils.toBbox(rle)]
        if not number_list(bbox) or len(bbox) != 4:
            return image_id, rec.file, f"{tag}: field 'bbox' {show(bbox)} is not [x, y, width, height] in finite numbers"
        x, y, bw, bh = (float(v) for v in bbox)
        if bw < 0 or bh < 0:
            return image_id, rec.file, f"{tag}: bbox {bbox} has a negative width or height"
        tol_x, tol_y = BOX_TOLERANCE * w + 1.0, BOX_TOLERANCE * h + 1.0
        if x < -tol_x or y < -tol_y or x + bw > w + tol_x or y + bh > h + tol_y:
            return image_id, rec.file, f"{tag}: bbox {bbox} lies outside the {w}x{h} image"
        crowd = ann.get("iscrowd", 0)
        if not isinstance(crowd, int) or crowd not in (0, 1):  # bool is an int: false/true are accepted
            return image_id, rec.file, f"{tag}: field 'iscrowd' must be 0 or 1 (got {show(crowd)})"
        counts = rle["counts"]
        segmentation = {"size": [h, w], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
        category_id = ann.get("category_id")
        if category_id is not None and json.dumps(category_id, sort_keys=True) not in self._listed_categories:
            self._unlisted.setdefault(json.dumps(category_id, sort_keys=True), []).append(str(ann_id) if is_int(ann_id) else f"[{index}]")
            return None
        category = self.categories.get(category_id) if is_int(category_id) else None
        self._gt[image_id].append(
            uisbench.GroundTruth(
                id=ann_id if is_int(ann_id) else index + 1,
                image_id=image_id,
                segmentation=segmentation,
                bbox=(x, y, bw, bh),
                area=float(area if stated is None else stated),
                iscrowd=int(crowd),
                category=category if category is not None else str(category_id if category_id is not None else "object"),
            )
        )
        return None

    # -- the Dataset contract ----------------------------------------------------------------------

    def image_ids(self) -> list[int]:
        return [i for i in self._ids if not self.is_bad(i)]

    def record(self, image_id: int) -> uisbench.ImageRecord:
        if image_id not in self._records:
            raise uisbench.DataError(f"{self.annotations_path}: no image id {image_id} in this dataset.")
        return self._records[image_id]

    def ground_truth(self, image_id: int) -> list[uisbench.GroundTruth]:
        self.record(image_id)
        return list(self._gt.get(image_id, ()))

    def fingerprint(self) -> str:
        # fixed at construction: images found bad while decoding later do not change cache keys
        return self._fingerprint


def _resolve(base: Path, value: str | None) -> Path | None:
    path = expand_path(value)
    if path is None:
        return None
    return path if path.is_absolute() else base / path


def build(split: str = "val", **params: Any) -> CocoDataset:
    """Factory: resolve the preset and the paths, report every missing file at once, then load."""
    defaults = {p.name: p.default for p in PARAMS}
    paths = {k: os.fspath(v) for k, v in params.items() if isinstance(v, os.PathLike)}  # Path objects from Python
    params = uisbench.complete_params("dataset coco", PARAMS, {**params, **paths})  # types and bounds, as `platform validate`
    params = apply_preset("coco", PRESETS, defaults, params)
    if split not in ("train", "val"):
        raise uisbench.UnknownNameError("split", split, ("train", "val"))
    root_value = params["root"] or os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    root = expand_path(root_value)
    assert root is not None
    transductive = split == "train" and (
        bool(params["transductive"]) or not (params["train_images"] or params["train_annotations"])
    )
    side = "val" if transductive else split  # a transductive train split reads the evaluation files
    images = _resolve(root, params[f"{side}_images"] or params["images"])
    annotations = _resolve(root, params[f"{side}_annotations"] or params["annotations"])
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
    problem = uisbench.io.regular_file_problem(annotations)  # stat only: a FIFO or a device is never opened
    if problem == "not found":
        missing.append(f"annotations: {annotations}")
    elif problem:
        raise uisbench.DataError(f"{label} (split {split}): annotations: {annotations} {problem}; "
                                 "`annotations:` must name a COCO json file.")
    if not images.is_dir():
        missing.append(f"image folder: {images}{os.sep}")
    problem = None if file_list is None else uisbench.io.regular_file_problem(file_list)
    if problem == "not found":
        missing.append(f"file list: {file_list}")
    elif problem:
        raise uisbench.DataError(f"{label} (split {split}): file list: {file_list} {problem}; `file_list:` must name a text file.")
    if missing:
        source = f"root {root} (from {'the root parameter' if params['root'] else ROOT_ENV if os.environ.get(ROOT_ENV) else 'the default'})"
        hint = f" Download: {DOWNLOADS[preset]}." if preset in DOWNLOADS else ""
        if split == "train" and not transductive:
            hint += (" Or set `transductive: true` to train the student on the evaluation images instead "
                     "(recorded in results.json and shown in the leaderboard).")
        raise uisbench.DataError(
            f"{label} (split {split}): missing files under {source}:\n  - " + "\n  - ".join(missing) + "\n"
            f"Set `root:` in your registry entry (or ${ROOT_ENV}) to the folder holding them.{hint}"
        )
    unlabelled = split == "train" and bool(params["train_unlabelled"]) and not transductive
    exclude: frozenset[str] = frozenset()
    if unlabelled:  # the evaluation images stay out of training, labelled or not
        val_images = _resolve(root, params["val_images"] or params["images"])
        val_annotations = _resolve(root, params["val_annotations"] or params["annotations"])
        if val_images is not None and val_annotations is not None and val_annotations.is_file():
            listed = read_json(val_annotations)
            entries = listed.get("images") if isinstance(listed, dict) and isinstance(listed.get("images"), list) else []
            exclude = frozenset(os.path.realpath(val_images / n) for n in (file_name(i) for i in entries if isinstance(i, dict)) if n)
    return CocoDataset(split=split, images_dir=images, annotations=annotations, file_list=file_list,
                       max_dets=int(params["max_dets"]), skip_bad_images=bool(params["skip_bad_images"]), label=label,
                       allow_outside_root=bool(params["allow_outside_root"]),
                       max_image_pixels=int(params["max_image_pixels"]),
                       max_images=params["train_max_images"] if split == "train" else None,
                       transductive=transductive, unlabelled=unlabelled, exclude=exclude)


@uisbench.hookimpl
def uisbench_datasets():
    description = "A COCO-format folder (images + annotations json), class-agnostic; presets for val2017, COCO20K, LVIS."
    yield uisbench.DatasetSpec(name="coco", description=description, factory=build, params=PARAMS, presets=PRESETS)
