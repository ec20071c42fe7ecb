"""Exact chord lengths of straight lines through spheres and capsules (vectorised).

A *chord* is the length of the intersection of a line with a solid. Beer–Lambert attenuation of an
X-ray along a ray through a homogeneous solid is ``exp(-μ · chord)``. The lines here are infinite;
the simulator only uses them for solids that lie entirely between the focus and the detector, where
the line and the ray segment focus→pixel have the same intersection.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from rsa._validate import as_points, check_finite
from rsa.errors import ShapeError


def _unit(d: np.ndarray, name: str) -> np.ndarray:
    n = np.linalg.norm(d, axis=-1, keepdims=True)
    if np.any(n == 0):
        raise ShapeError(f"Expected `{name}` to be non-zero vectors.")
    return d / n


def sphere_chords(origins: ArrayLike, directions: ArrayLike, centres_mm: ArrayLike,
                  radii_mm: ArrayLike) -> np.ndarray:
    """Chord length of lines through spheres, broadcast over all leading dimensions.

    Parameters
    ----------
    origins, directions : (..., 3) array_like
        A point on each line and its direction (need not be unit length), mm.
    centres_mm : (..., 3) array_like
        Sphere centres, broadcast against the lines.
    radii_mm : (...) array_like
        Sphere radii (≥ 0), broadcast against the lines.

    Returns
    -------
    chord_mm : (...) ndarray
        ``2·sqrt(r² − δ²)`` where δ is the distance from the centre to the line, 0 if δ ≥ r.
    """
    o = as_points(origins, "origins")
    d = _unit(as_points(directions, "directions"), "directions")
    c = as_points(centres_mm, "centres_mm")
    r = np.asarray(radii_mm, dtype=float)
    for arr, name in ((o, "origins"), (d, "directions"), (c, "centres_mm"), (r, "radii_mm")):
        check_finite(arr, name)
    if np.any(r < 0):
        raise ShapeError("Expected `radii_mm` to be non-negative.")
    q = c - o
    t = np.sum(q * d, axis=-1)
    dist2 = np.sum(q * q, axis=-1) - t * t
    return 2.0 * np.sqrt(np.maximum(r * r - dist2, 0.0))


def capsule_chords(origins: ArrayLike, directions: ArrayLike, p0_mm: ArrayLike, p1_mm: ArrayLike,
                   radius_mm: float) -> np.ndarray:
    """Chord length of lines through one capsule (segment ``p0–p1`` swept by a sphere).

    The capsule is the union of a finite cylinder (axis ``p0–p1``, radius ``radius_mm``) and two
    spheres at the end points. Because the capsule is convex, its intersection with a line is one
    interval, the union of the (possibly empty) intervals of its three parts; the chord is the
    length of that union.

    Parameters
    ----------
    origins, directions : (..., 3) array_like
        A point on each line and its direction (need not be unit length), mm.
    p0_mm, p1_mm : (3,) array_like
        End points of the capsule axis (may coincide: the capsule is then a sphere).
    radius_mm : float
        Capsule radius (> 0).

    Returns
    -------
    chord_mm : (...) ndarray
        Length of the line inside the capsule, mm.
    """
    o = as_points(origins, "origins")
    d = _unit(as_points(directions, "directions"), "directions")
    p0 = as_points(p0_mm, "p0_mm", spec="(3,)")
    p1 = as_points(p1_mm, "p1_mm", spec="(3,)")
    if p0.shape != (3,) or p1.shape != (3,):
        raise ShapeError(f"Expected `p0_mm`, `p1_mm` to have shape (3,), got {p0.shape}, "
                         f"{p1.shape}.")
    r = float(radius_mm)
    for arr, name in ((o, "origins"), (d, "directions"), (p0, "p0_mm"), (p1, "p1_mm")):
        check_finite(arr, name)
    if not np.isfinite(r) or r <= 0:
        raise ShapeError(f"Expected `radius_mm` to be positive and finite, got {radius_mm}.")
    return _capsule_chords(o, d, p0, p1, r)


def _dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...i->...", x, y)


def _capsule_chords(o: np.ndarray, d: np.ndarray, p0: np.ndarray, p1: np.ndarray,
                    r: float) -> np.ndarray:
    """Trusted-input core of :func:`capsule_chords` (``d`` unit; ``o`` may be one point (3,))."""
    starts, ends = [], []
    for c in (p0, p1):  # the two end spheres
        q = c - o
        t = _dot(d, q)
        disc = r * r - (_dot(q, q) - t * t)
        h = np.sqrt(np.maximum(disc, 0.0))
        ok = disc > 0
        starts.append(np.where(ok, t - h, np.inf))
        ends.append(np.where(ok, t + h, -np.inf))
    axis = p1 - p0
    length = float(np.linalg.norm(axis))
    if length > 0:  # the finite cylinder
        a = axis / length
        w = o - p0
        da = d @ a
        wa = w @ a
        wp = w - wa[..., None] * a  # component of w perpendicular to the axis
        A = 1.0 - da * da  # |d⊥|² for unit d
        B = 2.0 * _dot(wp, d)  # 2 w⊥·d⊥ (w⊥ ⟂ a)
        C = _dot(wp, wp) - r * r
        par = A < 1e-14  # line parallel to the axis
        As = np.where(par, 1.0, A)
        disc = B * B - 4.0 * As * C
        sq = np.sqrt(np.maximum(disc, 0.0))
        t1 = np.where(par, -np.inf, (-B - sq) / (2.0 * As))
        t2 = np.where(par, np.inf, (-B + sq) / (2.0 * As))
        hit = np.where(par, C < 0, disc > 0)
        slanted = np.abs(da) > 1e-14
        das = np.where(slanted, da, 1.0)
        s0, s1 = -wa / das, (length - wa) / das
        inside = (wa >= 0) & (wa <= length)
        lo = np.where(slanted, np.minimum(s0, s1), np.where(inside, -np.inf, np.inf))
        hi = np.where(slanted, np.maximum(s0, s1), np.where(inside, np.inf, -np.inf))
        c_lo, c_hi = np.maximum(t1, lo), np.minimum(t2, hi)
        ok = hit & (c_lo < c_hi)
        starts.append(np.where(ok, c_lo, np.inf))
        ends.append(np.where(ok, c_hi, -np.inf))
    t_in, t_out = starts[0], ends[0]
    for lo_, hi_ in zip(starts[1:], ends[1:], strict=True):
        t_in, t_out = np.minimum(t_in, lo_), np.maximum(t_out, hi_)
    with np.errstate(invalid="ignore"):
        return np.where(t_out > t_in, t_out - t_in, 0.0)
