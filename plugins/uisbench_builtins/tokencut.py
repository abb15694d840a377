"""``tokencut``: TokenCut's single normalised cut, one mask per image (Wang et al., CVPR 2022).

The object-discovery baseline (YangtaoWANG95/TokenCut ``object_discovery.py::ncut`` and
``unsupervised_saliency_detection/object_discovery.py::ncut``; MaskCut's first cut is the same but
for its corner rule). Per image, on the patch features:

1. the cosine similarity of the L2-normalised features (``F.normalize``), binarised at ``tau``
   (TokenCut's 0.2 for every patch size), non-edges weighted ``eps`` (1e-5);
2. the Fiedler vector ``v`` of ``(D - W) v = lambda D v``;
3. bipartition at the mean of ``v``; the seed is the patch of largest ``|v|``; the side holding the
   seed is the foreground (no corner rule: this is where MaskCut differs);
4. the seed's 4-connected component is the mask.

The seed follows exact-arithmetic ``np.argmax``: the first index within ``SEED_RTOL`` (1e-6) of
``max |v|`` (:func:`uisbench.spectral.first_argmax`), as MaskCut's in ``ncut``. The vector is first
oriented so that the seed's entry is positive, so the mask does not depend on the eigenvector's sign
(the reference's foreground side is the seed's side for either sign too; after a flip it takes
``v <= mean`` where ours takes ``v < mean``, which differ only for entries exactly at the mean). A
constant vector (nothing separates) gives no mask, where the reference would return the whole grid.

Solvers as ``ncut``: ``torch`` (batched block Lanczos, float32 with a float64 redo of near-degenerate
cases) and ``scipy`` (``scipy.linalg.eigh``, the reference's call). The graph's edges near ``tau`` are
decided in float64 (:func:`uisbench.spectral.cosine_above`), so masks do not depend on BLAS
threads; both solvers reproduce the reference's masks on the parity fixtures (tests/fixtures/tokencut).

Score: ``1 - Ncut(S) / 2`` on the binarised graph, from exact integer counts (as ``ncut``'s). TokenCut
finds one object per image: on multi-instance images its recall is bounded by one mask per image.
Memory as ``ncut``: ~40 bytes per pair of patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import uisbench

if TYPE_CHECKING:
    import numpy as np
    import torch


def seed_component(v: np.ndarray, dims: tuple[int, int]) -> np.ndarray:
    """TokenCut steps 3-4 on one Fiedler vector ``v`` (n,): bool ``(h, w)`` mask of the seed's component."""
    import numpy as np
    from scipy import ndimage

    first_argmax = uisbench.spectral.first_argmax
    v = np.asarray(v, dtype=np.float64)
    if v.size == 0:
        return np.zeros(dims, dtype=bool)
    seed = first_argmax(np.abs(v))
    if v[seed] < 0:
        v = -v
    fg = (v > v.mean()).reshape(dims)
    labels, _ = ndimage.label(fg)
    cc = labels[np.unravel_index(seed, dims)]
    if cc == 0:  # constant vector: nothing separates
        return np.zeros(dims, dtype=bool)
    return labels == cc


def fiedler_vectors(binary: torch.Tensor, tau: float, eps: float, solver: str, dtype) -> np.ndarray:
    """Fiedler vectors ``(B, n)`` of the binarised graphs ``binary`` ``(B, n, n)`` (non-edges ``eps``)."""
    import numpy as np
    import torch

    spectral = uisbench.spectral
    alive = torch.ones(binary.shape[:2], dtype=torch.bool, device=binary.device)
    if solver == "scipy":
        return spectral.fiedler_scipy(spectral.weights(binary, alive, tau, eps)).vectors
    M, d = spectral.normalized_affinity(binary, alive, tau, eps, dtype)
    fied = spectral.fiedler_torch(M, d)
    del M
    if dtype != torch.float64 and fied.accurate is not None and not fied.accurate.all():
        # near-degenerate eigenvalues below float32's reach: redo those images in float64 (as ncut)
        idx = torch.from_numpy(np.nonzero(~fied.accurate)[0]).to(binary.device)
        M64, d64 = spectral.normalized_affinity(binary[idx], alive[idx], tau, eps, torch.float64)
        fied.vectors[~fied.accurate] = spectral.fiedler_torch(M64, d64, fied.block[idx]).vectors
    return fied.vectors


def tokencut_batch(
    feats: torch.Tensor, tau: float = 0.2, *, eps: float = 1e-5, solver: str = "torch", dtype=None
) -> list[tuple[list[np.ndarray], list[float]]]:
    """TokenCut on ``(B, C, h, w)`` features of one grid size: per image ``([mask], [score])`` or ``([], [])``."""
    import numpy as np
    import torch

    spectral = uisbench.spectral
    B, C, h, w = feats.shape
    x = feats.reshape(B, C, h * w).transpose(1, 2)
    binary = torch.stack([uisbench.spectral.cosine_above(x[b], tau) for b in range(B)])
    vectors = fiedler_vectors(binary, tau, eps, solver, dtype or torch.float32)
    masks = [seed_component(vectors[b], (h, w)) for b in range(B)]
    S = torch.from_numpy(np.stack([m.reshape(-1, 1) for m in masks])).to(feats.device)  # (B, n, 1)
    scores = spectral.ncut_score(spectral.graph_counts(binary, S), eps)[:, 0]
    return [([m], [float(s)]) if m.any() else ([], []) for m, s in zip(masks, scores, strict=True)]


class TokenCutMasker(uisbench.GridMasker):
    """TokenCut: one normalised cut per image; see the module docstring."""

    name = "tokencut"

    def __init__(
        self,
        *,
        tau: float = 0.2,
        eps: float = 1e-5,
        solver: str = "torch",
        precision: str = "float32",
        memory_gb: float | None = None,
    ) -> None:
        uisbench.complete_params(f"masker {self.name}", PARAMS, dict(tau=tau, eps=eps, solver=solver, precision=precision,
                                                                     memory_gb=memory_gb), check_params)
        super().__init__(memory_gb=memory_gb)
        self.tau = float(tau)
        self.eps = float(eps)
        self.solver = solver
        self.precision = precision

    def grid_masks(
        self, features: torch.Tensor, image_ids: Sequence[int], patch_size: int
    ) -> list[tuple[list[np.ndarray], list[float]]]:
        import torch

        dtype = torch.float32 if self.precision == "float32" else torch.float64
        return tokencut_batch(features, self.tau, eps=self.eps, solver=self.solver, dtype=dtype)


def check_params(params):
    """Problems the factory would raise (``platform validate`` runs this too)."""
    yield from uisbench.spectral.check_cut_params(params)


PARAMS = (
    uisbench.Param(
        "tau", "float", 0.2, "affinity threshold (a cosine) of the binarised graph (TokenCut: 0.2 for every patch size)",
        ge=-1, le=1,
    ),
    *uisbench.spectral.CUT_PARAMS,
    uisbench.grid.MEMORY_PARAM,
)


@uisbench.hookimpl
def uisbench_maskers():
    description = "TokenCut: one normalised cut per image, the seed's side and component (object-discovery baseline)."
    yield uisbench.MaskerSpec(name="tokencut", description=description, factory=TokenCutMasker, params=PARAMS, check=check_params)
