"""Rays to 3D points: closest point of lines, crossing-line error, correspondence between views.

The geometry follows DESIGN §3.2–3.3. Every calibrated view maps an image point to a ray (origin at
the X-ray focus, a direction); a bead seen in two views lies near both rays. Its 3D position is the
midpoint of the common perpendicular of the two rays and the length of that perpendicular is the
crossing-line error (CLE) of ISO 16087 [1]_, the standard per-bead quality measure of RSA [2]_.

All functions are vectorised over leading batch dimensions, work in float64 and in millimetres.
Missing beads are NaN rows (DESIGN §2): :func:`intersect_rays` returns NaN for them, and
:func:`closest_point_to_lines` gives them zero weight.

References
----------
.. [1] ISO 16087:2013, Implants for surgery — Roentgen stereophotogrammetric analysis for the
       assessment of migration of orthopaedic implants (crossing-line error, CLE).
.. [2] Valstar ER, Gill R, Ryd L, Flivik G, Börlin N, Kärrholm J. Guidelines for standardization of
       radiostereometry (RSA) of implants. Acta Orthop 2005;76(4):563–572.
.. [3] Hartley RI, Sturm P. Triangulation. Comput Vis Image Underst 1997;68(2):146–157
       (midpoint method).
.. [4] Hartley R, Zisserman A. Multiple View Geometry in Computer Vision, 2nd ed., 2004,
       §9.1 (epipolar geometry).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment

from rsa._validate import as_points, readonly
from rsa.errors import EstimationError, ShapeError

__all__ = [
    "RayMatch",
    "cle_matrix",
    "closest_point_to_lines",
    "intersect_rays",
    "match_rays",
    "triangulate_views",
]

#: Rays with ``1 − (d̂₁·d̂₂)² = sin²θ`` below this are treated as parallel (DESIGN §3.2).
PARALLEL_TOL = 1e-12


# --------------------------------------------------------------------------------------------
# Two rays: closed form
# --------------------------------------------------------------------------------------------
def _intersect_core(o1: np.ndarray, d1: np.ndarray, o2: np.ndarray, d2: np.ndarray,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Midpoint and CLE of broadcast-compatible float64 rays (no validation).

    Works with unnormalised directions: minimising ‖w + s d₁ − t d₂‖² (w = o₁ − o₂) gives
    s = (b e₂ − c e₁)/den, t = (a e₂ − b e₁)/den with a = d₁·d₁, b = d₁·d₂, c = d₂·d₂,
    e₁ = d₁·w, e₂ = d₂·w, den = a c − b². For unit directions this is exactly DESIGN §3.2; the
    parallel test ``den < tol·a·c`` is the normalised ``1 − b̂² < tol``. `den` is evaluated as
    ‖d₁ × d₂‖² (Lagrange's identity): a c − b² loses all but ~−log₁₀(eps/θ²) digits for rays at
    a small angle θ, the cross product keeps full relative precision.
    """
    shape = np.broadcast_shapes(o1.shape, d1.shape, o2.shape, d2.shape)
    w = np.subtract(o1, o2)
    if w.shape != shape:
        w = np.broadcast_to(w, shape)
    a = np.einsum("...i,...i->...", d1, d1)
    b = np.einsum("...i,...i->...", d1, d2)
    c = np.einsum("...i,...i->...", d2, d2)
    e1 = np.einsum("...i,...i->...", d1, w)
    e2 = np.einsum("...i,...i->...", d2, w)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        ac = a * c
        den = _cross_sq(d1, d2)  # = a c − b², without its cancellation for small angles
        # Near-parallel or zero-length directions: NaN instead of inf (comparisons with NaN are
        # False, so NaN input simply stays NaN).
        den = np.where((den < PARALLEL_TOL * ac) | (ac == 0.0), np.nan, den)
        s = b * e2
        s -= c * e1
        s /= den
        t = a * e2
        t -= b * e1
        t /= den
        p1 = s[..., None] * d1
        p1 += o1
        r = t[..., None] * d2
        r += o2
        np.subtract(p1, r, out=r)  # r = p1 − p2, the common perpendicular
        cle = np.sqrt(np.einsum("...i,...i->...", r, r))
        r *= 0.5
        p1 -= r  # midpoint
    bad = ~np.isfinite(cle)
    if bad.any():  # inf/NaN inputs or overflow: NaN, never inf
        cle = np.where(bad, np.nan, cle)
        p1 = np.where(bad[..., None], np.nan, p1)
    return p1, cle


