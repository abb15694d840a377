"""The spectral toolbox of graph-cut maskers (``ncut``, ``kmeans``; TokenCut, ProMerge and the like).

Everything works on batches of patch graphs of one size, in torch on CPU or CUDA, with exact
arithmetic where a decision depends on it, so masks and scores do not change with BLAS threads,
solver or device:

Graph
    :func:`binary_affinity` (cosine similarity of L2-normalised features ``> tau``, no TF32),
    :func:`edge_matrix` (the 0/1 edges of a MaskCut iteration, painted patches removed),
    :func:`weights` (the float64 ``W``: 1 on edges, ``eps`` elsewhere) and
    :func:`normalized_affinity` (``M = D^-1/2 W D^-1/2`` and the degrees). :func:`default_tau` is
    MaskCut's threshold; :func:`check_finite` names the images whose features hold NaN or inf.
Fiedler vectors
    The second-smallest generalised eigenvectors of ``(D - W) x = lambda D x``, two solvers:

    ``scipy`` (:func:`fiedler_scipy`)
        The reference: ``scipy.linalg.eigh(D - W, D, subset_by_index=[1, 2])`` per image on the CPU
        in float64, exactly as CutLER calls it.
    ``torch`` (:func:`fiedler_torch`)
        Batched and iterative, on CPU or CUDA. The generalised problem is the symmetric one
        ``M u = mu u`` with ``M = D^-1/2 W D^-1/2``, ``mu = 1 - lambda`` and ``x = D^-1/2 u``. ``M``'s
        top eigenvector ``D^1/2 1`` (``lambda = 0``) is known, so it is projected out ("deflated")
        and the Fiedler vector is the top eigenvector of what remains. A restarted block Lanczos
        (block Krylov space of ``block`` vectors x ``steps`` matrix products, full
        re-orthogonalisation, Rayleigh-Ritz, restart with the top ``block`` Ritz vectors) finds it.
        The block keeps the next eigenvectors in the subspace, so near-degenerate eigenvalues
        (instances that are almost disconnected in the graph, whose eigenvalues differ by ~1e-5) are
        separated by the Rayleigh-Ritz step rather than by slow Krylov convergence. Small graphs
        (``n <= dense_max``) use dense batched ``torch.linalg.eigh``.

    :func:`fiedler` takes a batch of affinities ``W`` and either solver.
One cut
    :func:`orient_and_select` (MaskCut's bipartition, foreground side and seed component) and
    :func:`foreground_side`, with the tie rule :func:`first_argmax`.
Scores
    :func:`graph_counts` and :func:`ncut_score`.
Embeddings
    :func:`normalized_laplacian_eigvecs` (Deep Spectral Methods).

The Fiedler vector's sign. CutLER's foreground choice depends on it (the corner rule and the seed
rule can disagree, and then LAPACK's arbitrary sign decides, cf. CutLER #71). :func:`orient_and_select`
first orients the vector so that its largest-magnitude entry (the seed) is positive. With that
orientation the chosen side never holds 3 or 4 grid corners, and the result is the same for ``v`` and
``-v``. Where the reference's outcome does not depend on the sign (all the parity fixtures) the
result is the reference's.

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
:func:`fiedler_torch`). With both, every MaskCut parity fixture is reproduced at IoU 1.0 with 1 and 2
threads.

Scores: a mask ``S`` gets ``1 - Ncut(S) / 2`` with ``Ncut(S) = cut(S, ~S) / vol(S) + cut(S, ~S) / vol(~S)``.
``Ncut`` lies in ``[0, 2]``, so scores lie in ``[0, 1]``; a well separated object (few graph edges
leave it) scores near 1, an arbitrary split of a homogeneous region near 0.5. With the 0/1 edge
matrix ``E`` and ``W = eps + (1 - eps) E``, every term is an integer count (``|S|``, edges inside
``S``, ``E``-degrees summed over ``S``, all edges, ``n``) combined by one fixed float64 formula
(:func:`graph_counts`, :func:`ncut_score`): the counts are exact, so a score's bits do not depend on
the solver, the BLAS thread count or the device, and neither does the order of equal scores.

Example, the foreground of each image's first normalised cut::

    from uisbench import spectral

    binary = spectral.binary_affinity(x, tau)  # x: (B, n, C) features of one grid size
    alive = torch.ones(binary.shape[:2], dtype=torch.bool, device=x.device)
    M, d = spectral.normalized_affinity(binary, alive, tau, eps=1e-5, dtype=torch.float64)
    fied = spectral.fiedler_torch(M, d)
    masks = [spectral.foreground_side(fied.vectors[b], (h, w)) for b in range(len(x))]

torch, numpy and scipy are imported inside the functions: importing this module is free.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, DataError
from .types import Param, ParamProblem

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = [
    "SOLVERS",
    "PRECISIONS",
    "CUT_PARAMS",
    "check_cut_params",
    "SEED_RTOL",
    "default_tau",
    "check_finite",
    "no_tf32",
    "binary_affinity",
    "cosine_above",
    "REFINE_ATOL",
    "TIE_TOL",
    "edge_matrix",
    "weights",
    "normalized_affinity",
    "Fiedler",
    "fiedler",
    "fiedler_scipy",
    "fiedler_torch",
    "first_argmax",
    "orient_and_select",
    "foreground_side",
    "GraphCounts",
    "graph_counts",
    "ncut_score",
    "normalized_laplacian_eigvecs",
]

#: The Fiedler solvers :func:`fiedler` knows.
SOLVERS = ("torch", "scipy")
#: Working precisions of :func:`fiedler_torch`.
PRECISIONS = ("float32", "float64")

#: The parameters of a normalised cut's graph and solver, for a masker spec's ``params`` (``ncut`` and
#: ``tokencut`` declare them; their ``tau`` is each masker's own): the non-edge weight ``eps``, the
#: Fiedler ``solver`` and the torch solver's ``precision`` (float32 with a float64 redo where
#: eigenvalues are too close for it). :func:`check_cut_params` checks their values.
CUT_PARAMS = (
    Param("eps", "float", 1e-5, "weight of non-edges in the binarised graph", gt=0),
    Param("solver", "str", "torch", "eigen-solver: torch (batched, CPU/CUDA) or scipy (reference, CPU)", choices=SOLVERS),
    Param("precision", "str", "float32", "torch solver precision (float64 redo for near-degenerate cases)", choices=PRECISIONS),
)


def check_cut_params(params: Mapping[str, Any]) -> Iterator[ParamProblem]:
    """Problems of the :data:`CUT_PARAMS` values in ``params``, for a spec's ``check`` and the
    masker's ``__init__`` (``uisbench.raise_problems(where, check_cut_params(...))``)."""
    if not params["eps"] > 0:
        yield "eps", f"must be > 0, got {params['eps']}"
    if params["solver"] not in SOLVERS:
        yield "solver", f"{params['solver']!r} is not one of {', '.join(SOLVERS)}"
    if params["precision"] not in PRECISIONS:
        yield "precision", f"{params['precision']!r} is not one of {', '.join(PRECISIONS)}"


