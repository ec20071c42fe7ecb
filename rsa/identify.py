"""Automatic identification of calibration-cage markers among the beads of one radiograph.

DESIGN §1 places identification in ``rsa.cage``; it lives here so that the cage-file module stays
small (``rsa.cage`` loads and validates cage definitions, this module finds them in images).

Algorithm (no clicks), per view:

1. **Nominal projection.** The cage file's nominal geometry of the view (focus, detector centre,
   normal, up) with the image's pixel spacing and shape gives a predicted image of every marker.
2. **Fiducial pattern (RANSAC-style).** Two-point similarity hypotheses map the predicted fiducial
   pattern onto the detected beads: each pair of neighbouring predicted fiducials is paired with
   each pair of neighbouring detected beads whose length ratio and direction agree within the
   allowed magnification and rotation; the hypothesis that lands most predicted fiducials near a
   detected bead wins. Its inliers seed a homography fiducial plane → image (normalised DLT, [1]_),
   grown by re-matching with shrinking gates. The fiducial pattern of a ±5° rotated, ±20 mm
   shifted cage, with a third of the markers hidden and patient beads in between, is found this
   way without any assumption about which beads are visible.
3. **Control markers.** Control markers lie between the focus and the fiducial plane, so their
   images are magnified more and shifted by parallax; where depends on the (unknown) focus. The
   beads not taken as fiducials are mapped to the fiducial plane through the homography; every
   bead within the parallax window of a control marker is a candidate, two candidates give a
   focus hypothesis (closest point of the two lines C_j → c'_j), and the focus that predicts the
   most control markers wins, then is re-estimated from all its inliers.
4. **Joint check.** The camera matrix from homography and focus predicts every marker of the view;
   markers are matched one-to-one within a tight gate and the DLT is re-estimated, twice.

The result is checked (fraction of expected fiducials and controls found, reprojection RMS,
handedness of the image relative to the nominal view) and anything doubtful raises
:class:`~rsa.errors.CalibrationError` saying what was found and what was expected.

References
----------
.. [1] Hartley R, Zisserman A. Multiple View Geometry in Computer Vision, 2nd ed., 2004, Alg. 4.2
       (normalised DLT), §4.7 (RANSAC for homographies).
.. [2] Fischler MA, Bolles RC. Random sample consensus. Commun ACM 1981;24(6):381–395.
.. [3] Selvik G. Roentgen stereophotogrammetry. Acta Orthop Scand Suppl 1989;232:1–51
       (calibration cage: fiducial and control markers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial import cKDTree

from rsa import _calibrate_linear as lin
from rsa._validate import as_points, readonly
from rsa.errors import CalibrationError, EstimationError, ShapeError
from rsa.synthetic.geometry import DetectorView, look_at_view
from rsa.triangulate import closest_point_to_lines, intersect_rays

__all__ = ["MarkerMatch", "identify_markers", "nominal_view"]

_MAX_HYPOTHESES = 20000


@dataclass(frozen=True, eq=False)
class MarkerMatch:
    """Cage markers identified among the beads of one view (result of :func:`identify_markers`).

    Attributes
    ----------
    view : str
        Cage view name (``"A"``, ``"B"``).
    bead_index : (K,) ndarray of int
        Index of each identified marker's bead in the input bead list.
    marker_index : (K,) ndarray of int
        Index of each identified marker in the cage's marker arrays.
    ids, roles : (K,) ndarray of str
        Cage id and role (``"fiducial"`` / ``"control"``) of each identified marker.
    patient_mask : (N,) ndarray of bool
        True for input beads that are not cage markers (NaN rows are False).
    n_fiducials, n_controls : int
        Number of identified fiducial and control markers.
    n_fiducials_expected, n_controls_expected : int
        Number of the view's fiducial / control markers whose predicted image lies in the image.
    projection_matrix : (3, 4) ndarray
        DLT camera matrix from all identified markers (used to identify them; calibrate with
        :func:`rsa.calibrate.calibrate_view`).
    focus_mm : (3,) ndarray
        Focus of `projection_matrix`, mm.
    rms_px : float
        RMS distance between identified beads and the markers' predicted images, px.
    """

    view: str
    bead_index: np.ndarray
    marker_index: np.ndarray
    ids: np.ndarray
    roles: np.ndarray
    patient_mask: np.ndarray
    n_fiducials: int
    n_controls: int
    n_fiducials_expected: int
    n_controls_expected: int
    projection_matrix: np.ndarray
    focus_mm: np.ndarray
    rms_px: float

    def __post_init__(self) -> None:
        for name in ("bead_index", "marker_index", "ids", "roles", "patient_mask",
                     "projection_matrix", "focus_mm"):
            object.__setattr__(self, name, readonly(np.array(getattr(self, name))))


def nominal_view(cage, view: str, pixel_spacing_mm: ArrayLike,
                 image_shape: tuple[int, int]) -> DetectorView:
    """Detector view of the cage file's nominal geometry for `view` (image size and spacing given).

    The image centre is placed at the nominal detector centre, ``detector_up`` is image −v.
    """
    cv = cage.views[view]
    sp = np.broadcast_to(np.asarray(pixel_spacing_mm, float), (2,))
    return look_at_view(focus_mm=cv.focus_mm, detector_centre_mm=cv.detector_centre_mm,
                        up=cv.detector_up, detector_normal=cv.detector_normal,
                        pixel_spacing_mm=(float(sp[0]), float(sp[1])),
                        shape=(int(image_shape[0]), int(image_shape[1])), name=view)


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------
def _match(pred: np.ndarray, tree: cKDTree, gate: float) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
    """One-to-one nearest-neighbour matching of predicted points to tree points within `gate`.

    Returns (pred indices, tree indices, distances); a tree point claimed by several predictions
    goes to the closest.
    """
    ok = np.isfinite(pred).all(-1)
    dist = np.full(pred.shape[0], np.inf)
    idx = np.full(pred.shape[0], tree.n)
    if ok.any():
        dist[ok], idx[ok] = tree.query(pred[ok], distance_upper_bound=gate)
    order = np.argsort(dist, kind="stable")
    order = order[np.isfinite(dist[order])]
    _, first = np.unique(idx[order], return_index=True)
    m = np.sort(order[first])
    return m, idx[m], dist[m]


def _finite(x: np.ndarray) -> np.ndarray:
    """Non-finite query points moved far away (they then match nothing)."""
    return np.nan_to_num(x, nan=1e12, posinf=1e12, neginf=1e12)


def _knn_pairs(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Directed pairs (i, j): j among the k nearest neighbours of i."""
    k = min(k, x.shape[0] - 1)
    if k < 1:
        return np.zeros(0, int), np.zeros(0, int)
    _, nn = cKDTree(x).query(x, k=k + 1)
    return np.repeat(np.arange(x.shape[0]), k), nn[:, 1:].ravel()


