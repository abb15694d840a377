"""Spectral graph helpers shared by the ``ncut`` and ``kmeans`` maskers (private to the built-ins).

MaskCut (facebookresearch/CutLER ``maskcut/maskcut.py::maskcut_forward``) at patch resolution,
with two eigen-solvers for the generalised problem ``(D - W) x = lambda D x``:

``scipy``
    The reference: ``scipy.linalg.eigh(D - W, D, subset_by_index=[1, 2])`` per image on the CPU in
    float64, exactly as CutLER calls it.
``torch``
    Batched and iterative, on CPU or CUDA. The generalised problem is the symmetric one
    ``M u = mu u`` with ``M = D^-1/2 W D^-1/2``, ``mu = 1 - lambda`` and ``x = D^-1/2 u``. ``M``'s top
    eigenvector ``D^1/2 1`` (``lambda = 0``) is known, so it is projected out ("deflated") and the
    Fiedler vector is the top eigenvector of what remains. A restarted block Lanczos (block Krylov
    space of ``block`` vectors x ``steps`` matrix products, full re-orthogonalisation, Rayleigh-Ritz,
    restart with the top ``block`` Ritz vectors) finds it. The block keeps the next eigenvectors in
    the subspace, so near-degenerate eigenvalues (instances that are almost disconnected in the
    graph, whose eigenvalues differ by ~1e-5) are separated by the Rayleigh-Ritz step rather than by
    slow Krylov convergence. Small graphs (``n <= dense_max``) use dense batched ``torch.linalg.eigh``.

Reference quirks kept (see REFERENCE.md sec. 1): self-loops in ``W``; ``eps`` for every non-edge;
earlier masks' patches get zero features (so all their weights are ``eps``, or 1 for ``tau < 0``); the
duplicate rule compares with the *immediately previous* mask only (so a rejected duplicate may come
back one step later); the 1 % area rule applies from the second cut on; the seed's 4-connected
component is kept, not the largest; each output mask has the union of earlier masks removed.

One deliberate deviation: the eigenvector's sign. CutLER's foreground choice depends on it (the
corner rule and the seed rule can disagree, and then LAPACK's arbitrary sign decides, cf. CutLER #71).
Both solvers here first orient the Fiedler vector so that its largest-magnitude entry (the seed) is
positive. With that orientation the chosen side never holds 3 or 4 grid corners. In every case where
the reference's outcome does not depend on the sign (all the parity fixtures) the result is the
same as the reference's.

Ties at the seed follow exact arithmetic. Patches with identical rows in the graph get Fiedler
entries that are equal in exact arithmetic, where ``np.argmax`` returns the first of them; computed,
they differ by the eigen-solver's rounding (BLAS threads, LAPACK build, CPU or GPU), which would then
pick the seed, possibly in another connected component (fixture ``synth2_*``, first cut: 52 such
entries in two components). So both of MaskCut's argmax steps (``seed = argmax |v|`` and the final
``argmax`` of the signed, possibly flipped vector) take the *first* index whose value is within
``SEED_RTOL * max |v|`` (``SEED_RTOL = 1e-6``) of the maximum (:func:`first_argmax`). This differs
from ``np.argmax`` only where entries lie within 1e-6 of each other relative to the vector's scale.
Such entries must come out of the solver equal to rounding: scipy's do (~1e-14); the torch solver's
Ritz vector separates them by up to 1e-3 in float32, so it is multiplied by ``M`` once (see
``_fiedler_torch``). With both, every parity fixture is reproduced at IoU 1.0 with 1 and 2 threads.

Scores: each mask gets ``1 - Ncut(S) / 2`` with ``Ncut(S) = cut(S, ~S) / vol(S) + cut(S, ~S) / vol(~S)``,
evaluated on the graph of the iteration that produced it (``S`` = the output mask, earlier masks
removed). ``Ncut`` lies in ``[0, 2]``, so scores lie in ``[0, 1]``; a well separated object (few graph
edges leave it) scores near 1, an arbitrary split of a homogeneous region near 0.5. With the 0/1 edge
matrix ``E`` and ``W = eps + (1 - eps) E``, every term is an integer count (``|S|``, edges inside
``S``, ``E``-degrees summed over ``S``, all edges, ``n``) combined by one fixed float64 formula
(:func:`graph_counts`, :func:`ncut_score`): the counts are exact, so a score's bits do not depend on
the solver, the BLAS thread count or the device, and neither does the order of equal scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import uisbench

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = [
    "SOLVERS",
    "binary_affinity",
    "fiedler",
    "maskcut_batch",
    "maskcut_patch_masks",
    "orient_and_select",
    "foreground_side",
    "first_argmax",
    "SEED_RTOL",
    "graph_counts",
    "ncut_score",
    "default_tau",
    "chunk_size",
    "check_finite",
    "normalized_laplacian_eigvecs",
    "content_crop",
    "valid_groups",
    "valid_rect",
    "to_predictions",
]

SOLVERS = ("torch", "scipy")


def default_tau(patch_size: int) -> float:
    """MaskCut's threshold: 0.15 for patch 8 (CutLER README, ViT-B/8), 0.2 otherwise (ViT-S/16 CLI default)."""
    return 0.15 if patch_size <= 8 else 0.2


