"""Loading images the same way everywhere: robust decoding and batched loading in worker processes.

- :func:`load_rgb` decodes one file to ``uint8`` RGB ``(H, W, 3)``: EXIF orientation applied;
  grayscale, RGBA / LA (composited over white), palette, CMYK and 16-bit images converted;
  unreadable or truncated files raise :class:`uisbench.DataError` naming the file.
- :func:`image_size` reads ``(width, height)`` after EXIF orientation from the header only.
- :func:`iter_batches` decodes and preprocesses images in torch ``DataLoader`` workers and yields
  ``(ids, pixels (B, 3, S, S), records)``; with a dataset's ``skip_bad_images`` on, images that
  fail to decode are recorded in ``dataset.skipped`` and left out of the batch.
- :func:`write_coco` writes any dataset as a standard COCO folder (``images/`` + ``annotations.json``),
  byte-identical across runs.

Image files are untrusted input (datasets get shared and downloaded), so :func:`load_rgb` and
:func:`image_size`:

- open only the formats in :data:`IMAGE_FORMATS`, whatever the file is called: PIL's other
  formats include EPS, which PIL renders by running Ghostscript on the file;
- refuse an image whose header claims more than ``max_pixels`` pixels (default
  :data:`DEFAULT_MAX_IMAGE_PIXELS`) before a single pixel is decoded, with a
  :class:`uisbench.DataError` naming the file (a decompression bomb: a few bytes of PNG can claim
  100000 x 100000 pixels, 30 GB decoded). Datasets take the limit from their
  ``max_image_pixels`` parameter; ``skip_bad_images`` skips such images like any other bad one.

Building blocks of file-backed datasets (the built-in ``coco``, ``images`` and ``synth-instances``
use them; so can yours):

- :class:`SkipPolicy`: the strict-or-skip policy for bad images (``skip_bad_images``), mixed into a
  :class:`uisbench.Dataset`, with :meth:`SkipPolicy.load_image` decoding under ``max_image_pixels``;
- :data:`SAFETY_PARAMS` (``allow_outside_root``, ``max_image_pixels``) and :func:`outside_root`, which
  keeps a shared annotation file or folder from reaching other files of the machine;
- :func:`apply_preset` (named parameter sets), :func:`expand_path` (``~`` and ``$VARS``),
  :func:`digest` (a dataset fingerprint), :data:`IMAGE_SUFFIXES` (image files by name).

torch and PIL are imported inside the functions: importing this module is free.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, DataError, UnknownNameError
from .io import atomic_path, atomic_write_text
from .types import Param

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .contracts import Dataset, ImageRecord

__all__ = [
    "load_rgb",
    "out_of_memory",
    "image_size",
    "image_files",
    "iter_batches",
    "write_coco",
    "record_skip",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "IMAGE_FORMATS",
    "IMAGE_SUFFIXES",
    "SAFETY_PARAMS",
    "SkipPolicy",
    "apply_preset",
    "expand_path",
    "digest",
    "outside_root",
]

#: Largest image decoded unless a dataset entry sets ``max_image_pixels``: the size at which PIL
#: itself refuses to open a file (twice its ``Image.MAX_IMAGE_PIXELS`` warning threshold), e.g.
#: 13377 x 13377. Its memory cost at the peak of :func:`load_rgb`: PIL holds 4 bytes a pixel (683 MiB)
#: and the RGB array 3 more (512 MiB), about 1.2 GiB, before a backbone's resize makes its own copies;
#: a 100-megapixel camera frame still fits. An image that runs out of memory is a data error naming it.
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970

#: PIL formats that are opened (``Image.open(..., formats=...)``); anything else is "not a readable image".
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM")

#: File name suffixes of images, as datasets find them in a folder (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")

#: Serialises our header reads while PIL's global bomb check is lifted (see :func:`_open`).
_PIL_LIMIT_LOCK = threading.Lock()

#: EXIF orientations that swap width and height (rotations by 90/270 degrees, transposes).
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112


def _open(path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, tag: str = ""):
    """``Image.open`` (header only) with every failure a DataError naming the file.

    PIL's own bomb check (a warning above ``Image.MAX_IMAGE_PIXELS``, an error above twice that) is
    lifted while the header is read, so that ``max_pixels`` alone decides, before any pixel is
    decoded. The global is restored at once; the lock keeps two of our reads from restoring each
    other's value.
    """
    from PIL import Image, UnidentifiedImageError

    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            img = Image.open(path, formats=IMAGE_FORMATS)
        except FileNotFoundError as err:
            raise DataError(f"{path}{tag}: image file not found.") from err
        except UnidentifiedImageError as err:
            raise DataError(
                f"{path}{tag}: not a readable image (unknown or corrupt format; uisbench reads {', '.join(IMAGE_FORMATS)})."
            ) from err
        except OSError as err:
            raise DataError(f"{path}{tag}: cannot open image ({err}).") from err
        except Exception as err:  # e.g. ValueError "Decompressed data too large" from a PNG text chunk
            raise DataError(f"{path}{tag}: cannot open image ({type(err).__name__}: {err}); the file is corrupt.") from err
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise DataError(
            f"{path}{tag}: the header claims {width} x {height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (max_image_pixels); not decoded. A corrupt file or a decompression bomb; if the image "
            "is real, raise `max_image_pixels` in the dataset's registry entry."
        )
    return img


def image_size(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """``(width, height)`` of an image after EXIF orientation, read from its header (no decoding).

    An image of more than ``max_pixels`` pixels raises :class:`uisbench.DataError`, as in :func:`load_rgb`.
    """
    path = Path(path)
    with _open(path, max_pixels=max_pixels) as img:
        width, height = img.size
        try:
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:  # a broken EXIF block is not worth failing over here
            orientation = 1
    return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)


def _to_rgb_array(img) -> np.ndarray:
    import numpy as np
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        gray = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)


#: libjpeg's warnings that mean damaged pixels (the decoder goes on and fills the rest with guesses).
#: "extraneous bytes before marker" is left out: junk between segments, the pixels are whole.
_JPEG_DAMAGE = re.compile(
    r"premature end of data segment|bad Huffman code|bad arithmetic code|Premature end of JPEG file|"
    r"found marker 0x[0-9a-f]+ instead of RST|Invalid SOS parameters|Inconsistent progression sequence|"
    r"Corrupt JPEG data: [^\n]*(?:unknown|bad|invalid)",
    re.IGNORECASE,
)
#: serialises the borrowing of file descriptor 2 by :func:`jpeg_damage`
_STDERR_LOCK = threading.Lock()


def jpeg_damage(data: bytes) -> str | None:
    """libjpeg's first warning of damaged pixels in a JPEG, or ``None`` (also when no check can run).

    PIL drops libjpeg's warnings, so a JPEG whose entropy-coded data is damaged decodes without a
    word into wrong pixels. torchvision's decoder (the same libjpeg) prints them on the process's
    standard error: the file is decoded once more with it while file descriptor 2 points at a
    temporary file, and what it printed is read back (anything else printed meanwhile is passed on).
    """
    try:
        import torch
        from torchvision.io import decode_jpeg
    except ImportError:  # pragma: no cover - torchvision is a dependency; without its decoder, no check
        return None
    import tempfile
    import warnings

    try:
        sink_file = tempfile.TemporaryFile()
    except OSError:  # no room for the temporary file: no check
        return None
    with _STDERR_LOCK, sink_file as sink:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no standard error to borrow (closed): no check
            return None
        try:
            os.dup2(sink.fileno(), 2)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # its deprecation notice
                    decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            except Exception:  # a JPEG torchvision cannot decode at all: PIL's verdict stands
                pass
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        printed = sink.read().decode("utf-8", "replace")
    lines = printed.splitlines()
    damage = [line.strip() for line in lines if _JPEG_DAMAGE.search(line)]
    others = [line for line in lines if not _JPEG_DAMAGE.search(line) and "Corrupt JPEG data" not in line]
    if others:
        sys.stderr.write("\n".join(others) + "\n")
    return damage[0] if damage else None


def out_of_memory(path: str | os.PathLike[str] | None, tag: str, width: int, height: int) -> str:
    """The message for an image whose decoding or resizing ran out of memory: which image, how big,
    what it costs, and the cap that refuses such images before any pixel is decoded."""
    pixels = int(width) * int(height)
    return (
        f"{path}{tag}: {width} x {height} = {pixels:,} pixels ran out of memory while it was decoded or resized "
        f"(PIL holds {pixels * 4 / 2**20:,.0f} MB for it, its RGB array {pixels * 3 / 2**20:,.0f} MB more, then the "
        "resize its own copies). Give the process more memory, shrink the image, or set `max_image_pixels` in the "
        "dataset entry below its size to refuse such images up front (--skip-bad-images then skips them)."
    )


def load_rgb(
    path: str | os.PathLike[str],
    *,
    expected_size: tuple[int, int] | None = None,
    what: str = "",
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Decode ``path`` to ``uint8`` RGB ``(H, W, 3)`` with EXIF orientation applied.

    ``expected_size`` ``(width, height)`` (e.g. from an annotation file) is checked against the
    decoded image; ``what`` names the entry (``"image id 42"``) in error messages.
    Raises :class:`uisbench.DataError` for missing, unreadable or truncated files, formats outside
    :data:`IMAGE_FORMATS`, headers claiming more than ``max_pixels`` pixels and size mismatches.
    """
    from PIL import ImageOps

    path = Path(path)
    tag = f" ({what})" if what else ""
    with _open(path, max_pixels=max_pixels, tag=tag) as img:
        try:
            try:
                img.load()
            except MemoryError:
                raise
            except OSError as err:  # "image file is truncated", broken data stream, ...
                raise DataError(f"{path}{tag}: cannot decode image ({err}); the file is truncated or corrupt.") from err
            except Exception as err:
                raise DataError(f"{path}{tag}: cannot decode image ({type(err).__name__}: {err}).") from err
            try:
                oriented = ImageOps.exif_transpose(img)
            except MemoryError:
                raise
            except Exception:  # a malformed EXIF block: keep the stored orientation
                oriented = img
            arr = _to_rgb_array(oriented if oriented is not None else img)
            if img.format == "JPEG":
                damage = jpeg_damage(path.read_bytes())
                if damage:
                    raise DataError(
                        f"{path}{tag}: corrupt JPEG data ({damage}); the decoder fills the damaged part with guesses, "
                        "so its pixels would be wrong. Re-download or re-export the image."
                    )
        except MemoryError:
            width, height = img.size
            raise DataError(out_of_memory(path, tag, width, height)) from None
    if expected_size is not None:
        width, height = int(expected_size[0]), int(expected_size[1])
        if (arr.shape[1], arr.shape[0]) != (width, height):
            raise DataError(
                f"{path}{tag}: decoded size {arr.shape[1]}x{arr.shape[0]} (width x height, EXIF orientation applied) "
                f"does not match the annotation file's {width}x{height}; the image or the annotations are wrong."
            )
    return arr


