"""``kmeans``: multi-K clustering candidates (Engstler et al. 2023; Deep Spectral Methods), batched.

For every K in ``ks`` each image's patches are clustered with k-means (k-means++ seeding from a
fixed seed, Lloyd iterations batched over images in torch on CPU or CUDA, best of ``n_init``), on:

- ``space: features``: the L2-normalised patch features (cosine geometry, as the affinity);
- ``space: spectral``: the first non-trivial eigenvectors of the normalised Laplacian of
  ``W = max(f f^T, 0)`` (Deep Spectral Methods, REFERENCE.md sec. 3; dense batched ``eigh``), ``K``
  of them for K clusters (or a fixed ``n_eigs``).

Every cluster is split into its 4-connected components; each component with at least
``min_area`` of the grid is a candidate. Candidates of all K are pooled, sorted by score, and
duplicates removed by mask NMS (IoU > ``nms_iou`` with a kept one). ``foreground`` then filters:

- ``none``: keep all;
- ``border``: the K = 2 clustering's cluster touching the grid border least is the foreground;
- ``ncut``: the foreground side of the first normalised cut (MaskCut's first bipartition, before
  the seed component is taken);

and a candidate is kept when at least ``fg_overlap`` of its area lies in the foreground.

Score (documented, comparable with ``ncut``'s): on MaskCut's binarised graph (``tau``, ``eps``),
``(1 - Ncut(S) / 2) * density(S)`` where ``density(S)`` is the share of patch pairs inside ``S`` that
are graph edges. The Ncut term rewards candidates few edges leave; the density term penalises a
candidate that merges dissimilar regions (e.g. two instances a coarse K put in one cluster), which
Ncut alone does not see. Both lie in ``[0, 1]``. Both are computed from exact integer counts on the
0/1 graph (:func:`uisbench.spectral.graph_counts`), so scores, their sort order and the NMS that follows do not
depend on BLAS threads or the device; equal scores keep the candidates' order (K ascending, then
cluster, then component in raster order).

Ties follow exact arithmetic: a point equidistant to several centres joins the first of them, the
first of equally good k-means++ candidates is taken, the first of equally good restarts is kept,
and an emptied cluster takes the first of equally far points. "Equal" means within ``TIE_RTOL``
(1e-6) of the best value, relative to the scale of the values compared: ``|x|^2 + max |c|^2`` for a
point's squared distances (their float32 rounding reached 3.7e-7 of that scale on the fixtures),
the best value itself for sums of squared distances (accumulated in float64). A gap this small is
one that rounding could decide either way, so only such decisions change: exact ties (e.g. a
duplicated centre) go to the first index whatever the BLAS threads or device.

Genuine near-ties (a gap just above the tolerance) would still be decided by float32 rounding, which
differs with BLAS threads (2-4e-7 of the scale between 1 and 2 threads). So the float32 distances
only shortlist: a point whose two nearest centres lie within ``REFINE_RTOL`` (1e-4) of each other is
decided on float64 distances, and centres are averaged in float64 before being rounded to float32.
float64 rounding (~1e-16) decides nothing at the 1e-6 tolerance, so labels are the same at any thread
count; the float32 matrix product still does the bulk of the work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import uisbench
from uisbench import spectral

if TYPE_CHECKING:
    import numpy as np
    import torch

#: Relative tolerance below which k-means treats two values as equal (see the module docstring).
TIE_RTOL = 1e-6
#: Points whose two nearest centres are closer than this (relative) are assigned on float64 distances.
REFINE_RTOL = 1e-4


def _first_argmin(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Index of the first entry along the last dim within ``TIE_RTOL * scale`` of the minimum
    (``scale`` broadcasts against ``values[..., :1]``): ``argmin`` with exact-arithmetic ties."""
    import torch

    near = values <= values.min(-1, keepdim=True).values + TIE_RTOL * scale
    return near.to(torch.uint8).argmax(-1)  # torch.argmax returns the first maximal index


