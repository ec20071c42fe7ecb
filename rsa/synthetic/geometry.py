"""Exact geometry of a simulated X-ray view: point focus and flat detector (pinhole model).

Pixel convention (DESIGN §2): ``u`` = column, ``v`` = row, origin at the centre of the top-left
pixel. A detector is described by the lab position of that pixel centre (``origin_mm``), unit
vectors along increasing ``u`` and ``v`` (``u_axis``, ``v_axis``, orthonormal) and the pixel
spacing. The detector normal ``u_axis × v_axis`` is oriented however the axes imply; projection
does not depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from rsa._validate import as_points, readonly
from rsa.errors import ShapeError


@dataclass(frozen=True, eq=False)
class DetectorView:
    """One X-ray view: focus and flat detector, all in lab (cage) coordinates, mm.

    Parameters
    ----------
    focus_mm : (3,) array_like
        Position of the X-ray focal spot.
    origin_mm : (3,) array_like
        Lab position of the centre of pixel (u=0, v=0).
    u_axis, v_axis : (3,) array_like
        Directions of increasing column and row; normalised and checked orthogonal.
    pixel_spacing_mm : (2,) array_like
        Spacing along u (columns) and v (rows).
    shape : (int, int)
        Image size as (rows, columns).
    name : str
        View name (e.g. ``"A"``).
    """

    focus_mm: np.ndarray
    origin_mm: np.ndarray
    u_axis: np.ndarray
    v_axis: np.ndarray
    pixel_spacing_mm: np.ndarray
    shape: tuple[int, int]
    name: str = "A"
    normal: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        f = as_points(self.focus_mm, "focus_mm", spec="(3,)")
        o = as_points(self.origin_mm, "origin_mm", spec="(3,)")
        u = as_points(self.u_axis, "u_axis", spec="(3,)")
        v = as_points(self.v_axis, "v_axis", spec="(3,)")
        sp = as_points(self.pixel_spacing_mm, "pixel_spacing_mm", last=2, spec="(2,)")
        if f.ndim != 1 or o.ndim != 1 or u.ndim != 1 or v.ndim != 1 or sp.ndim != 1:
            raise ShapeError("Expected DetectorView vectors to be 1-D.")
        u = u / np.linalg.norm(u)
        v = v / np.linalg.norm(v)
        if abs(u @ v) > 1e-9:
            raise ShapeError(f"Expected `u_axis` ⟂ `v_axis`, got u·v = {u @ v:.3g}.")
        if np.any(sp <= 0):
            raise ShapeError(f"Expected positive `pixel_spacing_mm`, got {sp}.")
        n = np.cross(u, v)
        if abs(n @ (o - f)) < 1e-6:
            raise ShapeError("The focus lies in the detector plane.")
        for name, val in (("focus_mm", f), ("origin_mm", o), ("u_axis", u), ("v_axis", v),
                          ("pixel_spacing_mm", sp), ("normal", n)):
            object.__setattr__(self, name, readonly(val))
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))

    # -- mappings ---------------------------------------------------------------------------
    def detector_point(self, uv_px: ArrayLike) -> np.ndarray:
        """Lab position (..., 3) of image points ``uv_px`` (..., 2) on the detector plane."""
        uv = as_points(uv_px, "uv_px", last=2, spec="(..., 2)")
        return (self.origin_mm + uv[..., :1] * self.pixel_spacing_mm[0] * self.u_axis
                + uv[..., 1:2] * self.pixel_spacing_mm[1] * self.v_axis)

    def rays(self, uv_px: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Rays (origins at the focus, unit directions) through image points ``uv_px``."""
        p = self.detector_point(uv_px)
        d = p - self.focus_mm
        d = d / np.linalg.norm(d, axis=-1, keepdims=True)
        return np.broadcast_to(self.focus_mm, d.shape).copy(), d

    def project(self, xyz_mm: ArrayLike) -> np.ndarray:
        """Central projection of lab points (..., 3) to image points (..., 2) in px."""
        x = as_points(xyz_mm, "xyz_mm")
        d = x - self.focus_mm
        s = ((self.origin_mm - self.focus_mm) @ self.normal) / (d @ self.normal)
        p = self.focus_mm + s[..., None] * d - self.origin_mm
        return np.stack([p @ self.u_axis / self.pixel_spacing_mm[0],
                         p @ self.v_axis / self.pixel_spacing_mm[1]], axis=-1)

    def projection_matrix(self) -> np.ndarray:
        """3×4 matrix P with ``[u, v, 1]ᵀ ∝ P [x, y, z, 1]ᵀ`` (for comparison with a DLT)."""
        # Image point -> detector point is affine: X = O + u su eu + v sv ev = A [u, v, 1]^T.
        A = np.column_stack([self.pixel_spacing_mm[0] * self.u_axis,
                             self.pixel_spacing_mm[1] * self.v_axis,
                             self.origin_mm - self.focus_mm])
        M = np.linalg.inv(A)  # maps (X - F) to a multiple of [u, v, 1]
        return np.hstack([M, -(M @ self.focus_mm)[:, None]])

    def magnification(self, xyz_mm: ArrayLike) -> np.ndarray:
        """Geometric magnification (focus–detector / focus–point distance along the normal)."""
        x = as_points(xyz_mm, "xyz_mm")
        fd = (self.origin_mm - self.focus_mm) @ self.normal
        return fd / ((x - self.focus_mm) @ self.normal)


def look_at_view(*, focus_mm: ArrayLike, detector_centre_mm: ArrayLike, up: ArrayLike,
                 pixel_spacing_mm: float | tuple[float, float], shape: tuple[int, int],
                 detector_normal: ArrayLike | None = None, name: str = "A") -> DetectorView:
    """Build a view from a focus, a detector centre and an 'up' hint (image −v direction).

    The detector plane passes through ``detector_centre_mm`` with normal ``detector_normal``
    (default: along the central ray from focus to centre, i.e. a detector facing its tube).
    ``u`` increases to the right when looking from the focus at the detector, ``v`` downward.
    """
    f = np.asarray(focus_mm, float)
    c = np.asarray(detector_centre_mm, float)
    n = np.asarray(detector_normal, float) if detector_normal is not None else c - f
    n = n / np.linalg.norm(n)
    if np.dot(n, c - f) < 0:
        n = -n
    up_v = np.asarray(up, float)
    v_axis = -(up_v - (up_v @ n) * n)
    if np.linalg.norm(v_axis) < 1e-9:
        raise ShapeError("`up` must not be parallel to the detector normal.")
    v_axis /= np.linalg.norm(v_axis)
    u_axis = np.cross(v_axis, n)  # right-handed (u, v, n): looking along n, u right, v down
    sp = np.broadcast_to(np.asarray(pixel_spacing_mm, float), (2,))
    rows, cols = shape
    origin = c - (cols - 1) / 2 * sp[0] * u_axis - (rows - 1) / 2 * sp[1] * v_axis
    return DetectorView(focus_mm=f, origin_mm=origin, u_axis=u_axis, v_axis=v_axis,
                        pixel_spacing_mm=sp, shape=(rows, cols), name=name)
