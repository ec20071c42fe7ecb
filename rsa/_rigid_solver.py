"""Vectorised optimal rotation from a 3×3 cross-covariance, for :func:`rsa.rigid.fit_rigid`.

Private helper: the rotation that maximises tr(Rᵀ C) over proper rotations, for many C at once.
The reference formula (Söderkvist & Wedin 1993) is ``R = P diag(1, 1, det(P Qᵀ)) Qᵀ`` with the
SVD ``C = P Σ Qᵀ`` (:func:`svd_rotation`). A batched ``np.linalg.svd`` on (m, 3, 3) costs about
1.5 µs per matrix in LAPACK call overhead, which dominates a 10⁴-body fit, so
:func:`optimal_rotation` computes the same optimum with elementwise NumPy on (m,) arrays:

1. Horn's quaternion form [1]_: the optimal unit quaternion is the eigenvector of the largest
   eigenvalue λ₁ of a symmetric traceless 4×4 matrix N built from C. Its eigenvalues are
   σ1 + σ2 + sσ3, σ1 − σ2 − sσ3, … (s = sign det C), so the optimum is always a proper rotation,
   also for coplanar beads.
2. λ₁ by Newton's method on the characteristic quartic of N, as in Theobald's QCP [2]_, started
   from an upper bound: ½ Σ wᵢ(‖aᵢ‖² + ‖bᵢ‖²) when the caller has it (exact for a perfect rigid
   fit, 1–3 steps), else √3‖C‖_F (Newton on a real-rooted polynomial converges monotonically
   from above the largest root).
3. The eigenvector as a row of adj(N − λ₁I) = P'(λ₁) q qᵀ (P the characteristic polynomial):
   row k has norm |P'(λ₁)| |q_k|; the row with the largest diagonal entry is used
   (|q_k| ≥ 1/2).
4. Where the eigenvalue gap is small (|P'(λ₁)| < 1e-3 · scale³, i.e. σ2 + sσ3 ≈ 0, where
   this route loses accuracy) those rows fall back to the SVD formula.

References
----------
.. [1] B. K. P. Horn, "Closed-form solution of absolute orientation using unit quaternions",
   J. Opt. Soc. Am. A 4(4):629–642, 1987.
.. [2] D. L. Theobald, "Rapid calculation of RMSDs using a quaternion-based characteristic
   polynomial", Acta Cryst. A61:478–480, 2005.
"""

from __future__ import annotations

import numpy as np

_GAP_TOL = 1e-3


def _minors(b, c):
    """2×2 minors (01, 02, 03, 12, 13, 23) of two 4-vectors given as lists of (m,) arrays."""
    return [b[j] * c[k] - b[k] * c[j] for j, k in ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))]


def _laplace(a, mn):
    """Generalised cross product of a with the two 4-vectors whose 2×2 minors are `mn`."""
    m01, m02, m03, m12, m13, m23 = mn
    return [a[1] * m23 - a[2] * m13 + a[3] * m12,
            a[2] * m03 - a[0] * m23 - a[3] * m02,
            a[0] * m13 - a[1] * m03 + a[3] * m01,
            a[1] * m02 - a[0] * m12 - a[2] * m01]


def _q(a, b):
    return 4 * a + b


def _rotation_from_quaternion_products() -> np.ndarray:
    """(9, 16) map from q qᵀ (row-major) to R (row-major) for a unit quaternion (q0 scalar)."""
    rows = [
        [(1, _q(0, 0)), (1, _q(1, 1)), (-1, _q(2, 2)), (-1, _q(3, 3))],
        [(2, _q(1, 2)), (-2, _q(0, 3))],
        [(2, _q(1, 3)), (2, _q(0, 2))],
        [(2, _q(1, 2)), (2, _q(0, 3))],
        [(1, _q(0, 0)), (-1, _q(1, 1)), (1, _q(2, 2)), (-1, _q(3, 3))],
        [(2, _q(2, 3)), (-2, _q(0, 1))],
        [(2, _q(1, 3)), (-2, _q(0, 2))],
        [(2, _q(2, 3)), (2, _q(0, 1))],
        [(1, _q(0, 0)), (-1, _q(1, 1)), (-1, _q(2, 2)), (1, _q(3, 3))],
    ]
    T = np.zeros((9, 16))
    for r, terms in enumerate(rows):
        for sign, k in terms:
            T[r, k] = sign
    return T