def _cross_sq(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """‖u × v‖² along the last axis (component-wise, fewer temporaries than np.cross)."""
    ux, uy, uz = u[..., 0], u[..., 1], u[..., 2]
    vx, vy, vz = v[..., 0], v[..., 1], v[..., 2]
    nx = uy * vz
    nx -= uz * vy
    ny = uz * vx
    ny -= ux * vz
    nz = ux * vy
    nz -= uy * vx
    nx *= nx
    nx += ny * ny
    nx += nz * nz
    return nx


def _rays_args(o1: ArrayLike, d1: ArrayLike, o2: ArrayLike, d2: ArrayLike,
               ) -> tuple[np.ndarray, ...]:
    arrs = tuple(as_points(v, n, spec="(..., 3)")
                 for v, n in ((o1, "o1"), (d1, "d1"), (o2, "o2"), (d2, "d2")))
    try:
        np.broadcast_shapes(*(x.shape for x in arrs))
    except ValueError:
        got = ", ".join(str(x.shape) for x in arrs)
        raise ShapeError("Expected `o1`, `d1`, `o2`, `d2` to broadcast to one shape (..., 3), "
                         f"got {got}.") from None
    return arrs


def intersect_rays(o1: ArrayLike, d1: ArrayLike, o2: ArrayLike, d2: ArrayLike,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Triangulate pairs of rays: midpoint of the common perpendicular and crossing-line error.

    Parameters
    ----------
    o1, d1 : (..., 3) array_like
        Origin (e.g. the focus of view A) and direction of the first ray, mm. Directions need not
        be unit length.
    o2, d2 : (..., 3) array_like
        Same for the second ray. All four arrays broadcast against each other (a single focus
        ``(3,)`` may be given for all rays of a view).

    Returns
    -------
    points : (..., 3) ndarray
        Midpoint of the shortest segment joining the two lines, mm.
    cle_mm : (...) ndarray
        Crossing-line error: length of that segment (shortest distance between the lines), mm.

    Notes
    -----
    With unit directions, w = o₁ − o₂, b = d₁·d₂, e₁ = d₁·w, e₂ = d₂·w and den = 1 − b²: the
    closest points are o₁ + s d₁ and o₂ + t d₂ with s = (b e₂ − e₁)/den, t = (e₂ − b e₁)/den
    (DESIGN §3.2; the midpoint method of [2]_). The rays are treated as full lines (s or t may
    be negative).
    Near-parallel pairs (den < 1e-12, i.e. angle below 1 µrad), zero-length directions and rays
    with NaN or inf components give NaN point and NaN CLE, without RuntimeWarnings and never inf.

    References
    ----------
    .. [1] ISO 16087:2013, crossing-line error.
    .. [2] Hartley RI, Sturm P. Triangulation. Comput Vis Image Underst 1997;68(2):146–157
           (midpoint method).
    """
    return _intersect_core(*_rays_args(o1, d1, o2, d2))


def cle_matrix(o1: ArrayLike, d1: ArrayLike, o2: ArrayLike, d2: ArrayLike) -> np.ndarray:
    """Crossing-line error between every ray of view A and every ray of view B.

    Parameters
    ----------
    o1, d1 : (..., nA, 3) or (3,) array_like
        Origins and directions of the rays of view A, mm (origins may be one focus ``(3,)``).
    o2, d2 : (..., nB, 3) or (3,) array_like
        Same for view B.

    Returns
    -------
    cle_mm : (..., nA, nB) ndarray
        ``cle_mm[..., i, j]`` is the CLE of ray i of A with ray j of B (NaN for NaN rays or
        near-parallel pairs).
    """
    return _pairwise(o1, d1, o2, d2)[1]


def _pairwise(o1: ArrayLike, d1: ArrayLike, o2: ArrayLike, d2: ArrayLike,
              ) -> tuple[np.ndarray, np.ndarray]:
    o1, d1, o2, d2 = (as_points(v, n, spec="(..., N, 3)")
                      for v, n in ((o1, "o1"), (d1, "d1"), (o2, "o2"), (d2, "d2")))
    for d, n in ((d1, "d1"), (d2, "d2")):
        if d.ndim < 2:
            raise ShapeError(f"Expected `{n}` to have shape (..., N, 3), got {d.shape}.")
    for o, d, no, nd in ((o1, d1, "o1", "d1"), (o2, d2, "o2", "d2")):
        if o.ndim >= 2 and o.shape[-2] not in (1, d.shape[-2]):
            raise ShapeError(f"Expected `{no}` to have shape (3,) or (..., N, 3) with N = "
                             f"{d.shape[-2]} as in `{nd}`, got {o.shape}.")
    o1 = o1[..., :, None, :] if o1.ndim >= 2 else o1
    o2 = o2[..., None, :, :] if o2.ndim >= 2 else o2
    try:
        return _intersect_core(o1, d1[..., :, None, :], o2, d2[..., None, :, :])
    except ValueError:
        raise ShapeError(f"Expected the batch dimensions of `d1` {d1.shape} and `d2` {d2.shape} "
                         "to broadcast.") from None


# --------------------------------------------------------------------------------------------
# K lines: least squares
# --------------------------------------------------------------------------------------------
def _lines_args(origins: ArrayLike, directions: ArrayLike, weights: ArrayLike | None,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate and normalise; return (origins, unit directions, weights, missing) broadcast.

    Missing lines (NaN origin or direction) get weight 0 and zero origin/direction.
    """
    o = as_points(origins, "origins", min_ndim=2, spec="(..., K, 3)")
    d = as_points(directions, "directions", min_ndim=2, spec="(..., K, 3)")
    if o.shape[-2] != d.shape[-2]:
        raise ShapeError(f"Expected `origins` and `directions` to have the same number of lines "
                         f"K, got {o.shape} and {d.shape}.")
    try:
        shape = np.broadcast_shapes(o.shape, d.shape)
    except ValueError:
        raise ShapeError(f"Expected `origins` {o.shape} and `directions` {d.shape} to have "
                         "broadcastable batch dimensions.") from None
    if weights is None:
        w = np.ones(shape[:-1])
    else:
        w = np.asarray(weights, dtype=np.float64)
        try:
            w = np.broadcast_to(w, shape[:-1]).copy()
        except ValueError:
            raise ShapeError(f"Expected `weights` to have shape {shape[:-1]} (..., K), "
                             f"got {w.shape}.") from None
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ShapeError("Expected `weights` to be finite and non-negative.")
    if np.isinf(o).any() or np.isinf(d).any():
        raise ShapeError("Expected `origins` and `directions` to be finite or NaN (missing), "
                         "found inf.")
    o = np.broadcast_to(o, shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.sqrt(np.einsum("...i,...i->...", d, d))
        missing = ~(np.isfinite(o).all(-1) & np.isfinite(norm))
        if np.any((norm == 0) & ~missing):
            raise ShapeError("Expected `directions` to be non-zero vectors.")
        d = np.broadcast_to(d / norm[..., None], shape)
    if missing.any():
        w[missing] = 0.0
        o = np.where(missing[..., None], 0.0, o)
        d = np.where(missing[..., None], 0.0, d)
    return o, d, w, missing


def _lines_solve(o: np.ndarray, d: np.ndarray, w: np.ndarray,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Solve the normal equations; return (point, degenerate mask) with NaN where degenerate.

    A = Σ w (I − d dᵀ) has eigenvalues in [0, W] summing to 2W (W = Σ w), so det A / W³ is within
    a factor of the smallest normalised eigenvalue; 4 det A / W³ equals sin²θ for two equally
    weighted lines at angle θ, the same scale as the two-ray test of :func:`intersect_rays`.
    """
    W = w.sum(-1)
    wd = w[..., None] * d
    A = -np.einsum("...ki,...kj->...ij", wd, d)
    A[..., [0, 1, 2], [0, 1, 2]] += W[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        crit = 4.0 * np.linalg.det(A) / W**3
        # Work relative to the weighted centroid c of the origins (better conditioned when the
        # lines are far from the coordinate origin): A (X − c) = Σ w (I − d dᵀ)(o − c), and
        # Σ w (o − c) = 0 leaves b = −Σ w d (d·(o − c)).
        c = np.einsum("...k,...ki->...i", w, o) / W[..., None]
    degenerate = ~(crit >= PARALLEL_TOL)  # also W == 0 (NaN) and < 2 valid lines (crit = 0)
    c[degenerate] = 0.0
    oc = o - c[..., None, :]
    b = -np.einsum("...ki,...k->...i", wd, np.einsum("...ki,...ki->...k", d, oc))
    if degenerate.any():
        A[degenerate] = np.eye(3)
        b[degenerate] = np.nan
    x = np.linalg.solve(A, b[..., None])[..., 0]
    x += c
    return x, degenerate


def _line_distances(x: np.ndarray, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Distance (..., K) from points x (..., 3) to lines (o, unit d) (..., K, 3)."""
    v = x[..., None, :] - o
    v -= np.einsum("...i,...i->...", v, d)[..., None] * d
    return np.sqrt(np.einsum("...i,...i->...", v, v))


def closest_point_to_lines(origins: ArrayLike, directions: ArrayLike, *,
                           weights: ArrayLike | None = None, return_residuals: bool = False,
                           ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Least-squares point nearest to K lines, batched.

    Parameters
    ----------
    origins : (..., K, 3) array_like
        A point on each line, mm (e.g. a control marker of the cage, or a focus).
    directions : (..., K, 3) array_like
        Line directions; need not be unit length (they are normalised). Batch dimensions of
        `origins` and `directions` broadcast; K must be equal.
    weights : (..., K) array_like, optional
        Non-negative weight of each line (default 1); only relative weights matter, a weight
        of n acts like the line repeated n times. Lines with a NaN origin or direction are
        missing and get weight 0 (their residual is NaN); a finite line given weight 0 does not
        influence the point but still gets its residual.
    return_residuals : bool, optional
        Also return the distance of the solution to each line.

    Returns
    -------
    point : (..., 3) ndarray
        Minimiser of Σ w_k ‖(I − d_k d_kᵀ)(X − o_k)‖², i.e. the solution of
        [Σ w (I − d dᵀ)] X = Σ w (I − d dᵀ) o (DESIGN §3.2).
    residuals_mm : (..., K) ndarray
        Only if `return_residuals`: distance of `point` to each line (NaN for missing lines).
        For the focus of a calibration this is the per-marker focus residual.

    Raises
    ------
    ShapeError
        Wrong shapes, mismatched K, inf values, zero directions, negative or non-finite weights.
    EstimationError
        If for some batch entry fewer than two lines have positive weight or the weighted lines
        are (nearly) parallel (4 det A / W³ < 1e-12, W = Σw, which is sin²θ for two equally
        weighted lines at angle θ); the message names the first such batch index.

    Notes
    -----
    For K = 2 equally weighted lines the solution is the midpoint of the common perpendicular,
    identical to :func:`intersect_rays`, and both residuals equal CLE/2.

    References
    ----------
    .. [1] Hartley RI, Sturm P. Triangulation. Comput Vis Image Underst 1997;68(2):146–157.
    .. [2] Börlin N. Comparison of resection–intersection algorithms and projection geometries
           in radiostereometry. ISPRS J Photogramm Remote Sens 2002;56:390–400.
    """
    o, d, w, missing = _lines_args(origins, directions, weights)
    x, degenerate = _lines_solve(o, d, w)
    if degenerate.any():
        idx = np.argwhere(degenerate)[0]
        n_valid = int(np.count_nonzero(w[tuple(idx)] > 0))
        where = f" at batch index {tuple(int(i) for i in idx)}" if idx.size else ""
        why = (f"fewer than 2 valid lines ({n_valid})" if n_valid < 2
               else "the lines are (nearly) parallel")
        raise EstimationError(f"Cannot find the closest point to the lines{where}: {why}; "
                              f"{int(degenerate.sum())} of {degenerate.size} batch entries are "
                              "degenerate.")
    if not return_residuals:
        return x
    res = _line_distances(x, o, d)
    res[missing] = np.nan
    return x, res


def triangulate_views(origins: ArrayLike, directions: ArrayLike, *,
                      weights: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Triangulate beads seen in K ≥ 2 views; tolerant of missing views.

    Parameters
    ----------
    origins, directions : (..., K, 3) array_like
        Ray of each of the K views (e.g. shape (N, K, 3) for N beads); NaN rays are missing.
    weights : (..., K) array_like, optional
        Per-view weights (default 1).

    Returns
    -------
    points : (..., 3) ndarray
        Least-squares point (:func:`closest_point_to_lines`); NaN where fewer than two valid,
        non-parallel rays exist (instead of raising).
    rms_mm : (...) ndarray
        Root-mean-square distance of the point to its valid rays, the multi-view generalisation
        of the CLE: for K = 2 it equals CLE / 2.
    """
    o, d, w, _ = _lines_args(origins, directions, weights)
    x, degenerate = _lines_solve(o, d, w)
    res = _line_distances(x, o, d)
    valid = w > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        rms = np.sqrt(np.where(valid, res * res, 0.0).sum(-1) / valid.sum(-1))
    x[degenerate] = np.nan
    return x, np.where(degenerate, np.nan, rms)


# --------------------------------------------------------------------------------------------
# Correspondence
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class RayMatch:
    """One-to-one correspondence of the rays of two views (result of :func:`match_rays`).

    Attributes
    ----------
    pairs : (M, 2) ndarray of int
        ``(i, j)``: ray i of view A matched to ray j of view B, sorted by i.
    cle_mm : (M,) ndarray
        Crossing-line error of each matched pair, mm (≤ `gate_mm`).
    points_mm : (M, 3) ndarray
        Triangulated bead positions (midpoint of the common perpendicular), mm.
    ambiguous : (M,) ndarray of bool
        True if another ray of either view also lies within the gate of the pair's partner.
    alternatives : (K, 2) ndarray of int
        The competing candidate pairs ``(i', j)`` or ``(i, j')`` within the gate (unique rows,
        not themselves in `pairs`), for resolution by the marker-model match (DESIGN §3.4).
    alternatives_cle_mm : (K,) ndarray
        CLE of each alternative pair, mm.
    gate_mm : float
        The gate used.
    likely : (M,) ndarray of bool
        With ray uncertainties: the pair's CLE is more likely for one bead than for unrelated
        rays (first pass); False for pairs made afterwards among the remaining rays within the
        gate. All True without uncertainties.
    """

    pairs: np.ndarray
    cle_mm: np.ndarray
    points_mm: np.ndarray
    ambiguous: np.ndarray
    alternatives: np.ndarray
    alternatives_cle_mm: np.ndarray
    gate_mm: float
    likely: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.likely is None:
            object.__setattr__(self, "likely", np.ones(len(self.pairs), bool))
        for name in ("pairs", "cle_mm", "points_mm", "ambiguous", "alternatives",
                     "alternatives_cle_mm", "likely"):
            object.__setattr__(self, name, readonly(np.asarray(getattr(self, name))))

    def __len__(self) -> int:
        return int(self.pairs.shape[0])


def match_rays(o1: ArrayLike, d1: ArrayLike, o2: ArrayLike, d2: ArrayLike, *,
               gate_mm: float = 0.5,
               sigma_mm: tuple[ArrayLike, ArrayLike] | None = None) -> RayMatch:
    """Optimal one-to-one correspondence between the rays of two views by crossing-line error.

    Parameters
    ----------
    o1, d1 : (nA, 3) array_like
        Origins (or one focus, ``(3,)``) and directions of the rays of view A, mm. NaN rays
        (missing beads) are never matched.
    o2, d2 : (nB, 3) array_like
        Same for view B.
    gate_mm : float, optional
        Largest CLE for which two rays may be paired (default 0.5 mm, the project default of
        DESIGN §3.3; it should exceed the CLE of true pairs, which is set by calibration and
        bead-centre errors). Pairs above it are never assigned.
    sigma_mm : (nA,) and (nB,) array_like, optional
        Standard uncertainty of each ray's position at the beads (mm, across the ray: the
        bead-centre uncertainty and the calibration's share). With it, a pair is made only
        when its CLE is more likely for one bead seen twice — Gaussian CLE of scale
        ``√(σ₁² + σ₂²)`` — than for two unrelated rays, whose CLE is taken as uniform over
        the gate; pairs are chosen to maximise the total log-likelihood ratio. A detection
        known to be poor (large σ) can then pair only within its own uncertainty, and a
        precise one is not given up for it. The rays left over are then paired within the
        gate as without σ (a bead whose centre error exceeds its σ, e.g. a bias next to an
        edge, is not lost); :attr:`RayMatch.likely` tells the two kinds apart.

    Returns
    -------
    RayMatch
        Matched index pairs, their CLE and 3D points, and the ambiguous candidates.

    Notes
    -----
    Global nearest-neighbour association: the pairing minimises the sum of squared CLE over
    the pairs plus ``gate²/2`` for every ray left unmatched (the negative log-likelihood of
    Gaussian crossing-line errors against clutter spread over the gate), solved exactly as one
    augmented assignment problem with :func:`scipy.optimize.linear_sum_assignment`. A pair is
    therefore made only when its CLE is below the gate, and breaking up a clean pair to make
    room for pairs of clutter costs their squared CLE: it happens only for clutter crossing
    both freed rays well inside the gate (2·CLE² < gate²). The earlier rule, the largest number
    of admissible pairs, swapped two beads of one epipolar plane whenever that let a spurious
    detection pair up as well. Rays seen in one view only stay unmatched.

    Two beads lying in the same epipolar plane (the plane through both foci) project to rays
    that are all coplanar, so the wrong pairings also have CLE ≈ 0 ([1]_ §9.1). Such
    correspondences cannot be decided from two views; they are flagged in `ambiguous` with their
    competing pairs in `alternatives`.

    References
    ----------
    .. [1] Hartley R, Zisserman A. Multiple View Geometry in Computer Vision, 2nd ed., 2004,
           §9.1 (epipolar geometry).
    """
    try:
        gate = float(gate_mm)
    except (TypeError, ValueError):
        gate = np.nan
    if not np.isfinite(gate) or gate < 0:
        raise ShapeError(f"Expected `gate_mm` to be a finite non-negative number, got {gate_mm}.")
    for v, n, ndims in ((o1, "o1", (1, 2)), (d1, "d1", (2,)), (o2, "o2", (1, 2)),
                        (d2, "d2", (2,))):
        if np.ndim(v) not in ndims:
            raise ShapeError(f"Expected `{n}` to have shape (N, 3), got {np.shape(v)}.")
    points, cle = _pairwise(o1, d1, o2, d2)
    ok = cle <= gate  # NaN -> False
    nll = None
    if sigma_mm is not None:
        s1, s2 = (np.asarray(s_, dtype=float) for s_ in sigma_mm)
        if (s1.shape != (cle.shape[0],) or s2.shape != (cle.shape[1],)
                or not (np.all(s1 > 0) and np.all(s2 > 0))):
            raise ShapeError(f"Expected `sigma_mm` to be two arrays of positive σ of shapes "
                             f"({cle.shape[0]},) and ({cle.shape[1]},), got "
                             f"{s1.shape} and {s2.shape}.")
        with np.errstate(invalid="ignore"):
            nll = pair_nll(cle, s1[:, None] ** 2 + s2[None, :] ** 2, gate)
    g2 = max(gate, 1e-12) ** 2
    if nll is None:
        pairs = _assign(ok, cle ** 2, 0.5 * g2)
        likely = np.ones(len(pairs), bool)
    else:
        first = _assign(ok & (nll < 0.0), nll, 0.0)
        # the remaining rays may still pair within the gate (a bead whose centre error exceeds
        # its σ, e.g. a bias next to an edge), without touching the likely pairs
        rest = ok.copy()
        rest[first[:, 0], :] = False
        rest[:, first[:, 1]] = False
        second = _assign(rest, cle ** 2, 0.5 * g2)
        pairs = np.concatenate([first, second])
        likely = np.arange(len(pairs)) < len(first)
        order = np.argsort(pairs[:, 0], kind="stable")
        pairs, likely = pairs[order], likely[order]
    i, j = pairs[:, 0], pairs[:, 1]
    # Competitors: other admissible entries in the matched rows and columns.
    comp = np.zeros_like(ok)
    comp[i] |= ok[i]
    comp[:, j] |= ok[:, j]
    comp[i, j] = False
    ambiguous = ok[i].sum(1) + ok[:, j].sum(0) > 2
    alt = np.argwhere(comp).astype(np.intp)
    return RayMatch(pairs=pairs, cle_mm=cle[i, j], points_mm=points[i, j], ambiguous=ambiguous,
                    alternatives=alt, alternatives_cle_mm=cle[alt[:, 0], alt[:, 1]],
                    gate_mm=gate, likely=likely)


def pair_nll(cle: np.ndarray, var: np.ndarray, gate: float) -> np.ndarray:
    """−log(likelihood ratio) of a ray pair: one bead seen twice (half-normal crossing-line
    error of variance ``var``, the sum of the rays' σ²) against unrelated rays (CLE uniform on
    [0, ``gate``]). Below 0 the pair is likely (:attr:`RayMatch.likely`)."""
    return 0.5 * cle ** 2 / var + np.log(np.sqrt(0.5 * np.pi * var) / max(gate, 1e-12))


def _assign(ok: np.ndarray, pair_cost: np.ndarray, miss: float) -> np.ndarray:
    """Least-cost one-to-one pairs among the admissible entries ``ok`` (nA, nB), each ray
    unmatched at cost ``miss`` (one augmented assignment problem). Returns (M, 2) sorted."""
    rows = np.flatnonzero(ok.any(1))
    cols = np.flatnonzero(ok.any(0))
    if not (rows.size and cols.size):
        return np.zeros((0, 2), dtype=np.intp)
    sub_ok = ok[np.ix_(rows, cols)]
    sub = pair_cost[np.ix_(rows, cols)]
    n, m = rows.size, cols.size
    big = 2.0 * (float(np.abs(np.where(sub_ok, sub, 0.0)).sum()) + (n + m) * abs(miss)) + 1.0
    cost = np.full((n + m, m + n), big)
    cost[:n, :m] = np.where(sub_ok, sub, big)
    cost[np.arange(n), m + np.arange(n)] = miss
    cost[n + np.arange(m), np.arange(m)] = miss
    cost[n:, m:] = 0.0
    r, c = linear_sum_assignment(cost)
    sel = (r < n) & (c < m)
    r, c = r[sel], c[sel]
    keep = sub_ok[r, c]
    return np.column_stack([rows[r[keep]], cols[c[keep]]]).astype(np.intp)
