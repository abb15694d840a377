"""How the ``coco`` plugin reads an annotation file and checks its fields: :func:`read_json` (malformed
or truncated json named with its position), :func:`rle_pixels` (a compressed RLE's pixel count, before
pycocotools trusts it), and the small tests of ids, numbers and file names the dataset applies to
every entry (the module docstring of :mod:`uisbench_builtins.coco` lists the rules).

Private helper of :mod:`uisbench_builtins.coco`, which re-exports :func:`read_json` and :func:`rle_pixels`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import uisbench

#: Box coordinates may leave the image by this share of its size (float rounding in real files).
BOX_TOLERANCE = 0.01


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
    except RecursionError as err:  # "[[[[..." thousands deep: the parser's recursion runs out
        raise uisbench.DataError(f"{path}: JSON nested too deeply to be an annotation file.") from err
    except json.JSONDecodeError as err:
        # an unterminated string runs to the end of the file, so it also means "cut short"
        truncated = err.pos >= len(text.rstrip()) - 1 or err.msg.startswith("Unterminated string")
        why = " The file ends there: it looks truncated (re-download or re-export it)." if truncated else ""
        raise uisbench.DataError(
            f"{path}: malformed JSON at line {err.lineno} column {err.colno} (char {err.pos} of {len(text)}): "
            f"{err.msg}.{why}"
        ) from err


def file_name(image: dict[str, Any]) -> str | None:
    name = image.get("file_name")
    if isinstance(name, str) and name:
        return name
    url = image.get("coco_url")  # LVIS: http://images.cocodataset.org/val2017/000000397133.jpg
    if isinstance(url, str) and url:
        return "/".join(url.rstrip("/").split("/")[-2:])
    return None


def first_few(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" ... ({len(items)} in all)" if len(items) > n else "")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def number_list(value: Any) -> bool:
    """A list of finite numbers (json's NaN and Infinity, and booleans, excluded)."""
    return isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def rle_pixels(counts: str) -> int | None:
    """Pixels covered by a compressed COCO RLE string (pycocotools' ``rleFrString``, all runs summed),
    or ``None`` when it does not decode: a character out of range, a run of negative length, a number
    cut short or longer than 64 bits.

    pycocotools trusts the string: runs that add up to more than ``height x width`` make its IoU and
    area silently wrong, so the total is checked before the mask is used.
    """
    total = previous = earlier = 0
    runs = value = shift = 0
    for char in counts:
        c = ord(char) - 48
        if not 0 <= c < 64 or shift > 60:
            return None
        value |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:  # more 5-bit groups of this number follow
            continue
        if c & 0x10:  # negative: sign-extend
            value -= 1 << shift
        if runs > 2:  # from the fourth run on, each is stored as the difference to the run two back
            value += earlier
        if value < 0:
            return None
        total += value
        earlier, previous = previous, value
        runs += 1
        value = shift = 0
    return None if shift else total
