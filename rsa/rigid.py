"""Batched least-squares rigid-body fit and marker-configuration quality (DESIGN §3.5).

All functions take bead coordinates ``(..., N, 3)`` in mm with any number of leading batch
dimensions (bodies, exams, ...). Missing beads are NaN rows; they are given zero weight and never
dropped, so bead indices stay labels.

Public API
----------
- :class:`Pose` — rigid transformation ``y = R x + t``, batched, immutable.
- :func:`fit_rigid` → :class:`RigidFit` (a :class:`Pose` plus fit diagnostics: residuals, ME).
- :func:`condition_number` — CN of a bead configuration (Söderkvist & Wedin; RSA scaling).
- :func:`distance_stability` → :class:`DistanceStability` (inter-bead distance changes).
- :func:`screen_unstable` → :class:`UnstableScreen` (iterative exclusion of unstable beads).
- :func:`pose_point_sigma` — uncertainty of points carried by a fitted pose (first order).

References
----------
.. [1] I. Söderkvist, P.-Å. Wedin, "Determining the movements of the skeleton using
   well-configured markers", J. Biomech. 26(12):1473–1477, 1993.
.. [2] ISO 16087:2013, Implants for surgery — Roentgen stereophotogrammetric analysis for the
   assessment of migration of orthopaedic implants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from rsa._rigid_cov import _MAX_ITER as _COV_MAX_ITER
from rsa._rigid_cov import refine_covariance
from rsa._rigid_pose import Pose, _trusted
from rsa._rigid_solver import optimal_rotation, optimal_rotation_soa
from rsa._validate import as_points, readonly
from rsa.errors import EstimationError, ShapeError

__all__ = [
    "DistanceStability",
    "Pose",
    "RigidFit",
    "UnstableScreen",
    "condition_number",
    "distance_stability",
    "fit_rigid",
    "pose_point_sigma",
    "screen_unstable",
]

#: Relative size σ2(C)/σ1(C) of the cross-covariance below which the valid beads are collinear.
#: σ(C) scales with the square of the bead spread, so 1e-12 ≈ beads within ~1e-6 of the
#: configuration size from a common line.
_COLLINEAR_TOL = 1e-12


def _index_text(shape: tuple[int, ...], flat: int) -> str:
    """Human-readable batch index for error messages ('' for unbatched input)."""
    if not shape:
        return ""
    return f"batch index {tuple(int(i) for i in np.unravel_index(flat, shape))}: "


# --------------------------------------------------------------------------------------------
# Rigid fit
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class RigidFit(Pose):
    """Least-squares rigid fit ``y ≈ R x + t`` with fit diagnostics (see :func:`fit_rigid`).

    Attributes
    ----------
    rotation : (..., 3, 3) ndarray
    translation : (..., 3) ndarray, mm
    residuals_mm : (..., N) ndarray
        ‖R xᵢ + t − yᵢ‖ for every bead with finite x and y (also zero-weight ones); NaN for
        missing beads.
    mean_error_mm : (...) ndarray
        ME: mean residual over the beads used in the fit (valid, weight > 0).
    n_used : (...) ndarray of int
        Number of beads used in the fit.
    centroid_mm : (..., 3) ndarray
        Weighted centroid x̄ of the used reference beads (default point for segment motion).
    """

    residuals_mm: np.ndarray
    mean_error_mm: np.ndarray
    n_used: np.ndarray
    centroid_mm: np.ndarray

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("residuals_mm", "mean_error_mm", "n_used", "centroid_mm"):
            object.__setattr__(self, name, readonly(np.asarray(getattr(self, name))))


def _prepare_weights(weights: ArrayLike | None, shape: tuple[int, ...]) -> np.ndarray:
    if weights is None:
        return np.ones(shape)
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"Expected `weights` to be a numeric array (..., N): {exc}") from None
    try:
        w = np.broadcast_to(w, shape)
    except ValueError:
        raise ShapeError(
            f"Expected `weights` to broadcast to (..., N) = {shape}, got {w.shape}."
        ) from None
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ShapeError("Expected `weights` to be finite and non-negative.")
    return w


def _prepare_covariance(covariance, shape: tuple[int, ...], use: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Σx, Σy broadcast to (..., N, 3, 3), checked where a bead is used (``use``: finite,
    w > 0), and zero elsewhere."""
    try:
        cov_x, cov_y = covariance
    except (TypeError, ValueError):
        raise ShapeError("Expected `covariance` to be a pair (Σx, Σy) of (..., N, 3, 3) "
                         "arrays.") from None
    out = []
    for name, c in (("Σx", cov_x), ("Σy", cov_y)):
        try:
            c = np.broadcast_to(np.asarray(c, dtype=np.float64), (*shape, 3, 3))
        except (TypeError, ValueError):
            raise ShapeError(f"Expected `covariance` {name} to be a numeric array broadcasting "
                             f"to (..., N, 3, 3) = {(*shape, 3, 3)}, got "
                             f"{np.shape(c)}.") from None
        c = np.where(use[..., None, None], c, 0.0)
        if not np.all(np.isfinite(c)):
            raise ShapeError(f"Expected `covariance` {name} to be finite for every bead used.")
        if np.abs(c - np.swapaxes(c, -1, -2)).max(initial=0.0) > 1e-9 * max(
                np.abs(c).max(initial=0.0), 1e-300):
            raise ShapeError(f"Expected `covariance` {name} to be symmetric.")
        if np.linalg.eigvalsh(c).min(initial=0.0) < -1e-12 * max(np.abs(c).max(initial=0.0),
                                                                 1e-300):
            raise ShapeError(f"Expected `covariance` {name} to be positive semi-definite.")
        out.append(c)
    total = np.where(use[..., None, None], out[0] + out[1], np.eye(3))
    if np.any(np.linalg.eigvalsh(total)[..., 0] <= 0):
        raise ShapeError("Expected `covariance` Σx + Σy to be positive definite for every bead "
                         "used.")
    return out[0], out[1]


