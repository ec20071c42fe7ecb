"""Linear projective estimators shared by marker identification and calibration (private).

Everything here is plain NumPy on float64 arrays, no validation beyond degeneracy checks (callers
validate at their public boundary). Conventions: image points ``uv`` in px, lab points in mm,
homogeneous coordinates with the scale last.

References
----------
.. [1] Hartley R, Zisserman A. Multiple View Geometry in Computer Vision, 2nd ed., Cambridge
       University Press, 2004: Algorithm 4.2 (normalised DLT for homographies), Algorithm 7.1
       (normalised DLT for the camera matrix), §6.2.4 (camera centre C = −M⁻¹p₄, RQ decomposition
       P = K R [I | −C]).
.. [2] Börlin N. Comparison of resection–intersection algorithms and projection geometries in
       radiostereometry. ISPRS J Photogramm Remote Sens 2002;56:390–400 (film-to-cage model).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import rq
from scipy.spatial.transform import Rotation

from rsa.errors import EstimationError
from rsa.triangulate import closest_point_to_lines

#: Smallest acceptable ratio of the smallest to the largest principal spread of a point set
#: (2-D for homographies, 3-D for the DLT); below it the points are called collinear/coplanar.
SPREAD_TOL = 1e-3


def _normaliser(x: np.ndarray) -> np.ndarray:
    """Similarity T (d+1, d+1): centroid to 0, mean distance √d (Hartley normalisation)."""
    d = x.shape[-1]
    c = x.mean(0)
    s = np.sqrt(d) / max(np.linalg.norm(x - c, axis=-1).mean(), 1e-300)
    T = np.eye(d + 1) * s
    T[:d, d] = -s * c
    T[d, d] = 1.0
    return T


def spread_ratio(x: np.ndarray) -> float:
    """Ratio of the smallest to the largest singular value of the centred points (K, d)."""
    if x.shape[0] < 2:
        return 0.0
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    return float(s[-1] / s[0]) if s[0] > 0 else 0.0


def to_h(x: np.ndarray) -> np.ndarray:
    """Append a homogeneous coordinate 1 to (..., d) points."""
    return np.concatenate([x, np.ones(x.shape[:-1] + (1,))], axis=-1)


def from_h(xh: np.ndarray) -> np.ndarray:
    """Divide (..., d+1) homogeneous points by their last coordinate (NaN at infinity)."""
    w = xh[..., -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(w != 0, xh[..., :-1] / np.where(w != 0, w, 1.0), np.nan)


def apply_h(H: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Apply a (..., 3, 3) homography to (..., K, 2) points."""
    return from_h(np.einsum("...ij,...kj->...ki", H, to_h(x)))


