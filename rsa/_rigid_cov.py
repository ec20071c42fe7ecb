"""Rigid fit weighted by each bead's full 3D covariance (the core of
``rsa.rigid.fit_rigid(..., covariance=...)``; this private module keeps ``rigid.py`` short).

A triangulated bead is not equally uncertain in every direction: a bead seen well in one view
and poorly in the other (e.g. behind a screw) is uncertain mainly along the good view's ray,
and well fixed across it. An isotropic weight (one σ per bead) must take the poor direction's σ
and so throws away the two good ones. Weighting each residual by the inverse of its covariance
keeps them: the generalised (anisotropic) least-squares rigid fit [1]_ [2]_

    min over R, t of  Σᵢ wᵢ rᵢᵀ Sᵢ⁻¹ rᵢ,   rᵢ = R xᵢ + t − yᵢ,   Sᵢ = R Σxᵢ Rᵀ + Σyᵢ,

has no closed form; it is solved by Gauss–Newton from the isotropic Söderkvist–Wedin solution,
with Sᵢ evaluated at the current R (the usual fixed-point treatment of the weights, [1]_ §3).
The rotation is updated multiplicatively (R ← exp([δω]ₓ) R) about the weighted centroid of x,
where rotation and translation are nearly uncorrelated.

References
----------
.. [1] L. Maier-Hein et al., "Convergent iterative closest-point algorithm to accomodate
   anisotropic and inhomogenous localization error", IEEE TPAMI 34(8):1520–1532, 2012.
.. [2] R. Balachandran, J. M. Fitzpatrick, "Iterative solution for rigid-body point-based
   registration with anisotropic weighting", Proc. SPIE 7261, 2009.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

#: Gauss–Newton stops when its step moves no bead by more than this (mm; float64 rounding of
#: coordinates of a few hundred mm is ~1e-13 mm)...
_STEP_TOL_MM = 1e-9
#: ...which from the isotropic start took 4 iterations (the last one confirming) for every body
#: of the tests' scenes (10:1 needle covariances, rotations up to 10°); a body still moving
#: after this many is reported as not converged.
_MAX_ITER = 30


def _skew(a: np.ndarray) -> np.ndarray:
    """[a]ₓ of every vector of ``a`` (..., 3) → (..., 3, 3)."""
    z = np.zeros(a.shape[:-1])
    x, y, w = a[..., 0], a[..., 1], a[..., 2]
    return np.stack([np.stack([z, -w, y], -1), np.stack([w, z, -x], -1),
                     np.stack([-y, x, z], -1)], -2)


def refine_covariance(x: np.ndarray, y: np.ndarray, w: np.ndarray, cov_x: np.ndarray,
                      cov_y: np.ndarray, R: np.ndarray, t: np.ndarray, xm: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gauss–Newton for the covariance-weighted fit (module doc), batched over ``(...)``.

    ``x``, ``y`` (..., N, 3) zero-filled where ``w`` (..., N) is zero; ``cov_x``, ``cov_y``
    (..., N, 3, 3) symmetric, with ``R Σx Rᵀ + Σy`` positive definite where ``w > 0`` (other
    rows are ignored); ``R``, ``t`` the start; ``xm`` (..., 3) the centre of rotation. Returns
    R, t and whether each body converged.
    """
    used = w > 0
    eye = np.eye(3)
    a = np.where(used[..., None], x - xm[..., None, :], 0.0)
    tc = t + np.einsum("...ij,...j->...i", R, xm)          # translation about the centre
    reach = np.sqrt(np.max(np.sum(a * a, -1), -1))          # farthest bead from the centre
    done = np.zeros(w.shape[:-1], bool)
    for _ in range(_MAX_ITER):
        S = R[..., None, :, :] @ cov_x @ np.swapaxes(R, -1, -2)[..., None, :, :] + cov_y
        S = np.where(used[..., None, None], S, eye)
        W = np.linalg.inv(S) * w[..., None, None]
        Ra = np.einsum("...ij,...nj->...ni", R, a)
        r = np.where(used[..., None], Ra + tc[..., None, :] - y, 0.0)
        K = _skew(Ra)                                       # ∂r/∂δω = −[R a]ₓ
        KtW = np.swapaxes(K, -1, -2) @ W
        H = np.empty((*w.shape[:-1], 6, 6))
        H[..., :3, :3] = np.sum(KtW @ K, -3)
        H[..., :3, 3:] = -np.sum(KtW, -3)
        H[..., 3:, :3] = np.swapaxes(H[..., :3, 3:], -1, -2)
        H[..., 3:, 3:] = np.sum(W, -3)
        Wr = np.einsum("...nij,...nj->...ni", W, r)
        g = np.concatenate([-np.einsum("...nji,...nj->...i", K, Wr), np.sum(Wr, -2)], -1)
        step = -np.linalg.solve(H, g[..., None])[..., 0]
        step = np.where(done[..., None], 0.0, step)
        R = Rotation.from_rotvec(step[..., :3].reshape(-1, 3)).as_matrix().reshape(R.shape) @ R
        tc = tc + step[..., 3:]
        moved = np.linalg.norm(step[..., :3], axis=-1) * reach + np.linalg.norm(step[..., 3:],
                                                                              axis=-1)
        done |= moved < _STEP_TOL_MM
        if done.all():
            break
    return R, tc - np.einsum("...ij,...j->...i", R, xm), done