def _broadcast_pair(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate two bead arrays (..., N, 3) and broadcast their batch dimensions."""
    x = as_points(x, "x", min_ndim=2)
    y = as_points(y, "y", min_ndim=2)
    if x.shape[-2] != y.shape[-2]:
        raise ShapeError(
            f"Expected `x` and `y` to have the same number of beads N, got {x.shape[-2]} and "
            f"{y.shape[-2]} (shapes {x.shape} and {y.shape})."
        )
    try:
        batch = np.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    except ValueError:
        raise ShapeError(
            f"Expected `x` and `y` to have broadcastable batch shapes, got {x.shape} and {y.shape}."
        ) from None
    n = x.shape[-2]
    return np.broadcast_to(x, (*batch, n, 3)), np.broadcast_to(y, (*batch, n, 3))


def _fit_core(x: np.ndarray, y: np.ndarray, w: np.ndarray):
    """Unchecked weighted Söderkvist–Wedin fit; `w` is zero for missing beads (x, y zero-filled).

    Returns R, t, x̄ and the collinearity mask (σ2(C) ≤ _COLLINEAR_TOL · σ1(C)).
    """
    wsum = w.sum(axis=-1)[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = np.matmul(w[..., None, :], x)[..., 0, :] / wsum
        ym = np.matmul(w[..., None, :], y)[..., 0, :] / wsum
    A = x - xm[..., None, :]
    B = y - ym[..., None, :]
    C = np.matmul(np.swapaxes(B, -1, -2) * w[..., None, :], A)  # C = Bᵀ W A
    C = np.nan_to_num(C, nan=0.0)
    R, collinear = optimal_rotation(C, _COLLINEAR_TOL)
    t = ym - np.matmul(R, xm[..., None])[..., 0]
    return R, t, np.nan_to_num(xm), collinear


def fit_rigid(x: ArrayLike, y: ArrayLike, *, weights: ArrayLike | None = None,
              covariance: tuple[ArrayLike, ArrayLike] | None = None) -> RigidFit:
    """Weighted least-squares rigid-body fit ``y ≈ R x + t`` (Söderkvist & Wedin), batched.

    Minimises Σ wᵢ ‖R xᵢ + t − yᵢ‖² over proper rotations R (det +1) and translations t:
    x̄, ȳ weighted means; A = x − x̄, B = y − ȳ; C = Bᵀ W A = P Σ Qᵀ (SVD);
    R = P diag(1, 1, det(P Qᵀ)) Qᵀ; t = ȳ − R x̄ [1]_. The det correction keeps R proper also
    for coplanar beads, where the unconstrained orthogonal solution may be a reflection.

    Parameters
    ----------
    x : (..., N, 3) array_like
        Bead positions in the reference exam / model, mm. NaN rows = missing beads.
    y : (..., N, 3) array_like
        The same beads (same order) in the other exam, mm. Batch shapes of `x` and `y`
        broadcast, so one reference ``(N, 3)`` can be fitted to many exams ``(E, N, 3)``.
    weights : (..., N) array_like, optional
        Non-negative bead weights (default 1). Beads with NaN in `x` or `y` get weight 0.
    covariance : pair of (..., N, 3, 3) array_like, optional
        Σx, Σy: each bead's error covariance in `x` and in `y` (mm²; either may be zero where
        the other is positive definite). The fit then minimises Σ wᵢ rᵢᵀ Sᵢ⁻¹ rᵢ with
        rᵢ = R xᵢ + t − yᵢ and Sᵢ = R Σxᵢ Rᵀ + Σyᵢ: each residual weighted by its own
        covariance, so a bead uncertain in one direction only (e.g. well seen in one view,
        poorly in the other) still fixes the other two. Solved by Gauss–Newton from the
        isotropic fit with weights wᵢ / (tr(Σxᵢ + Σyᵢ) / 3) (``rsa._rigid_cov``). With
        Σxᵢ + Σyᵢ = sᵢ² I it is the isotropic fit with weights wᵢ / sᵢ². ME stays the mean
        residual length.

    Returns
    -------
    RigidFit
        rotation (..., 3, 3), translation (..., 3), residuals_mm (..., N), mean_error_mm (...),
        n_used (...), centroid_mm (..., 3).

    Raises
    ------
    ShapeError
        Wrong shapes, different N in `x` and `y`, invalid weights.
    EstimationError
        Fewer than 3 usable beads, or collinear usable beads, in any batch element (the message
        names the first offending batch index); with `covariance`, a fit that does not converge.

    Notes
    -----
    ME (mean error of rigid-body fitting, ISO 16087 [2]_) is the mean of ‖R xᵢ + t − yᵢ‖ over the
    used beads.

    Implementation: the optimum of the SVD formula above is computed for all bodies at once by
    an equivalent elementwise quaternion solver (Horn 1987 / Theobald's QCP; see
    ``rsa._rigid_solver``), with the SVD formula itself as fallback where that route is
    ill-conditioned; the two agree to ~1e-12 (tested). This avoids the per-matrix LAPACK
    overhead of a batched 3×3 SVD. No Python loops over bodies (the all-valid fast path works in
    cache-sized blocks of bodies).
    """
    x, y = _broadcast_pair(x, y)
    batch, n = x.shape[:-2], x.shape[-2]
    if weights is None and covariance is None and n >= 3 and np.isfinite(x.sum() + y.sum()):
        return _fit_all_valid(x, y, batch, n)  # common case: no missing beads, unit weights
    w = _prepare_weights(weights, (*batch, n))
    finite = np.isfinite(x).all(axis=-1) & np.isfinite(y).all(axis=-1)
    used = finite & (w > 0)
    if covariance is not None:
        cov_x, cov_y = _prepare_covariance(covariance, (*batch, n), used)
    w = np.where(used, w, 0.0)
    x0 = np.where(finite[..., None], x, 0.0)
    y0 = np.where(finite[..., None], y, 0.0)
    n_used = used.sum(axis=-1)
    few = n_used < 3
    if np.any(few):
        k = int(np.flatnonzero(few.ravel())[0])
        raise EstimationError(
            f"{_index_text(batch, k)}{int(n_used.ravel()[k])} valid beads, need ≥ 3 "
            "for a rigid fit."
        )
    if covariance is None:
        R, t, xm, cm = _fit_core(x0, y0, w)
        _check_collinear(cm, n_used, batch)
    else:   # isotropic start, weights wᵢ / (mean variance of Sᵢ), then Gauss–Newton
        var = np.trace(cov_x + cov_y, axis1=-2, axis2=-1) / 3.0
        R, t, xm, cm = _fit_core(x0, y0, np.where(used, w / np.where(used, var, 1.0), 0.0))
        _check_collinear(cm, n_used, batch)
        R, t, done = refine_covariance(x0, y0, w, cov_x, cov_y, R, t, xm)
        if not np.all(done):
            k = int(np.flatnonzero(~done.ravel())[0])
            raise EstimationError(f"{_index_text(batch, k)}the covariance-weighted rigid fit "
                                  f"did not converge in {_COV_MAX_ITER} iterations.")
    res = np.linalg.norm(np.matmul(x0, np.swapaxes(R, -1, -2)) + t[..., None, :] - y0, axis=-1)
    me = np.where(used, res, 0.0).sum(axis=-1) / n_used
    res = np.where(finite, res, np.nan)
    return _trusted(RigidFit, rotation=R, translation=t, residuals_mm=res, mean_error_mm=me,
                    n_used=n_used, centroid_mm=xm)


def _check_collinear(collinear: np.ndarray, n_used, batch: tuple[int, ...]) -> None:
    if np.any(collinear):
        k = int(np.flatnonzero(collinear.ravel())[0])
        nk = int(np.broadcast_to(n_used, collinear.shape).ravel()[k])
        raise EstimationError(
            f"{_index_text(batch, k)}the {nk} valid beads are collinear (or coincident); "
            "a rigid fit needs non-collinear beads."
        )


#: Bodies per block in the all-valid fast path: keeps the ~100 temporaries of one block in the
#: L2 cache (measured ~1.5× faster than one 10⁴-body block on the 2-core benchmark machine).
_BLOCK = 2048


def _fit_all_valid(x: np.ndarray, y: np.ndarray, batch, n: int) -> RigidFit:
    """fit_rigid for finite beads with unit weights, in "structure of arrays" layout.

    Coordinates are transposed once to (3, N, m) so that every step is elementwise arithmetic
    on contiguous rows of m bodies (the tiny per-body matrix products of ``np.matmul`` cost
    more than the arithmetic). Works in cache-sized blocks of bodies.
    """
    xt = np.ascontiguousarray(x.reshape(-1, n, 3).transpose(2, 1, 0))  # (3, N, m)
    yt = np.ascontiguousarray(y.reshape(-1, n, 3).transpose(2, 1, 0))
    m = xt.shape[2]
    r = np.empty((9, m))
    t = np.empty((3, m))
    xm = np.empty((3, m))
    res = np.empty((n, m))
    collinear = np.empty(m, dtype=bool)
    for s in range(0, m, _BLOCK):  # loop over blocks of bodies, not over bodies
        e = min(s + _BLOCK, m)
        xb, yb = xt[:, :, s:e], yt[:, :, s:e]
        xmb = xb.mean(axis=1)  # (3, b)
        ymb = yb.mean(axis=1)
        A = xb - xmb[:, None, :]
        # C = Bᵀ A = yᵀ A because Σ aᵢ = 0 (saves centring y; the rounding error relative to C
        # is ~ε‖ȳ‖/‖b‖, negligible for bead sets within metres of the origin).
        C = np.einsum("inb,jnb->ijb", yb, A)  # (3, 3, b): C_ij = Σ_n y_i a_j
        # ½ Σ (‖aᵢ‖² + ‖bᵢ‖²) ≥ λ₁ (equality for a perfect fit): Newton start for the solver
        e0 = 0.5 * (np.einsum("inb,inb->b", A, A) + np.einsum("inb,inb->b", yb, yb)
                    - n * np.einsum("ib,ib->b", ymb, ymb))
        rb, collinear[s:e] = optimal_rotation_soa(C.reshape(9, -1), _COLLINEAR_TOL, e0)
        R3 = rb.reshape(3, 3, -1)
        r[:, s:e] = rb
        xm[:, s:e] = xmb
        t[:, s:e] = ymb - (R3 * xmb[None, :, :]).sum(axis=1)
        D = np.einsum("ijb,jnb->inb", R3, A)  # R xᵢ + t − yᵢ = R aᵢ + ȳ − yᵢ
        D += ymb[:, None, :]
        D -= yb
        res[:, s:e] = np.sqrt(np.einsum("inb,inb->nb", D, D))
    _check_collinear(collinear.reshape(batch), n, batch)
    res = res.T
    return _trusted(RigidFit, rotation=r.T.reshape(*batch, 3, 3),
                    translation=t.T.reshape(*batch, 3),
                    residuals_mm=res.reshape(*batch, n),
                    mean_error_mm=res.mean(axis=-1).reshape(batch), n_used=np.full(batch, n),
                    centroid_mm=xm.T.reshape(*batch, 3))


# --------------------------------------------------------------------------------------------
# Condition number
# --------------------------------------------------------------------------------------------


def condition_number(x: ArrayLike, *, weights: ArrayLike | None = None) -> np.ndarray:
    """Condition number (CN) of a bead configuration, as reported in RSA, batched.

    ``CN = 1000 / sqrt(σ2² + σ3²)``, where σ1 ≥ σ2 ≥ σ3 are the singular values of the centred
    bead coordinates A = x − x̄ (mm), i.e. σ2² + σ3² is the summed squared distance of the beads
    from their best-fit line. The factor 1000 expresses ``1/sqrt(σ2² + σ3²)`` per metre for
    coordinates in mm.

    Parameters
    ----------
    x : (..., N, 3) array_like
        Bead positions (usually the reference exam), mm. NaN rows are ignored.
    weights : (..., N) array_like, optional
        Non-negative bead weights; A is then ``W^½ (x − x̄_w)`` (default: all 1, the usual CN).

    Returns
    -------
    cn : (...) ndarray
        Dimensionless number (m⁻¹ with mm input); ``inf`` when the valid beads are collinear
        (σ2² + σ3² ≤ 64 ε σ1²) or fewer than 3 are valid. Never warns.

    Notes
    -----
    Source and verification. In the perturbation analysis of Söderkvist & Wedin [1]_ (and
    Söderkvist, "On condition numbers and algorithms for determining a rigid body movement",
    BIT 33, 1993) the sensitivity of the rotation to bead errors grows with
    ``1/sqrt(σ2² + σ3²)`` of the centred configuration (beads near a line are ill-conditioned).
    The RSA definition and scaling — ``1000 / sqrt(σ2² + σ3²)`` with coordinates in mm — were
    verified against a public MATLAB implementation of the Söderkvist–Wedin fit by N. Börlin
    (Umeå University; ``procrustes.m`` v1.1, 2000: ``cond2 = 1000*1/sqrt(sum(s(2:end).^2))``,
    ``s = svd(A)``, A the centred "from" coordinates), an author of RSA software. This scaling
    reproduces the magnitudes reported in the RSA literature (typically 20–150, limits 100–150
    [2]_): six beads with an SD of 10 mm per axis give CN ≈ 1000/sqrt(2 · 6 · 100) ≈ 29. The
    texts of ISO 16087 Annex A and of the RSA guidelines were not available to us; compare
    with a published CN limit only if the software that produced it uses this definition.

    Scaling: σₖ² = N · varₖ, so for the same spatial spread CN falls like 1/√N with more beads,
    and CN scales as 1/length (doubling the spread halves CN). For beads at ±a on the three axes
    (octahedron, N = 6) σ1² = σ2² = σ3² = 2a², so CN = 1000 / (2a).
    """
    x = as_points(x, "x", min_ndim=2)
    batch, n = x.shape[:-2], x.shape[-2]
    w = _prepare_weights(weights, (*batch, n))
    valid = np.isfinite(x).all(axis=-1) & (w > 0)
    w = np.where(valid, w, 0.0)
    x0 = np.where(valid[..., None], x, 0.0)
    wsum = w.sum(axis=-1)[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = np.einsum("...n,...ni->...i", w, x0) / wsum
    A = np.where(valid[..., None], x0 - np.nan_to_num(xm)[..., None, :], 0.0)
    M = np.einsum("...ni,...nj->...ij", A * w[..., None], A)  # AᵀWA, eigenvalues σᵢ²
    lam = np.clip(np.linalg.eigvalsh(M), 0.0, None)  # ascending: σ3², σ2², σ1²
    off_line = lam[..., 0] + lam[..., 1]
    degenerate = (off_line <= 64 * np.finfo(float).eps * lam[..., 2]) | (valid.sum(axis=-1) < 3)
    with np.errstate(divide="ignore"):
        cn = 1000.0 / np.sqrt(np.where(degenerate, 1.0, off_line))
    return np.where(degenerate, np.inf, cn)


# --------------------------------------------------------------------------------------------
# Bead stability
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DistanceStability:
    """Change of inter-bead distances between two exams (see :func:`distance_stability`).

    Attributes
    ----------
    mean_change_mm : (...) ndarray
        Mean over valid bead pairs i < j of |‖xᵢ − xⱼ‖ − ‖yᵢ − yⱼ‖| (NaN if no valid pair).
    per_bead_mm : (..., N) ndarray
        For each bead, the mean of that quantity over its valid pairs (NaN for missing beads).
    n_pairs : (...) ndarray of int
        Number of valid pairs.
    """

    mean_change_mm: np.ndarray
    per_bead_mm: np.ndarray
    n_pairs: np.ndarray

    def __post_init__(self) -> None:
        for name in ("mean_change_mm", "per_bead_mm", "n_pairs"):
            object.__setattr__(self, name, readonly(np.asarray(getattr(self, name))))


def _pair_distances(p: np.ndarray) -> np.ndarray:
    return np.linalg.norm(p[..., :, None, :] - p[..., None, :, :], axis=-1)


def _distance_change(change: np.ndarray, keep: np.ndarray):
    """Per-bead and overall mean of `change` (..., N, N) over pairs of kept beads."""
    n = keep.shape[-1]
    pair = keep[..., :, None] & keep[..., None, :] & ~np.eye(n, dtype=bool)
    c = np.where(pair, change, 0.0)
    cnt = pair.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_bead = np.where(cnt > 0, c.sum(axis=-1) / cnt, np.nan)
        total = cnt.sum(axis=-1)
        mean = np.where(total > 0, c.sum(axis=(-1, -2)) / total, np.nan)
    return per_bead, mean, total // 2


def distance_stability(x: ArrayLike, y: ArrayLike) -> DistanceStability:
    """Mean absolute change of inter-bead distances between two exams, batched.

    A fit-free stability measure: for rigidly moving beads every distance ‖xᵢ − xⱼ‖ is preserved,
    so |‖xᵢ − xⱼ‖ − ‖yᵢ − yⱼ‖| measures deformation / loose beads plus measurement noise. It is
    deliberately named apart from ME (:attr:`RigidFit.mean_error_mm`), the mean residual of the
    rigid-body fit.

    Parameters
    ----------
    x, y : (..., N, 3) array_like
        The same beads in two exams, mm; batch shapes broadcast. NaN rows are missing beads;
        pairs involving them are skipped.

    Returns
    -------
    DistanceStability
        mean_change_mm (...), per_bead_mm (..., N), n_pairs (...).
    """
    x, y = _broadcast_pair(x, y)
    keep = np.isfinite(x).all(axis=-1) & np.isfinite(y).all(axis=-1)
    x0 = np.where(keep[..., None], x, 0.0)
    y0 = np.where(keep[..., None], y, 0.0)
    change = np.abs(_pair_distances(x0) - _pair_distances(y0))
    per_bead, mean, n_pairs = _distance_change(change, keep)
    per_bead = np.where(keep, per_bead, np.nan)
    return DistanceStability(mean, per_bead, n_pairs)


@dataclass(frozen=True, eq=False)
class UnstableScreen:
    """Result of :func:`screen_unstable`.

    Attributes
    ----------
    exclude : (..., N) ndarray of bool
        Beads to exclude from the fit (missing beads are not marked; they are excluded anyway).
    reasons : tuple of str
        One human-readable line per excluded bead, in exclusion order.
    per_bead_change_mm : (..., N) ndarray
        Mean inter-bead distance change of each bead before screening.
    mean_error_before_mm, mean_error_after_mm : (...) ndarray
        ME of the fit with all valid beads and with the remaining beads.
    """

    exclude: np.ndarray
    reasons: tuple[str, ...]
    per_bead_change_mm: np.ndarray
    mean_error_before_mm: np.ndarray
    mean_error_after_mm: np.ndarray

    def __post_init__(self) -> None:
        for name in ("exclude", "per_bead_change_mm", "mean_error_before_mm",
                     "mean_error_after_mm"):
            object.__setattr__(self, name, readonly(np.asarray(getattr(self, name))))


def _masked_me(x0: np.ndarray, y0: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ME of the unchecked fit with weights `w`; inf where the subset is degenerate."""
    R, t, _, cm = _fit_core(x0, y0, w)
    res = np.linalg.norm(np.matmul(x0, np.swapaxes(R, -1, -2)) + t[..., None, :] - y0, axis=-1)
    cnt = (w > 0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        me = np.where(w > 0, res, 0.0).sum(axis=-1) / cnt
    bad = (cnt < 3) | cm
    return np.where(bad, np.inf, me)


def screen_unstable(x: ArrayLike, y: ArrayLike, *, limit_mm: float = 0.35,
                    min_beads: int = 3) -> UnstableScreen:
    """Find beads that moved relative to the other beads of their segment (unstable beads).

    Iterative, vectorised over batch elements and beads. In each round, for every bead still in
    use, compute (a) its mean inter-bead distance change to the other beads in use (as in
    :func:`distance_stability`) and (b) the leave-one-out ME, i.e. the ME of the rigid fit
    without that bead (all N leave-one-out fits of all batch elements in one batched SVD).
    Candidates are beads whose distance change exceeds `limit_mm`; of these the bead whose
    removal gives the smallest leave-one-out ME is excluded, provided at least `min_beads` beads
    remain. Rounds repeat until no batch element has a candidate (at most N − min_beads rounds).

    Choosing among candidates by leave-one-out ME matters when one bead moved a lot: its
    displacement then also raises the mean distance change of the stable beads (each shares one
    pair with it), but only its own removal brings the fit back to noise level.

    Parameters
    ----------
    x, y : (..., N, 3) array_like
        The same beads in the reference and the follow-up exam, mm; NaN rows are missing beads.
    limit_mm : float, default 0.35
        Limit for a bead's mean inter-bead distance change. The default is the ME limit commonly
        used in RSA (0.35 mm; Valstar et al. 2005 guideline, DESIGN §3.5) — configure it for
        your study.
    min_beads : int, default 3
        Never exclude below this many beads (3 is the minimum for a rigid fit; use 4 to keep
        redundancy for the residual check).

    Returns
    -------
    UnstableScreen

    Raises
    ------
    ShapeError
        Wrong shapes, mismatched N, ``limit_mm <= 0`` or ``min_beads < 3``.
    EstimationError
        A batch element has fewer than 3 valid or only collinear beads to begin with.
    """
    if not np.isfinite(limit_mm) or limit_mm <= 0:
        raise ShapeError(f"Expected `limit_mm` > 0, got {limit_mm}.")
    if int(min_beads) != min_beads or min_beads < 3:
        raise ShapeError(f"Expected `min_beads` to be an integer ≥ 3, got {min_beads}.")
    fit = fit_rigid(x, y)  # validates shapes and the initial bead sets
    x, y = _broadcast_pair(x, y)
    batch, n = x.shape[:-2], x.shape[-2]
    x, y = x.reshape(-1, n, 3), y.reshape(-1, n, 3)  # one flat batch axis internally
    valid0 = np.isfinite(x).all(axis=-1) & np.isfinite(y).all(axis=-1)
    keep = valid0.copy()
    x0 = np.where(keep[..., None], x, 0.0)
    y0 = np.where(keep[..., None], y, 0.0)
    change = np.abs(_pair_distances(x0) - _pair_distances(y0))
    initial_change = np.where(keep, _distance_change(change, keep)[0], np.nan)
    not_self = ~np.eye(n, dtype=bool)
    xl = np.broadcast_to(x0[:, None], (x0.shape[0], n, n, 3))
    yl = np.broadcast_to(y0[:, None], (y0.shape[0], n, n, 3))
    reasons: list[str] = []
    for _ in range(max(n - min_beads, 0)):
        per_bead, _, _ = _distance_change(change, keep)
        me_now = _masked_me(x0, y0, keep.astype(float))
        loo = _masked_me(xl, yl, (keep[..., None, :] & not_self).astype(float))  # (..., k, n)
        room = keep.sum(axis=-1) - 1 >= min_beads
        cand = keep & (per_bead > limit_mm) & np.isfinite(loo) & room[..., None]
        act = cand.any(axis=-1)
        if not np.any(act):
            break
        k = np.argmin(np.where(cand, loo, np.inf), axis=-1)
        for b in np.flatnonzero(act):  # message text only, one line per excluded bead
            kk = int(k[b])
            reasons.append(
                f"{_index_text(batch, b)}bead {kk}: mean inter-bead distance change "
                f"{per_bead[b, kk]:.2f} mm > limit {limit_mm:.2f} mm; leave-one-out ME "
                f"{me_now[b]:.2f} → {loo[b, kk]:.2f} mm"
            )
        keep[act, k[act]] = False
    after = _masked_me(x0, y0, keep.astype(float))
    return UnstableScreen((valid0 & ~keep).reshape(*batch, n), tuple(reasons),
                          initial_change.reshape(*batch, n), fit.mean_error_mm,
                          after.reshape(batch))


def pose_point_sigma(x: ArrayLike, variance: ArrayLike, points: ArrayLike) -> np.ndarray:
    """Per-axis standard uncertainty (mm) of ``points`` mapped by a pose fitted to beads ``x``.

    A weighted least-squares rigid fit (:func:`fit_rigid`, weights ``1/variance``) to beads
    with isotropic errors of the given variances carries any point of the body with an error
    that grows with its distance from the beads. To first order [1]_ the translation at the
    weighted centroid x̄ has covariance I/Σw and the small rotation vector
    C = (Σ wᵢ (‖rᵢ‖² I − rᵢrᵢᵀ))⁻¹ with rᵢ = xᵢ − x̄, so a point at d = p − x̄ moves with
    covariance I/Σw + [d]ₓ C [d]ₓᵀ, of trace 3/Σw + ‖d‖² tr C − dᵀCd. Checked against Monte
    Carlo fits in tests/test_series.py.

    Parameters
    ----------
    x : (..., N, 3) array_like
        Bead positions of the fitted model (mm); NaN rows are not used.
    variance : (..., N) array_like
        Per-axis error variance of each bead's residual (mm²; the model's plus the exam's).
    points : (..., K, 3) array_like
        Points of the body (model frame, mm).

    Returns
    -------
    (..., K) ndarray
        RMS over the three axes of each point's standard uncertainty (mm); inf when the beads
        cannot fix every rotation (fewer than three, or all on one line).
    """
    x = np.asarray(x, float)
    ok = np.isfinite(x).all(-1)
    w = np.where(ok, 1.0 / np.maximum(np.asarray(variance, float), 1e-300), 0.0)
    x0 = np.where(ok[..., None], x, 0.0)
    W = w.sum(-1)
    xbar = np.einsum("...n,...nj->...j", w, x0) / W[..., None]
    r = np.where(ok[..., None], x0 - xbar[..., None, :], 0.0)
    inertia = np.einsum("...n,...nj,...nk->...jk", w, r, r)
    M = np.trace(inertia, axis1=-2, axis2=-1)[..., None, None] * np.eye(3) - inertia
    vals, vecs = np.linalg.eigh(M)
    fixed = vals[..., :1] > 1e-12 * np.maximum(vals[..., -1:], 1e-300)   # every axis fixed
    inv = np.where(fixed, 1.0 / np.where(fixed, vals, 1.0), 0.0)
    C = np.einsum("...ij,...j,...kj->...ik", vecs, inv, vecs)
    d = np.asarray(points, float) - xbar[..., None, :]
    tr = (3.0 / W[..., None] + np.sum(d * d, -1) * np.trace(C, axis1=-2, axis2=-1)[..., None]
          - np.einsum("...kj,...jl,...kl->...k", d, C, d))
    return np.where(fixed, np.sqrt(np.maximum(tr, 0.0) / 3.0), np.inf)
