"""Synthetic calibration scenes with ground truth for the calibrate/identify tests and benchmark.

No images are rendered: cage markers, patient beads and clutter are projected exactly through a
perturbed copy of the cage file's nominal geometry (rsa.synthetic.geometry.DetectorView), then
Gaussian detection noise is added, markers are hidden and the bead list is shuffled. The scene
records which detected bead is which cage marker / patient bead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from rsa.cage import load_cage
from rsa.synthetic.geometry import DetectorView

PIXEL_SPACING_MM = 0.14
IMAGE_SHAPE = (3000, 3000)
#: Centre of the patient volume per cage (documented in the cage files' descriptions).
PATIENT_CENTRE = {"uniplanar": np.array([0.0, 0.0, 300.0]), "biplanar": np.zeros(3)}


def get_cage(name: str):
    """Shipped cage `name` (rsa.cage.load_cage)."""
    return load_cage(name)


@dataclass
class ViewScene:
    """Detected beads of one view with truth labels."""

    uv_px: np.ndarray          # (N, 2) noisy detected centres, shuffled
    uv_true: np.ndarray        # (N, 2) exact projections
    marker: np.ndarray         # (N,) cage marker index or -1
    patient: np.ndarray        # (N,) patient bead index or -1 (clutter: both -1)
    view: DetectorView         # true geometry


@dataclass
class Exam:
    """Two views of one cage exposure and the true patient bead positions."""

    cage: object
    a: ViewScene
    b: ViewScene
    patient_xyz: np.ndarray    # (P, 3) true patient bead centres, mm


def _true_view(cage, name, rng, *, R, shift, centre, focus_sd, focus_depth):
    cv = cage.views[name]
    n = np.array(cv.detector_normal, float)
    n /= np.linalg.norm(n)
    f = np.asarray(cv.focus_mm, float) + rng.normal(0, focus_sd, 3)
    f = f + rng.uniform(-focus_depth, focus_depth) * n  # magnification difference
    up = np.asarray(cv.detector_up, float)
    v_axis = -(up - (up @ n) * n)
    v_axis /= np.linalg.norm(v_axis)
    u_axis = np.cross(v_axis, n)
    rows, cols = IMAGE_SHAPE
    sp = PIXEL_SPACING_MM
    origin = (np.asarray(cv.detector_centre_mm, float) - (cols - 1) / 2 * sp * u_axis
              - (rows - 1) / 2 * sp * v_axis)
    # The cage moves by (R, shift) relative to tube and detector: in the cage frame the setup
    # moves by the inverse.
    def inv(x):
        return (x - centre - shift) @ R + centre

    return DetectorView(focus_mm=inv(f), origin_mm=inv(origin), u_axis=u_axis @ R,
                        v_axis=v_axis @ R, pixel_spacing_mm=(sp, sp), shape=IMAGE_SHAPE,
                        name=name)


def _inside(view: DetectorView, uv: np.ndarray, margin: float = 10.0) -> np.ndarray:
    rows, cols = view.shape
    return ((uv[:, 0] > margin) & (uv[:, 0] < cols - 1 - margin) & (uv[:, 1] > margin)
            & (uv[:, 1] < rows - 1 - margin))


def make_exam(cage, rng, *, noise_px=0.05, hidden=0.0, n_patient=20, n_clutter=0,
              rot_deg=0.0, shift_mm=0.0, focus_sd=20.0, focus_depth=60.0,
              min_sep_mm=1.5) -> Exam:
    """Random exam: both views of `cage` with perturbed geometry and truth.

    rot_deg, shift_mm: magnitude of the cage rotation (about a random axis through the centroid
    of its markers) and shift (random direction); hidden: fraction of each view's visible markers
    removed; n_clutter: extra single-view detections uniformly over the image (bead-like
    artefacts, patient beads seen in one view only); min_sep_mm: patient beads and clutter are
    kept this far (on the detector) from marker images, as a detector could not separate them.
    """
    rng = np.random.default_rng(rng)
    centre = cage.xyz_mm.mean(0)  # the cage turns about its own centre
    axis = rng.normal(size=3)
    R = Rotation.from_rotvec(np.radians(rot_deg) * axis / np.linalg.norm(axis)).as_matrix()
    d = rng.normal(size=3)
    shift = shift_mm * d / np.linalg.norm(d)
    views = {k: _true_view(cage, k, rng, R=R, shift=shift, centre=centre, focus_sd=focus_sd,
                           focus_depth=focus_depth) for k in ("A", "B")}
    # patient beads visible in both views
    pts = np.zeros((0, 3))
    while pts.shape[0] < n_patient:
        cand = PATIENT_CENTRE[cage.kind] + rng.uniform(-50, 50, (4 * n_patient, 3))
        ok = np.ones(cand.shape[0], bool)
        for v in views.values():
            ok &= _inside(v, v.project(cand), 50.0)
        pts = np.concatenate([pts, cand[ok]])[:n_patient]
    scenes = []
    for k, v in views.items():
        sel = np.flatnonzero(np.isin(cage.planes, cage.views[k].planes))
        uvm = v.project(cage.xyz_mm[sel])
        keep = _inside(v, uvm)
        sel, uvm = sel[keep], uvm[keep]
        n_hide = round(hidden * sel.size)
        if n_hide:
            shown = np.sort(rng.permutation(sel.size)[n_hide:])
            all_uvm, sel, uvm = uvm, sel[shown], uvm[shown]
        else:
            all_uvm = uvm
        uvp = v.project(pts)
        rows, cols = v.shape
        clutter = rng.uniform([20, 20], [cols - 21, rows - 21], (n_clutter, 2))
        extra = np.concatenate([uvp, clutter])
        # keep patient/clutter detections apart from every (also hidden) marker image
        dmin = np.linalg.norm(extra[:, None] - all_uvm[None], axis=-1).min(1)
        far = dmin * PIXEL_SPACING_MM >= min_sep_mm
        far[: pts.shape[0]] = True  # patient beads must stay (needed in both views) ...
        uv_true = np.concatenate([uvm, extra[far]])
        marker = np.concatenate([sel, np.full(int(far.sum()), -1)])
        patient = np.concatenate([np.full(sel.size, -1), np.arange(pts.shape[0]),
                                  np.full(int(far[pts.shape[0]:].sum()), -1)])
        order = rng.permutation(uv_true.shape[0])
        uv_true, marker, patient = uv_true[order], marker[order], patient[order]
        uv = uv_true + rng.normal(0, noise_px, uv_true.shape)
        scenes.append(ViewScene(uv_px=uv, uv_true=uv_true, marker=marker, patient=patient,
                                view=v))
    return Exam(cage=cage, a=scenes[0], b=scenes[1], patient_xyz=pts)


def patient_pairs(exam: Exam) -> tuple[np.ndarray, np.ndarray]:
    """Indices (P,) into view A's and view B's beads of each patient bead, by patient index."""
    ia = np.full(exam.patient_xyz.shape[0], -1)
    ib = ia.copy()
    ma, mb = exam.a.patient >= 0, exam.b.patient >= 0
    ia[exam.a.patient[ma]] = np.flatnonzero(ma)
    ib[exam.b.patient[mb]] = np.flatnonzero(mb)
    return ia, ib