def check_finite(feats: torch.Tensor, image_ids: Sequence[Any] | None) -> None:
    """Raise :class:`uisbench.DataError` naming the images whose features hold NaN or inf."""
    import torch

    bad = ~torch.isfinite(feats.reshape(feats.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        idx = [int(i) for i in torch.nonzero(bad).flatten().tolist()]
        names = [image_ids[i] if image_ids is not None else i for i in idx]
        raise uisbench.DataError(
            f"Features of image id(s) {names} contain NaN or inf; the masker cannot build a graph from them. "
            "Check the backbone's output for these images (fp16 overflow? corrupt image?) and re-extract."
        )


def chunk_size(n_tokens: int, device: str, budget_bytes: int | None = None, per_token2: int = 40) -> int:
    """How many images of ``n_tokens`` patches fit one batch: ``per_token2`` bytes per graph entry.

    The default budget is 2 GiB on the CPU and a quarter of the free memory on CUDA.
    """
    if budget_bytes is None:
        budget_bytes = 2 << 30
        if str(device).startswith("cuda"):
            import torch

            free, _ = torch.cuda.mem_get_info(torch.device(device))
            budget_bytes = int(free // 4)
    return max(1, int(budget_bytes // max(1, per_token2 * n_tokens * n_tokens)))


# ---------------------------------------------------------------------------------------------
# Graph
# ---------------------------------------------------------------------------------------------


def binary_affinity(feats: torch.Tensor, tau: float) -> torch.Tensor:
    """``(B, n, C)`` features -> ``(B, n, n)`` bool: cosine similarity of L2-normalised features ``> tau``.

    Computed in float32 like the reference (``F.normalize`` then ``F^T F``), with TF32 switched off on
    CUDA so that no entry near ``tau`` flips because of reduced-precision matmuls.
    """
    import torch
    import torch.nn.functional as F

    x = F.normalize(feats.float(), p=2, dim=-1)
    if x.is_cuda:
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            gram = torch.bmm(x, x.transpose(1, 2))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    else:
        gram = torch.bmm(x, x.transpose(1, 2))
    return gram > tau


def _edges(binary: torch.Tensor, alive: torch.Tensor, tau: float, dtype) -> torch.Tensor:
    """0/1 edge matrix of one MaskCut iteration as ``dtype``. Painted patches (``alive`` False) have
    zero features, so their similarity with everything (themselves included) is 0: an edge iff ``0 > tau``."""
    E = binary.to(dtype)
    if bool(alive.all()):
        return E
    a = alive.to(dtype)
    if 0.0 > tau:  # E = 1 - (1 - binary) * pair
        return E.sub_(1.0).mul_(a[:, :, None]).mul_(a[:, None, :]).add_(1.0)
    return E.mul_(a[:, :, None]).mul_(a[:, None, :])


def weights(binary: torch.Tensor, alive: torch.Tensor, tau: float, eps: float) -> torch.Tensor:
    """The reference's float64 affinity ``W``: exactly 1 on edges, ``eps`` elsewhere."""
    import torch

    E = _edges(binary, alive, tau, torch.float64)
    return torch.where(
        E > 0.5,
        torch.ones((), dtype=torch.float64, device=E.device),
        torch.full((), eps, dtype=torch.float64, device=E.device),
    )


def normalized_affinity(
    binary: torch.Tensor, alive: torch.Tensor, tau: float, eps: float, dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``M = D^-1/2 W D^-1/2`` (in ``dtype``, built in place) and the degrees ``d`` (float64)."""
    import torch

    n = binary.shape[-1]
    E = _edges(binary, alive, tau, dtype)
    d = E.sum(-1, dtype=torch.float64) * (1.0 - eps) + eps * n
    s = d.rsqrt().to(dtype)
    M = E.mul_(1.0 - eps).add_(eps).mul_(s[:, :, None]).mul_(s[:, None, :])
    return M, d


# ---------------------------------------------------------------------------------------------
# Eigen-solvers
# ---------------------------------------------------------------------------------------------


@dataclass
class Fiedler:
    """Second-smallest generalised eigenvectors ``(B, n)`` (float64, CPU), their eigenvalues, and
    (torch solver) the final Ritz block, a warm start for the next cut."""

    vectors: np.ndarray
    values: np.ndarray
    block: Any = None
    restarts: int = 0
    accurate: np.ndarray | None = None  # r <= rtol * gap per image (torch solver)


def _fiedler_scipy(W: torch.Tensor) -> Fiedler:
    import numpy as np
    import torch
    from scipy.linalg import eigh

    Wn = W.detach().to("cpu", dtype=torch.float64).numpy()
    vecs, vals = [], []
    for A in Wn:
        n = A.shape[0]
        if n < 3:
            vecs.append(np.zeros(n))
            vals.append(0.0)
            continue
        D = np.diag(A.sum(axis=1))
        w, v = eigh(D - A, D, subset_by_index=[1, 2])
        vecs.append(v[:, 0])
        vals.append(float(w[0]))
    return Fiedler(np.stack(vecs), np.asarray(vals))


def _project_out(Y: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    for _ in range(2):  # classical Gram-Schmidt, twice is enough
        Y = Y - V @ (V.transpose(1, 2) @ Y)
    return Y


def _orthonormalize(Y: torch.Tensor, V: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Orthonormal basis of ``Y`` (B, n, k) orthogonal to ``V`` (B, n, p); columns that vanish
    (the Krylov space became invariant: few distinct eigenvalues) are replaced by random directions."""
    import torch

    scale = Y.norm(dim=1).clamp_min(torch.finfo(Y.dtype).tiny)  # (B, k)
    tiny = torch.finfo(Y.dtype).eps ** 0.5  # lost more than half the digits: treat as dependent
    for attempt in range(4):
        Y = _project_out(Y, V)
        Q, R = torch.linalg.qr(Y)
        bad = R.diagonal(dim1=1, dim2=2).abs() < tiny * scale
        if not bool(bad.any()):
            return Q
        if attempt == 3:
            break
        noise = torch.randn(Y.shape, generator=gen, dtype=torch.float64).to(Y.device, Y.dtype)
        Y = torch.where(bad[:, None, :], noise, Y)
        scale = torch.where(bad, Y.norm(dim=1), scale)
    Q = _project_out(Q, V)  # pragma: no cover - pathological
    return torch.linalg.qr(Q)[0]  # pragma: no cover


def _bmm_active(M: torch.Tensor, Q: torch.Tensor, active: list[int] | None) -> torch.Tensor:
    """``M[active] @ Q`` without copying the big ``M`` when only some images are still iterating."""
    import torch

    if active is None:
        return torch.bmm(M, Q)
    return torch.stack([M[i] @ Q[j] for j, i in enumerate(active)])


def _fiedler_torch(
    M: torch.Tensor,
    d: torch.Tensor,
    X0: torch.Tensor | None = None,
    *,
    block: int = 8,
    steps: int = 5,
    rtol: float = 1e-4,
    atol: float | None = None,
    max_restarts: int = 50,
    dense_max: int = 128,
) -> Fiedler:
    """Fiedler vectors from ``M = D^-1/2 W D^-1/2`` (B, n, n) and degrees ``d`` (B, n).

    Restarted block Lanczos on ``M`` restricted to the complement of ``D^1/2 1`` (see module doc).
    An image is done when the residual ``r = ||M u - mu u||`` of its top Ritz pair satisfies
    ``r <= rtol * gap`` (``gap``: distance to the next Ritz value; ``r / gap`` bounds the eigenvector's
    angle error) or ``r <= atol`` (default ``sqrt(n) * 10 * machine eps``), or when ``r`` stagnates.
    ``X0`` (B, n, block) warm-starts the block.
    """
    import numpy as np
    import torch

    B, n, _ = M.shape
    dt = M.dtype
    s = d.rsqrt().to(dt)
    u0 = d.sqrt().to(dt)
    u0 = (u0 / u0.norm(dim=1, keepdim=True))[:, :, None]  # (B, n, 1), M u0 = u0
    if n < 3:
        return Fiedler(np.zeros((B, n)), np.zeros(B))
    if n <= dense_max or block * steps + 2 >= n:
        mu, U = torch.linalg.eigh(M.double())
        # Ascending mu; the largest (1) belongs to u0, the Fiedler vector is the second largest.
        x = U[:, :, -2] * s.double()
        return Fiedler(x.cpu().numpy(), (1.0 - mu[:, -2]).cpu().numpy(), accurate=np.ones(B, dtype=bool))
    if atol is None:
        atol = 10 * n**0.5 * torch.finfo(dt).eps

    gen = torch.Generator().manual_seed(0)
    if X0 is None or X0.shape != (B, n, block):
        X = torch.randn((B, n, block), generator=gen, dtype=torch.float64).to(M.device, dt)
    else:
        X = X0.to(M.device, dt)
    theta_top = torch.zeros(B, dtype=dt, device=M.device)
    accurate = np.zeros(B, dtype=bool)
    X_out = torch.zeros((B, n, block), dtype=dt, device=M.device)
    active = list(range(B))
    best = [float("inf")] * B
    stall = [0] * B
    restarts = 0
    for restarts in range(1, max_restarts + 1):  # noqa: B007 - reported
        idx = None if len(active) == B else active
        Ms = M if idx is None else None
        u = u0 if idx is None else u0[active]
        V = u
        blocks, products = [], []
        Q = _orthonormalize(X, V, gen)
        for step in range(steps):
            blocks.append(Q)
            V = torch.cat([V, Q], dim=2)
            MQ = torch.bmm(Ms, Q) if Ms is not None else _bmm_active(M, Q, idx)
            products.append(MQ)
            if step + 1 < steps:
                Q = _orthonormalize(MQ, V, gen)
        Vk = torch.cat(blocks, dim=2)  # (b, n, block*steps), orthonormal, orthogonal to u0
        MV = torch.cat(products, dim=2)
        H = Vk.transpose(1, 2) @ MV
        H = 0.5 * (H + H.transpose(1, 2))
        theta, S = torch.linalg.eigh(H)  # ascending
        S_top = S[:, :, -block:].flip(-1)
        th = theta[:, -block:].flip(-1)
        X = Vk @ S_top
        R = MV @ S_top[:, :, :1] - X[:, :, :1] * th[:, None, :1]
        res = R.norm(dim=1)[:, 0]
        gap = th[:, 0] - th[:, 1]
        ids = torch.tensor(active, device=M.device)
        theta_top[ids] = th[:, 0]
        X_out[ids] = X
        acc = res <= rtol * gap
        accurate[active] = acc.cpu().numpy()
        done = (acc | (res <= atol)).cpu().tolist()
        keep = []
        for a, r, dn in zip(active, res.cpu().tolist(), done, strict=False):
            stall[a] = stall[a] + 1 if r > 0.7 * best[a] else 0
            best[a] = min(best[a], r)
            keep.append(not dn and stall[a] < 3)
        active = [a for a, k in zip(active, keep, strict=False) if k]
        if not active:
            break
        X = X[torch.tensor(keep, device=M.device)]
    # Patches with identical graph rows ("twins") have equal entries in every eigenvector of M with a
    # non-zero eigenvalue, the Fiedler vector included; their differences span part of M's null space.
    # The Ritz vector keeps a component there (measured up to 1e-3 of max |x| in float32), enough to
    # decide seed ties (module doc). One product with M removes it: twins' rows of M are identical.
    u = X_out[:, :, :1]
    Mu = torch.bmm(M, u)
    norm = Mu.norm(dim=1, keepdim=True)
    u = torch.where(norm > 0, Mu / norm.clamp_min(torch.finfo(dt).tiny), u)
    x = u[:, :, 0] * s
    return Fiedler(x.double().cpu().numpy(), (1.0 - theta_top).double().cpu().numpy(), X_out, restarts, accurate)


def fiedler(W: torch.Tensor, solver: str = "torch", **options: Any) -> Fiedler:
    """Second-smallest generalised eigenvectors of ``(D - W) x = lambda D x`` for a batch ``(B, n, n)``
    of affinities (convenience entry point for tests; MaskCut builds ``M`` directly)."""
    import torch

    if solver == "scipy":
        return _fiedler_scipy(W)
    if solver == "torch":
        dtype = options.pop("dtype", torch.float64)
        d = W.sum(-1, dtype=torch.float64)
        s = d.rsqrt().to(dtype)
        M = W.to(dtype) * s[:, :, None] * s[:, None, :]
        return _fiedler_torch(M, d, **options)
    raise uisbench.ConfigError(f"Unknown NCut solver {solver!r}; use one of {', '.join(SOLVERS)}.")


# ---------------------------------------------------------------------------------------------
# MaskCut
# ---------------------------------------------------------------------------------------------


#: Relative tolerance of MaskCut's argmax steps: entries this close to the maximum (relative to the
#: vector's largest magnitude) are ties, and the first one wins (see the module docstring).
SEED_RTOL = 1e-6


def first_argmax(x: np.ndarray, rtol: float = SEED_RTOL) -> int:
    """``np.argmax`` with exact-arithmetic ties: the first index whose value is within
    ``rtol * max |x|`` of ``max x``, so that entries equal up to rounding count as equal."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    return int(np.argmax(x >= x.max() - rtol * np.abs(x).max()))


def _oriented(v: np.ndarray) -> tuple[np.ndarray, int]:
    """``v`` as float64, negated if needed so that its seed (:func:`first_argmax` of ``|v|``) is
    positive, and the seed."""
    import numpy as np

    v = np.asarray(v, dtype=np.float64)
    seed = first_argmax(np.abs(v))
    return (-v if v[seed] < 0 else v), seed


def _corners(bip: np.ndarray) -> int:
    return int(bip[0, 0]) + int(bip[0, -1]) + int(bip[-1, 0]) + int(bip[-1, -1])


def orient_and_select(v: np.ndarray, dims: tuple[int, int]) -> np.ndarray:
    """MaskCut steps 5-7 on one Fiedler vector ``v`` (n,): bool ``(h, w)`` mask of the seed's component.

    The vector is oriented first so that its largest-magnitude entry is positive (see module doc);
    the result is therefore the same for ``v`` and ``-v``. Both seeds are :func:`first_argmax`.
    """
    import numpy as np
    from scipy import ndimage

    if np.size(v) == 0:
        return np.zeros(dims, dtype=bool)
    v, seed = _oriented(v)
    bip = v > v.mean()
    if _corners(bip.reshape(dims)) >= 3 or not bip[seed]:
        bip = ~bip
        seed = first_argmax(-v)
    else:
        seed = first_argmax(v)
    labels, _ = ndimage.label(bip.reshape(dims))
    cc = labels[np.unravel_index(seed, dims)]
    if cc == 0:  # constant vector: nothing separates; the reference would take the background (all)
        return np.zeros(dims, dtype=bool)
    return labels == cc


def foreground_side(v: np.ndarray, dims: tuple[int, int]) -> np.ndarray:
    """The whole foreground side of one cut (``orient_and_select`` before the seed component)."""
    v, _ = _oriented(v)
    bip = (v > v.mean()).reshape(dims)
    return ~bip if _corners(bip) >= 3 else bip


@dataclass
class GraphCounts:
    """Integer statistics of masks ``S`` (``m`` per image) on 0/1 graphs ``E`` of ``n`` nodes."""

    n: int
    size: np.ndarray  # (B, m) |S|
    inner: np.ndarray  # (B, m) sum over i, j in S of E_ij (ordered pairs, self-loops included)
    degree: np.ndarray  # (B, m) sum over i in S of the E-degree sum_j E_ij
    total: np.ndarray  # (B, 1) sum over all i, j of E_ij


def graph_counts(edges: torch.Tensor, masks: torch.Tensor) -> GraphCounts:
    """:class:`GraphCounts` of ``masks`` (B, n, m) on ``edges`` (B, n, n), both 0/1 (bool or float).

    Exact: the products of 0/1 values summed in float32 are integers below ``n < 2**24``, exact in any
    summation order (BLAS blocking, threads, device; TF32 keeps 0 and 1 exact), and the sums over
    nodes are taken in float64, exact below ``2**53``.
    """
    import torch

    E = edges.to(torch.float32)
    S = masks.to(torch.float32)
    ES = torch.bmm(E, S).double()
    S64 = S.double()
    deg = E.sum(-1, dtype=torch.float64)  # (B, n)

    def ints(t: torch.Tensor) -> np.ndarray:
        return t.to(torch.int64).cpu().numpy()

    return GraphCounts(
        n=int(edges.shape[-1]),
        size=ints(S64.sum(1)),
        inner=ints((ES * S64).sum(1)),
        degree=ints((deg[:, :, None] * S64).sum(1)),
        total=ints(deg.sum(-1, keepdim=True)),
    )


def ncut_score(c: GraphCounts, eps: float) -> np.ndarray:
    """``1 - Ncut(S) / 2`` (B, m) on ``W = eps + (1 - eps) E``, from exact counts; 0 for an empty mask.

    With ``s = |S|``: ``cut = eps s (n - s) + (1 - eps)(degree - inner)``,
    ``vol(S) = eps n s + (1 - eps) degree``, ``vol(~S) = eps n (n - s) + (1 - eps)(total - degree)``;
    a term with zero volume (``S`` empty or the whole graph, so ``cut`` is 0) counts 0.
    """
    import numpy as np

    n, s = c.n, c.size
    cut = eps * (s * (n - s)) + (1.0 - eps) * (c.degree - c.inner)
    vol_s = eps * (n * s) + (1.0 - eps) * c.degree
    vol_r = eps * (n * (n - s)) + (1.0 - eps) * (c.total - c.degree)
    ncut = np.divide(cut, vol_s, out=np.zeros(s.shape), where=vol_s > 0) + np.divide(
        cut, vol_r, out=np.zeros(s.shape), where=vol_r > 0
    )
    return np.where(s > 0, np.clip(1.0 - 0.5 * ncut, 0.0, 1.0), 0.0)


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
    **solver_options: Any,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """MaskCut on a batch ``(B, C, h, w)`` of patch features (one device, one grid size).

    Returns per image ``(masks, scores)``: ``masks`` uint8 ``(n_masks, h, w)`` (all-zero where a cut
    was rejected or emptied by the earlier masks, as the reference), ``scores`` float ``(n_masks,)``.
    ``dtype`` is the torch solver's working precision (float32 or float64; default float32).
    """
    import numpy as np
    import torch

    if feats.dim() != 4:
        raise ValueError(f"maskcut_batch expects (B, C, h, w) features, got shape {tuple(feats.shape)}")
    if solver not in SOLVERS:
        raise uisbench.ConfigError(f"Unknown NCut solver {solver!r}; use one of {', '.join(SOLVERS)}.")
    B, C, h, w = feats.shape
    n = h * w
    check_finite(feats, image_ids)
    if dtype is None:
        dtype = torch.float32
    dev = feats.device
    binary = binary_affinity(feats.reshape(B, C, n).transpose(1, 2), tau)
    alive = torch.ones((B, n), dtype=torch.bool, device=dev)
    masks = np.zeros((B, n_masks, h, w), dtype=np.uint8)
    scores = np.zeros((B, n_masks), dtype=np.float64)
    current = [np.zeros((h, w), dtype=bool) for _ in range(B)]
    union = [np.zeros((h, w), dtype=bool) for _ in range(B)]
    warm = None
    for i in range(n_masks):
        if solver == "scipy":
            fied = _fiedler_scipy(weights(binary, alive, tau, eps))
        else:
            M, d = normalized_affinity(binary, alive, tau, eps, dtype)
            fied = _fiedler_torch(M, d, warm, **solver_options)
            del M
            warm = fied.block
            if dtype != torch.float64 and fied.accurate is not None and not fied.accurate.all():
                # Near-degenerate eigenvalues below float32's reach: redo those images in float64.
                idx = torch.from_numpy(np.nonzero(~fied.accurate)[0]).to(dev)
                M64, d64 = normalized_affinity(binary[idx], alive[idx], tau, eps, torch.float64)
                f64 = _fiedler_torch(M64, d64, warm[idx], **solver_options)
                del M64
                fied.vectors[~fied.accurate] = f64.vectors
                fied.values[~fied.accurate] = f64.values

        outs = []
        for b in range(B):
            m = orient_and_select(fied.vectors[b], (h, w))
            if i >= 1 and (_iou(current[b], m) > 0.5 or m.sum() / m.size <= 0.01):
                m = np.zeros((h, w), dtype=bool)
            current[b] = m
            out = m & ~union[b]
            union[b] |= out
            masks[b, i] = out
            outs.append(out)
        S = torch.from_numpy(np.stack(outs).reshape(B, n, 1)).to(dev)
        scores[:, i] = ncut_score(graph_counts(_edges(binary, alive, tau, torch.float32), S), eps)[:, 0]
        paint = torch.from_numpy(np.stack(current).reshape(B, n)).to(dev)
        alive = alive & ~paint
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


# ---------------------------------------------------------------------------------------------
# Spectral embedding (deep spectral methods) for k-means
# ---------------------------------------------------------------------------------------------


def normalized_laplacian_eigvecs(feats: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, n, C)`` features -> ``(B, n, k)`` eigenvectors of ``D - W`` (generalised, ``M = D``) with
    the ``k`` smallest non-trivial eigenvalues, as Deep Spectral Methods: ``W = f f^T`` with negative
    entries zeroed, each vector's sign flipped so that at most half of its entries are positive.
    Dense batched ``torch.linalg.eigh`` of ``D^-1/2 W D^-1/2`` (float64)."""
    import torch
    import torch.nn.functional as F

    x = F.normalize(feats.double(), p=2, dim=-1)
    W = (x @ x.transpose(1, 2)).clamp_min(0.0)
    d = W.sum(-1).clamp_min(1e-12)
    s = d.rsqrt()
    M = W * s[:, :, None] * s[:, None, :]
    _, U = torch.linalg.eigh(M)
    n = U.shape[1]
    k = min(k, n - 1)
    vecs = U[:, :, -1 - k : -1].flip(-1) * s[:, :, None]  # skip the trivial top one
    pos = (vecs > 0).float().mean(dim=1, keepdim=True)
    vecs = torch.where(pos > 0.5, -vecs, vecs)
    return vecs.float()


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def valid_groups(fm: uisbench.FeatureMap) -> list[tuple[list[int], torch.Tensor]]:
    """Split a feature batch into groups of equal grid size: ``[(batch indices, (b, C, h', w'))]``.

    Without ``fm.valid`` the whole grid is one group. With it, each image's features are cropped to
    the bounding rectangle of its valid patches (padding never enters the graph).
    """
    feats = fm.features
    if fm.valid is None:
        return [(list(range(feats.shape[0])), feats)]
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    for b in range(feats.shape[0]):
        groups.setdefault(valid_rect(fm.valid[b].detach().cpu().numpy()), []).append(b)
    out = []
    for (r0, r1, c0, c1), idx in groups.items():
        out.append((idx, feats[idx][:, :, r0:r1, c0:c1]))
    return out


def valid_rect(valid: np.ndarray) -> tuple[int, int, int, int]:
    """``(row0, row1, col0, col1)`` bounding rectangle of the True entries (the whole grid if none)."""
    import numpy as np

    if not valid.any():
        return (0, valid.shape[0], 0, valid.shape[1])
    rows = np.nonzero(valid.any(axis=1))[0]
    cols = np.nonzero(valid.any(axis=0))[0]
    return (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def to_predictions(
    record: uisbench.ImageRecord,
    grid_masks: Sequence[np.ndarray],
    scores: Sequence[float],
    content: tuple[int, int, int] | None = None,
) -> list[uisbench.Prediction]:
    """Grid masks (already cropped to the valid region) -> predictions at ``record``'s resolution.

    ``content`` ``(patch_size, rows, cols)``: with a padded input the last row/column of valid
    patches is only partly image; each grid cell is then expanded to ``patch_size`` pixels and cut
    to the ``rows x cols`` pixels of content before the resize, so masks do not stretch.
    Masks that are empty on the grid or after resizing are dropped; the rest are sorted by score.
    """
    import numpy as np

    preds = []
    for m, sc in zip(grid_masks, scores, strict=False):
        if not m.any():
            continue
        m = m.astype(np.uint8)
        if content is not None:
            p, rows, cols = content
            m = np.repeat(np.repeat(m, p, axis=0), p, axis=1)[:rows, :cols]
        full = uisbench.masks.resize_mask(m, record.height, record.width)
        if not full.any():
            continue
        rle = uisbench.masks.encode(full)
        preds.append(uisbench.Prediction(record.id, rle, uisbench.masks.to_bbox(rle), float(sc)))
    preds.sort(key=lambda p: -p.score)
    return preds


def content_crop(fm: uisbench.FeatureMap, index: int, record: uisbench.ImageRecord) -> tuple[int, int, int] | None:
    """``(patch_size, rows, cols)`` of image content inside image ``index``'s valid patches, for
    :func:`to_predictions`; ``None`` without padding or when ``valid`` does not follow the ``pad``
    policy of :class:`uisbench.Preprocessing` (content at the top left of a square frame)."""
    if fm.valid is None:
        return None
    p = int(fm.patch_size)
    g_h, g_w = fm.features.shape[-2:]
    if g_h != g_w:
        return None
    r0, r1, c0, c1 = valid_rect(fm.valid[index].detach().cpu().numpy())
    prep = uisbench.Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), size=g_h * p, patch_size=p, resize="pad")
    rows, cols = prep.content_size(record.height, record.width)
    if (r0, c0) != (0, 0) or -(-rows // p) != r1 or -(-cols // p) != c1:
        return None
    return p, rows, cols


#: Shared by the grid maskers: how much memory one chunk of images may take.
MEMORY_PARAM = uisbench.Param(
    "memory_gb", "float", None, "memory per chunk of images; null = 2 GiB on CPU, 1/4 of free GPU memory", nullable=True
)


class GridMasker(uisbench.Masker):
    """A masker that computes masks on the patch grid (:meth:`patch_masks`) and upsamples them."""

    name = "masker"

    def patch_masks(self, features: uisbench.FeatureMap) -> list[tuple[list[np.ndarray], list[float]]]:
        raise NotImplementedError

    def predict(
        self, features: uisbench.FeatureMap, records: Sequence[uisbench.ImageRecord]
    ) -> list[list[uisbench.Prediction]]:
        if len(records) != len(features.image_ids):
            raise uisbench.DataError(
                f"masker {self.name}: {len(records)} records for {len(features.image_ids)} feature maps; "
                "pass one record per image."
            )
        return [
            to_predictions(rec, masks, scores, content_crop(features, b, rec))
            for b, (rec, (masks, scores)) in enumerate(zip(records, self.patch_masks(features), strict=True))
        ]
