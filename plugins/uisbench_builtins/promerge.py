"""``promerge``: ProMerge's prompt-and-merge pseudo-masks (Li & Shin, ECCV 2024), training-free.

ProMerge (facebookresearch/ProMerge ``promerge/promerge.py``) replaces MaskCut's eigen-solve per cut
by many cheap *prompts* on the patch grid, filtered against a background estimate and merged. Per
image, on the patch features ``x`` (the same ones MaskCut uses; ``u = x / (|x| + eps)``):

1. **Prompts.** Every ``stride``-th patch of every ``stride``-th row is a seed ``s``; its prompt mask
   is ``u_i . u_s > tau`` (``tau`` 0.2, ProMerge's ``bipartition_tau``).
2. **Background or foreground.** A prompt mask covering more than half of two or more grid sides
   (top row, bottom row, left column, right column) is a background candidate. Otherwise its
   4-connected components are foreground candidates, largest first, down to the first smaller than
   ``cc_area`` (0.5) times the seed's own component.
3. **Background.** A patch is background when more than half of the background candidates hold it.
   No foreground candidate, no background candidate, or a background under 10 % of the grid: the
   image gets no mask (as the reference, which skips it).
4. **Cascade filter.** Candidates in order of area (smallest first; equal areas in prompt order)
   are kept when the part of them not covered by earlier kept ones lies less than ``iou_filter``
   (0.8) in the background and the mean of their ``u`` has a dot product below ``fg_include`` (0.1)
   with the mean ``u`` of the background. A candidate whose every patch is already covered is
   dropped (the reference's 0/0 is NaN, and NaN < 0.8 is false).
5. **Merge.** Kept candidates in order of area (largest first) join clusters: a candidate merges
   with every cluster it overlaps by more than ``merge_intersection`` (0.5) of its own area, or by
   more than ``merge_ioa`` (0.1) when the mean ``u`` of the two have a dot product of at least
   ``merge_similarity`` (0.1); the matched clusters and the candidate become one cluster. The
   clusters are the masks. (The reference keeps clusters in a Python ``set`` of tensors, which
   iterates in memory-address order; each merge decision depends only on the pair, so the final
   masks do not depend on that order. Ours keep creation order.)

No CRF (as ``ncut``); the reference's CRF and its "drop if IoU(pre, post) < 0.5" step need pixels.

Exact arithmetic. Every decision compares a real number with a threshold. The prompt similarities
are computed in float32 (a matrix product, seeds x patches) and those within ``uisbench.spectral.REFINE_ATOL`` (1e-3) of
``tau`` are recomputed in float64 from the float32 inputs (products exact, ~1e-16 rounding); the
mean-feature products are float64. A value within ``TIE_TOL`` (1e-9) of its threshold counts as equal
to it (the reference's strict ``>`` / ``<`` then decide). Area ratios are ratios of integer counts.
So masks do not depend on BLAS threads or the device, and they equal the reference's wherever its
float32 rounding does not decide (every parity fixture, tests/fixtures/promerge).

Deviations, each only where the reference is undefined or breaks: the side rule divides each side's
count by that side's own length (the reference divides the top row and the right column by the
wrong side on non-square grids, and reshapes features as ``(C, w, h)``); a seed outside its own
prompt mask (a zero feature: ``u_s . u_s`` is 0) prompts nothing (the reference indexes component
``-1``, or crashes when the mask is empty); the reference's ``assert ... == 768`` (ViT-B only) is not
kept.

Score of a mask (the reference writes 1.0 for all): as ``kmeans``, ``(1 - Ncut(S) / 2) * density(S)``
on the binarised graph of all patches at ``tau`` (the graph whose rows are the prompts; non-edges
weigh 1e-5), from exact integer counts (:func:`uisbench.spectral.graph_counts`). ProMerge, like
k-means, yields a pool of candidates of uneven quality: ``1 - Ncut/2`` ranks how few graph edges
leave a mask, ``density`` (share of its patch pairs that are edges) penalises a merge of dissimilar
parts, e.g. two instances joined at a touching edge. In ``[0, 1]``; the order of equal scores is
the clusters' creation order.

Cost: one ``(seeds x n)`` similarity product for the prompts and one ``n x n`` binarised graph for
the scores, no eigen-solve; ~12 bytes per pair of patches (:attr:`ProMergeMasker.bytes_per_token_pair`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import uisbench
from uisbench import spectral

if TYPE_CHECKING:
    import numpy as np
    import torch

#: Values within this distance of a threshold count as equal to it (exact-arithmetic ties), as in
#: :func:`uisbench.spectral.cosine_above`.
TIE_TOL = spectral.TIE_TOL
#: Weight of the non-edges in the graph the scores are computed on (MaskCut's ``eps``).
SCORE_EPS = 1e-5


# ---------------------------------------------------------------------------------------------
# Exact-arithmetic comparisons
# ---------------------------------------------------------------------------------------------


def _greater(value: float, threshold: float) -> bool:
    """``value > threshold`` where values within :data:`TIE_TOL` count as equal."""
    return value - threshold > TIE_TOL


def _less(value: float, threshold: float) -> bool:
    """``value < threshold`` where values within :data:`TIE_TOL` count as equal."""
    return threshold - value > TIE_TOL


# ---------------------------------------------------------------------------------------------
# ProMerge on one image
# ---------------------------------------------------------------------------------------------


@dataclass
class ProMergeParams:
    """ProMerge's thresholds (defaults: facebookresearch/ProMerge ``promerge/run_script.sh``)."""

    stride: int = 4
    tau: float = 0.2
    cc_area: float = 0.5
    iou_filter: float = 0.8
    fg_include: float = 0.1
    merge_intersection: float = 0.5
    merge_ioa: float = 0.1
    merge_similarity: float = 0.1
    eps: float = 1e-5


