"""Mask helpers on COCO RLE, thin wrappers over pycocotools (imported lazily).

Plugins use these so every stage encodes masks the same way: Fortran-ordered ``uint8`` arrays,
``counts`` as ``str`` so results are JSON-serialisable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["encode", "decode", "area", "to_bbox", "iou_matrix", "resize_mask"]


def encode(mask: np.ndarray) -> dict[str, Any]:
    """Binary ``(h, w)`` mask -> COCO RLE with ``counts`` as ``str``."""
    import numpy as np
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _as_coco(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        from pycocotools import mask as mask_utils

        h, w = rle["size"]
        return mask_utils.frPyObjects(rle, h, w)
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE -> ``uint8`` ``(h, w)`` mask."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode(_as_coco(rle))


def area(rle: dict[str, Any]) -> float:
    from pycocotools import mask as mask_utils

    return float(mask_utils.area(_as_coco(rle)))


def to_bbox(rle: dict[str, Any]) -> tuple[float, float, float, float]:
    """COCO ``[x, y, w, h]`` of a mask."""
    from pycocotools import mask as mask_utils

    return tuple(float(v) for v in mask_utils.toBbox(_as_coco(rle)))  # type: ignore[return-value]


def iou_matrix(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> np.ndarray:
    """Pairwise mask IoU ``(len(a), len(b))``."""
    import numpy as np
    from pycocotools import mask as mask_utils

    if not a or not b:
        return np.zeros((len(a), len(b)))
    return np.asarray(mask_utils.iou([_as_coco(r) for r in a], [_as_coco(r) for r in b], [0] * len(b)))


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a binary mask to ``(height, width)``."""
    import numpy as np
    from PIL import Image

    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return (np.asarray(img.resize((width, height), Image.NEAREST)) > 127).astype(np.uint8)
