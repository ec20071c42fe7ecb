"""Tests of rsa.calibrate against constructed truth (exact projections of the shipped cages).

Scenes come from tests/calibrate_scenes.py: the cage file's nominal geometry, perturbed (focus
±20 mm per axis and ±60–100 mm along the axis, cage rotated 5° and shifted 20 mm, 30 % of the
markers hidden, bead-like clutter over the cage's projection), projected exactly by
rsa.synthetic.geometry.DetectorView, plus Gaussian detection noise.
"""

from __future__ import annotations

import io
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from calibrate_scenes import (
    IMAGE_SHAPE,
    PIXEL_SPACING_MM,
    get_cage,
    make_exam,
    patient_pairs,
)
from hypothesis import given
from hypothesis import strategies as st

from rsa import _calibrate_linear as lin
from rsa.calibrate import (
    ExamCalibration,
    View,
    calibrate_exam,
    calibrate_view,
    plot_calibration,
)
from rsa.errors import CalibrationError, ShapeError
from rsa.synthetic.geometry import look_at_view
from rsa.triangulate import intersect_rays
from rsa.triangulate_ml import triangulate_ml

KW = {"pixel_spacing_mm": PIXEL_SPACING_MM, "image_shape": IMAGE_SHAPE}
CAGES = {name: get_cage(name) for name in ("uniplanar", "biplanar")}
HARD = {"hidden": 0.3, "n_clutter": 20, "rot_deg": 5.0, "shift_mm": 20.0, "focus_depth": 100.0}
METHODS = [("film-to-cage", False), ("film-to-cage", True), ("dlt", False), ("dlt", True)]


def _triangulate(cal: ExamCalibration, exam, *, exact: bool = False) -> np.ndarray:
    ia, ib = patient_pairs(exam)
    a = exam.a.uv_true if exact else exam.a.uv_px
    b = exam.b.uv_true if exact else exam.b.uv_px
    return cal.triangulate(a[ia], b[ib])[0]


@pytest.mark.parametrize(("method", "refine"), METHODS)
@pytest.mark.parametrize("cage_name", list(CAGES))
def test_zero_noise_exact(cage_name, method, refine):
    cage = CAGES[cage_name]
    exam = make_exam(cage, 5, noise_px=0.0, **HARD)
    cal = calibrate_exam(exam.a.uv_px, exam.b.uv_px, cage, method=method, refine=refine, **KW)
    for view, scene in ((cal.a, exam.a), (cal.b, exam.b)):
        assert view.method == method
        assert view.refined is refine
        # required: focus within 0.05 mm; exact arithmetic gives ~1e-9 mm
        assert np.linalg.norm(view.focus_mm - scene.view.focus_mm) < 0.05
        x = exam.cage.xyz_mm
        np.testing.assert_allclose(view.project(x), scene.view.project(x), atol=1e-6)
        assert view.rms_px < 1e-6
    err = np.linalg.norm(_triangulate(cal, exam) - exam.patient_xyz, axis=-1)
    assert err.max() < 1e-3  # < 1 µm


@pytest.mark.parametrize("method", ["film-to-cage", "dlt"])
@pytest.mark.parametrize("cage_name", list(CAGES))
def test_noise_accuracy(cage_name, method):
    # σ = 0.05 px (realistic sub-pixel detection). Requirement: patient-bead RMS ≤ 0.02 mm.
    # The beads' own noise alone (triangulated with the TRUE views) gives ≈ 0.011 mm
    # (uniplanar, 36° between views) and ≈ 0.007 mm (biplanar); the calibration adds ≈ 0.005 mm
    # in quadrature, so 0.02 mm is met with margin but would fail if the calibration error
    # were ≳ 3× its predicted size.
    cage = CAGES[cage_name]
    sq = []
    for seed in range(3):
        exam = make_exam(cage, 40 + seed, noise_px=0.05, **HARD)
        cal = calibrate_exam(exam.a.uv_px, exam.b.uv_px, cage, method=method, **KW)
        sq.append(np.sum((_triangulate(cal, exam) - exam.patient_xyz) ** 2, -1))
        for view, scene in ((cal.a, exam.a), (cal.b, exam.b)):
            # residual length RMS ≈ σ√2·√(1 − 11/2K) ≈ 0.07 px for K ≈ 50–90 markers
            assert 0.05 < view.rms_px < 0.09
            # focus: ~0.1–0.3 mm spread for this noise (parameter covariance); 5σ bound
            sd = np.sqrt(np.trace(view.param_cov[:3, :3]))
            assert np.linalg.norm(view.focus_mm - scene.view.focus_mm) < 5 * sd
    assert np.sqrt(np.mean(np.concatenate(sq))) <= 0.02