DEFAULTS = ProMergeParams()


@dataclass
class ProMergeTrace:
    """What one image went through (for tests and debugging): the prompts' candidates, the
    background, the cascade's survivors and the final masks (bool ``(h, w)`` arrays)."""

    foreground: list = field(default_factory=list)
    background_candidates: int = 0
    background: Any = None
    cascade: list = field(default_factory=list)
    masks: list = field(default_factory=list)
    skipped: str | None = None


def seeds(dims: tuple[int, int], stride: int) -> list[tuple[int, int]]:
    """The prompt seeds: every ``stride``-th patch of every ``stride``-th row, in raster order."""
    h, w = dims
    return [(r, c) for r in range(0, h, stride) for c in range(0, w, stride)]


def foreground_sides(mask: np.ndarray) -> int:
    """How many grid sides (top, right, bottom, left) ``mask`` covers more than half of."""
    h, w = mask.shape
    counts = (int(mask[0].sum()), int(mask[:, -1].sum()), int(mask[-1].sum()), int(mask[:, 0].sum()))
    return sum(2 * c > n for c, n in zip(counts, (w, h, w, h), strict=True))


def prompt_candidates(
    prompts: np.ndarray, points: Sequence[tuple[int, int]], cc_area: float
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Steps 1-2 on prompt masks ``(s, h, w)`` of seeds ``points``: (foreground, background) candidates."""
    import numpy as np
    from scipy import ndimage

    fg: list[np.ndarray] = []
    bg: list[np.ndarray] = []
    for m, (r, c) in zip(prompts, points, strict=True):
        if foreground_sides(m) > 1:
            bg.append(m)
            continue
        labels, num = ndimage.label(m)
        own = int(labels[r, c])
        if own == 0:  # zero feature: the seed is not similar to itself (module doc)
            continue
        sizes = np.bincount(labels.ravel(), minlength=num + 1)[1:]
        for j in sorted(range(num), key=lambda k: -sizes[k]):  # stable: label order on equal sizes
            if sizes[j] < cc_area * sizes[own - 1]:
                break
            fg.append(labels == j + 1)
    return fg, bg


def promerge_image(x: torch.Tensor, dims: tuple[int, int], p: ProMergeParams) -> ProMergeTrace:
    """ProMerge's masks of one image from its features ``x`` ``(n, C)`` (row-major ``dims`` grid)."""
    import numpy as np
    import torch

    h, w = dims
    n = h * w
    trace = ProMergeTrace()
    points = seeds(dims, p.stride)
    rows = torch.tensor([r * w + c for r, c in points], device=x.device)
    prompts = spectral.cosine_above(x, p.tau, eps=p.eps, rows=rows).cpu().numpy().reshape(len(points), h, w)
    fg, bg = prompt_candidates(prompts, points, p.cc_area)
    trace.foreground, trace.background_candidates = fg, len(bg)
    if not fg or not bg:
        trace.skipped = "no foreground candidate" if not fg else "no background candidate"
        return trace
    background = 2 * np.stack(bg).sum(0, dtype=np.int64) > len(bg)
    trace.background = background
    if 10 * int(background.sum()) < n:
        trace.skipped = "background under 10 % of the grid"
        return trace

    x64 = x.detach().to("cpu", torch.float64).numpy()
    u = x64 / (np.linalg.norm(x64, axis=1) + p.eps)[:, None]
    flat_bg = background.reshape(-1)
    to_background = u @ u[flat_bg].mean(0)  # u_i . mean background u, (n,)

    # cascade filter: smallest first, equal areas in prompt order
    areas = [int(m.sum()) for m in fg]
    covered = np.zeros((h, w), dtype=bool)
    kept: list[np.ndarray] = []
    for k in sorted(range(len(fg)), key=lambda k: areas[k]):
        m = fg[k]
        new = m & ~covered
        count = int(new.sum())
        if count == 0:
            continue
        if not _less(int((new & background).sum()) / count, p.iou_filter):
            continue
        if not _less(float(to_background[m.reshape(-1)].mean()), p.fg_include):
            continue
        covered |= m
        kept.append(m)
    trace.cascade = kept

    # merge: largest first
    means: dict[int, np.ndarray] = {}

    def mean_u(i: int, mask: np.ndarray) -> np.ndarray:
        if i not in means:
            means[i] = u[mask.reshape(-1)].mean(0)
        return means[i]

    clusters: list[tuple[int, np.ndarray]] = []  # (id for the mean cache, mask)
    next_id = 0
    for m in sorted(kept, key=lambda m: -int(m.sum())):
        area = int(m.sum())
        mid = next_id
        next_id += 1
        hits = []
        for j, (cid, c) in enumerate(clusters):
            inter = int((c & m).sum())
            if inter == 0:
                continue
            ioa = inter / area
            if _greater(ioa, p.merge_intersection) or (
                _greater(ioa, p.merge_ioa) and not _less(float(mean_u(mid, m) @ mean_u(cid, c)), p.merge_similarity)
            ):
                hits.append(j)
        if not hits:
            clusters.append((mid, m))
            continue
        merged = m.copy()
        for j in hits:
            merged |= clusters[j][1]
        clusters = [cl for j, cl in enumerate(clusters) if j not in hits]
        clusters.append((next_id, merged))
        next_id += 1
    trace.masks = [c for _, c in clusters]
    return trace


def candidate_scores(x: torch.Tensor, masks: Sequence[np.ndarray], tau: float, eps: float) -> list[float]:
    """``(1 - Ncut/2) * density`` of each mask on the binarised graph of ``x`` ``(n, C)`` at ``tau``."""
    import numpy as np
    import torch

    if not masks:
        return []
    spectral = uisbench.spectral
    E = spectral.cosine_above(x, tau, eps=eps)
    S = torch.from_numpy(np.stack([m.reshape(-1) for m in masks], axis=1)).to(x.device)  # (n, m)
    counts = spectral.graph_counts(E[None], S[None])
    density = counts.inner / np.maximum(counts.size * counts.size, 1)
    return (spectral.ncut_score(counts, SCORE_EPS) * density)[0].tolist()


# ---------------------------------------------------------------------------------------------
# The masker
# ---------------------------------------------------------------------------------------------


class ProMergeMasker(uisbench.GridMasker):
    """ProMerge pseudo-masks; see the module docstring."""

    name = "promerge"
    # float32 similarities + bool graph + float32 edge matrix for the score counts, per patch pair
    bytes_per_token_pair = 12

    def __init__(self, *, memory_gb: float | None = None, **thresholds: float) -> None:
        # ProMergeParams holds the defaults (PARAMS reads them too): one place for the paper's values
        super().__init__(memory_gb=memory_gb)
        known = {f.name: f.type for f in fields(ProMergeParams)}
        unknown = sorted(set(thresholds) - set(known))
        if unknown:
            raise TypeError(f"ProMergeMasker got unknown parameter(s) {', '.join(unknown)}")
        values = uisbench.complete_params(f"masker {self.name}", PARAMS, {**asdict(DEFAULTS), **thresholds, "memory_gb": memory_gb})
        del values["memory_gb"]
        self.params = ProMergeParams(**{k: (int if known[k] == "int" else float)(v) for k, v in values.items()})

    def grid_masks(
        self, features: torch.Tensor, image_ids: Sequence[int], patch_size: int
    ) -> list[tuple[list[np.ndarray], list[float]]]:
        B, C, h, w = features.shape
        out = []
        for b in range(B):
            x = features[b].reshape(C, h * w).T
            masks = promerge_image(x, (h, w), self.params).masks
            out.append((masks, candidate_scores(x, masks, self.params.tau, self.params.eps)))
        return out


PARAMS = (
    uisbench.Param("stride", "int", DEFAULTS.stride, "a prompt seed every stride patches along rows and columns", ge=1),
    uisbench.Param("tau", "float", DEFAULTS.tau, "prompt threshold on the cosine similarity to the seed (bipartition_tau)",
                   ge=-1, le=1),
    uisbench.Param("cc_area", "float", DEFAULTS.cc_area, "keep a prompt's components down to this share of the seed's own",
                   ge=0),
    uisbench.Param("iou_filter", "float", DEFAULTS.iou_filter, "drop a candidate lying this much in the background (iou_filter_tau)",
                   ge=0, le=1),
    uisbench.Param(
        "fg_include", "float", DEFAULTS.fg_include, "drop a candidate whose mean feature is this similar to the background's",
        ge=-1, le=1,
    ),
    uisbench.Param("merge_intersection", "float", DEFAULTS.merge_intersection, "merge when the overlap exceeds this share of the candidate",
                   ge=0, le=1),
    uisbench.Param("merge_ioa", "float", DEFAULTS.merge_ioa, "merge from this overlap when the mean features are similar",
                   ge=0, le=1),
    uisbench.Param("merge_similarity", "float", DEFAULTS.merge_similarity, "mean-feature similarity that counts as similar (dino_merge_tau)",
                   ge=-1, le=1),
    uisbench.Param("eps", "float", DEFAULTS.eps, "added to feature norms before normalising (ProMerge)", gt=0),
    uisbench.grid.MEMORY_PARAM,
)


@uisbench.hookimpl
def uisbench_maskers():
    description = "ProMerge: prompt masks from seed similarities, background cascade filter, merging (ECCV 2024)."
    yield uisbench.MaskerSpec(name="promerge", description=description, factory=ProMergeMasker, params=PARAMS)