def _assign(x: torch.Tensor, x2: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distances (B, n, k) of points ``x`` (``x2 = |x|^2``) to centres ``C`` and the labels.

    Labels of points with a near-tie in float32 are decided on float64 distances (module docstring).
    """

    c2 = (C * C).sum(-1)  # (B, k)
    dist = x2[:, :, None] - 2 * x @ C.transpose(1, 2) + c2[:, None, :]
    scale = x2[:, :, None] + c2.amax(-1)[:, None, None]
    labels = _first_argmin(dist, scale)
    if dist.shape[-1] < 2:
        return dist, labels
    nearest = dist.topk(2, dim=-1, largest=False).values
    close = (nearest[..., 1] - nearest[..., 0]) <= REFINE_RTOL * scale[..., 0]  # (B, n)
    b_all, i_all = close.nonzero(as_tuple=True)
    for start in range(0, len(b_all), 4096):  # bounded memory: many points tie when centres repeat
        b, i = b_all[start : start + 4096], i_all[start : start + 4096]
        exact = (x[b, i].double()[:, None, :] - C[b].double()).pow(2).sum(-1)  # (m, k), float64
        labels[b, i] = _first_argmin(exact, scale[b, i].double())
    return dist, labels


def kmeans_batch(
    x: torch.Tensor,
    k: int,
    *,
    iters: int = 50,
    n_init: int = 1,
    seed: int | Sequence[int] = 0,
    init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched k-means: ``x`` (B, n, d) -> labels (B, n), centres (B, k, d), inertia (B,).

    ``seed`` is one seed per image (or one for all): each image draws from its own
    ``torch.Generator``, so its clusters do not depend on which images share its batch (batch size,
    shards and resumed runs give the same masks).
    Greedy k-means++ seeding (``2 + log k`` D^2 samples per step, the best kept, as scikit-learn), then
    Lloyd iterations until no label changes (or ``iters``); an emptied cluster takes the point
    farthest from its centre. Best inertia of ``n_init`` runs per image. Ties go to the first index
    (module docstring). ``init`` (B, k, d) gives the starting centres instead (one run).
    """
    import numpy as np
    import torch

    B, n, _ = x.shape
    k = max(1, min(int(k), n))
    x = x.float()
    seeds = [int(seed)] * B if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != B:
        raise ValueError(f"kmeans_batch: {len(seeds)} seeds for {B} images")
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    x2 = (x * x).sum(-1)  # (B, n)
    ar = torch.arange(B, device=x.device)
    runs = []
    for _ in range(1 if init is not None else max(1, n_init)):
        first = torch.stack([torch.randint(n, (), generator=g) for g in gens]).to(x.device)
        centers = [x[ar, first]]
        d2 = (x - centers[0][:, None, :]).pow(2).sum(-1)
        trials = 2 + int(np.log(k))  # greedy k-means++ (as scikit-learn): best of a few D^2 samples
        for _j in range(1, k):
            p = d2.clamp_min(0).double().cpu()
            p = torch.where(p.sum(-1, keepdim=True) > 0, p, torch.ones_like(p))
            cand = torch.stack(
                [torch.multinomial(p[b], trials, replacement=True, generator=gens[b]) for b in range(B)]
            ).to(x.device)  # (B, L)
            xc = x[ar[:, None], cand]  # (B, L, d)
            dc = torch.minimum(d2[:, None, :], torch.cdist(xc, x).pow(2))  # (B, L, n)
            potential = dc.sum(-1, dtype=torch.float64)  # (B, L)
            pick = _first_argmin(potential, potential.min(-1, keepdim=True).values)  # (B,)
            centers.append(xc[ar, pick])
            d2 = dc[ar, pick]
        C = torch.stack(centers, dim=1) if init is None else init.to(x.device, x.dtype)  # (B, k, d)
        labels = None
        for _it in range(iters):
            dist, new = _assign(x, x2, C)
            if labels is not None and bool((new == labels).all()):
                break
            labels = new
            onehot = torch.nn.functional.one_hot(labels, k).to(torch.float64)  # (B, n, k)
            counts = onehot.sum(1)  # (B, k)
            # averaged in float64, then rounded: the same float32 centres at any thread count
            sums = onehot.transpose(1, 2) @ x.double()
            C_new = (sums / counts.clamp_min(1)[:, :, None]).to(x.dtype)
            empty = counts == 0
            if bool(empty.any()):
                own = dist.gather(-1, labels[:, :, None])[:, :, 0]  # (B, n)
                far = _first_argmin(-own, own.abs().amax(-1, keepdim=True))  # (B,)
                C_new = torch.where(empty[:, :, None], x[ar, far][:, None, :], C_new)
            C = C_new
        dist, labels = _assign(x, x2, C)
        inertia = dist.gather(-1, labels[:, :, None])[:, :, 0].clamp_min(0).sum(-1, dtype=torch.float64)
        runs.append((labels, C, inertia))
    inertias = torch.stack([r[2] for r in runs], dim=1)  # (B, runs)
    best = _first_argmin(inertias, inertias.min(-1, keepdim=True).values)
    return (
        torch.stack([r[0] for r in runs], dim=1)[ar, best],
        torch.stack([r[1] for r in runs], dim=1)[ar, best],
        inertias[ar, best],
    )


def _components(labels: np.ndarray, k: int, min_patches: int) -> list[np.ndarray]:
    from scipy import ndimage

    out = []
    for c in range(k):
        comp, num = ndimage.label(labels == c)
        for j in range(1, num + 1):
            m = comp == j
            if m.sum() >= min_patches:
                out.append(m)
    return out


def _border_fraction(mask: np.ndarray) -> float:
    import numpy as np

    border = np.zeros_like(mask, dtype=bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    return float((mask & border).sum() / border.sum())


def _nms(masks: list[np.ndarray], scores: list[float], thr: float) -> list[int]:
    import numpy as np

    order = np.argsort(-np.asarray(scores), kind="stable")
    flat = np.stack([m.reshape(-1) for m in masks]).astype(np.float32) if masks else np.zeros((0, 0))
    area = flat.sum(1)
    keep: list[int] = []
    for i in order:
        if keep:
            inter = flat[keep] @ flat[i]
            iou = inter / (area[keep] + area[i] - inter)
            if (iou > thr).any():
                continue
        keep.append(int(i))
    return keep


class KMeansMasker(uisbench.GridMasker):
    """Multi-K k-means candidates; see the module docstring."""

    name = "kmeans"

    def __init__(
        self,
        *,
        ks: Sequence[int] = (2, 3, 4, 5, 6),
        space: str = "features",
        n_eigs: int | None = None,
        iters: int = 50,
        n_init: int = 3,
        seed: int = 0,
        min_area: float = 0.01,
        nms_iou: float = 0.5,
        foreground: str = "none",
        fg_overlap: float = 0.5,
        tau: float | None = None,
        eps: float = 1e-5,
        memory_gb: float | None = None,
    ) -> None:
        # every bound is declared once, in PARAMS: this refuses exactly what `platform validate` refuses
        uisbench.complete_params("masker kmeans", PARAMS, dict(
            ks=list(ks), space=space, n_eigs=n_eigs, iters=iters, n_init=n_init, seed=seed, min_area=min_area,
            nms_iou=nms_iou, foreground=foreground, fg_overlap=fg_overlap, tau=tau, eps=eps, memory_gb=memory_gb,
        ), check_params)
        super().__init__(memory_gb=memory_gb)
        self.ks = sorted({int(k) for k in ks})
        self.space = space
        self.n_eigs = n_eigs
        self.iters = int(iters)
        self.n_init = int(n_init)
        self.seed = int(seed)
        self.min_area = float(min_area)
        self.nms_iou = float(nms_iou)
        self.foreground = foreground
        self.fg_overlap = float(fg_overlap)
        self.tau = tau
        self.eps = float(eps)

    # -- per chunk (the GridMasker hook) ------------------------------------------------------

    def grid_masks(
        self, features: torch.Tensor, image_ids: Sequence[int], patch_size: int
    ) -> list[tuple[list[np.ndarray], list[float]]]:
        """Per image the kept candidates (bool grid masks) and their scores."""
        import numpy as np
        import torch

        tau = self.tau if self.tau is not None else spectral.default_tau(patch_size)
        B, C, h, w = features.shape
        n = h * w
        seeds = self._seeds(image_ids)
        x = features.reshape(B, C, n).transpose(1, 2).float()
        if self.space == "spectral":
            z = spectral.normalized_laplacian_eigvecs(x, self.n_eigs or max(self.ks))
        else:
            z = torch.nn.functional.normalize(x, dim=-1)
        labels = {}
        for k in self.ks:
            zk = z if self.space != "spectral" else z[..., : (self.n_eigs or k)]
            labels[k] = kmeans_batch(zk, k, iters=self.iters, n_init=self.n_init, seed=seeds)[0].cpu().numpy()
        binary = spectral.binary_affinity(x, tau)
        fg_masks = self._foreground(x, z, tau, (h, w), seeds) if self.foreground != "none" else [None] * B
        min_patches = max(1, int(np.ceil(self.min_area * n)))
        out = []
        for b in range(B):
            cands = []
            for k, lab in labels.items():
                cands += _components(lab[b].reshape(h, w), k, min_patches)
            if not cands:
                out.append(([], []))
                continue
            S = torch.from_numpy(np.stack([c.reshape(-1) for c in cands], axis=1)).to(x.device)  # (n, m)
            counts = spectral.graph_counts(binary[b : b + 1], S[None])
            density = counts.inner / (counts.size * counts.size)  # every candidate has >= 1 patch
            scores = (spectral.ncut_score(counts, self.eps) * density)[0].tolist()
            keep = _nms(cands, scores, self.nms_iou)
            masks = [cands[i] for i in keep]
            sc = [scores[i] for i in keep]
            fg = fg_masks[b]
            if fg is not None:
                ok = [(m & fg).sum() >= self.fg_overlap * m.sum() for m in masks]
                masks = [m for m, o in zip(masks, ok, strict=False) if o]
                sc = [s for s, o in zip(sc, ok, strict=False) if o]
            out.append((masks, sc))
        return out

    def _seeds(self, ids: Sequence[Any]) -> list[int]:
        """One seed per image from the masker's seed and the image id (not its place in the batch)."""
        return [(self.seed * 1_000_003 + int(i)) % (2**63 - 1) if isinstance(i, int) else self.seed for i in ids]

    def _foreground(
        self, x: torch.Tensor, z: torch.Tensor, tau: float, dims: tuple[int, int], seeds: list[int]
    ) -> list[np.ndarray]:
        B = x.shape[0]
        h, w = dims
        if self.foreground == "border":
            z2 = z if self.space != "spectral" else z[..., : (self.n_eigs or 2)]
            lab = kmeans_batch(z2, 2, iters=self.iters, n_init=self.n_init, seed=seeds)[0].cpu().numpy()
            fgs = []
            for b in range(B):
                parts = [lab[b].reshape(h, w) == c for c in (0, 1)]
                fgs.append(min(parts, key=_border_fraction))
            return fgs
        # ncut: the foreground side of MaskCut's first cut
        import torch

        binary = spectral.binary_affinity(x, tau)
        alive = torch.ones(binary.shape[:2], dtype=torch.bool, device=x.device)
        M, d = spectral.normalized_affinity(binary, alive, tau, self.eps, torch.float64)
        fied = spectral.fiedler_torch(M, d)
        return [spectral.foreground_side(fied.vectors[b], dims) for b in range(B)]


def check_params(params):
    """What the bounds of :data:`PARAMS` cannot say (``platform validate`` runs this too)."""
    if not params["ks"]:
        yield "ks", "must name at least one number of clusters, e.g. [2, 3, 4]"


PARAMS = (
    uisbench.Param("ks", "list[int]", [2, 3, 4, 5, 6], "numbers of clusters; candidates of all are pooled", ge=1),
    uisbench.Param(
        "space",
        "str",
        "features",
        "cluster L2-normalised features or spectral embeddings",
        choices=("features", "spectral"),
    ),
    uisbench.Param("n_eigs", "int", None, "spectral space: eigenvectors used (null = K for K clusters)", nullable=True, ge=1),
    uisbench.Param("iters", "int", 50, "maximum Lloyd iterations", ge=1),
    uisbench.Param("n_init", "int", 3, "k-means++ restarts; the lowest inertia wins", ge=1),
    uisbench.Param("seed", "int", 0, "seed of the k-means++ sampling", ge=0),
    uisbench.Param("min_area", "float", 0.01, "drop candidates smaller than this fraction of the grid", ge=0, le=1),
    uisbench.Param("nms_iou", "float", 0.5, "mask NMS threshold across K", ge=0, le=1),
    uisbench.Param(
        "foreground",
        "str",
        "none",
        "foreground filter: none, border (K=2 cluster touching the border least) or ncut",
        choices=("none", "ncut", "border"),
    ),
    uisbench.Param("fg_overlap", "float", 0.5, "keep a candidate when this share of it lies in the foreground", ge=0, le=1),
    uisbench.Param(
        "tau", "float", None, "graph threshold (a cosine) for scores and the ncut filter; null = by patch size",
        nullable=True, ge=-1, le=1,
    ),
    uisbench.Param("eps", "float", 1e-5, "weight of non-edges in the scoring graph", gt=0),
    uisbench.grid.MEMORY_PARAM,
)


@uisbench.hookimpl
def uisbench_maskers():
    description = "Multi-K k-means (optionally spectral) clusters split into components, deduplicated by mask NMS."
    yield uisbench.MaskerSpec(name="kmeans", description=description, factory=KMeansMasker, params=PARAMS, version="2",
                              check=check_params)
