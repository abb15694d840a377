"""``position``: calibration features that encode where a patch lies and nothing else.

Each patch's feature is the 2-D sin-cos code of its grid position (MAE's fixed position embedding,
``get_2d_sincos_pos_embed``): half the channels code the patch row, half the column, each half as
``sin(k w_i), cos(k w_i)`` of the patch index ``k`` (0, 1, ... in patches) with frequencies
``w_i = base ** (-i / (dim / 4))``, ``i = 0 .. dim/4 - 1``. The image's pixels are never read: every
image gets the same features. The cosine similarity of two patches then depends only on their
offset, ``(sum_i cos(dy w_i) + cos(dx w_i)) / (dim / 2)``, and falls with distance.

It is a control for metrics of *instance* awareness: the patches of one instance lie closer together
than those of two instances, so a feature that knows only position tells same-instance from
other-instance pairs when distance is not controlled (``instance-awareness``'s
``separability_auroc_unmatched``), and must score 0.5 when it is (``separability_auroc``). Like the
oracles its spec says ``calibration=True``: its rows are listed apart as references, not contenders,
and no student is trained on it. With ``resize: pad`` the positions are those of the padded square.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import uisbench

if TYPE_CHECKING:
    import torch


PARAMS = (
    uisbench.Param("dim", "int", 64, "feature channels, a multiple of 4 (sin and cos of rows and columns)", ge=4),
    uisbench.Param("base", "float", 10000.0, "base of the frequencies w_i = base ** (-i / (dim / 4)) (MAE: 10000)", gt=1),
    *uisbench.grid.GRID_PARAMS,
)


def check_params(params):
    """Problems the factory would raise (``platform validate`` runs this too)."""
    yield from uisbench.grid.check_grid_params(params)
    if params["dim"] % 4:
        yield "dim", f"must be a multiple of 4 (sin and cos of row and column), got {params['dim']}; use {params['dim'] // 4 * 4 or 4}"


def sincos_code(grid: int, dim: int, base: float) -> Any:
    """``(dim, grid, grid)`` float64 numpy array: the 2-D sin-cos code of every patch position."""
    import numpy as np

    quarter = dim // 4
    omega = base ** (-np.arange(quarter, dtype=np.float64) / quarter)  # (dim/4,)
    angle = np.arange(grid, dtype=np.float64)[:, None] * omega[None, :]  # (grid, dim/4)
    code_1d = np.concatenate([np.sin(angle), np.cos(angle)], axis=1)  # (grid, dim/2)
    rows = np.broadcast_to(code_1d[:, None, :], (grid, grid, dim // 2))  # a patch's row code
    cols = np.broadcast_to(code_1d[None, :, :], (grid, grid, dim // 2))  # a patch's column code
    return np.concatenate([rows, cols], axis=2).transpose(2, 0, 1).copy()


class PositionBackbone(uisbench.GridBackbone):
    """The 2-D sin-cos code of each patch's grid position; no image content."""

    calibration = True

    def __init__(self, **params: Any) -> None:
        where = "backbone position"
        p = uisbench.complete_params(where, PARAMS, params, check_params)
        super().__init__(size=p["size"], patch_size=p["patch_size"], resize=p["resize"], where=where)
        self.dim = int(p["dim"])
        self.base = float(p["base"])
        self._code: Any = None

    def provenance(self) -> dict[str, Any]:
        return {"model": "position", "pretrained": False, "weights": None, "weights_sha256": None, "calibration": True,
                "reads": "nothing: patch position only", "dim": self.dim, "base": self.base, **super().provenance()}

    def extract(self, pixels: torch.Tensor, image_ids: Sequence[int]) -> uisbench.FeatureMap:
        import torch

        if self._code is None:  # the same for every image: computed once, in float64, then stored as float32
            self._code = torch.from_numpy(sincos_code(self.preprocessing.grid, self.dim, self.base)).float()
        feats = self._code.to(pixels.device).expand(len(image_ids), -1, -1, -1).contiguous()
        return self.feature_map(feats, pixels, image_ids)


@uisbench.hookimpl
def uisbench_backbones():
    description = "Calibration control: a 2-D sin-cos code of each patch's position, no image content."
    yield uisbench.BackboneSpec(name="position", description=description, factory=PositionBackbone, params=PARAMS,
                                check=check_params, calibration=True)
