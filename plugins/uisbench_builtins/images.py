"""``images``: a folder of your own images, without annotations (e.g. factory photos).

The images can be pseudo-labelled and used to train a student; metrics that need ground truth are
skipped with a reason (``has_ground_truth = False``). Image files are found by suffix (jpg, png,
bmp, tif, webp, ...), recursively by default, and numbered 1..N in the order of their relative
paths. train and val use the same folder unless ``train_root`` / ``val_root`` are given (then the
train split is ``transductive``: recorded in results.json and shown in the leaderboard).

A shared folder is untrusted input: a symbolic link in it that leads outside the folder is a
problem of that image (never opened) unless the entry sets ``allow_outside_root: true``, and an
image whose header claims more than ``max_image_pixels`` pixels is refused before decoding.
Strict by default; ``skip_bad_images: true`` records such images in ``dataset.skipped``.

Example registry entry::

    factory-photos: {plugin: images, root: /data/line3/photos, max_images: 500}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import uisbench
from uisbench.data import IMAGE_SUFFIXES, SAFETY_PARAMS, SkipPolicy, digest, expand_path, outside_root

ROOT_ENV = "UISBENCH_IMAGES_ROOT"

PARAMS = (
    uisbench.Param("root", "path", None, f"folder of images; null = ${ROOT_ENV}", nullable=True),
    uisbench.Param("train_root", "path", None, "folder of the train split (default: root)", nullable=True),
    uisbench.Param("val_root", "path", None, "folder of the val split (default: root)", nullable=True),
    uisbench.Param("recursive", "bool", True, "also take images in sub-folders"),
    uisbench.Param("max_images", "int", None, "keep only the first N images (sorted by path)", nullable=True, ge=1),
    uisbench.Param("skip_bad_images", "bool", False, "record bad images in dataset.skipped and go on instead of failing"),
    *SAFETY_PARAMS,
)


class ImageFolder(SkipPolicy, uisbench.Dataset):
    """Images without ground truth; sizes read from the file headers (EXIF orientation applied)."""

    has_ground_truth = False

    def __init__(self, root: Path, split: str, *, recursive: bool, max_images: int | None, skip_bad_images: bool,
                 allow_outside_root: bool = False, max_image_pixels: int = uisbench.data.DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.init_skip_policy(skip_bad_images, max_image_pixels)
        self.root = root
        self.split = split
        self.max_dets = 100
        if not root.is_dir():
            raise uisbench.DataError(
                f"images dataset (split {split}): folder {root} not found; set `root:` in your registry entry "
                f"(or ${ROOT_ENV}) to a folder of images."
            )
        files = uisbench.data.image_files(root, recursive)
        if max_images is not None:
            files = files[: max(0, int(max_images))]
        if not files:
            raise uisbench.DataError(
                f"{root}: no image files found ({'recursively, ' if recursive else ''}suffixes {', '.join(IMAGE_SUFFIXES)})."
            )
        self._records: dict[int, uisbench.ImageRecord] = {}
        problems = []
        stats = []
        for image_id, path in enumerate(files, start=1):
            width = height = 0
            real = None if allow_outside_root else outside_root(root, path)
            if real is not None:
                problems.append((image_id, str(path), (
                    f"image id {image_id}: {path} leads to {real} through a symbolic link, outside the folder {root} "
                    "(not opened); set `allow_outside_root: true` in the dataset entry if that is intended"
                )))
            else:
                try:
                    width, height = uisbench.data.image_size(path, max_pixels=self.max_image_pixels)
                except uisbench.DataError as err:
                    problems.append((image_id, str(path), f"image id {image_id}: {err}"))
            self._records[image_id] = uisbench.ImageRecord(image_id, str(path), width, height)
            # lstat: the size of a refused link's target is none of our business
            stats.append((path.relative_to(root).as_posix(), (os.stat(path) if real is None else os.lstat(path)).st_size))
        self.settle(problems, str(root))
        self._fingerprint = digest("images", str(root), stats)

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.root)!r}, split={self.split!r}, {len(self.image_ids())} images)"

    def image_ids(self) -> list[int]:
        return [i for i in self._records if not self.is_bad(i)]

    def record(self, image_id: int) -> uisbench.ImageRecord:
        try:
            return self._records[image_id]
        except KeyError:
            raise uisbench.DataError(f"{self.root}: no image id {image_id} (ids are 1..{len(self._records)}).") from None

    def fingerprint(self) -> str:
        # fixed at construction: images found bad while decoding later do not change cache keys
        return self._fingerprint


def build(split: str = "val", **params: Any) -> ImageFolder:
    paths = {k: os.fspath(v) for k, v in params.items() if isinstance(v, os.PathLike)}  # Path objects from Python
    params = uisbench.complete_params("dataset images", PARAMS, {**params, **paths})  # types and bounds, as `platform validate`
    if split not in ("train", "val"):
        raise uisbench.UnknownNameError("split", split, ("train", "val"))
    root = params[f"{split}_root"] or params["root"] or os.environ.get(ROOT_ENV)
    if not root:
        raise uisbench.ConfigError(
            f"images dataset (split {split}): no folder given; set `root: /path/to/images` in your registry entry "
            f"or the environment variable {ROOT_ENV}."
        )
    path = expand_path(root)
    assert path is not None
    dataset = ImageFolder(path, split, recursive=bool(params["recursive"]), max_images=params["max_images"],
                          skip_bad_images=bool(params["skip_bad_images"]), allow_outside_root=bool(params["allow_outside_root"]),
                          max_image_pixels=int(params["max_image_pixels"]))
    # Without a train_root of its own the student trains on the very images it is evaluated on.
    val_root = params["val_root"] or params["root"] or os.environ.get(ROOT_ENV)
    dataset.transductive = split == "train" and expand_path(val_root) == path
    return dataset


@uisbench.hookimpl
def uisbench_datasets():
    description = "A folder of your own images without annotations (pseudo-labelling and student training only)."
    yield uisbench.DatasetSpec(name="images", description=description, factory=build, params=PARAMS, has_ground_truth=False)