def _similarity_hypotheses(q: np.ndarray, p: np.ndarray, *, scale_range: tuple[float, float],
                           max_rot: float, max_shift_px: float,
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Two-point similarity hypotheses p ≈ z q + t (complex z, t) from neighbour pairs."""
    qi, qj = _knn_pairs(q, 3)
    pa, pb = _knn_pairs(p, 6)
    qc = q[:, 0] + 1j * q[:, 1]
    pc = p[:, 0] + 1j * p[:, 1]
    z = (pc[pb] - pc[pa])[None, :] / (qc[qj] - qc[qi])[:, None]
    t = pc[pa][None, :] - z * qc[qi][:, None]
    centre = qc.mean()
    ok = ((np.abs(z) >= scale_range[0]) & (np.abs(z) <= scale_range[1])
          & (np.abs(np.angle(z)) <= max_rot) & (np.abs(z * centre + t - centre) <= max_shift_px))
    z, t = z[ok], t[ok]
    if z.size > _MAX_HYPOTHESES:  # deterministic thinning
        keep = np.linspace(0, z.size - 1, _MAX_HYPOTHESES).astype(int)
        z, t = z[keep], t[keep]
    return z, t


def _best_similarities(q: np.ndarray, p: np.ndarray, tree: cKDTree, gate: float, n_best: int,
                       **kw) -> list[tuple[complex, complex]]:
    """The `n_best` distinct hypotheses with most predicted points within `gate` of a bead."""
    z, t = _similarity_hypotheses(q, p, **kw)
    if z.size == 0:
        return []
    qc = q[:, 0] + 1j * q[:, 1]
    pred = z[:, None] * qc[None, :] + t[:, None]
    d, _ = tree.query(_finite(np.stack([pred.real, pred.imag], -1).reshape(-1, 2)),
                      distance_upper_bound=gate)
    d = d.reshape(pred.shape)
    hit = np.isfinite(d)
    score = hit.sum(1) - np.where(hit, d, 0.0).sum(1) / (gate * q.shape[0] + 1.0)
    out: list[tuple[complex, complex]] = []
    centre = qc.mean()
    for h in np.argsort(-score)[: 50 * n_best]:
        c_h = z[h] * centre + t[h]
        if all(abs(c_h - (zz * centre + tt)) > gate for zz, tt in out):
            out.append((z[h], t[h]))
            if len(out) == n_best:
                break
    return out


def _grow_homography(xf: np.ndarray, p: np.ndarray, tree: cKDTree, m: np.ndarray, b: np.ndarray,
                     gates: list[float]):
    """Fit plane → image homography to matches (m, b), re-match with each gate in turn."""
    H = None
    for g in gates:
        try:
            H = lin.fit_homography(xf[m], p[b])
        except EstimationError:
            return None
        m, b, _ = _match(lin.apply_h(H, xf), tree, g)
        if m.size < 4:
            return None
    return H, m, b


def _predict_controls(F: np.ndarray, Xc: np.ndarray, frame, Hpi: np.ndarray) -> np.ndarray:
    """Image (..., Mc, 2) of control markers Xc for focus hypotheses F (..., 3) via the plane."""
    c, E, n = frame
    F = F[..., None, :]
    s = ((c - F) @ n) / ((Xc - F) @ n)
    xp = (F + s[..., None] * (Xc - F) - c) @ E.T
    return lin.apply_h(Hpi, xp)


def _find_controls(Hpi, frame, F0, Xc, p, free, *, max_offset, gate_px, cle_gate=3.0):
    """Focus hypothesis from pairs of candidate control correspondences; best one refined.

    Returns (focus, control indices, bead indices) or None.
    """
    c, E, n = frame
    idx_free = np.flatnonzero(free)
    if idx_free.size < 2 or Xc.shape[0] < 2:
        return None
    tree = cKDTree(p[idx_free])
    Xr = c + lin.apply_h(np.linalg.inv(Hpi), p[idx_free]) @ E  # free beads lifted to the plane
    h = (Xc - c) @ n
    D0 = (F0 - c) @ n
    s = ((c - F0) @ n) / ((Xc - F0) @ n)
    Xp = F0 + s[:, None] * (Xc - F0)
    radius = max_offset * np.abs(h) / np.maximum(D0 - h, 1e-9) + 2.0
    dist = np.linalg.norm(Xp[:, None, :] - Xr[None, :, :], axis=-1)
    j, a = np.nonzero(dist <= radius[:, None])
    if j.size < 2:
        return None
    i1, i2 = np.triu_indices(j.size, 1)
    ok = (j[i1] != j[i2]) & (a[i1] != a[i2])
    i1, i2 = i1[ok], i2[ok]
    if i1.size > _MAX_HYPOTHESES:
        keep = np.linspace(0, i1.size - 1, _MAX_HYPOTHESES).astype(int)
        i1, i2 = i1[keep], i2[keep]
    Fh, cle = intersect_rays(Xc[j[i1]], Xr[a[i1]] - Xc[j[i1]], Xc[j[i2]], Xr[a[i2]] - Xc[j[i2]])
    ok = ((cle < cle_gate) & (np.linalg.norm(Fh - F0, axis=-1) <= max_offset)
          & ((Fh - c) @ n > h.max()))
    Fh = Fh[ok]
    if Fh.shape[0] == 0:
        return None
    pred = _predict_controls(Fh, Xc, frame, Hpi)
    d, _ = tree.query(_finite(pred.reshape(-1, 2)), distance_upper_bound=3 * gate_px)
    d = d.reshape(pred.shape[:2])
    hit = np.isfinite(d)
    score = hit.sum(1) - np.where(hit, d, 0.0).sum(1) / (3 * gate_px * Xc.shape[0] + 1.0)
    F = Fh[np.argmax(score)]
    m = b = np.zeros(0, int)
    for g in (3 * gate_px, gate_px, gate_px):
        m, b, _ = _match(_predict_controls(F, Xc, frame, Hpi), tree, g)
        if m.size < 2:
            return None
        Xl = c + lin.apply_h(np.linalg.inv(Hpi), p[idx_free[b]]) @ E
        try:
            F = closest_point_to_lines(Xc[m], Xl - Xc[m])
        except EstimationError:
            return None
    return F, m, idx_free[b]


def _handedness(H_found: np.ndarray, H_nominal: np.ndarray, x0: np.ndarray) -> float:
    """Sign of the Jacobian determinant of nominal image → found image at plane point x0."""
    x = x0 + np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    a, b = lin.apply_h(H_found, x), lin.apply_h(H_nominal, x)
    da, db = a[1:] - a[0], b[1:] - b[0]
    return float(np.sign(np.linalg.det(da) * np.linalg.det(db)))


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------
def identify_markers(uv_px: ArrayLike, cage, *, view: str, pixel_spacing_mm: ArrayLike,
                     image_shape: tuple[int, int], gate_px: float = 3.0,
                     max_focus_offset_mm: float = 300.0, max_shift_mm: float = 80.0,
                     max_rotation_deg: float = 15.0,
                     scale_range: tuple[float, float] = (0.8, 1.25), min_fiducials: int = 6,
                     min_controls: int = 4, min_fraction: float = 0.4,
                     max_rms_px: float = 1.0) -> MarkerMatch:
    """Find the cage's fiducial and control markers among the detected beads of one view.

    Parameters
    ----------
    uv_px : (N, 2) array_like
        Detected bead centres, px (column u, row v). NaN rows (missing beads) are ignored.
    cage : rsa.cage.Cage
        Cage definition (markers with roles and planes, nominal view geometry).
    view : str
        Name of the cage view this image belongs to (``"A"`` or ``"B"``).
    pixel_spacing_mm : float or (2,) array_like
        Detector pixel spacing along u and v, mm.
    image_shape : (int, int)
        Image size (rows, columns).
    gate_px : float, optional
        Final matching gate between a marker's predicted image and a bead, px (default 3 px:
        ≫ detection noise of 0.05–0.3 px, ≪ the ~0.5 mm image of a bead, so a patient bead is
        taken for a hidden marker only if it lies within 0.3 mm of where the marker would be).
    max_focus_offset_mm : float, optional
        How far the real focus may lie from the nominal one (cage file), mm; it bounds the
        parallax window of the control markers. Default 300 mm covers a tube 15 cm off its
        nominal position plus a ±5° rotated cage (≈ 120 mm at 1.4 m focus distance).
    max_shift_mm : float, optional
        Largest shift of the fiducial pattern's centre in the image from its nominal position,
        mm on the detector (default 80: a ±20 mm shifted cage turned by 5° about a centre up to
        0.5 m from the fiducial plane, plus tube offset).
    max_rotation_deg : float, optional
        Largest in-plane rotation of the pattern from nominal (default 15°, cage rotation ±5°).
    scale_range : (float, float), optional
        Allowed scale of the fiducial pattern relative to nominal (magnification differences).
    min_fiducials, min_controls : int, optional
        Absolute minimum numbers of identified fiducial (≥ 4 for a homography) and control
        markers (≥ 2 for a focus; 4 by default for a checkable estimate).
    min_fraction : float, optional
        Minimum fraction of the markers expected in the image (by role) that must be identified
        (default 0.4: a third of the markers may be hidden by anatomy and implants, and random
        hiding scatters around that).
    max_rms_px : float, optional
        Largest acceptable RMS reprojection distance of the identified markers (DLT fit), px.

    Returns
    -------
    MarkerMatch
        Identified markers (bead index → cage id), patient-bead mask and a first projection.

    Raises
    ------
    ShapeError
        `uv_px` is not (N, 2).
    CalibrationError
        Unknown view; cage without ≥ 4 fiducials for the view; too few fiducials or control
        markers identified (wrong cage file, views swapped, wrong view name); RMS too large; or
        the image is mirrored relative to the nominal view (handedness check).
    """
    uv = as_points(uv_px, "uv_px", last=2, min_ndim=2, spec="(N, 2)")
    if uv.ndim != 2:
        raise ShapeError(f"Expected `uv_px` to have shape (N, 2), got {uv.shape}.")
    if view not in cage.views:
        raise CalibrationError(f"Cage {cage.name!r} has no view {view!r} "
                               f"(views: {', '.join(sorted(cage.views))}).")
    rows, cols = int(image_shape[0]), int(image_shape[1])
    sp = np.broadcast_to(np.asarray(pixel_spacing_mm, float), (2,))
    valid = np.isfinite(uv).all(-1)
    vidx = np.flatnonzero(valid)
    p = uv[valid]
    nom = nominal_view(cage, view, sp, (rows, cols))
    in_view = np.isin(cage.planes, cage.views[view].planes)
    fid = np.flatnonzero(in_view & (cage.roles == "fiducial"))
    ctl = np.flatnonzero(in_view & (cage.roles == "control"))
    if fid.size < 4:
        raise CalibrationError(f"Cage {cage.name!r} has {fid.size} fiducial markers for view "
                               f"{view!r}; identification needs at least 4.")
    Xf, Xc = cage.xyz_mm[fid], cage.xyz_mm[ctl]
    try:
        frame = lin.plane_frame(Xf, nom.focus_mm)
    except EstimationError as exc:
        raise CalibrationError(f"Cage {cage.name!r}, view {view!r}: {exc}") from None
    c, E, _ = frame
    xf = (Xf - c) @ E.T
    q = nom.project(Xf)

    def inside(x: np.ndarray) -> np.ndarray:
        return ((x[:, 0] >= -0.5) & (x[:, 0] <= cols - 0.5) & (x[:, 1] >= -0.5)
                & (x[:, 1] <= rows - 0.5))

    exp_f, exp_c = int(inside(q).sum()), int(inside(nom.project(Xc)).sum()) if ctl.size else 0
    if p.shape[0] < 4:
        _too_few(view, "fiducials", 0, exp_f, max(min_fiducials, 4))
    tree = cKDTree(p)
    gate_c = 0.3 * float(np.median(cKDTree(q).query(q, k=2)[0][:, 1]))
    kw = {"scale_range": scale_range, "max_rot": np.radians(max_rotation_deg),
          "max_shift_px": max_shift_mm / float(sp.mean())}

    collinear = [0]  # largest seed match whose fiducials lie on a line

    def candidates(models: list[np.ndarray]) -> list:
        out, seen = [], []
        for qm in models:
            for z, t in _best_similarities(qm, p, tree, gate_c, 3, **kw):
                pred = z * (qm[:, 0] + 1j * qm[:, 1]) + t
                m, b, _ = _match(np.stack([pred.real, pred.imag], -1), tree, gate_c)
                if m.size < 4:
                    continue
                if lin.spread_ratio(xf[m]) < lin.SPREAD_TOL:
                    collinear[0] = max(collinear[0], m.size)
                    continue
                g = _grow_homography(xf, p, tree, m, b, [gate_c, gate_c / 2, 3 * gate_px])
                if g is not None and not any(set(g[2]) == s for s in seen):
                    seen.append(set(g[2]))
                    out.append(g)
        return out

    Xall = np.concatenate([Xf, Xc])
    best = None
    for Hpi, mf, bf in candidates([q]):
        res = {"Hpi": Hpi, "n_f": mf.size, "n_c": 0, "m": mf, "b": bf, "P": None, "rms": np.inf}
        free = np.ones(p.shape[0], bool)
        free[bf] = False
        found = _find_controls(Hpi, frame, nom.focus_mm, Xc, p, free,
                               max_offset=max_focus_offset_mm, gate_px=gate_px)
        if found is not None:
            P = Hpi @ lin.plane_projection_matrix(found[0], *frame)
            for g in (3 * gate_px, gate_px, gate_px):
                m, b, d = _match(lin.project(P, Xall), tree, g)
                try:
                    P = lin.fit_projection(Xall[m], p[b])
                except EstimationError:
                    break
            m, b, d = _match(lin.project(P, Xall), tree, gate_px)
            res.update(P=P, m=m, b=b, n_f=int((m < fid.size).sum()),
                       n_c=int((m >= fid.size).sum()),
                       rms=float(np.sqrt(np.mean(d**2))) if d.size else np.inf)
        key = (res["n_f"] + res["n_c"], -res["rms"])
        if best is None or key > (best["n_f"] + best["n_c"], -best["rms"]):
            best = res

    n_f = 0 if best is None else best["n_f"]
    if best is not None:  # markers expected in the image: by the found view, not the nominal
        exp_f = int(inside(lin.apply_h(best["Hpi"], xf)).sum())
        if best["P"] is not None and ctl.size:
            exp_c = int(inside(lin.project(best["P"], Xc)).sum())
    need_f = max(min_fiducials, 4, int(np.ceil(min_fraction * exp_f)))
    H0 = lin.fit_homography(xf, q)
    if n_f < need_f:
        # Before blaming the cage: would a left-right or up-down flipped image fit?
        q_lr = np.column_stack([cols - 1 - q[:, 0], q[:, 1]])
        q_ud = np.column_stack([q[:, 0], rows - 1 - q[:, 1]])
        flipped = [g for g in candidates([q_lr, q_ud]) if g[1].size >= need_f]
        if any(_handedness(g[0], H0, xf.mean(0)) < 0 for g in flipped):
            _mirrored(view, max(g[1].size for g in flipped), exp_f)
        if collinear[0] >= max(n_f, min_fiducials):
            raise CalibrationError(
                f"view {view}: the {collinear[0]} fiducials found lie (nearly) on a line "
                f"(collinear), {n_f} of {exp_f} otherwise; the fiducial-plane homography needs "
                "fiducials spread in two directions.")
        _too_few(view, "fiducials", n_f, exp_f, need_f)
    if _handedness(best["Hpi"], H0, xf.mean(0)) < 0:
        _mirrored(view, n_f, exp_f)
    need_c = max(min_controls, 2, int(np.ceil(min_fraction * exp_c)))
    if best["n_c"] < need_c:
        raise CalibrationError(
            f"view {view}: identified {best['n_c']} of {exp_c} control markers (need ≥ {need_c}) "
            f"with the focus within {max_focus_offset_mm:g} mm of the nominal focus: views "
            "swapped, wrong cage file, or the tube far from its nominal position?")
    if best["rms"] > max_rms_px:
        raise CalibrationError(
            f"view {view}: the {n_f + best['n_c']} identified markers fit the projection with "
            f"RMS {best['rms']:.2f} px (limit {max_rms_px:g} px): wrong cage file or distorted "
            "image?")
    m, b = best["m"], best["b"]
    midx = np.concatenate([fid, ctl])[m]
    patient = valid.copy()
    patient[vidx[b]] = False
    P = best["P"]
    return MarkerMatch(view=view, bead_index=vidx[b], marker_index=midx, ids=cage.ids[midx],
                       roles=cage.roles[midx], patient_mask=patient, n_fiducials=n_f,
                       n_controls=best["n_c"], n_fiducials_expected=exp_f,
                       n_controls_expected=exp_c, projection_matrix=P, focus_mm=lin.focus_of(P),
                       rms_px=best["rms"])


def _too_few(view: str, what: str, found: int, expected: int, need: int) -> None:
    raise CalibrationError(f"view {view}: identified {found} of {expected} {what} (need ≥ {need}):"
                           " wrong cage file, wrong view name, or views swapped?")


def _mirrored(view: str, found: int, expected: int) -> None:
    raise CalibrationError(f"view {view}: the fiducial pattern matches a mirrored image ({found} "
                           f"of {expected} fiducials with reversed handedness): the image is "
                           "flipped; check the image orientation before calibrating.")