@pytest.mark.parametrize("cage_name", list(CAGES))
def test_predicted_uncertainty(cage_name):
    # Calibration-only error: triangulate the EXACT images of the patient beads with views
    # calibrated from noisy markers; compare its RMS over 6 exams with the Monte Carlo
    # prediction from the parameter covariance. Each exam contributes one draw of 22 correlated
    # parameters, so the measured mean square has ~25 % relative spread: accept a ratio of RMS
    # in [0.5, 1.7] (≈ 3σ).
    cage = CAGES[cage_name]
    meas, pred = [], []
    for seed in range(6):
        exam = make_exam(cage, 70 + seed, noise_px=0.05, **HARD)
        cal = calibrate_exam(exam.a.uv_px, exam.b.uv_px, cage, **KW)
        meas.append(np.sum((_triangulate(cal, exam, exact=True) - exam.patient_xyz) ** 2, -1))
        sd, rms = cal.uncertainty(exam.patient_xyz, n_samples=500, rng=seed)
        assert sd.shape == exam.patient_xyz.shape
        np.testing.assert_allclose(rms, np.sqrt((sd**2).sum(-1)))
        pred.append(rms**2)
    ratio = np.sqrt(np.mean(np.concatenate(meas)) / np.mean(np.concatenate(pred)))
    assert 0.5 < ratio < 1.7


@pytest.fixture(scope="module")
def calibrated():
    exam = make_exam(CAGES["biplanar"], 3, noise_px=0.05, **HARD)
    cal = calibrate_exam(exam.a.uv_px, exam.b.uv_px, CAGES["biplanar"], **KW)
    return exam, cal


def test_view_attributes(calibrated):
    exam, cal = calibrated
    v, sc = cal.a, exam.a
    k = v.marker_index.size
    assert v.residuals_px.shape == (k, 2)
    assert v.residuals_mm.shape == (k,)
    np.testing.assert_allclose(v.residuals_px, v.marker_uv_px - v.project(v.marker_xyz_mm))
    assert v.rms_px == pytest.approx(np.sqrt(np.mean(np.sum(v.residuals_px**2, -1))))
    # object-space residual ≈ image residual × pixel / magnification (≈ 1.0–1.1 at the markers)
    ratio = v.rms_mm / (v.rms_px * PIXEL_SPACING_MM)
    assert 0.8 < ratio < 1.0
    np.testing.assert_array_equal(sc.marker[v.bead_index], v.marker_index)
    np.testing.assert_array_equal(v.patient_mask, sc.marker < 0)
    np.testing.assert_array_equal(v.marker_ids, exam.cage.ids[v.marker_index])
    assert v.method_label == "film-to-cage+refined"
    # focus–detector distance and principal point against the true detector
    tv = sc.view
    fd = abs((tv.origin_mm - tv.focus_mm) @ tv.normal)
    assert v.focus_detector_distance_mm == pytest.approx(fd, abs=1.0)
    foot = tv.focus_mm + ((tv.origin_mm - tv.focus_mm) @ tv.normal) * tv.normal
    np.testing.assert_allclose(v.principal_point_px,
                               [(foot - tv.origin_mm) @ tv.u_axis / PIXEL_SPACING_MM,
                                (foot - tv.origin_mm) @ tv.v_axis / PIXEL_SPACING_MM], atol=10.0)
    with pytest.raises(ValueError, match="read-only"):
        v.focus_mm[0] = 0.0
    # angle between the central rays, against the true views
    rows, cols = IMAGE_SHAPE
    c = [(cols - 1) / 2, (rows - 1) / 2]
    da, db = exam.a.view.rays(c)[1], exam.b.view.rays(c)[1]
    assert cal.angle_deg == pytest.approx(np.degrees(np.arccos(da @ db)), abs=0.05)
    assert cal.focus_distance_mm == pytest.approx(
        np.linalg.norm(exam.a.view.focus_mm - exam.b.view.focus_mm), abs=1.0)