_T_R = _rotation_from_quaternion_products()


def svd_rotation(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R = P diag(1, 1, det(P Qᵀ)) Qᵀ from C = P Σ Qᵀ (Söderkvist & Wedin), batched, and Σ."""
    P, S, Qt = np.linalg.svd(C)
    d = np.sign(np.linalg.det(P) * np.linalg.det(Qt))
    d = np.where(d == 0, 1.0, d)
    ones = np.ones_like(d)
    return np.matmul(P * np.stack([ones, ones, d], axis=-1)[..., None, :], Qt), S


def optimal_rotation(C: np.ndarray, collinear_tol: float,
                     start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Proper rotations maximising tr(Rᵀ C), and a mask of rank-deficient (collinear) C.

    Parameters
    ----------
    C : (..., 3, 3) ndarray
        Cross-covariances C = Bᵀ W A (finite).
    collinear_tol : float
        C counts as collinear when σ2(C) ≤ collinear_tol · σ1(C) (also C = 0).
    start : (...) ndarray, optional
        Starting value for λ₁, ideally a tight upper bound such as ½ Σ wᵢ (‖aᵢ‖² + ‖bᵢ‖²)
        (equal to λ₁ for a perfect rigid fit, so Newton needs 1–2 steps). Default √3‖C‖_F.

    Returns
    -------
    R : (..., 3, 3) ndarray
    collinear : (...) ndarray of bool
        Evaluated by SVD on the rows that take the fallback; rows that pass the eigen-gap test
        have σ2 + sσ3 ≳ 1e-5 σ1 and hence σ2/σ1 far above any sensible `collinear_tol`.
    """
    batch = C.shape[:-2]
    c = np.ascontiguousarray(C.reshape(-1, 9).T)  # (9, m): row 3i+j = C_ij
    st = None if start is None else np.asarray(start, dtype=float).reshape(-1)
    r, collinear = optimal_rotation_soa(c, collinear_tol, st)
    return r.T.reshape(*batch, 3, 3), collinear.reshape(batch)


def optimal_rotation_soa(c: np.ndarray, collinear_tol: float,
                         start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`optimal_rotation` on "structure of arrays" data: c (9, m) → R (9, m), mask (m,).

    Row 3i + j of `c` (and of the result) holds entry (i, j) of every matrix; elementwise
    arithmetic on these contiguous (m,) rows is what makes the solver fast.
    """
    c00, c01, c02, c10, c11, c12, c20, c21, c22 = c
    m = c.shape[1]
    fro2 = (c * c).sum(axis=0)
    # cofactors of C: det C and ‖cof C‖² = Σ_{i<j} σi²σj² give the quartic's constant term
    k00, k01, k02 = c11 * c22 - c12 * c21, c10 * c22 - c12 * c20, c10 * c21 - c11 * c20
    k10, k11, k12 = c01 * c22 - c02 * c21, c00 * c22 - c02 * c20, c00 * c21 - c01 * c20
    k20, k21, k22 = c01 * c12 - c02 * c11, c00 * c12 - c02 * c10, c00 * c11 - c01 * c10
    detC = c00 * k00 - c01 * k01 + c02 * k02
    cof2 = (k00 * k00 + k01 * k01 + k02 * k02 + k10 * k10 + k11 * k11 + k12 * k12
            + k20 * k20 + k21 * k21 + k22 * k22)
    # Horn's N with S = Cᵀ = Σ w a bᵀ (S_ij = C_ji)
    n01, n02, n03 = c21 - c12, c02 - c20, c10 - c01
    n12, n13, n23 = c10 + c01, c02 + c20, c21 + c12
    N = [[c00 + c11 + c22, n01, n02, n03],
         [n01, c00 - c11 - c22, n12, n13],
         [n02, n12, c11 - c00 - c22, n23],
         [n03, n13, n23, c22 - c00 - c11]]
    # characteristic polynomial of the traceless N: λ⁴ + c2 λ² + c1 λ + c0. Its roots are
    # ±s1 ± s2 ± s3 (signed singular values, s1 s2 s3 = det C; even number of minus signs),
    # whence c2 = −2‖C‖², c1 = −8 det C and c0 = ‖C‖⁴ − 4‖cof C‖².
    c0 = fro2 * fro2 - 4.0 * cof2
    c1 = -8.0 * detC
    c2 = -2.0 * fro2
    lam = np.sqrt(3.0 * fro2)
    if start is not None:  # ½Σ(‖a‖² + ‖b‖²) ≥ λ₁; the margin absorbs its rounding error
        lam = np.minimum(lam, start * (1.0 + 1e-10))
    for _ in range(100):
        lam2 = lam * lam
        p = (lam2 + c2) * lam2 + c1 * lam + c0
        dp = (4.0 * lam2 + 2.0 * c2) * lam + c1
        step = np.divide(p, dp, out=np.zeros_like(p), where=dp > 0)
        lam -= step
        if not np.any(np.abs(step) > 4e-16 * lam):
            break
    dp = np.abs((4.0 * lam * lam + 2.0 * c2) * lam + c1)

    # Rows of adj(N − λI) = P'(λ) q qᵀ (up to sign): generalised cross products of three rows
    # of H = N − λI; the row of largest norm has |q_k| ≥ 1/2.
    H = [[N[i][j] - lam if i == j else N[i][j] for j in range(4)] for i in range(4)]
    h01, h23 = _minors(H[0], H[1]), _minors(H[2], H[3])
    # adj(H) is symmetric: its 10 distinct cofactors from Laplace expansions (row 0 along H1 with
    # minors of rows 2, 3; row 1 along H0; rows 2, 3 along H3, H2 with minors of rows 0, 1).
    a0 = _laplace(H[1], h23)
    m01, m02, m03, m12, m13, m23 = h23
    h0 = H[0]
    a11 = -(h0[2] * m03 - h0[0] * m23 - h0[3] * m02)
    a12 = -(h0[0] * m13 - h0[1] * m03 + h0[3] * m01)
    a13 = -(h0[1] * m02 - h0[0] * m12 - h0[2] * m01)
    m01, m02, m03, m12, m13, m23 = h01
    h3, h2 = H[3], H[2]
    a22 = h3[0] * m13 - h3[1] * m03 + h3[3] * m01
    a23 = h3[1] * m02 - h3[0] * m12 - h3[2] * m01
    a33 = -(h2[1] * m02 - h2[0] * m12 - h2[2] * m01)
    adj = np.array([a0, [a0[1], a11, a12, a13], [a0[2], a12, a22, a23],
                    [a0[3], a13, a23, a33]])  # (4, 4, m) = P'(λ) q qᵀ
    # row k has norm |P'(λ)| |q_k|: take the row with the largest |q_k| (≥ 1/2)
    k = np.argmax(np.abs(adj[[0, 1, 2, 3], [0, 1, 2, 3]]), axis=0)
    q = np.take_along_axis(adj, k[None, None, :], axis=0)[0]  # (4, m)
    qn = np.sqrt((q * q).sum(axis=0))
    q /= np.where(qn > 0, qn, 1.0)
    r = _T_R @ (q[:, None, :] * q[None, :, :]).reshape(16, m)  # (9, m)

    collinear = np.zeros(m, dtype=bool)
    ill = np.flatnonzero(~(dp > _GAP_TOL * np.maximum(lam, np.sqrt(fro2)) ** 3))
    if ill.size:
        Rb, S = svd_rotation(c[:, ill].T.reshape(-1, 3, 3))
        r[:, ill] = Rb.reshape(-1, 9).T
        collinear[ill] = S[:, 1] <= collinear_tol * S[:, 0]
    return r, collinear
