"""Private helpers shared by the built-in dataset plugins (synth-instances, coco, images).

Only the public ``uisbench`` API is used here; image decoding itself lives in
:func:`uisbench.data.load_rgb` so every dataset (built-in or third-party) decodes the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import uisbench

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")

#: Parameters of the file-backed datasets (coco, images) that keep hostile files in check.
SAFETY_PARAMS = (
    uisbench.Param(
        "allow_outside_root", "bool", False,
        "read image files that lead outside the image folder (absolute or ../ names, symbolic links); "
        "off, a shared annotation file or folder cannot make the bench read other files of the machine",
    ),
    uisbench.Param(
        "max_image_pixels", "int", uisbench.data.DEFAULT_MAX_IMAGE_PIXELS,
        "refuse images whose header claims more pixels, before decoding (decompression bombs); "
        "raise it for genuinely larger images",
    ),
)


def apply_preset(spec_name: str, presets: Mapping[str, Mapping[str, Any]], defaults: Mapping[str, Any],
                 params: dict[str, Any]) -> dict[str, Any]:
    """Fill ``params`` from ``presets[params['preset']]`` where a value is still the plugin default.

    A value given explicitly (different from the default) always wins over the preset.
    """
    name = params.get("preset")
    if name is None:
        return params
    if name not in presets:
        raise uisbench.UnknownNameError(f"{spec_name} preset", str(name), presets,
                                        hint="Set `preset:` to one of these or leave it out.")
    out = dict(params)
    for key, value in presets[name].items():
        if key not in out or out[key] == defaults.get(key):
            out[key] = value
    return out


def expand(path: str | os.PathLike[str] | None) -> Path | None:
    """``~`` and ``$VARS`` expanded; ``None`` stays ``None``."""
    if path is None:
        return None
    return Path(os.path.expandvars(os.path.expanduser(str(path))))


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (the dataset fingerprint)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


class SkipPolicy:
    """Strict-or-skip bookkeeping shared by file-backed datasets.

    Strict (default): a problem raises :class:`uisbench.DataError` naming the file and the id.
    ``skip_bad_images=True``: the problem is appended to ``self.skipped`` as
    ``{"image_id", "file", "reason"}`` and the image leaves :meth:`image_ids`.
    Images are decoded with the pixel limit ``max_image_pixels`` (see :mod:`uisbench.data`).
    """

    skip_bad_images: bool = False
    max_image_pixels: int = uisbench.data.DEFAULT_MAX_IMAGE_PIXELS

    def _init_skip(self, skip_bad_images: bool, max_image_pixels: int = uisbench.data.DEFAULT_MAX_IMAGE_PIXELS) -> None:
        if max_image_pixels < 1:
            raise uisbench.ConfigError(f"max_image_pixels must be >= 1 (got {max_image_pixels}); the default is "
                                       f"{uisbench.data.DEFAULT_MAX_IMAGE_PIXELS}.")
        self.skip_bad_images = bool(skip_bad_images)
        self.max_image_pixels = int(max_image_pixels)
        self.skipped: list[dict[str, Any]] = []
        self._bad: set[int] = set()

    def problem(self, image_id: int | None, file: str | None, reason: str) -> None:
        """Raise (strict) or record (skip) one problem of one image."""
        if not self.skip_bad_images or image_id is None:
            hint = "" if self.skip_bad_images else " Fix or remove it, or pass --skip-bad-images (skip_bad_images: true) to skip such images."
            raise uisbench.DataError(reason + hint)
        if image_id in self._bad:
            return
        self._bad.add(image_id)
        self.skipped.append({"image_id": int(image_id), "file": file, "reason": reason})

    def settle(self, problems: list[tuple[int | None, str | None, str]], where: str) -> None:
        """Raise one error listing every problem (strict), or record each of them (skip)."""
        if not problems:
            return
        if self.skip_bad_images:
            for image_id, file, reason in problems:
                if image_id is not None:
                    self.problem(image_id, file, reason)
            unplaced = [reason for image_id, _, reason in problems if image_id is None]
            if unplaced:  # problems no image can be blamed for: record them as such
                self.skipped.extend({"image_id": None, "file": where, "reason": r} for r in unplaced)
            return
        shown = "\n  - ".join(reason for _, _, reason in problems[:10])
        more = f"\n  ... {len(problems) - 10} more" if len(problems) > 10 else ""
        raise uisbench.DataError(
            f"{where}: {len(problems)} problem(s) in the data:\n  - {shown}{more}\n"
            "Fix or remove these entries, or pass --skip-bad-images (skip_bad_images: true) to skip the images concerned."
        )

    def is_bad(self, image_id: int) -> bool:
        return image_id in self._bad

    def load_image(self, image_id: int) -> Any:
        """Decode one image of ``self.record(image_id)``; a decoding problem is raised either way
        (with the skip policy it is also recorded, so the image leaves :meth:`image_ids`)."""
        rec = self.record(image_id)  # type: ignore[attr-defined]
        try:
            return uisbench.data.load_rgb(rec.file, expected_size=(rec.width, rec.height), what=f"image id {image_id}",
                                          max_pixels=self.max_image_pixels)
        except uisbench.DataError as err:
            if self.skip_bad_images:
                self.problem(image_id, rec.file, str(err))
                raise
            raise uisbench.DataError(
                f"{err} Fix or remove it, or pass --skip-bad-images (skip_bad_images: true) to skip such images."
            ) from err


def outside(folder: Path, path: Path) -> Path | None:
    """Where ``path`` really leads when that is outside ``folder`` (absolute names, ``..`` and symbolic
    links all resolved), else ``None``. Only names and links are looked at: no file is opened."""
    real = Path(os.path.realpath(path))
    return None if real.is_relative_to(os.path.realpath(folder)) else real


def sorted_image_files(root: Path, recursive: bool = True) -> list[Path]:
    """Image files under ``root`` (by suffix, case-insensitive), sorted by relative path."""
    pattern = root.rglob("*") if recursive else root.glob("*")
    files = [p for p in pattern if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def first(items: Iterable[str], n: int = 5) -> str:
    items = list(items)
    shown = ", ".join(items[:n])
    return shown + (f" ... ({len(items)} in all)" if len(items) > n else "")