def test_rays_batch_and_roundtrip(calibrated):
    _, cal = calibrated
    v = cal.b
    uv = np.random.default_rng(1).uniform(0, 3000, (4, 5, 2))
    o, d = v.rays(uv)
    assert o.shape == d.shape == (4, 5, 3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0)
    np.testing.assert_allclose(v.project(o + 700.0 * d), uv, atol=1e-7)
    # directions point from the focus towards the cage / detector
    centre = v.marker_xyz_mm.mean(0) - v.focus_mm
    assert np.all(d @ centre > 0)
    with pytest.raises(ShapeError, match=r"Expected `uv_px` to have shape \(\.\.\., 2\)"):
        v.rays(np.zeros((3, 3)))


@given(st.lists(st.floats(-80, 80), min_size=3, max_size=3))
def test_project_rays_roundtrip_property(xyz):
    view = _VIEW
    x = np.asarray(xyz)
    o, d = view.rays(view.project(x))
    # the ray through the image of x passes through x
    v = x - o
    assert np.linalg.norm(v - (v @ d) * d) < 1e-6


_EXAM0 = make_exam(CAGES["uniplanar"], 2, noise_px=0.05)
_VIEW = calibrate_view(_EXAM0.a.uv_px, CAGES["uniplanar"], view="A", **KW)


def test_beads_object_sigma_and_attributes():
    sc = _EXAM0.a
    beads = SimpleNamespace(uv_px=sc.uv_px, sigma_px=np.full(sc.uv_px.shape, 0.05),
                            pixel_spacing_mm=(PIXEL_SPACING_MM, PIXEL_SPACING_MM),
                            image_shape=IMAGE_SHAPE)
    v = calibrate_view(beads, CAGES["uniplanar"], view="A")
    # uniform σ only rescales the cost: same optimum as the unweighted fit
    np.testing.assert_allclose(v.focus_mm, _VIEW.focus_mm, atol=1e-3)
    # covariance from the reduced χ² does not depend on the σ scale either
    np.testing.assert_allclose(v.param_cov[:3, :3], _VIEW.param_cov[:3, :3], rtol=1e-2)
    with pytest.raises(ShapeError, match=r"Expected `beads.sigma_px` to have shape"):
        calibrate_view(SimpleNamespace(uv_px=sc.uv_px, sigma_px=np.ones(3)),
                       CAGES["uniplanar"], view="A", **KW)


