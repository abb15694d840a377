"""Pixel preprocessing shared by backbones (resize policy, normalisation)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .contracts import Preprocessing


def resized_geometry(height: int, width: int, prep: Preprocessing) -> tuple[int, int]:
    """Size ``(h, w)`` in pixels of the image content after resizing (before any padding)."""
    if prep.resize == "square":
        return prep.size, prep.size
    scale = prep.size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def preprocess_image(image: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> normalised float32 ``(3, S, S)``.

    ``square``: LANCZOS resize to ``S x S`` as MaskCut does. ``pad``: keep the aspect ratio, pad the
    bottom/right with the mean colour (zero after normalisation).
    """
    import numpy as np
    import torch
    from PIL import Image

    if prep.size % prep.patch_size:
        raise ValueError(f"size {prep.size} is not a multiple of patch size {prep.patch_size}")
    h, w = resized_geometry(image.shape[0], image.shape[1], prep)
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.LANCZOS), dtype=np.float32) / 255.0
    mean = np.asarray(prep.mean, dtype=np.float32)
    std = np.asarray(prep.std, dtype=np.float32)
    out = np.zeros((prep.size, prep.size, 3), dtype=np.float32)
    out[:h, :w] = (resized - mean) / std
    return torch.from_numpy(out).permute(2, 0, 1).contiguous()