# ---------------------------------------------------------------------------------------------
# Batched loading
# ---------------------------------------------------------------------------------------------


def record_skip(dataset: Dataset, image_id: int, reason: str) -> None:
    """Record an image that could not be used in ``dataset.skipped`` (once per image)."""
    skipped = getattr(dataset, "skipped", None)
    if skipped is None:
        skipped = []
        dataset.skipped = skipped
    if any(item.get("image_id") == image_id for item in skipped):
        return
    file = None
    try:
        file = dataset.record(image_id).file
    except Exception:
        pass
    skipped.append({"image_id": int(image_id), "file": file, "reason": reason})
    bad = getattr(dataset, "_bad", None)
    if isinstance(bad, set):
        bad.add(int(image_id))


class _Items:
    """Map-style torch dataset over ``image_ids``: each item is ``(id, tensor or None, error or None)``."""

    def __init__(self, dataset: Dataset, image_ids: Sequence[int], transform: Callable[[Any], Any]) -> None:
        self.dataset = dataset
        self.image_ids = list(image_ids)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[int, Any, str | None]:
        image_id = self.image_ids[index]
        try:
            image = self.dataset.load_image(image_id)
            return image_id, self.transform(image), None
        except DataError as err:  # returned, not raised: the main process decides (strict or skip)
            return image_id, None, str(err)
        except MemoryError:  # a huge image's resize: name it (a raw MemoryError named nothing)
            image = None  # let the decoded pixels go before the message is built
            rec = self.dataset.record(image_id)
            return image_id, None, out_of_memory(rec.file, f" (image id {image_id})", rec.width, rec.height)


