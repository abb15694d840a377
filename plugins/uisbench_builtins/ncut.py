"""``ncut``: MaskCut (CutLER's normalised-cut pseudo-masks), batched on CPU or CUDA.

MaskCut (facebookresearch/CutLER ``maskcut/maskcut.py::maskcut_forward``) at patch resolution, per
image: cosine affinity of the L2-normalised patch features, binarised at ``tau`` (``eps`` for
non-edges); the Fiedler vector of ``(D - W) x = lambda D x``; bipartition at its mean; the foreground
side by the seed (largest ``|x|``) and the corner rule; the seed's 4-connected component; then again
``n_masks`` times with earlier masks' patches given zero features, rejecting a mask that overlaps the
previous one (IoU > 0.5) or covers <= 1 % of the grid, and removing earlier masks from each output.
No CRF. The loop is :func:`maskcut_batch`; its graph, solvers and tie rules are the public
:mod:`uisbench.spectral` toolbox, which documents the one deliberate deviation (the eigenvector's sign
is fixed so the result never depends on LAPACK) and the tie rule at the seed (the first of entries
equal to within 1e-6, as ``np.argmax`` in exact arithmetic).

Reference quirks kept (see REFERENCE.md sec. 1): self-loops in ``W``; ``eps`` for every non-edge;
earlier masks' patches get zero features (so all their weights are ``eps``, or 1 for ``tau < 0``); the
duplicate rule compares with the *immediately previous* mask only (so a rejected duplicate may come
back one step later); the 1 % area rule applies from the second cut on; the seed's 4-connected
component is kept, not the largest; each output mask has the union of earlier masks removed.

Solvers: ``torch`` (default; batched restarted block Lanczos on the deflated normalised affinity,
float32 with a float64 redo where eigenvalues are too close for float32) and ``scipy`` (the reference,
``scipy.linalg.eigh(D - W, D, subset_by_index=[1, 2])`` per image). Both reproduce CutLER's own masks
exactly on the parity fixtures (tests/fixtures/maskcut), with 1 and with 2 BLAS threads.

Adaptive number of cuts (``min_score``; null, the default, is always ``n_masks`` cuts as MaskCut): with
a value, ``n_masks`` is the maximum and an image stops at its first cut whose (non-empty) mask scores
below ``min_score`` (that mask is dropped), or as soon as MaskCut has run dry: an accepted mask lies
inside the earlier masks, or a cut paints nothing without being a duplicate of the previous mask (it
covers <= 1 % of the grid, or nothing). The graph then stays the same for every later cut, whose masks
would all be empty. The masks are a prefix of MaskCut's own; with ``min_score: 0`` they equal
``n_masks`` fixed cuts, at the cost of the cuts until it runs dry. Images that stop leave the batch.

Score of a mask: ``1 - Ncut(S) / 2`` (:func:`uisbench.spectral.ncut_score`) on the graph of the cut that
produced it (``S``: the output mask on the patch grid, earlier masks removed). In ``[0, 1]``: an object
few graph edges leave scores near 1, an arbitrary split of a homogeneous region near 0.5. Computed
from exact integer counts on the binarised graph, so a score, and the order of equal ones, does not
depend on the solver, the thread count or the device.

Output: masks upsampled (nearest) from the patch grid to ``record.height x record.width``; with a
padded feature map (``valid`` given) only the valid rectangle enters the graph and is upsampled
(:class:`uisbench.GridMasker`). Memory: images are processed in chunks of about ``memory_gb`` (default
2 GiB on CPU, a quarter of the free memory on CUDA) at ~40 bytes per graph entry: 3600-token graphs
go ~16 to a 2 GiB chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import uisbench
from uisbench import spectral

if TYPE_CHECKING:
    import numpy as np
    import torch


class NCutMasker(uisbench.GridMasker):
    """MaskCut pseudo-masks; see the module docstring."""

    name = "ncut"

    def __init__(self, *, tau: float | None = None, n_masks: int = 3, eps: float = 1e-5, solver: str = "torch",
                 precision: str = "float32", min_score: float | None = None, memory_gb: float | None = None) -> None:
        uisbench.complete_params("masker ncut", PARAMS, dict(tau=tau, n_masks=n_masks, eps=eps, solver=solver, precision=precision,
                                                             min_score=min_score, memory_gb=memory_gb), check_params)
        super().__init__(memory_gb=memory_gb)
        self.tau, self.n_masks = tau, int(n_masks)
        self.eps, self.solver, self.precision = float(eps), solver, precision
        self.min_score = None if min_score is None else float(min_score)

    def grid_masks(
        self, features: torch.Tensor, image_ids: Sequence[int], patch_size: int
    ) -> list[tuple[list[np.ndarray], list[float]]]:
        import torch

        tau = self.tau if self.tau is not None else spectral.default_tau(patch_size)
        dtype = torch.float32 if self.precision == "float32" else torch.float64
        out = maskcut_batch(features, tau, self.n_masks, solver=self.solver, eps=self.eps, image_ids=image_ids, dtype=dtype,
                            min_score=self.min_score)
        return [([m.astype(bool) for m in masks], [float(s) for s in scores]) for masks, scores in out]


# ---------------------------------------------------------------------------------------------
# MaskCut
# ---------------------------------------------------------------------------------------------


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    import numpy as np

    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def maskcut_batch(
    feats: torch.Tensor,
    tau: float,
    n_masks: int = 3,
    *,
    solver: str = "torch",
    eps: float = 1e-5,
    image_ids: Sequence[Any] | None = None,
    dtype: Any = None,
    min_score: float | None = None,
    **solver_options: Any,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """MaskCut on a batch ``(B, C, h, w)`` of patch features (one device, one grid size).

    Returns per image ``(masks, scores)``: ``masks`` uint8 ``(n_masks, h, w)`` (all-zero where a cut
    was rejected or emptied by the earlier masks, as the reference), ``scores`` float ``(n_masks,)``.
    ``dtype`` is the torch solver's working precision (float32 or float64; default float32).
    ``min_score``: the adaptive stop (module docstring); an image's masks after its stop are all-zero.
    """
    import numpy as np
    import torch

    if feats.dim() != 4:
        raise ValueError(f"maskcut_batch expects (B, C, h, w) features, got shape {tuple(feats.shape)}")
    if solver not in spectral.SOLVERS:
        raise uisbench.ConfigError(f"Unknown NCut solver {solver!r}; use one of {', '.join(spectral.SOLVERS)}.")
    B, C, h, w = feats.shape
    n = h * w
    spectral.check_finite(feats, image_ids)
    if dtype is None:
        dtype = torch.float32
    dev = feats.device
    binary = spectral.binary_affinity(feats.reshape(B, C, n).transpose(1, 2), tau)
    alive = torch.ones((B, n), dtype=torch.bool, device=dev)
    masks = np.zeros((B, n_masks, h, w), dtype=np.uint8)
    scores = np.zeros((B, n_masks), dtype=np.float64)
    current = [np.zeros((h, w), dtype=bool) for _ in range(B)]
    union = [np.zeros((h, w), dtype=bool) for _ in range(B)]
    warm = None
    act = np.arange(B)  # the images still cutting (all of them without min_score)
    for i in range(n_masks):
        sel = None if len(act) == B else torch.from_numpy(act).to(dev)
        bin_a = binary if sel is None else binary[sel]
        alive_a = alive if sel is None else alive[sel]
        if solver == "scipy":
            fied = spectral.fiedler_scipy(spectral.weights(bin_a, alive_a, tau, eps))
        else:
            M, d = spectral.normalized_affinity(bin_a, alive_a, tau, eps, dtype)
            fied = spectral.fiedler_torch(M, d, warm, **solver_options)
            del M
            warm = fied.block
            if dtype != torch.float64 and fied.accurate is not None and not fied.accurate.all():
                # Near-degenerate eigenvalues below float32's reach: redo those images in float64.
                idx = torch.from_numpy(np.nonzero(~fied.accurate)[0]).to(dev)
                M64, d64 = spectral.normalized_affinity(bin_a[idx], alive_a[idx], tau, eps, torch.float64)
                f64 = spectral.fiedler_torch(M64, d64, warm[idx], **solver_options)
                del M64
                fied.vectors[~fied.accurate] = f64.vectors
                fied.values[~fied.accurate] = f64.values

        outs, dry = [], []
        for j, b in enumerate(act):
            m = raw = spectral.orient_and_select(fied.vectors[j], (h, w))
            if i >= 1 and (_iou(current[b], m) > 0.5 or m.sum() / m.size <= 0.01):
                m = np.zeros((h, w), dtype=bool)
            # run dry (module docstring): from here on the graph, and so the cut, stays the same
            dry.append(bool(m.any() and not (m & ~union[b]).any()) or bool(not m.any() and raw.sum() <= 0.01 * raw.size))
            current[b] = m
            out = m & ~union[b]
            union[b] |= out
            masks[b, i] = out
            outs.append(out)
        S = torch.from_numpy(np.stack(outs).reshape(len(act), n, 1)).to(dev)
        edges = spectral.edge_matrix(bin_a, alive_a, tau, torch.float32)
        scores[act, i] = spectral.ncut_score(spectral.graph_counts(edges, S), eps)[:, 0]
        paint = torch.from_numpy(np.stack([current[b] for b in act]).reshape(len(act), n)).to(dev)
        if sel is None:
            alive = alive & ~paint
        else:
            alive[sel] = alive_a & ~paint
        if min_score is not None:
            low = np.array([o.any() for o in outs]) & (scores[act, i] < min_score)
            masks[act[low], i] = 0
            scores[act[low], i] = 0.0
            keep = ~(low | np.array(dry))
            if warm is not None and not keep.all():
                warm = warm[torch.from_numpy(np.flatnonzero(keep)).to(warm.device)]
            act = act[keep]
            if not len(act):
                break
    return [(masks[b], scores[b]) for b in range(B)]


def maskcut_patch_masks(
    feats: Any,
    dims: tuple[int, int] | None = None,
    tau: float = 0.2,
    n_masks: int = 3,
    solver: str = "torch",
    *,
    eps: float = 1e-5,
    device: str = "cpu",
    image_id: Any = None,
    return_scores: bool = False,
    **solver_options: Any,
):
    """MaskCut at patch resolution for one image.

    ``feats``: ``(C, N)`` with ``N = h * w`` row-major (the fixture layout; ``dims`` required) or
    ``(C, h, w)``; numpy or torch. Returns uint8 ``(n_masks, h, w)`` (and the scores if asked).
    """
    import numpy as np
    import torch

    t = torch.as_tensor(np.asarray(feats, dtype=np.float32) if not isinstance(feats, torch.Tensor) else feats)
    t = t.float()
    if t.dim() == 2:
        if dims is None:
            raise ValueError("dims (h, w) is required for (C, N) features")
        t = t.reshape(t.shape[0], int(dims[0]), int(dims[1]))
    out = maskcut_batch(
        t[None].to(device),
        tau,
        n_masks,
        solver=solver,
        eps=eps,
        image_ids=[image_id] if image_id is not None else None,
        **solver_options,
    )[0]
    return out if return_scores else out[0]


def check_params(params):
    """Problems the factory would raise (``platform validate`` runs this too)."""
    yield from spectral.check_cut_params(params)


PARAMS = (
    uisbench.Param("tau", "float", None, "affinity threshold (a cosine); null = 0.15 for patch 8, 0.2 otherwise (MaskCut)",
                   nullable=True, ge=-1, le=1),
    uisbench.Param("n_masks", "int", 3, "number of cuts per image (MaskCut's N); the most per image with min_score", ge=1),
    uisbench.Param("min_score", "float", None, "adaptive stop: an image stops at its first mask scoring below this, "
                   "or when MaskCut runs dry; null = always n_masks cuts", nullable=True, ge=0, le=1),
    *spectral.CUT_PARAMS,
    uisbench.grid.MEMORY_PARAM,
)


@uisbench.hookimpl
def uisbench_maskers():
    description = "MaskCut: iterated normalised cuts of the binarised patch-affinity graph (CutLER)."
    yield uisbench.MaskerSpec(name="ncut", description=description, factory=NCutMasker, params=PARAMS, check=check_params)
