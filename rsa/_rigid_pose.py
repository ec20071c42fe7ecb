"""Rigid transformation object shared by :mod:`rsa.rigid` and :mod:`rsa.motion`.

Import it as ``rsa.rigid.Pose``; this private module only keeps ``rigid.py`` short.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from rsa._validate import as_points, readonly
from rsa.errors import ShapeError

#: Largest deviation of RᵀR from I accepted for a user-supplied rotation (det must be +1).
_ORTHO_TOL = 1e-6


@dataclass(frozen=True, eq=False)
class Pose:
    """Rigid transformation ``y = R x + t``, batched over leading dimensions.

    Parameters
    ----------
    rotation : (..., 3, 3) array_like
        Proper rotation matrices (orthonormal, det +1; checked to 1e-6).
    translation : (..., 3) array_like
        Translations in mm. Batch shapes of `rotation` and `translation` must broadcast.

    Notes
    -----
    Modelled on ``scipy.spatial.transform.Rotation``: immutable, batched, with
    :meth:`apply`, :meth:`inv`, :meth:`compose` (also ``a @ b``), :meth:`as_matrix` and
    :meth:`from_matrix` (4×4 homogeneous matrices).
    """

    rotation: np.ndarray
    translation: np.ndarray

    def __post_init__(self) -> None:
        R = as_points(self.rotation, "rotation", min_ndim=2, spec="(..., 3, 3)")
        t = as_points(self.translation, "translation", spec="(..., 3)")
        if R.shape[-2] != 3:
            raise ShapeError(f"Expected `rotation` to have shape (..., 3, 3), got {R.shape}.")
        try:
            batch = np.broadcast_shapes(R.shape[:-2], t.shape[:-1])
        except ValueError:
            raise ShapeError(
                f"Expected `rotation` (..., 3, 3) and `translation` (..., 3) with broadcastable "
                f"batch shapes, got {R.shape} and {t.shape}."
            ) from None
        if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
            raise ShapeError(
                "Expected `rotation` and `translation` to be finite, found NaN or inf."
            )
        err = np.abs(np.einsum("...ki,...kj->...ij", R, R) - np.eye(3)).max(initial=0.0)
        if err > _ORTHO_TOL or np.any(np.linalg.det(R) < 0):
            raise ShapeError(
                "Expected `rotation` to hold proper rotation matrices (RᵀR = I, det R = +1), "
                f"max |RᵀR − I| = {err:.3g}."
            )
        object.__setattr__(self, "rotation", readonly(np.broadcast_to(R, (*batch, 3, 3)).copy()))
        object.__setattr__(self, "translation", readonly(np.broadcast_to(t, (*batch, 3)).copy()))

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch shape ``(...)``."""
        return self.translation.shape[:-1]

    @classmethod
    def identity(cls, shape: tuple[int, ...] = ()) -> Pose:
        """Identity pose(s) of batch shape `shape`."""
        return cls(np.broadcast_to(np.eye(3), (*shape, 3, 3)), np.zeros((*shape, 3)))

    @classmethod
    def from_matrix(cls, matrix: ArrayLike) -> Pose:
        """Pose from homogeneous matrices ``(..., 4, 4)`` ``[[R, t], [0, 0, 0, 1]]``."""
        m = as_points(matrix, "matrix", last=4, min_ndim=2, spec="(..., 4, 4)")
        if m.shape[-2] != 4:
            raise ShapeError(f"Expected `matrix` to have shape (..., 4, 4), got {m.shape}.")
        if not np.allclose(m[..., 3, :], [0.0, 0.0, 0.0, 1.0], atol=1e-12, rtol=0.0):
            raise ShapeError("Expected the last row of `matrix` to be [0, 0, 0, 1].")
        return cls(m[..., :3, :3], m[..., :3, 3])

    def as_matrix(self) -> np.ndarray:
        """Homogeneous matrices ``(..., 4, 4)``."""
        m = np.zeros((*self.batch_shape, 4, 4))
        m[..., :3, :3] = self.rotation
        m[..., :3, 3] = self.translation
        m[..., 3, 3] = 1.0
        return m

    def apply(self, points: ArrayLike) -> np.ndarray:
        """Transform points: ``R p + t``.

        Parameters
        ----------
        points : (..., N, 3) or (3,) array_like
            Points in mm; leading dimensions broadcast against the pose's batch shape. A single
            point ``(3,)`` gives ``(..., 3)``.

        Returns
        -------
        (..., N, 3) or (..., 3) ndarray
        """
        p = as_points(points, "points", spec="(..., N, 3)")
        if p.ndim == 1:
            return np.einsum("...ij,j->...i", self.rotation, p) + self.translation
        return np.matmul(p, np.swapaxes(self.rotation, -1, -2)) + self.translation[..., None, :]

    def inv(self) -> Pose:
        """Inverse transformation ``x = Rᵀ (y − t)``."""
        Rt = np.swapaxes(self.rotation, -1, -2)
        return Pose(Rt, -np.einsum("...ij,...j->...i", Rt, self.translation))

    def compose(self, other: Pose) -> Pose:
        """``self ∘ other``: apply `other` first, then `self` (``(a @ b).apply(p) = a(b(p))``)."""
        if not isinstance(other, Pose):
            return NotImplemented
        R = np.matmul(self.rotation, other.rotation)
        t = np.einsum("...ij,...j->...i", self.rotation, other.translation) + self.translation
        return Pose(R, t)

    def __matmul__(self, other: Pose) -> Pose:
        return self.compose(other)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch_shape={self.batch_shape})"


def _trusted(cls, **fields):
    """Build a frozen result without validation (internal, for arrays already checked)."""
    obj = object.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(obj, name, readonly(np.asarray(value)))
    return obj