def _collate(items: list[tuple[int, Any, str | None]]) -> tuple[list[int], Any, list[tuple[int, str]]]:
    """Stack in the worker (into shared memory), so the main process only receives the batch."""
    import torch

    good = [(image_id, tensor) for image_id, tensor, error in items if error is None]
    errors = [(image_id, error) for image_id, _, error in items if error is not None]
    pixels = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], pixels, errors  # type: ignore[return-value]


def iter_batches(
    dataset: Dataset,
    image_ids: Iterable[int],
    transform: Callable[[np.ndarray], torch.Tensor],
    *,
    batch_size: int = 8,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[list[int], torch.Tensor, list[ImageRecord]]]:
    """Decode and ``transform`` images in ``DataLoader`` workers; yield ``(ids, pixels, records)``.

    ``pixels`` is the stacked ``(B, 3, S, S)`` output of ``transform`` (a backbone's ``preprocess``)
    in the order of ``image_ids``. An image that fails to decode raises :class:`uisbench.DataError`
    unless the dataset was built with ``skip_bad_images``: then it is recorded in
    ``dataset.skipped`` and left out (a batch may come out smaller; an empty one is not yielded).
    Batches are stacked in the workers; ``pin_memory=True`` (for CUDA) lets the caller copy them
    with ``non_blocking=True``.
    """
    import multiprocessing

    from torch.utils.data import DataLoader

    ids = [int(i) for i in image_ids]
    if not ids:
        return
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    kwargs: dict[str, Any] = {}
    if num_workers > 0 and "fork" in multiprocessing.get_all_start_methods():
        # fork: workers inherit the dataset and the transform without pickling a model
        kwargs["multiprocessing_context"] = "fork"
    loader = DataLoader(
        _Items(dataset, ids, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=max(0, int(num_workers)),
        collate_fn=_collate,
        pin_memory=pin_memory,
        **kwargs,
    )
    skip = bool(getattr(dataset, "skip_bad_images", False))
    for good_ids, pixels, errors in loader:
        for image_id, error in errors:
            if not skip:
                raise DataError(error)
            record_skip(dataset, image_id, error)
        if good_ids:
            yield good_ids, pixels, [dataset.record(i) for i in good_ids]


# ---------------------------------------------------------------------------------------------
# COCO export
# ---------------------------------------------------------------------------------------------


def _png_bytes_to(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        # fixed settings, no metadata: the same pixels give the same bytes
        Image.fromarray(image).save(tmp, format="PNG", compress_level=6, optimize=False)


def write_coco(
    dataset: Dataset,
    out: str | os.PathLike[str],
    image_ids: Iterable[int] | None = None,
    *,
    info: dict[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Write ``dataset`` as a COCO folder: ``out/images/<id>.png`` and ``out/annotations.json``.

    Categories are the original class names (``GroundTruth.category``, ids 1.. in sorted order, or
    in ``dataset.categories`` order when the dataset has that attribute). Files are written
    atomically; the JSON uses sorted keys and fixed formatting, PNGs fixed settings, so equal
    datasets give byte-identical folders. Returns the annotations path.
    """
    from tqdm import tqdm

    out = Path(out)
    ids = dataset.image_ids() if image_ids is None else [int(i) for i in image_ids]
    images, annotations, names = [], [], []
    known = list(getattr(dataset, "categories", []) or [])
    for image_id in tqdm(ids, desc=f"writing {out}", unit="img", disable=None if progress else True):
        rec = dataset.record(image_id)
        pixels = dataset.load_image(image_id)
        file_name = f"{image_id:06d}.png"
        _png_bytes_to(out / "images" / file_name, pixels)
        images.append({"id": rec.id, "file_name": file_name, "width": int(pixels.shape[1]), "height": int(pixels.shape[0])})
        for gt in dataset.ground_truth(image_id):
            if gt.category not in known and gt.category not in names:
                names.append(gt.category)
            annotations.append(
                {
                    "id": int(gt.id),
                    "image_id": int(gt.image_id),
                    "category": gt.category,
                    "segmentation": {"size": list(gt.segmentation["size"]), "counts": gt.segmentation["counts"]},
                    "bbox": [float(v) for v in gt.bbox],
                    "area": float(gt.area),
                    "iscrowd": int(gt.iscrowd),
                }
            )
    categories = known + sorted(names)
    cat_ids = {name: i + 1 for i, name in enumerate(categories)}
    for ann in annotations:
        ann["category_id"] = cat_ids[ann.pop("category")]
    coco = {
        "info": dict(info or {}),
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cat_ids[n], "name": n, "supercategory": "object"} for n in categories],
    }
    path = out / "annotations.json"
    atomic_write_text(path, json.dumps(coco, sort_keys=True, separators=(",", ":"), default=str) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Dataset building blocks
# ---------------------------------------------------------------------------------------------

#: Parameters of file-backed datasets that keep hostile files in check (see :class:`SkipPolicy`).
SAFETY_PARAMS = (
    Param(
        "allow_outside_root", "bool", False,
        "read image files that lead outside the image folder (absolute or ../ names, symbolic links); "
        "off, a shared annotation file or folder cannot make the bench read other files of the machine",
    ),
    Param(
        "max_image_pixels", "int", DEFAULT_MAX_IMAGE_PIXELS,
        "refuse images whose header claims more pixels, before decoding (decompression bombs); "
        "raise it for genuinely larger images", ge=1,
    ),
)


def apply_preset(spec_name: str, presets: Mapping[str, Mapping[str, Any]], defaults: Mapping[str, Any],
                 params: dict[str, Any]) -> dict[str, Any]:
    """Fill ``params`` from ``presets[params['preset']]`` where a value is still the plugin default.

    A value given explicitly (different from the default) always wins over the preset; an unknown
    preset is a :class:`uisbench.UnknownNameError` naming ``spec_name``'s presets. Example::

        params = apply_preset("coco", PRESETS, spec_defaults, {**spec_defaults, **params})
    """
    name = params.get("preset")
    if name is None:
        return params
    if name not in presets:
        raise UnknownNameError(f"{spec_name} preset", str(name), presets, hint="Set `preset:` to one of these or leave it out.")
    out = dict(params)
    for key, value in presets[name].items():
        if key not in out or out[key] == defaults.get(key):
            out[key] = value
    return out


def expand_path(path: str | os.PathLike[str] | None) -> Path | None:
    """``~`` and ``$VARS`` expanded; ``None`` stays ``None``."""
    if path is None:
        return None
    return Path(os.path.expandvars(os.path.expanduser(str(path))))


def image_files(root: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """Image files under ``root`` (by suffix, :data:`IMAGE_SUFFIXES`, case-insensitive; hidden files
    left out), sorted by their path relative to ``root``: the order a folder dataset numbers them in."""
    root = Path(root)
    pattern = root.rglob("*") if recursive else root.glob("*")
    files = [p for p in pattern if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def digest(*parts: Any) -> str:
    """A short stable hash (16 hex digits) of JSON-able parts: a dataset's :meth:`~uisbench.Dataset.fingerprint`."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def outside_root(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path | None:
    """Where ``path`` really leads when that is outside ``root`` (absolute names, ``..`` and symbolic
    links all resolved), else ``None``. Only names and links are looked at: no file is opened."""
    real = Path(os.path.realpath(path))
    return None if real.is_relative_to(os.path.realpath(root)) else real


class SkipPolicy:
    """Strict-or-skip bookkeeping of a file-backed :class:`uisbench.Dataset` (a mixin).

    Strict (default): a problem raises :class:`uisbench.DataError` naming the file and the id.
    ``skip_bad_images=True``: the problem is appended to ``self.skipped`` as
    ``{"image_id", "file", "reason"}`` and the image leaves ``image_ids()`` (filter them with
    :meth:`is_bad`). Images are decoded with the pixel limit ``max_image_pixels``. Example::

        class MyImages(uisbench.data.SkipPolicy, uisbench.Dataset):
            def __init__(self, root, skip_bad_images=False, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
                self.init_skip_policy(skip_bad_images, max_image_pixels)
                problems = []  # (image id or None, file or None, reason) found while reading the index
                ...
                self.settle(problems, str(root))  # raise them all at once, or record them
    """

    skip_bad_images: bool = False
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def init_skip_policy(self, skip_bad_images: bool, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        """Set the policy (call it first in ``__init__``)."""
        if max_image_pixels < 1:
            raise ConfigError(f"max_image_pixels must be >= 1 (got {max_image_pixels}); the default is "
                              f"{DEFAULT_MAX_IMAGE_PIXELS}.")
        self.skip_bad_images = bool(skip_bad_images)
        self.max_image_pixels = int(max_image_pixels)
        self.skipped: list[dict[str, Any]] = []
        self._bad: set[int] = set()

    def problem(self, image_id: int | None, file: str | None, reason: str) -> None:
        """Raise (strict) or record (skip) one problem of one image."""
        if not self.skip_bad_images or image_id is None:
            hint = "" if self.skip_bad_images else " Fix or remove it, or pass --skip-bad-images (skip_bad_images: true) to skip such images."
            raise DataError(reason + hint)
        if image_id in self._bad:
            return
        self._bad.add(image_id)
        self.skipped.append({"image_id": int(image_id), "file": file, "reason": reason})

    def settle(self, problems: list[tuple[int | None, str | None, str]], where: str) -> None:
        """Raise one error listing every ``(image id, file, reason)`` problem (strict), or record each of them (skip)."""
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
        raise DataError(
            f"{where}: {len(problems)} problem(s) in the data:\n  - {shown}{more}\n"
            "Fix or remove these entries, or pass --skip-bad-images (skip_bad_images: true) to skip the images concerned."
        )

    def is_bad(self, image_id: int) -> bool:
        """Whether the image was found bad (it leaves ``image_ids()``)."""
        return image_id in self._bad

    def load_image(self, image_id: int) -> Any:
        """Decode one image of ``self.record(image_id)``; a decoding problem is raised either way
        (with the skip policy it is also recorded, so the image leaves ``image_ids()``)."""
        rec = self.record(image_id)  # type: ignore[attr-defined]
        try:
            return load_rgb(rec.file, expected_size=(rec.width, rec.height), what=f"image id {image_id}",
                            max_pixels=self.max_image_pixels)
        except DataError as err:
            if self.skip_bad_images:
                self.problem(image_id, rec.file, str(err))
                raise
            raise DataError(
                f"{err} Fix or remove it, or pass --skip-bad-images (skip_bad_images: true) to skip such images."
            ) from err