def default_tau(patch_size: int) -> float:
    """MaskCut's threshold: 0.15 for patch 8 (CutLER README, ViT-B/8), 0.2 otherwise (ViT-S/16 CLI default)."""
    return 0.15 if patch_size <= 8 else 0.2


def check_finite(feats: torch.Tensor, image_ids: Sequence[Any] | None) -> None:
    """Raise :class:`DataError` naming the images whose features hold NaN or inf."""
    import torch

    bad = ~torch.isfinite(feats.reshape(feats.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        idx = [int(i) for i in torch.nonzero(bad).flatten().tolist()]
        names = [image_ids[i] if image_ids is not None else i for i in idx]
        raise DataError(
            f"Features of image id(s) {names} contain NaN or inf; the masker cannot build a graph from them. "
            "Check the backbone's output for these images (fp16 overflow? corrupt image?) and re-extract."
        )


# ---------------------------------------------------------------------------------------------
# Graph
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """TF32 matmuls off on CUDA inside the block, so float32 similarities keep float32 accuracy."""
    import torch

    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def binary_affinity(feats: torch.Tensor, tau: float) -> torch.Tensor:
    """``(B, n, C)`` features -> ``(B, n, n)`` bool: cosine similarity of L2-normalised features ``> tau``.

    Computed in float32 like the reference (``F.normalize`` then ``F^T F``), with TF32 switched off on
    CUDA so that no entry near ``tau`` flips because of reduced-precision matmuls. (MaskCut's parity
    fixtures are float32 decisions; :func:`cosine_above` decides near-``tau`` entries exactly.)
    """
    import torch
    import torch.nn.functional as F

    x = F.normalize(feats.float(), p=2, dim=-1)
    with no_tf32():
        return torch.bmm(x, x.transpose(1, 2)) > tau


#: :func:`cosine_above`: similarities within this distance of the threshold are recomputed in float64.
REFINE_ATOL = 1e-3
#: :func:`cosine_above`: values within this distance of the threshold count as equal to it.
TIE_TOL = 1e-9


def cosine_above(x: torch.Tensor, tau: float, *, eps: float = 0.0, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Bool ``(r, n)``: cosine similarity of patches ``rows`` (default: all) with every patch ``> tau``,
    decided in exact arithmetic on ``x`` ``(n, C)``.

    The cosine is ``x_i . x_j / (n_i n_j)`` with ``n = |x| + eps`` (ProMerge's normalisation) for
    ``eps > 0``, ``n = max(|x|, 1e-12)`` (``F.normalize``: MaskCut, TokenCut) for ``eps = 0``. Computed in
    float32; entries within :data:`REFINE_ATOL` of ``tau`` are recomputed in float64 (exact products,
    rounding ~1e-16) and decided with the tie rule (:data:`TIE_TOL`): the result does not depend on
    BLAS threads or the device.
    """
    import torch

    x32 = x.float()
    norm32 = x32.norm(dim=1)
    den32 = norm32 + eps if eps > 0 else norm32.clamp_min(1e-12)
    u = x32 / den32[:, None]
    r = u if rows is None else u[rows]
    above = torch.empty((r.shape[0], u.shape[0]), dtype=torch.bool, device=u.device)
    near = []
    step = max(1, (1 << 24) // max(1, u.shape[0]))  # row blocks of <= 64 MB of float32 similarities
    for start in range(0, r.shape[0], step):
        if u.is_cuda:
            with no_tf32():
                sim = r[start : start + step] @ u.T
        else:
            sim = r[start : start + step] @ u.T
        above[start : start + step] = sim > tau
        block = ((sim >= tau - REFINE_ATOL) & (sim <= tau + REFINE_ATOL)).nonzero()
        block[:, 0] += start
        near.append(block)
    near = torch.cat(near)
    if len(near):
        x64 = x.double()
        norm64 = x64.norm(dim=1)
        den64 = norm64 + eps if eps > 0 else norm64.clamp_min(1e-12)
        row_index = near[:, 0] if rows is None else rows[near[:, 0]]
        for start in range(0, len(near), 4096):  # bounded memory
            i, j = row_index[start : start + 4096], near[start : start + 4096, 1]
            val = (x64[i] * x64[j]).sum(1) / (den64[i] * den64[j])
            above[near[start : start + 4096, 0], j] = (val - tau) > TIE_TOL
    return above


def edge_matrix(binary: torch.Tensor, alive: torch.Tensor, tau: float, dtype) -> torch.Tensor:
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

    E = edge_matrix(binary, alive, tau, torch.float64)
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
    E = edge_matrix(binary, alive, tau, dtype)
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


def fiedler_scipy(W: torch.Tensor) -> Fiedler:
    """The reference solver: ``scipy.linalg.eigh(D - W, D)`` per image of ``W`` (B, n, n), in float64
    on the CPU (a zero vector for graphs of fewer than 3 nodes)."""
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


def fiedler_torch(
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
    of affinities ``W``, with either solver (``options`` go to :func:`fiedler_torch`, plus its working
    ``dtype``, float64 by default). Graph-cut loops that build ``M`` in place with
    :func:`normalized_affinity` call :func:`fiedler_torch` directly."""
    import torch

    if solver == "scipy":
        return fiedler_scipy(W)
    if solver == "torch":
        dtype = options.pop("dtype", torch.float64)
        d = W.sum(-1, dtype=torch.float64)
        s = d.rsqrt().to(dtype)
        M = W.to(dtype) * s[:, :, None] * s[:, None, :]
        return fiedler_torch(M, d, **options)
    raise ConfigError(f"Unknown NCut solver {solver!r}; use one of {', '.join(SOLVERS)}.")


# ---------------------------------------------------------------------------------------------
# MaskCut's choices on one Fiedler vector, and exact scores
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
