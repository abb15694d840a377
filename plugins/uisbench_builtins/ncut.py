"""``ncut``: MaskCut (CutLER's normalised-cut pseudo-masks), batched on CPU or CUDA.

Per image: cosine affinity of the L2-normalised patch features, binarised at ``tau`` (``eps`` for
non-edges); the Fiedler vector of ``(D - W) x = lambda D x``; bipartition at its mean; the foreground
side by the seed (largest ``|x|``) and the corner rule; the seed's 4-connected component; then again
``n_masks`` times with earlier masks' patches given zero features, rejecting a mask that overlaps the
previous one (IoU > 0.5) or covers <= 1 % of the grid, and removing earlier masks from each output.
The algorithm, its reference quirks, the one deliberate deviation (the eigenvector's sign is
fixed so the result never depends on LAPACK) and the tie rule at the seed (the first of entries equal
to within 1e-6, as ``np.argmax`` in exact arithmetic) are documented in ``_spectral.py``. No CRF.

Solvers: ``torch`` (default; batched restarted block Lanczos on the deflated normalised affinity,
float32 with a float64 redo where eigenvalues are too close for float32) and ``scipy`` (the reference,
``scipy.linalg.eigh(D - W, D, subset_by_index=[1, 2])`` per image). Both reproduce CutLER's own masks
exactly on the parity fixtures (tests/fixtures/maskcut), with 1 and with 2 BLAS threads.

Score of a mask: ``1 - Ncut(S) / 2`` where ``Ncut(S) = cut(S, ~S) / vol(S) + cut(S, ~S) / vol(~S)`` on
the graph of the cut that produced it (``S``: the output mask on the patch grid). In ``[0, 1]``: an
object few graph edges leave scores near 1, an arbitrary split of a homogeneous region near 0.5.
Computed from exact integer counts on the binarised graph, so a score, and the order of equal ones,
does not depend on the solver, the thread count or the device.

Output: masks upsampled (nearest) from the patch grid to ``record.height x record.width``; with a
padded feature map (``valid`` given) only the valid rectangle enters the graph and is upsampled.
Memory: images are processed in chunks of about ``memory_gb`` (default 2 GiB on CPU, a quarter of
the free memory on CUDA) at ~40 bytes per graph entry: 3600-token graphs go ~16 to a 2 GiB chunk.
"""

from __future__ import annotations

import uisbench

from . import _spectral


class NCutMasker(_spectral.GridMasker):
    """MaskCut pseudo-masks; see the module docstring."""

    name = "ncut"

    def __init__(
        self,
        *,
        tau: float | None = None,
        n_masks: int = 3,
        eps: float = 1e-5,
        solver: str = "torch",
        precision: str = "float32",
        memory_gb: float | None = None,
    ) -> None:
        where = "masker ncut"
        if solver not in _spectral.SOLVERS:
            raise uisbench.ConfigError(f"{where}: solver {solver!r} is not one of {', '.join(_spectral.SOLVERS)}.")
        if precision not in ("float32", "float64"):
            raise uisbench.ConfigError(f"{where}: precision {precision!r} is not float32 or float64.")
        if n_masks < 1:
            raise uisbench.ConfigError(f"{where}: n_masks must be >= 1, got {n_masks}.")
        if not eps > 0:
            raise uisbench.ConfigError(f"{where}: eps must be > 0, got {eps}.")
        if memory_gb is not None and not memory_gb > 0:
            raise uisbench.ConfigError(f"{where}: memory_gb must be > 0 or null, got {memory_gb}.")
        self.tau = tau
        self.n_masks = int(n_masks)
        self.eps = float(eps)
        self.solver = solver
        self.precision = precision
        self.memory_gb = memory_gb

    def patch_masks(self, features: uisbench.FeatureMap) -> list[tuple]:
        """Per image ``(grid masks uint8 (n_masks, h', w'), scores)`` on the (valid) patch grid."""
        import torch

        tau = self.tau if self.tau is not None else _spectral.default_tau(features.patch_size)
        dtype = torch.float32 if self.precision == "float32" else torch.float64
        budget = int(self.memory_gb * (1 << 30)) if self.memory_gb is not None else None
        results: list = [None] * len(features.image_ids)
        for idx, feats in _spectral.valid_groups(features):
            feats = feats.to(self.device)
            n = feats.shape[2] * feats.shape[3]
            step = _spectral.chunk_size(n, self.device, budget)
            for start in range(0, len(idx), step):
                part = idx[start : start + step]
                out = _spectral.maskcut_batch(
                    feats[start : start + step],
                    tau,
                    self.n_masks,
                    solver=self.solver,
                    eps=self.eps,
                    image_ids=[features.image_ids[i] for i in part],
                    dtype=dtype,
                )
                for i, r in zip(part, out, strict=False):
                    results[i] = r
        return results



PARAMS = (
    uisbench.Param(
        "tau", "float", None, "affinity threshold; null = 0.15 for patch 8, 0.2 otherwise (MaskCut)", nullable=True
    ),
    uisbench.Param("n_masks", "int", 3, "number of cuts per image (MaskCut's N)"),
    uisbench.Param("eps", "float", 1e-5, "weight of non-edges in the binarised graph"),
    uisbench.Param(
        "solver",
        "str",
        "torch",
        "eigen-solver: torch (batched, CPU/CUDA) or scipy (reference, CPU)",
        choices=_spectral.SOLVERS,
    ),
    uisbench.Param(
        "precision",
        "str",
        "float32",
        "torch solver precision (float64 redo for near-degenerate cases)",
        choices=("float32", "float64"),
    ),
    _spectral.MEMORY_PARAM,
)


@uisbench.hookimpl
def uisbench_maskers():
    yield uisbench.MaskerSpec(
        name="ncut",
        description="MaskCut: iterated normalised cuts of the binarised patch-affinity graph (CutLER).",
        factory=NCutMasker,
        params=PARAMS,
        version="1",
    )
