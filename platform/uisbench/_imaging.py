"""Pixel preprocessing shared by backbones (resize policy, normalisation)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .contracts import Preprocessing


def preprocess_image(image: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> normalised float32 ``(3, S, S)``.

    ``square``: LANCZOS resize to ``S x S`` as MaskCut does. ``pad``: keep the aspect ratio, pad the
    bottom/right with the mean colour (zero after normalisation). Normalised channel by channel
    straight into the planar output: a broadcast over the colour axis plus a transposing copy cost
    ~12 ms per 480 px image, this ~1 ms.
    """
    import numpy as np
    import torch
    from PIL import Image

    from .errors import ConfigError, DataError

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"preprocess: expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}.")
    if prep.size % prep.patch_size:
        raise ConfigError(
            f"preprocessing size {prep.size} is not a multiple of the patch size {prep.patch_size}; "
            f"set the backbone entry's size to {prep.size // prep.patch_size * prep.patch_size or prep.patch_size}."
        )
    h, w = prep.content_size(image.shape[0], image.shape[1])
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.LANCZOS))
    out = np.zeros((3, prep.size, prep.size), dtype=np.float32)
    for c in range(3):
        plane = out[c, :h, :w]
        np.multiply(resized[:, :, c], np.float32(1.0 / (255.0 * prep.std[c])), out=plane, casting="unsafe")
        plane -= np.float32(prep.mean[c] / prep.std[c])
    return torch.from_numpy(out)