def project(P: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Project (..., K, 3) points with (..., 3, 4) camera matrices to (..., K, 2) px."""
    return from_h(np.einsum("...ij,...kj->...ki", P, to_h(X)))


def fit_homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Normalised DLT homography H (3, 3) with ``dst ~ H src`` from K ≥ 4 point pairs (K, 2).

    Raises EstimationError for fewer than 4 pairs or (nearly) collinear source points ([1]_ Alg.
    4.2).
    """
    if src.shape[0] < 4:
        raise EstimationError(f"A homography needs at least 4 point pairs, got {src.shape[0]}.")
    if spread_ratio(src) < SPREAD_TOL or spread_ratio(dst) < SPREAD_TOL:
        raise EstimationError("The points for the homography are (nearly) collinear.")
    Ts, Td = _normaliser(src), _normaliser(dst)
    s = apply_h(Ts, src)
    d = apply_h(Td, dst)
    k = s.shape[0]
    A = np.zeros((2 * k, 9))
    sh = to_h(s)
    A[0::2, 3:6] = -sh
    A[0::2, 6:9] = d[:, 1:2] * sh
    A[1::2, 0:3] = sh
    A[1::2, 6:9] = -d[:, 0:1] * sh
    H = np.linalg.svd(A)[2][-1].reshape(3, 3)
    H = np.linalg.solve(Td, H @ Ts)
    return H / H[2, 2]


def fit_projection(X: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Normalised 11-parameter DLT camera matrix P (3, 4), ``uv ~ P X``, from K ≥ 6 pairs.

    Raises EstimationError for fewer than 6 points or (nearly) coplanar 3-D points, for which P
    is not unique ([1]_ Alg. 7.1).
    """
    if X.shape[0] < 6:
        raise EstimationError(f"The DLT needs at least 6 markers, got {X.shape[0]}.")
    if spread_ratio(X) < SPREAD_TOL:
        raise EstimationError("The markers for the DLT are (nearly) coplanar; the DLT needs "
                              "fiducial and control markers.")
    T3, T2 = _normaliser(X), _normaliser(uv)
    Xn = to_h(from_h(to_h(X) @ T3.T))
    un = apply_h(T2, uv)
    k = X.shape[0]
    A = np.zeros((2 * k, 12))
    A[0::2, 0:4] = Xn
    A[0::2, 8:12] = -un[:, 0:1] * Xn
    A[1::2, 4:8] = Xn
    A[1::2, 8:12] = -un[:, 1:2] * Xn
    P = np.linalg.svd(A)[2][-1].reshape(3, 4)
    P = np.linalg.solve(T2, P @ T3)
    return P / np.linalg.norm(P)


def focus_of(P: np.ndarray) -> np.ndarray:
    """Projection centre F = −M⁻¹ p₄ of (..., 3, 4) camera matrices ([1]_ §6.2.4)."""
    return -np.linalg.solve(P[..., :3], P[..., 3:])[..., 0]


def plane_frame(X: np.ndarray, towards: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best-fit plane of points (K, 3): centroid c, in-plane axes E (2, 3), unit normal n.

    The normal points to the side of `towards` (the focus); (E₀, E₁, n) is right-handed.
    """
    c = X.mean(0)
    _, s, vt = np.linalg.svd(X - c)
    if s[1] <= SPREAD_TOL * s[0]:
        raise EstimationError("The fiducial markers are (nearly) collinear.")
    n = vt[2] if np.dot(vt[2], towards - c) > 0 else -vt[2]
    e0 = vt[0]
    e1 = np.cross(n, e0)
    return c, np.stack([e0, e1]), n


def plane_projection_matrix(F: np.ndarray, c: np.ndarray, E: np.ndarray,
                            n: np.ndarray) -> np.ndarray:
    """3×4 matrix Π mapping lab points (homogeneous) to plane coordinates (homogeneous).

    Π X is the central projection from F of X onto the plane {c + E ᵀ x}: the point
    X' = F + s (X − F) with s = n·(c − F) / n·(X − F), expressed as x = E (X' − c). Multiplying
    by n·(X − F) makes it linear: [E((F − c) nᵀ + n·(c − F) I) | −E((F − c) n·F + n·(c − F) F)]
    over [nᵀ | −n·F].
    """
    a = float(n @ (c - F))
    A = np.outer(F - c, n) + a * np.eye(3)
    top = np.hstack([E @ A, -(E @ (A @ F))[:, None]])
    return np.vstack([top, np.append(n, -n @ F)])


def film_to_cage(xyz_f: np.ndarray, uv_f: np.ndarray, xyz_c: np.ndarray, uv_c: np.ndarray,
                 frame: tuple[np.ndarray, np.ndarray, np.ndarray], *, n_iter: int = 4,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Film-to-cage calibration of one view (Selvik; [2]_), DESIGN §3.1.

    Fiducials (K_f, 3) with images (K_f, 2) give the homography image → fiducial plane; control
    images mapped through it give points c'_j on the plane; the focus is the least-squares
    intersection of the lines C_j → c'_j. Fiducials off the best-fit plane are handled by
    iterating: each fiducial is replaced by its central projection from the current focus onto
    the plane, and the homography and focus are re-estimated (the first pass projects along the
    normal).

    Returns
    -------
    P : (3, 4) camera matrix H_plane→image · Π(F)
    F : (3,) focus, mm
    H : (3, 3) homography image px → plane mm (DESIGN's direction)
    """
    c, E, n = frame
    F = c + 1e9 * n  # orthogonal projection onto the plane in the first pass
    for _ in range(n_iter):
        s = (n @ (c - F)) / ((xyz_f - F) @ n)
        xf = (F + s[:, None] * (xyz_f - F) - c) @ E.T
        Hpi = fit_homography(xf, uv_f)  # plane -> image (noise is in the image)
        H = np.linalg.inv(Hpi)
        cp = c + apply_h(H, uv_c) @ E
        F = closest_point_to_lines(xyz_c, cp - xyz_c)
    P = Hpi @ plane_projection_matrix(F, c, E, n)
    return P / np.linalg.norm(P), F, H / H[2, 2]


# -- pinhole parameterisation θ = (F (3), δ (3), fx, skew, cx, fy, cy) -> P = K R(δ) R₀ [I | −F],
# δ a small rotation vector relative to a reference orientation R₀ (no wrap-around at 180°).
N_PARAMS = 11


def params_from_camera(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole parameters θ (11,) and reference rotation R₀ (3, 3) of a finite camera P (3, 4).

    RQ decomposition M = K R ([1]_ §6.2.4) with R₀ = R, so the rotation part of θ is zero.
    """
    M = P[:, :3] * np.sign(np.linalg.det(P[:, :3]))
    K, R = rq(M)
    D = np.diag(np.sign(np.diag(K)))  # K with positive diagonal, det R = +1 since det M > 0
    K, R = K @ D, D @ R
    K = K / K[2, 2]
    F = focus_of(P)
    theta = np.concatenate([F, np.zeros(3), [K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]]])
    return theta, R


def camera_from_params(theta: np.ndarray, R0: np.ndarray) -> np.ndarray:
    """Camera matrices (..., 3, 4) from pinhole parameters θ (..., 11) and R₀, vectorised."""
    theta = np.asarray(theta, float)
    batch = theta.shape[:-1]
    R = Rotation.from_rotvec(np.array(theta.reshape(-1, N_PARAMS)[:, 3:6])).as_matrix().reshape(
        batch + (3, 3)) @ R0
    K = np.zeros(batch + (3, 3))
    K[..., 0, 0], K[..., 0, 1], K[..., 0, 2] = theta[..., 6], theta[..., 7], theta[..., 8]
    K[..., 1, 1], K[..., 1, 2] = theta[..., 9], theta[..., 10]
    K[..., 2, 2] = 1.0
    M = K @ R
    return np.concatenate([M, -(M @ theta[..., :3, None])], axis=-1)
