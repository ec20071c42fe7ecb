"""Maximum-likelihood triangulation: the 3D point whose projections best fit the detected centres,
each weighted by its own uncertainty.

The midpoint of the common perpendicular (:func:`rsa.triangulate.intersect_rays`, DESIGN §3.2)
weighs both rays equally in object space. That is the maximum-likelihood point only when both
views measure the bead equally well. When one view's centre is much less certain than the
other's (a bead next to a screw head in one view, clean in the other), the midpoint takes half
of the poor view's error into the point, also in the one direction that both views measure: two
views give four coordinates of three unknowns, and the redundant one is the coordinate across
the epipolar plane. Minimising the σ-weighted reprojection error

    Σ_k Σ_{c ∈ u, v} ((P_k(X)_c − uv_kc) / σ_kc)²

takes that coordinate from the better view ([1]_ §12.3, [2]_). The minimiser is found by
Gauss–Newton from the least-squares point of the rays (:func:`rsa.triangulate.
closest_point_to_lines`); the problem is nearly linear around it and converges in two or three
steps. Its first-order covariance (JᵀWJ)⁻¹ is returned with it.

References
----------
.. [1] Hartley R, Zisserman A. Multiple View Geometry in Computer Vision, 2nd ed., 2004, §12.3
       (Gold Standard triangulation) and §5.2 (covariance propagation).
.. [2] Hartley RI, Sturm P. Triangulation. Comput Vis Image Underst 1997;68(2):146–157.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from rsa._validate import as_points
from rsa.errors import ShapeError
from rsa.triangulate import triangulate_views

__all__ = ["triangulate_ml"]

#: Gauss–Newton stops when no point moves by more than this (mm) …
STEP_TOL_MM = 1e-9
#: … or after this many steps.
MAX_STEPS = 10


def triangulate_ml(projections: ArrayLike, uv_px: ArrayLike, sigma_px: ArrayLike,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Triangulate beads seen in K views by minimising their σ-weighted reprojection error.

    Parameters
    ----------
    projections : (K, 3, 4) array_like
        Camera matrix of each view, ``[u, v, 1]ᵀ ∝ P [x, y, z, 1]ᵀ`` (lab mm → px), e.g.
        :attr:`rsa.calibrate.View.projection_matrix`.
    uv_px : (N, K, 2) array_like
        Detected centre of each bead in each view, px. A bead with a NaN centre in any view
        gets a NaN point.
    sigma_px : (N, K, 2) or (N, K) array_like
        Standard uncertainty of each centre per image axis (or one value for both axes), px,
        e.g. :attr:`rsa.detect.Beads2D.sigma_px`. Only their ratios matter for the point; a
        bead with a non-finite or non-positive σ in any view gets its views equal weights.

    Returns
    -------
    points : (N, 3) ndarray
        Minimiser of the weighted reprojection error, mm; NaN where the rays are (nearly)
        parallel or an input is missing.
    covariance : (N, 3, 3) ndarray
        First-order covariance (JᵀWJ)⁻¹ of each point from ``sigma_px`` (mm²); NaN with the
        point. For a bead given equal weights it is the covariance for σ = 1 px.

    Raises
    ------
    ShapeError
        Shapes that do not fit together; non-finite or degenerate camera matrices.

    Notes
    -----
    With one σ for all views and axes the point differs from the midpoint only by the views'
    different magnifications at the bead (sub-micrometre for an RSA geometry).
    """
    P = np.asarray(projections, dtype=np.float64)
    if P.ndim != 3 or P.shape[1:] != (3, 4):
        raise ShapeError(f"Expected `projections` to have shape (K, 3, 4), got {P.shape}.")
    M = P[:, :, :3]
    if not np.isfinite(P).all() or not np.all(np.abs(np.linalg.det(M)) > 1e-12 * np.max(
            np.abs(M), axis=(1, 2)) ** 3):
        raise ShapeError("Expected `projections` to be finite camera matrices with an "
                         "invertible left 3×3 block (a focus at finite distance).")
    K = P.shape[0]
    uv = as_points(uv_px, "uv_px", last=2, spec="(N, K, 2)")
    if uv.ndim != 3 or uv.shape[1] != K:
        raise ShapeError(f"Expected `uv_px` to have shape (N, {K}, 2), got {uv.shape}.")
    s = np.asarray(sigma_px, dtype=np.float64)
    if s.shape == uv.shape[:2]:
        s = np.repeat(s[..., None], 2, axis=-1)
    if s.shape != uv.shape:
        raise ShapeError(f"Expected `sigma_px` to have shape {uv.shape} or {uv.shape[:2]}, "
                         f"got {s.shape}.")
    with np.errstate(invalid="ignore"):
        usable = np.all(np.isfinite(s) & (s > 0), axis=(1, 2))
    s = np.where(usable[:, None, None], s, 1.0)
    x = _start(P, uv)
    ok = np.isfinite(x).all(axis=1)
    xk, uvk, sk = x[ok], uv[ok], s[ok]
    cov = np.full((len(uv), 3, 3), np.nan)
    if ok.any():
        for _ in range(MAX_STEPS):
            step, _ = _gauss_newton_step(P, xk, uvk, sk)
            xk = xk + step            # a singular normal matrix (parallel rays) gives NaN
            if np.all(np.abs(np.nan_to_num(step)) <= STEP_TOL_MM):
                break
        _, H = _gauss_newton_step(P, xk, uvk, sk)
        cov[ok] = _inv_or_nan(H)
        x[ok] = np.where(np.isfinite(cov[ok, 0, :1]), xk, np.nan)
    return x, cov