def test_film_to_cage_non_coplanar_fiducials():
    # fiducials up to ±1 mm off their plane: the focus iteration re-projects them onto the
    # best-fit plane, so zero-noise calibration stays exact (without it: ~0.1 mm focus error)
    cage = CAGES["uniplanar"]
    xyz = cage.xyz_mm.copy()
    fid = cage.roles == "fiducial"
    xyz[fid, 2] += np.random.default_rng(0).uniform(-1, 1, fid.sum())
    bumpy = replace(cage, xyz_mm=xyz)
    exam = make_exam(bumpy, 8, noise_px=0.0, **HARD)
    v = calibrate_view(exam.a.uv_px, bumpy, view="A", refine=False, **KW)
    assert np.linalg.norm(v.focus_mm - exam.a.view.focus_mm) < 1e-4
    frame = lin.plane_frame(xyz[fid], v.focus_mm)
    sel = v.marker_roles == "fiducial"
    _, F1, _ = lin.film_to_cage(v.marker_xyz_mm[sel], v.marker_uv_px[sel],
                                v.marker_xyz_mm[~sel], v.marker_uv_px[~sel], frame, n_iter=1)
    assert np.linalg.norm(F1 - exam.a.view.focus_mm) > 1e-3  # the iteration matters


def test_camera_parameterisation_roundtrip():
    dv = look_at_view(focus_mm=[-400, 10, 1400], detector_centre_mm=[40, 0, -25], up=[0, 1, 0],
                      pixel_spacing_mm=0.14, shape=(3000, 3000), detector_normal=[0, 0, -1])
    P = dv.projection_matrix()
    theta, R0 = lin.params_from_camera(P)
    np.testing.assert_allclose(theta[:3], dv.focus_mm, atol=1e-9)
    assert theta[6] * 0.14 == pytest.approx(1425.0)  # fx · pixel = focus–detector distance
    P2 = lin.camera_from_params(theta, R0)
    np.testing.assert_allclose(P2 / np.linalg.norm(P2), P / np.linalg.norm(P) * np.sign(
        P.ravel() @ P2.ravel()), atol=1e-12)
    assert lin.camera_from_params(np.broadcast_to(theta, (2, 3, 11)), R0).shape == (2, 3, 3, 4)


def test_plot_calibration():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    out = plot_calibration(_VIEW, _EXAM0.a.uv_px, ax=ax)
    assert out is ax
    assert len(ax.collections) == 2  # residual quivers of fiducials and controls
    assert len(ax.lines) == 3  # patient beads, fiducials, controls
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.tell() > 1000
    plt.close(fig)
    ax2 = plot_calibration(_VIEW)
    plt.close(ax2.figure)


# -- degenerate input ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hard_exam():
    return make_exam(CAGES["uniplanar"], 9, **HARD)


def test_swapped_views(hard_exam):
    for name in CAGES:
        exam = make_exam(CAGES[name], 9, **HARD) if name != "uniplanar" else hard_exam
        with pytest.raises(CalibrationError, match=r"views swapped: the image given as view A "
                                                   r"calibrates as cage view B"):
            calibrate_exam(exam.b.uv_px, exam.a.uv_px, CAGES[name], **KW)


def test_mirrored_image(hard_exam):
    uv = hard_exam.b.uv_px.copy()
    uv[:, 0] = IMAGE_SHAPE[1] - 1 - uv[:, 0]
    with pytest.raises(CalibrationError, match=r"view B: .*mirrored"):
        calibrate_exam(hard_exam.a.uv_px, uv, CAGES["uniplanar"], **KW)


def test_wrong_cage(hard_exam):
    with pytest.raises(CalibrationError, match=r"identified \d+ of \d+ fiducials.*wrong cage"):
        calibrate_exam(hard_exam.a.uv_px, hard_exam.b.uv_px, CAGES["biplanar"], **KW)


def test_too_few_markers(hard_exam):
    sc = hard_exam.a
    keep = (sc.marker < 0) | (np.cumsum(sc.marker >= 0) <= 5)
    with pytest.raises(CalibrationError, match=r"view A: identified \d+ of \d+ fiducials"):
        calibrate_view(sc.uv_px[keep], CAGES["uniplanar"], view="A", **KW)


def test_collinear_fiducials():
    cage = CAGES["uniplanar"]
    xyz = cage.xyz_mm.copy()
    xyz[cage.roles == "fiducial", 1] = 0.0
    with pytest.raises(CalibrationError, match="collinear"):
        calibrate_view(np.zeros((10, 2)), replace(cage, xyz_mm=xyz), view="A", **KW)


