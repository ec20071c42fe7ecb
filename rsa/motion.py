"""Relative segment motion, rotation decompositions, MTPM and precision (DESIGN §3.6–3.7).

Poses map reference-exam coordinates to follow-up coordinates (``y = R x + t``, as returned by
:func:`rsa.rigid.fit_rigid` with the reference exam as `x`). Everything is batched over leading
dimensions (exams, subjects); there are no Python loops over exams.

Angles are in degrees at this API edge, lengths in mm.

References
----------
.. [1] ISO 16087:2013, Implants for surgery — Roentgen stereophotogrammetric analysis for the
   assessment of migration of orthopaedic implants.
.. [2] E. R. Valstar et al., "Guidelines for standardization of radiostereometry (RSA) of
   implants", Acta Orthop. 76(4):563–572, 2005.
.. [3] B. L. Kaptein et al., "Guideline for RSA and CT-RSA implant migration measurements: an
   update of standardizations and recommendations", Acta Orthop. 95, 2024.
.. [4] H. J. Woltring, R. Huiskes, A. de Lange, F. E. Veldpaus, "Finite centroid and helical axis
   estimation from noisy landmark measurements", J. Biomech. 18(5):379–389, 1985.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial.transform import Rotation

from rsa._motion_stats import Precision, UpperPrecision, precision, precision_upper
from rsa._rigid_pose import Pose
from rsa._validate import as_points, readonly
from rsa.errors import EstimationError, ShapeError
from rsa.rigid import RigidFit

__all__ = [
    "EULER_ORDERS",
    "HelicalAxis",
    "Motion",
    "Precision",
    "UpperPrecision",
    "euler_angles",
    "helical_axis",
    "mtpm",
    "precision",
    "precision_upper",
    "relative_motion",
]

#: The 12 rotation orders (6 Tait–Bryan/Cardan, 6 proper Euler), lower case = extrinsic.
EULER_ORDERS = ("xyz", "xzy", "yxz", "yzx", "zxy", "zyx",
                "xyx", "xzx", "yxy", "yzy", "zxz", "zyz")


def _freeze(obj, names) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None:
            object.__setattr__(obj, name, readonly(np.asarray(value)))


def _as_rotation(rotation: ArrayLike, name: str = "rotation") -> np.ndarray:
    R = as_points(rotation, name, min_ndim=2, spec="(..., 3, 3)")
    if R.shape[-2] != 3:
        raise ShapeError(f"Expected `{name}` to have shape (..., 3, 3), got {R.shape}.")
    if not np.all(np.isfinite(R)):
        raise ShapeError(f"Expected `{name}` to be finite, found NaN or inf.")
    err = np.abs(np.einsum("...ki,...kj->...ij", R, R) - np.eye(3)).max(initial=0.0)
    if err > 1e-6 or np.any(np.linalg.det(R) < 0):
        raise ShapeError(
            f"Expected `{name}` to hold proper rotation matrices (RᵀR = I, det R = +1), "
            f"max |RᵀR − I| = {err:.3g}."
        )
    return R


# --------------------------------------------------------------------------------------------
# Euler / Cardan angles
# --------------------------------------------------------------------------------------------


def euler_angles(rotation: ArrayLike, *, order: str = "xyz") -> np.ndarray:
    """Decompose rotations into three angles about coordinate axes, batched.

    Parameters
    ----------
    rotation : (..., 3, 3) array_like
        Proper rotation matrices.
    order : str, default "xyz"
        One of the 12 orders in :data:`EULER_ORDERS`. Lower case = **extrinsic** (rotations about
        the fixed axes of the frame the motion is expressed in — the reference segment / lab
        axes), upper case (e.g. ``"XYZ"``) = **intrinsic** (about the moving, body-fixed axes).
        Angles are returned in the order of the letters: for ``"xyz"`` the rotation is
        ``R = R_z(γ) R_y(β) R_x(α)`` and the result is ``(α, β, γ)`` — first about x (flexion /
        extension in the RSA axes of DESIGN §2), then about the fixed y, then the fixed z. The
        intrinsic ``"XYZ"`` means ``R = R_x(α) R_y(β) R_z(γ)``; ``"xyz"`` equals ``"ZYX"``
        with reversed angles.

    Returns
    -------
    angles_deg : (..., 3) ndarray
        First and third angles in [−180°, 180°]; the second in [−90°, 90°] (Tait–Bryan) or
        [0°, 180°] (proper Euler).

    Notes
    -----
    RSA convention: DESIGN §2 and the RSA guidelines [2]_ [3]_ ask for rotations about the x
    (transverse), y (longitudinal) and z (sagittal) axes with the order stated; the default here
    is the fixed-axis sequence x→y→z. We could not consult the ISO 16087 text to confirm
    whether its sequence is fixed-axis (extrinsic) or moving-axis; both are available and the
    order used is recorded in :class:`Motion`. For the small rotations of implant migration the
    choice changes the angles only by second-order terms (≈ product of two angles in radians).

    Gimbal lock (second angle at ±90° for Tait–Bryan, 0°/180° for proper Euler) has infinitely
    many decompositions; then the third angle is set to 0 and the first carries the whole
    remaining rotation, so the returned angles still reproduce `rotation` exactly. The
    decomposition uses ``scipy.spatial.transform.Rotation.as_euler``; its gimbal-lock
    ``UserWarning`` is suppressed because the case is handled as documented.
    """
    if not isinstance(order, str) or order.lower() not in EULER_ORDERS or not (
        order.islower() or order.isupper()
    ):
        raise ShapeError(
            f"Expected `order` to be one of {', '.join(EULER_ORDERS)} (lower case = extrinsic) "
            f"or their upper-case intrinsic forms, got {order!r}."
        )
    R = _as_rotation(rotation)
    batch = R.shape[:-2]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Gimbal lock detected", category=UserWarning)
        angles = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_euler(order, degrees=True)
    return angles.reshape(*batch, 3)


# --------------------------------------------------------------------------------------------
# Finite helical axis
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class HelicalAxis:
    """Finite helical (screw) axis of a rigid motion (see :func:`helical_axis`).

    Attributes
    ----------
    angle_deg : (...) ndarray
        Rotation angle about the axis, in [0°, 180°].
    axis : (..., 3) ndarray
        Unit axis direction (right-hand rule with `angle_deg`); NaN for zero rotation.
    point_mm : (..., 3) ndarray
        Point of the axis closest to the reference point (origin by default); NaN for zero
        rotation.
    slide_mm : (...) ndarray
        Translation along the axis (signed); ‖t‖ for zero rotation.
    """

    angle_deg: np.ndarray
    axis: np.ndarray
    point_mm: np.ndarray
    slide_mm: np.ndarray

    def __post_init__(self) -> None:
        _freeze(self, ("angle_deg", "axis", "point_mm", "slide_mm"))


def helical_axis(rotation: ArrayLike, translation: ArrayLike, *,
                 reference_point: ArrayLike | None = None) -> HelicalAxis:
    """Finite helical axis (screw axis) of ``y = R x + t``, batched.

    Every rigid motion is a rotation by θ about an axis (unit n through a point p) plus a slide
    s along it: ``R x + t = p + R (x − p) + s n``.

    Parameters
    ----------
    rotation : (..., 3, 3) array_like
    translation : (..., 3) array_like
        mm; batch shapes broadcast.
    reference_point : (..., 3) array_like, optional
        The returned axis point is the one closest to this point (default: the origin). Use the
        segment centroid for an interpretable location.

    Returns
    -------
    HelicalAxis

    Notes
    -----
    With the skew part ``s = ½ (R₃₂ − R₂₃, R₁₃ − R₃₁, R₂₁ − R₁₂) = sin θ · n`` and
    ``c = (tr R − 1)/2 = cos θ``: θ = atan2(‖s‖, c), which is accurate for small angles
    (unlike arccos). For θ > 90° the axis is taken from the symmetric part
    ``(R + Rᵀ)/2 − c I = (1 − c) n nᵀ`` (accurate near 180°), its sign from s. The slide is
    s = n·t and the axis point closest to the origin is
    ``p = ½ (t − (n·t) n + cot(θ/2) n × t)`` [4]_.
    A rotation with ‖s‖ = 0 and c > 0 (θ = 0 exactly) has no axis: axis and point are NaN
    and the slide is ‖t‖ (a pure translation). No warnings are emitted.
    """
    pose = Pose(rotation, translation)  # validates shapes, finiteness, proper rotations
    R, t = pose.rotation, pose.translation

    s = 0.5 * np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                        R[..., 1, 0] - R[..., 0, 1]], axis=-1)
    c = np.clip(0.5 * (np.trace(R, axis1=-2, axis2=-1) - 1.0), -1.0, 1.0)
    sn = np.linalg.norm(s, axis=-1)
    theta = np.arctan2(sn, c)
    # Axis near 180°: column of the symmetric part with the largest diagonal.
    Msym = 0.5 * (R + np.swapaxes(R, -1, -2)) - c[..., None, None] * np.eye(3)
    k = np.argmax(np.diagonal(Msym, axis1=-2, axis2=-1), axis=-1)
    col = np.take_along_axis(Msym, k[..., None, None], axis=-1)[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        n_sym = col / np.linalg.norm(col, axis=-1, keepdims=True)
        n_sym = np.where((np.einsum("...i,...i->...", n_sym, s) < 0)[..., None], -n_sym, n_sym)
        n_skew = s / sn[..., None]
    zero = (sn == 0) & (c > 0)
    n = np.where((c < 0)[..., None], n_sym, n_skew)
    n = np.where(zero[..., None], np.nan, n)
    slide = np.einsum("...i,...i->...", n, t)
    slide = np.where(zero, np.linalg.norm(t, axis=-1), slide)
    with np.errstate(invalid="ignore", divide="ignore"):
        cot_half = 1.0 / np.tan(0.5 * theta)  # θ from atan2 is accurate at 0 and at 180°
    t_perp = t - slide[..., None] * n
    p = 0.5 * (t_perp + cot_half[..., None] * np.cross(n, t))
    if reference_point is not None:
        q = as_points(reference_point, "reference_point", spec="(..., 3)")
        p = p + np.einsum("...i,...i->...", q - p, n)[..., None] * n
    p = np.where(zero[..., None], np.nan, p)
    return HelicalAxis(np.degrees(theta), n, p, slide)


# --------------------------------------------------------------------------------------------
# Relative motion and MTPM
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Motion:
    """Motion of a segment relative to a reference segment (see :func:`relative_motion`).

    Attributes
    ----------
    pose : Pose
        T_rel = T_B⁻¹ · T_S (maps reference-exam coordinates of the segment to where the
        segment is at follow-up, as seen from the reference segment), in the output frame.
    point_mm : (..., 3) ndarray
        The point whose translation is reported (output frame, reference exam).
    translation_mm : (..., 3) ndarray
        Translation of `point_mm`: ``R p + t − p`` (x, y, z).
    total_translation_mm : (...) ndarray
        ‖translation_mm‖.
    rotation_deg : (..., 3) ndarray
        Rotation angles in `order` (see :func:`euler_angles`).
    order : str
    helical : HelicalAxis
        Axis point closest to `point_mm`.
    mtpm_mm, mtpm_index : (...) ndarray or None
        Maximum total point motion over the given points and its arg-max (if points given).
    """

    pose: Pose
    point_mm: np.ndarray
    translation_mm: np.ndarray
    total_translation_mm: np.ndarray
    rotation_deg: np.ndarray
    order: str
    helical: HelicalAxis
    mtpm_mm: np.ndarray | None = None
    mtpm_index: np.ndarray | None = None

    def __post_init__(self) -> None:
        _freeze(self, ("point_mm", "translation_mm", "total_translation_mm", "rotation_deg",
                       "mtpm_mm", "mtpm_index"))

    @property
    def rotation(self) -> np.ndarray:
        """Relative rotation matrices (..., 3, 3)."""
        return self.pose.rotation


def _as_pose(value, name: str) -> Pose:
    if isinstance(value, Pose):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        try:
            return Pose(value[0], value[1])
        except ShapeError as exc:
            raise ShapeError(f"`{name}`: {exc}") from None
    raise ShapeError(
        f"Expected `{name}` to be a Pose/RigidFit or a (rotation (..., 3, 3), translation "
        f"(..., 3)) tuple, got {type(value).__name__}."
    )


def relative_motion(pose_ref_segment, pose_segment, *, point: ArrayLike | None = None,
                    order: str = "xyz", axes: ArrayLike | None = None,
                    points: ArrayLike | None = None) -> Motion:
    """Motion of segment S (e.g. implant) relative to reference segment B (e.g. bone).

    ``T_rel = T_B⁻¹ · T_S`` (DESIGN §3.6), i.e. ``R = R_Bᵀ R_S`` and ``t = R_Bᵀ (t_S − t_B)``,
    where T_B, T_S are the poses of the segments in a follow-up exam relative to the reference
    exam (``fit_rigid(reference_beads, followup_beads)``). T_rel acts on reference-exam
    coordinates: it is the segment's displacement as seen by an observer fixed to the
    reference segment, expressed along the lab (cage) axes of the reference exam — or along
    `axes` if given. Bone moving with the implant gives T_rel = identity.

    Parameters
    ----------
    pose_ref_segment, pose_segment : Pose, RigidFit or (rotation, translation)
        Poses, batched over exams (batch shapes broadcast).
    point : (..., 3) array_like, optional
        Point (reference-exam lab coordinates, mm) whose translation is reported. Default: the
        centroid of the segment's fitted beads (``pose_segment.centroid_mm``; requires a
        :class:`~rsa.rigid.RigidFit`). RSA usually reports the segment centroid or a point of
        the implant model.
    order : str, default "xyz"
        Rotation order for `rotation_deg` (see :func:`euler_angles`).
    axes : (..., 3, 3) array_like, optional
        Rows = unit x, y, z axes of an anatomical/segment frame in lab coordinates (a proper
        rotation). Results are then expressed in that frame: ``R' = A R Aᵀ``, ``t' = A t``,
        points ``A p``. Default: lab (cage) axes.
    points : (..., P, 3) array_like, optional
        Points (reference-exam lab coordinates) for MTPM, e.g. the segment's beads or implant
        model points; NaN rows ignored.

    Returns
    -------
    Motion
    """
    TB = _as_pose(pose_ref_segment, "pose_ref_segment")
    TS = _as_pose(pose_segment, "pose_segment")
    rel = TB.inv() @ TS
    if point is None:
        if not isinstance(pose_segment, RigidFit):
            raise ShapeError(
                "Expected `point` when `pose_segment` is not a RigidFit (no bead centroid known)."
            )
        point = pose_segment.centroid_mm
    p = as_points(point, "point", spec="(..., 3)")
    if not np.all(np.isfinite(p)):
        raise ShapeError("Expected `point` to be finite, found NaN or inf.")
    R, t = rel.rotation, rel.translation
    if axes is not None:
        A = _as_rotation(axes, "axes")
        R = np.matmul(np.matmul(A, R), np.swapaxes(A, -1, -2))
        t = np.einsum("...ij,...j->...i", A, t)
        p = np.einsum("...ij,...j->...i", A, p)
        if points is not None:
            pts = as_points(points, "points", min_ndim=2)
            points = np.matmul(pts, np.swapaxes(A, -1, -2))
    pose = Pose(R, t)
    try:
        p = np.broadcast_to(p, np.broadcast_shapes(p.shape, pose.translation.shape))
    except ValueError:
        raise ShapeError(
            f"Expected `point` (..., 3) to broadcast with the poses' batch shape "
            f"{pose.batch_shape}, got {p.shape}."
        ) from None
    disp = np.einsum("...ij,...j->...i", pose.rotation, p) + pose.translation - p
    helical = helical_axis(pose.rotation, pose.translation, reference_point=p)
    m = idx = None
    if points is not None:
        m, idx = mtpm(pose.rotation, pose.translation, points)
    return Motion(pose, p, disp, np.linalg.norm(disp, axis=-1),
                  euler_angles(pose.rotation, order=order), order, helical, m, idx)


def mtpm(rotation: ArrayLike, translation: ArrayLike,
         points: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Maximum total point motion: max over points of ‖R p + t − p‖, batched over exams.

    Parameters
    ----------
    rotation : (..., 3, 3) array_like
    translation : (..., 3) array_like
        Motion (e.g. ``Motion.pose``), mm.
    points : (..., P, 3) array_like
        Points in the coordinates the motion acts on (segment beads or implant model points),
        mm. NaN rows are ignored. Batch shapes broadcast.

    Returns
    -------
    mtpm_mm : (...) ndarray
        Maximum total point motion (ISO 16087 [1]_).
    index : (...) ndarray of int
        Index of the point attaining it.

    Raises
    ------
    EstimationError
        A batch element has no finite point.
    """
    R = _as_rotation(rotation)
    t = as_points(translation, "translation", spec="(..., 3)")
    pts = as_points(points, "points", min_ndim=2)
    if not np.all(np.isfinite(t)):
        raise ShapeError("Expected `translation` to be finite, found NaN or inf.")
    try:
        disp = (np.matmul(pts, np.swapaxes(R, -1, -2)) + t[..., None, :]) - pts
    except ValueError:
        raise ShapeError(
            f"Expected `rotation` (..., 3, 3), `translation` (..., 3) and `points` (..., P, 3) "
            f"with broadcastable batch shapes, got {R.shape}, {t.shape} and {pts.shape}."
        ) from None
    d = np.linalg.norm(disp, axis=-1)
    d = np.where(np.isfinite(d), d, -np.inf)
    if d.shape[-1] == 0 or np.any(np.all(np.isinf(d), axis=-1)):
        raise EstimationError("MTPM needs at least one finite point per batch element.")
    idx = np.argmax(d, axis=-1)
    return np.take_along_axis(d, idx[..., None], axis=-1)[..., 0], idx