def _start(P: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Least-squares point of the rays (N, 3): NaN where a ray is missing or rays are parallel."""
    M, p4 = P[:, :, :3], P[:, :, 3]
    focus = -np.linalg.solve(M, p4[..., None])[..., 0]                  # (K, 3)
    h = np.concatenate([uv, np.ones(uv.shape[:-1] + (1,))], axis=-1)    # (N, K, 3)
    d = np.einsum("kij,nkj->nki", np.linalg.inv(M), h)
    x, _ = triangulate_views(np.broadcast_to(focus, d.shape), d)
    missing = ~np.isfinite(uv).all(axis=(1, 2))
    x[missing] = np.nan
    return x


def _gauss_newton_step(P: np.ndarray, x: np.ndarray, uv: np.ndarray, s: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """One Gauss–Newton step (N, 3) of the weighted reprojection error at points x (N, 3), and
    the normal matrix JᵀWJ (N, 3, 3) there. A (nearly) singular normal matrix (parallel rays)
    gives a NaN step."""
    xh = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    q = np.einsum("kij,nj->nki", P, xh)                                  # (N, K, 3)
    proj = q[..., :2] / q[..., 2:]
    # d(q_c / q_3)/dx = (P_c − (q_c/q_3) P_3)[:3] / q_3
    J = (P[None, :, :2, :3] - proj[..., None] * P[None, :, 2:3, :3]) / q[..., 2, None, None]
    J = J / s[..., None]                                                  # (N, K, 2, 3)
    r = (uv - proj) / s                                                   # (N, K, 2)
    J = J.reshape(len(x), -1, 3)
    H = np.einsum("nai,naj->nij", J, J)
    g = np.einsum("nai,na->ni", J, r.reshape(len(x), -1))
    Hi = _inv_or_nan(H)
    return np.einsum("nij,nj->ni", Hi, g), H


def _inv_or_nan(H: np.ndarray) -> np.ndarray:
    """Inverse of each (3, 3) normal matrix; NaN where it is not finite or (nearly) singular:
    det H ≤ 1e-12 (tr H / 3)³, i.e. its smallest eigenvalue below about 1e-12 of the others
    (rays at an angle below about 1 µrad; H is positive semi-definite)."""
    finite = np.isfinite(H).all(axis=(1, 2))
    Hs = np.where(finite[:, None, None], H, np.eye(3))
    tr = np.trace(Hs, axis1=1, axis2=2) / 3.0
    bad = ~finite | ~(np.linalg.det(Hs) > 1e-12 * tr ** 3)
    Hs = np.where(bad[:, None, None], np.eye(3), Hs)
    return np.where(bad[:, None, None], np.nan, np.linalg.inv(Hs))