def test_bad_arguments():
    uv = _EXAM0.a.uv_px
    cage = CAGES["uniplanar"]
    with pytest.raises(CalibrationError, match="needs `pixel_spacing_mm` and `image_shape`"):
        calibrate_view(uv, cage, view="A")
    with pytest.raises(CalibrationError, match="Unknown calibration method 'bundle'"):
        calibrate_view(uv, cage, view="A", method="bundle", **KW)
    with pytest.raises(CalibrationError, match="distortion correction is not implemented"):
        calibrate_view(uv, cage, view="A", distortion="radial", **KW)
    with pytest.raises(ShapeError, match=r"Expected `beads` to have shape \(N, 2\)"):
        calibrate_view(np.zeros(4), cage, view="A", **KW)


def test_intersect_consistency(calibrated):
    # ExamCalibration.triangulate is intersect_rays on the two views' rays
    exam, cal = calibrated
    ia, ib = patient_pairs(exam)
    oa, da = cal.a.rays(exam.a.uv_px[ia])
    ob, db = cal.b.rays(exam.b.uv_px[ib])
    p, cle = intersect_rays(oa, da, ob, db)
    p2, cle2 = cal.triangulate(exam.a.uv_px[ia], exam.b.uv_px[ib])
    np.testing.assert_array_equal(p, p2)
    np.testing.assert_array_equal(cle, cle2)
    assert isinstance(cal.a, View)
    # with each view's σ: the σ-weighted point of rsa.triangulate_ml, the same CLE
    rng = np.random.default_rng(3)
    sa, sb = rng.uniform(0.01, 0.5, len(ia)), rng.uniform(0.01, 0.5, (len(ia), 2))
    p3, cle3 = cal.triangulate(exam.a.uv_px[ia], exam.b.uv_px[ib], sigma_px=(sa, sb))
    P = np.stack([cal.a.projection_matrix, cal.b.projection_matrix])
    uv = np.stack([exam.a.uv_px[ia], exam.b.uv_px[ib]], axis=1)
    want, _ = triangulate_ml(P, uv, np.stack([np.repeat(sa[:, None], 2, 1), sb], axis=1))
    np.testing.assert_array_equal(p3, want)
    np.testing.assert_array_equal(cle3, cle)
    with pytest.raises(ShapeError, match=r"`sigma_px` b to have shape"):
        cal.triangulate(exam.a.uv_px[ia], exam.b.uv_px[ib], sigma_px=(sa, sb[:2]))


def test_reuse_identification():
    # the same identification gives the same calibration; one of another view is refused
    v = calibrate_view(_EXAM0.a.uv_px, CAGES["uniplanar"], view="A",
                       identification=_VIEW.identification, **KW)
    np.testing.assert_allclose(v.projection_matrix, _VIEW.projection_matrix, atol=1e-12)
    with pytest.raises(CalibrationError, match="identification is of view 'A'"):
        calibrate_view(_EXAM0.b.uv_px, CAGES["uniplanar"], view="B",
                       identification=_VIEW.identification, **KW)


# -- end to end through rendered radiographs (slow) ----------------------------------------------
def _centroid_beads(image: np.ndarray, radius_px: float) -> np.ndarray:
    """Minimal reference detector for the end-to-end test (not rsa.detect): background removed
    by a coarse median, blobs above 5 noise SD, intensity-weighted centroids (u, v)."""
    from scipy import ndimage as ndi

    f = image.astype(float)
    bg = ndi.zoom(ndi.median_filter(f[::4, ::4], size=9), 4, order=1)[: f.shape[0], : f.shape[1]]
    hp = f - bg
    noise = 1.4826 * np.median(np.abs(hp - np.median(hp)))
    lab, n = ndi.label(ndi.gaussian_filter(hp, 1.0) > 5 * noise)
    idx = np.arange(1, n + 1)
    area = ndi.sum(np.ones_like(hp), lab, idx)
    keep = idx[(area > 0.3 * np.pi * radius_px**2) & (area < 3 * np.pi * radius_px**2)]
    return np.array(ndi.center_of_mass(np.clip(hp, 0, None), lab, keep))[:, ::-1]


