"""Per-view calibration from the cage markers in a radiograph (DESIGN §3.1).

A calibrated :class:`View` maps image points to rays in the cage (lab) frame and lab points to image
points. It is estimated from the identified cage markers (:func:`rsa.identify.identify_markers`) by

* **film-to-cage** (Selvik [1]_; Börlin [2]_): homography image → fiducial plane from the fiducial
  markers (normalised DLT), control markers mapped through it to the fiducial plane, focus =
  least-squares intersection of the lines C_j → c'_j
  (:func:`rsa.triangulate.closest_point_to_lines`); fiducials off their best-fit plane are
  handled by re-projecting them from the focus onto the plane and iterating. A bead's ray runs
  from the focus to its image mapped onto the plane.
* **DLT** (Abdel-Aziz & Karara [3]_; Hartley & Zisserman [4]_ Alg. 7.1): normalised 11-parameter
  camera matrix from all identified markers; focus F = −M⁻¹p₄, ray direction ∝ M⁻¹[u, v, 1]ᵀ.

Both can be refined (default) by robust nonlinear least squares on the reprojection error of all
markers (``scipy.optimize.least_squares``, soft-L1 loss) in a pinhole parameterisation
P = K R [I | −F] (focus 3, orientation 3, K 5 = the 11 degrees of freedom of P); from the same data
both refine to the same optimum. Every view model is stored as its 3×4 camera matrix: the
film-to-cage model (homography ∘ central projection onto the fiducial plane) is one exactly.

Detector distortion is not modelled (flat-panel detectors are distortion-free well below the
detection noise; DESIGN §3.1); ``distortion=None`` is the documented hook.

References
----------
.. [1] Selvik G. Roentgen stereophotogrammetry. Acta Orthop Scand Suppl 1989;232:1–51.
.. [2] Börlin N. Comparison of resection–intersection algorithms and projection geometries in
       radiostereometry. ISPRS J Photogramm Remote Sens 2002;56:390–400.
.. [3] Abdel-Aziz YI, Karara HM. Direct linear transformation from comparator coordinates into
       object space coordinates in close-range photogrammetry. Proc ASP Symp Close-Range
       Photogrammetry, 1971:1–18.
.. [4] Hartley R, Zisserman A. Multiple View Geometry in Computer Vision, 2nd ed., 2004.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import least_squares

from rsa import _calibrate_linear as lin
from rsa._validate import as_points, readonly
from rsa.errors import CalibrationError, EstimationError, ShapeError
from rsa.identify import MarkerMatch, identify_markers, nominal_view
from rsa.triangulate import intersect_rays
from rsa.triangulate_ml import triangulate_ml

__all__ = [
    "ExamCalibration",
    "View",
    "calibrate_exam",
    "calibrate_view",
    "calibration_uncertainty",
    "exam_calibration",
    "plot_calibration",
]

METHODS = ("film-to-cage", "dlt")


@dataclass(frozen=True, eq=False)
class View:
    """One calibrated X-ray view: camera matrix, focus, identified markers and residuals.

    Attributes
    ----------
    name : str
        Cage view name (``"A"``/``"B"``).
    method : str
        ``"film-to-cage"`` or ``"dlt"`` (the linear estimate the view started from).
    refined : bool
        Whether the nonlinear refinement was applied.
    projection_matrix : (3, 4) ndarray
        Camera matrix P, ``[u, v, 1]ᵀ ∝ P [x, y, z, 1]ᵀ`` (lab mm → image px), ‖P‖ = 1.
    focus_mm : (3,) ndarray
        X-ray focus F = −M⁻¹p₄ in the cage frame, mm.
    params : (11,) ndarray
        Pinhole parameters (F, rotation vector relative to `rotation_ref`, fx, skew, cx, fy, cy).
    rotation_ref : (3, 3) ndarray
        Reference orientation R₀ of the parameterisation, P = K R(δ) R₀ [I | −F].
    param_cov : (11, 11) ndarray
        Covariance of `params` from the reprojection residuals (first order, reduced χ²).
    bead_index, marker_index : (K,) ndarray of int
        Input bead index and cage marker index of each identified marker.
    marker_ids, marker_roles : (K,) ndarray of str
        Cage ids and roles of the identified markers.
    marker_xyz_mm : (K, 3) ndarray
        Cage coordinates of the identified markers.
    marker_uv_px : (K, 2) ndarray
        Their detected image positions.
    residuals_px : (K, 2) ndarray
        Reprojection residuals, detected − projected, px.
    residuals_mm : (K,) ndarray
        Object-space residuals: distance of each marker from the ray of its detected image, mm.
    rms_px, rms_mm : float
        Root-mean-square of the residual lengths.
    patient_mask : (N,) ndarray of bool
        Input beads that are not cage markers (the patient's beads; NaN rows are False).
    pixel_spacing_mm : (2,) ndarray
        Detector pixel spacing (u, v), mm.
    image_shape : (2,) ndarray of int
        Image size (rows, columns).
    homography : (3, 3) ndarray or None
        Film-to-cage only: the homography image px → fiducial plane mm of the linear estimate.
    identification : MarkerMatch
        The identification result the calibration used.
    """

    name: str
    method: str
    refined: bool
    projection_matrix: np.ndarray
    focus_mm: np.ndarray
    params: np.ndarray
    rotation_ref: np.ndarray
    param_cov: np.ndarray
    bead_index: np.ndarray
    marker_index: np.ndarray
    marker_ids: np.ndarray
    marker_roles: np.ndarray
    marker_xyz_mm: np.ndarray
    marker_uv_px: np.ndarray
    residuals_px: np.ndarray
    residuals_mm: np.ndarray
    rms_px: float
    rms_mm: float
    patient_mask: np.ndarray
    pixel_spacing_mm: np.ndarray
    image_shape: np.ndarray
    homography: np.ndarray | None
    identification: MarkerMatch

    def __post_init__(self) -> None:
        for name in ("projection_matrix", "focus_mm", "params", "rotation_ref", "param_cov",
                     "bead_index", "marker_index", "marker_ids", "marker_roles", "marker_xyz_mm",
                     "marker_uv_px", "residuals_px", "residuals_mm", "patient_mask",
                     "pixel_spacing_mm", "image_shape", "homography"):
            val = getattr(self, name)
            if val is not None:
                object.__setattr__(self, name, readonly(np.array(val)))

    @property
    def method_label(self) -> str:
        """Method with the refinement flag, e.g. ``"dlt+refined"``."""
        return self.method + ("+refined" if self.refined else "")

    def rays(self, uv_px: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Rays through image points.

        Parameters
        ----------
        uv_px : (..., 2) array_like
            Image points, px.

        Returns
        -------
        origins : (..., 3) ndarray
            The focus, broadcast.
        directions : (..., 3) ndarray
            Unit directions from the focus towards the detector; NaN for NaN input.
        """
        uv = as_points(uv_px, "uv_px", last=2, spec="(..., 2)")
        return _rays(self.projection_matrix, self.focus_mm, self._sign(), uv)

    def project(self, xyz_mm: ArrayLike) -> np.ndarray:
        """Image points (..., 2) px of lab points `xyz_mm` (..., 3) mm."""
        x = as_points(xyz_mm, "xyz_mm", spec="(..., 3)")
        return lin.project(self.projection_matrix, x.reshape(-1, 3)).reshape(x.shape[:-1] + (2,))

    @property
    def focus_detector_distance_mm(self) -> float:
        """Perpendicular distance from the focus to the detector plane, mm (fx·s_u, fy·s_v mean)."""
        k = self.params
        return float(0.5 * (k[6] * self.pixel_spacing_mm[0] + k[9] * self.pixel_spacing_mm[1]))

    @property
    def principal_point_px(self) -> np.ndarray:
        """Foot of the perpendicular from the focus on the detector, px (cx, cy)."""
        return np.array([self.params[8], self.params[10]])

    def _sign(self) -> float:
        w = self.projection_matrix[2] @ np.append(self.marker_xyz_mm.mean(0), 1.0)
        return 1.0 if w >= 0 else -1.0


def _rays(P: np.ndarray, F: np.ndarray, sign: float, uv: np.ndarray):
    d = np.linalg.solve(P[:3, :3], lin.to_h(uv).reshape(-1, 3).T).T.reshape(uv.shape[:-1] + (3,))
    d = sign * d / np.linalg.norm(d, axis=-1, keepdims=True)
    return np.broadcast_to(F, d.shape).copy(), d


# --------------------------------------------------------------------------------------------
# estimation
# --------------------------------------------------------------------------------------------
def _beads_arrays(beads, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    uv = getattr(beads, "uv_px", beads)
    uv = as_points(uv, f"{name}.uv_px" if hasattr(beads, "uv_px") else name, last=2,
                   min_ndim=2, spec="(N, 2)")
    if uv.ndim != 2:
        raise ShapeError(f"Expected `{name}` to have shape (N, 2), got {uv.shape}.")
    sigma = getattr(beads, "sigma_px", None)
    if sigma is not None:
        sigma = np.asarray(sigma, float)
        if sigma.ndim == 1:
            sigma = np.repeat(sigma[:, None], 2, axis=1)
        if sigma.shape != uv.shape:
            raise ShapeError(f"Expected `{name}.sigma_px` to have shape {uv.shape}, "
                             f"got {sigma.shape}.")
    return uv, sigma


def _residual_fn(X: np.ndarray, obs: np.ndarray, w: np.ndarray, R0: np.ndarray):
    def fun(theta: np.ndarray) -> np.ndarray:
        return ((lin.project(lin.camera_from_params(theta, R0), X) - obs) * w).ravel()
    return fun


def _jacobian(theta: np.ndarray, X, obs, w, R0) -> np.ndarray:
    """Forward-difference Jacobian of the weighted residuals, all 11 steps in one batch."""
    h = 1e-6 * np.maximum(1.0, np.abs(theta))
    steps = theta + np.vstack([np.zeros(theta.size), np.diag(h)])
    r = ((lin.project(lin.camera_from_params(steps, R0), X) - obs) * w).reshape(steps.shape[0], -1)
    return ((r[1:] - r[0]) / h[:, None]).T


def calibrate_view(beads, cage, *, view: str, method: str = "film-to-cage", refine: bool = True,
                   pixel_spacing_mm: ArrayLike | None = None,
                   image_shape: tuple[int, int] | None = None, loss: str = "soft_l1",
                   distortion: None = None, identify_options: dict | None = None,
                   identification: MarkerMatch | None = None) -> View:
    """Calibrate one view from the cage markers among its detected beads.

    Parameters
    ----------
    beads : Beads2D-like or (N, 2) array_like
        Detected bead centres: an object with ``uv_px`` (N, 2) px and optionally ``sigma_px``
        ((N, 2) or (N,), used as reprojection weights 1/σ), or the (N, 2) array itself.
        NaN rows are missing beads.
    cage : rsa.cage.Cage
        The cage definition used for the exam.
    view : str
        Cage view of this image (``"A"``/``"B"``).
    method : {"film-to-cage", "dlt"}, optional
        Linear estimator (DESIGN §3.1). Default film-to-cage, the classical RSA method.
    refine : bool, optional
        Refine all 11 projection parameters by robust nonlinear least squares on the
        reprojection error of all identified markers (default True).
    pixel_spacing_mm : float or (2,) array_like, optional
        Detector pixel spacing (u, v), mm; default ``beads.pixel_spacing_mm``. Required.
    image_shape : (int, int), optional
        Image (rows, columns); default ``beads.image_shape``. Required.
    loss : str, optional
        Robust loss of the refinement (``scipy.optimize.least_squares``; default ``"soft_l1"``
        with ``f_scale`` = 3σ, σ = the beads' `sigma_px` or the robust spread (1.4826·MAD) of the
        linear estimate's residuals).
    distortion : None
        Hook for a detector distortion model; not implemented (flat-panel detectors, DESIGN
        §3.1), must be None.
    identify_options : dict, optional
        Keyword options for :func:`rsa.identify.identify_markers` (gates, tolerances).
    identification : MarkerMatch, optional
        A previous identification of the same beads (e.g. ``other_view.identification``, or a
        manually corrected one) to use instead of identifying the markers again.

    Returns
    -------
    View

    Raises
    ------
    ShapeError
        Bad `beads` shapes.
    CalibrationError
        Missing pixel spacing/shape, unknown method, markers not identified (see
        :func:`rsa.identify.identify_markers`), collinear fiducials, too few controls.
    """
    if method not in METHODS:
        raise CalibrationError(f"Unknown calibration method {method!r}; expected one of "
                               f"{', '.join(METHODS)}.")
    if distortion is not None:
        raise CalibrationError("Detector distortion correction is not implemented; pass "
                               "distortion=None.")
    uv, sigma = _beads_arrays(beads, "beads")
    spacing = pixel_spacing_mm if pixel_spacing_mm is not None else getattr(
        beads, "pixel_spacing_mm", None)
    shape = image_shape if image_shape is not None else getattr(beads, "image_shape", None)
    if spacing is None or shape is None:
        raise CalibrationError("calibrate_view needs `pixel_spacing_mm` and `image_shape` (the "
                               "nominal cage geometry is in mm, the beads in px).")
    spacing = np.broadcast_to(np.asarray(spacing, float), (2,)).copy()
    if identification is None:
        match = identify_markers(uv, cage, view=view, pixel_spacing_mm=spacing,
                                 image_shape=shape, **(identify_options or {}))
    elif identification.view != view or identification.patient_mask.shape[0] != uv.shape[0]:
        raise CalibrationError(f"The given identification is of view {identification.view!r} "
                               f"with {identification.patient_mask.shape[0]} beads; expected "
                               f"view {view!r} with {uv.shape[0]} beads.")
    else:
        match = identification
    X = cage.xyz_mm[match.marker_index]
    obs = uv[match.bead_index]
    is_f = match.roles == "fiducial"
    H = None
    try:
        if method == "film-to-cage":
            fid_all = np.isin(cage.planes, cage.views[view].planes) & (cage.roles == "fiducial")
            nom_f = nominal_view(cage, view, spacing, shape).focus_mm
            frame = lin.plane_frame(cage.xyz_mm[fid_all], nom_f)
            P, _, H = lin.film_to_cage(X[is_f], obs[is_f], X[~is_f], obs[~is_f], frame)
        else:
            P = lin.fit_projection(X, obs)
    except EstimationError as exc:
        raise CalibrationError(f"view {view}: {method} calibration failed with "
                               f"{int(is_f.sum())} fiducials and {int((~is_f).sum())} control "
                               f"markers identified: {exc}") from None
    theta, R0 = lin.params_from_camera(P)
    w = np.ones_like(obs)
    if sigma is not None:
        s = sigma[match.bead_index]
        if np.all(np.isfinite(s) & (s > 0)):
            w = 1.0 / s
    fun = _residual_fn(X, obs, w, R0)
    if refine:
        r0 = fun(theta)
        scale = 1.0 if sigma is not None else max(1.4826 * np.median(np.abs(r0)), 1e-3)
        res = least_squares(fun, theta, jac=lambda th: _jacobian(th, X, obs, w, R0), loss=loss,
                            f_scale=3.0 * scale, x_scale="jac", method="trf")
        theta = res.x
        P = lin.camera_from_params(theta, R0)
    P = P / np.linalg.norm(P)
    J = _jacobian(theta, X, obs, w, R0)
    r = fun(theta)
    dof = max(r.size - lin.N_PARAMS, 1)
    cov = np.linalg.pinv(J.T @ J) * (r @ r) / dof
    F = lin.focus_of(P)
    res_px = obs - lin.project(P, X)
    tmp = View(name=view, method=method, refined=refine, projection_matrix=P, focus_mm=F,
               params=theta, rotation_ref=R0, param_cov=cov, bead_index=match.bead_index,
               marker_index=match.marker_index, marker_ids=match.ids, marker_roles=match.roles,
               marker_xyz_mm=X, marker_uv_px=obs, residuals_px=res_px,
               residuals_mm=np.zeros(X.shape[0]), rms_px=0.0, rms_mm=0.0,
               patient_mask=match.patient_mask, pixel_spacing_mm=spacing,
               image_shape=np.array(shape, int), homography=H, identification=match)
    o, d = tmp.rays(obs)
    v = X - o
    res_mm = np.linalg.norm(v - np.einsum("ki,ki->k", v, d)[:, None] * d, axis=-1)
    return replace(tmp, residuals_mm=res_mm, rms_px=float(np.sqrt(np.mean(np.sum(res_px**2, -1)))),
                   rms_mm=float(np.sqrt(np.mean(res_mm**2))))


# --------------------------------------------------------------------------------------------
# both views
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ExamCalibration:
    """Both calibrated views of one exam and their joint diagnostics.

    Attributes
    ----------
    a, b : View
        The calibrated views (cage views ``views[0]`` and ``views[1]``).
    angle_deg : float
        Angle between the two central rays (focus → image centre of each view), degrees.
    focus_distance_mm : float
        Distance between the two foci, mm.
    """

    a: View
    b: View
    angle_deg: float
    focus_distance_mm: float

    def triangulate(self, uv_a: ArrayLike, uv_b: ArrayLike, *,
                    sigma_px: tuple[ArrayLike, ArrayLike] | None = None,
                    ) -> tuple[np.ndarray, np.ndarray]:
        """3D points (..., 3) mm and crossing-line errors (...) of corresponding image points.

        `uv_a`, `uv_b` (..., 2) px are images of the same beads in views a and b. Without
        ``sigma_px`` the point is the midpoint of the rays (:func:`rsa.triangulate.
        intersect_rays`); with ``sigma_px = (σ_a, σ_b)``, each (..., 2) per axis or (...) px,
        it weighs each view's centre by its uncertainty (:func:`rsa.triangulate_ml.
        triangulate_ml`, as the pipeline does). The CLE is the rays' in both cases.
        """
        oa, da = self.a.rays(uv_a)
        ob, db = self.b.rays(uv_b)
        points, cle = intersect_rays(oa, da, ob, db)
        if sigma_px is None:
            return points, cle
        shape = points.shape[:-1] + (2,)

        def per_axis(sig, name):
            sig = np.asarray(sig, dtype=float)
            if sig.shape == shape[:-1]:
                sig = np.repeat(sig[..., None], 2, axis=-1)
            if sig.shape != shape:
                raise ShapeError(f"Expected `sigma_px` {name} to have shape {shape} or "
                                 f"{shape[:-1]}, got {sig.shape}.")
            return sig

        uv = np.stack([np.broadcast_to(u, shape) for u in (uv_a, uv_b)], axis=-2)
        sig = np.stack([per_axis(s_, n) for s_, n in zip(sigma_px, "ab", strict=True)], axis=-2)
        pts, _ = triangulate_ml(np.stack([self.a.projection_matrix, self.b.projection_matrix]),
                                uv.reshape(-1, 2, 2), sig.reshape(-1, 2, 2))
        pts = pts.reshape(points.shape)
        return np.where(np.isfinite(pts), pts, points), cle

    def uncertainty(self, xyz_mm: ArrayLike, *, n_samples: int = 2000,
                    rng: np.random.Generator | int | None = None,
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Calibration-induced 3D error at `xyz_mm`, see :func:`calibration_uncertainty`."""
        return calibration_uncertainty(self.a, self.b, xyz_mm, n_samples=n_samples, rng=rng)


def _central_ray(v: View) -> np.ndarray:
    rows, cols = v.image_shape
    return v.rays(np.array([(cols - 1) / 2, (rows - 1) / 2]))[1]


def calibrate_exam(beads_a, beads_b, cage, *, views: tuple[str, str] = ("A", "B"),
                   method: str = "film-to-cage", refine: bool = True,
                   pixel_spacing_mm: ArrayLike | None = None,
                   image_shape: tuple[int, int] | None = None, **kwargs) -> ExamCalibration:
    """Calibrate both views of an exam and check them against each other.

    Parameters
    ----------
    beads_a, beads_b : Beads2D-like or (N, 2) array_like
        Detected beads of the images of cage views ``views[0]`` and ``views[1]``.
    cage : rsa.cage.Cage
    views : (str, str), optional
        Cage view names of the two images (default ``("A", "B")``).
    method, refine, pixel_spacing_mm, image_shape, **kwargs
        As for :func:`calibrate_view` (spacing and shape shared by both images; pass Beads2D-like
        objects carrying their own to differ).

    Returns
    -------
    ExamCalibration

    Raises
    ------
    CalibrationError
        A view cannot be calibrated; the message says when the images work the other way round
        (views swapped) or look mirrored.
    """
    kw = {"method": method, "refine": refine, "pixel_spacing_mm": pixel_spacing_mm,
          "image_shape": image_shape, **kwargs}
    try:
        va = calibrate_view(beads_a, cage, view=views[0], **kw)
        vb = calibrate_view(beads_b, cage, view=views[1], **kw)
    except CalibrationError as exc:
        if "mirrored" not in str(exc):
            try:  # would the images calibrate the other way round?
                calibrate_view(beads_a, cage, view=views[1], **kw)
                calibrate_view(beads_b, cage, view=views[0], **kw)
            except CalibrationError:
                pass
            else:
                raise CalibrationError(
                    f"views swapped: the image given as view {views[0]} calibrates as cage view "
                    f"{views[1]} and vice versa; swap the images ({exc})") from None
        raise
    return exam_calibration(va, vb, cage, views=views)


def exam_calibration(va: View, vb: View, cage, *, views: tuple[str, str] = ("A", "B")
                     ) -> ExamCalibration:
    """The exam calibration of two views calibrated on their own (:func:`calibrate_view` of
    cage views ``views``), checked against each other as :func:`calibrate_exam` does.

    Raises
    ------
    CalibrationError
        Each focus lies nearer the other view's nominal focus (views swapped).
    """
    # Each focus must be nearer its own view's nominal focus than the other's.
    na, nb = (np.asarray(cage.views[v].focus_mm, float) for v in views)
    if (np.linalg.norm(va.focus_mm - na) > np.linalg.norm(va.focus_mm - nb)
            or np.linalg.norm(vb.focus_mm - nb) > np.linalg.norm(vb.focus_mm - na)):
        raise CalibrationError(f"views swapped: the focus of view {views[0]} lies nearer the "
                               f"nominal focus of view {views[1]} (or vice versa).")
    ca, cb = _central_ray(va), _central_ray(vb)
    angle = float(np.degrees(np.arccos(np.clip(ca @ cb, -1.0, 1.0))))
    return ExamCalibration(a=va, b=vb, angle_deg=angle,
                           focus_distance_mm=float(np.linalg.norm(va.focus_mm - vb.focus_mm)))


def calibration_uncertainty(view_a: View, view_b: View, xyz_mm: ArrayLike, *,
                            n_samples: int = 2000, rng: np.random.Generator | int | None = None,
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Predicted 3D error of triangulated points due to the calibration alone (Monte Carlo).

    Parameter vectors of both views are drawn from N(params, param_cov) (the first-order
    covariance of the reprojection fit), the exact images of `xyz_mm` are back-projected with
    each drawn calibration and triangulated; the spread of the results is the calibration's
    contribution to the 3D error (the beads' own detection noise comes on top). Vectorised over
    samples and points.

    Parameters
    ----------
    view_a, view_b : View
    xyz_mm : (N, 3) array_like
        Points (e.g. the patient's beads), mm.
    n_samples : int, optional
        Monte Carlo sample size (default 2000: the SD is then known to ±1.6 %).
    rng : numpy.random.Generator or int or None

    Returns
    -------
    sd_mm : (N, 3) ndarray
        Standard deviation of each coordinate, mm.
    rms_mm : (N,) ndarray
        RMS 3D error (√ of the summed variances), mm.
    """
    x = as_points(xyz_mm, "xyz_mm", min_ndim=2, spec="(N, 3)")
    if x.ndim != 2:
        raise ShapeError(f"Expected `xyz_mm` to have shape (N, 3), got {x.shape}.")
    rng = np.random.default_rng(rng)
    rays = []
    for v in (view_a, view_b):
        uv = v.project(x)
        th = rng.multivariate_normal(v.params, v.param_cov, size=n_samples, method="eigh")
        P = lin.camera_from_params(th, v.rotation_ref)  # (S, 3, 4)
        F = lin.focus_of(P)
        d = np.linalg.solve(P[:, None, :, :3], lin.to_h(uv)[None, :, :, None])[..., 0]
        rays.append((F[:, None, :], d * v._sign()))
    pts, _ = intersect_rays(rays[0][0], rays[0][1], rays[1][0], rays[1][1])
    err = pts - x
    sd = err.std(0)
    return sd, np.sqrt((sd**2).sum(-1))


def plot_calibration(view: View, beads=None, *, ax=None, scale: float = 200.0):
    """Overlay of the identified markers and their residual vectors on the image plane.

    Parameters
    ----------
    view : View
    beads : Beads2D-like or (N, 2) array_like, optional
        All detected beads of the image (patient beads are drawn grey).
    ax : matplotlib.axes.Axes, optional
        Axes to draw in (default: a new figure).
    scale : float, optional
        Magnification of the residual vectors (default 200: 0.05 px → 10 px).

    Returns
    -------
    matplotlib.axes.Axes
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 7))
    if beads is not None:
        uv, _ = _beads_arrays(beads, "beads")
        pat = uv[view.patient_mask]
        ax.plot(pat[:, 0], pat[:, 1], ".", color="0.5", ms=3, label="patient beads")
    for role, colour in (("fiducial", "tab:blue"), ("control", "tab:orange")):
        sel = view.marker_roles == role
        m, r = view.marker_uv_px[sel], view.residuals_px[sel]
        ax.plot(m[:, 0], m[:, 1], "o", mfc="none", color=colour, ms=5, label=f"{role} markers")
        ax.quiver(m[:, 0], m[:, 1], r[:, 0] * scale, r[:, 1] * scale, angles="xy",
                  scale_units="xy", scale=1.0, color=colour, width=0.003)
    rows, cols = view.image_shape
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)  # image convention: v downwards
    ax.set_aspect("equal")
    ax.set_xlabel("u (px)")
    ax.set_ylabel("v (px)")
    ax.set_title(f"view {view.name}: {view.method_label}, RMS {view.rms_px:.3f} px "
                 f"(residuals × {scale:g})")
    ax.legend(loc="upper right", fontsize="small")
    return ax