@pytest.mark.slow
@pytest.mark.parametrize("detector", ["centroid", "detect_beads"])
@pytest.mark.parametrize("setup", ["uniplanar", "biplanar"])
def test_end_to_end_rendered(setup, detector):
    # Phantom scene (rsa.synthetic.scene: implant, anatomy, perturbed geometry) rendered
    # physically (blur, quantum noise, implant shadows hiding beads) → bead centres (the minimal
    # centroid detector above, or rsa.detect.detect_beads) → calibrate_exam. Truth label of a
    # detection: the exact projection within 1 px of it; spurious detections (implant edges,
    # partly hidden beads) stay in the list as clutter.
    from rsa.detect import detect_beads
    from rsa.synthetic.render import render_view
    from rsa.synthetic.scene import build_scene

    scene = build_scene("implant", setup=setup, seed=3)
    exam, cage = scene.exams[0], scene.cage
    pat = np.concatenate(list(scene.exam_beads(exam).values()))
    centres = np.concatenate([cage.xyz_mm, pat])
    radii = np.concatenate([cage.diameter_mm] + [s.diameter_mm for s in scene.segments]) / 2
    beads, labels, exact = [], [], []
    for v in exam.views:
        rv = render_view(v, centres, radii, capsules=scene.exam_capsules(exam), rng=3)
        if detector == "centroid":
            uv = _centroid_beads(rv.image, 0.55 / v.pixel_spacing_mm[0])
        else:
            uv = detect_beads(rv.image, pixel_spacing_mm=v.pixel_spacing_mm).uv_px
        d = np.linalg.norm(uv[:, None] - rv.uv_px[None], axis=-1)
        beads.append(uv)
        labels.append(np.where(d.min(1) < 1.0, d.argmin(1), -1))
        exact.append(rv.uv_px)
    v0 = exam.views[0]
    cal = calibrate_exam(beads[0], beads[1], cage, views=(v0.name, exam.views[1].name),
                         pixel_spacing_mm=v0.pixel_spacing_mm, image_shape=v0.shape)
    n_cage = cage.xyz_mm.shape[0]
    for v, lab, tv in zip((cal.a, cal.b), labels, exam.views, strict=True):
        np.testing.assert_array_equal(lab[v.bead_index], v.marker_index)  # no wrong labels
        assert v.bead_index.size == np.count_nonzero((lab >= 0) & (lab < n_cage))
        assert v.rms_px < 0.1  # centres of rendered markers are good to ~0.01–0.03 px
        assert np.linalg.norm(v.focus_mm - tv.focus_mm) < 0.5
    # Calibration-only error at the patient beads (their exact images): a fraction of the
    # chain's 0.02 mm budget (issue #6).
    p, _ = cal.triangulate(exact[0][n_cage:], exact[1][n_cage:])
    assert np.sqrt(np.mean(np.sum((p - pat) ** 2, -1))) <= 0.01
    if detector == "detect_beads":  # the whole chain on the patient beads found in both views
        common = np.intersect1d(labels[0][labels[0] >= n_cage],
                                labels[1][labels[1] >= n_cage])
        assert common.size >= 8
        ia = np.array([np.flatnonzero(labels[0] == k)[0] for k in common])
        ib = np.array([np.flatnonzero(labels[1] == k)[0] for k in common])
        p, _ = cal.triangulate(beads[0][ia], beads[1][ib])
        assert np.sqrt(np.mean(np.sum((p - centres[common]) ** 2, -1))) <= 0.02
