"""Tests of rsa.identify: automatic cage-marker identification against constructed truth.

Scenes (tests/calibrate_scenes.py) project the shipped cages through perturbed nominal views
exactly (no rendering) and add Gaussian detection noise of σ = 0.05 px, so every detected bead's
true identity is known. Identification is "correct" when every visible marker is found with its
own cage index and no other bead is taken for a marker.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from calibrate_scenes import IMAGE_SHAPE, PIXEL_SPACING_MM, get_cage, make_exam

from rsa import _calibrate_linear as lin
from rsa.errors import CalibrationError, EstimationError, ShapeError
from rsa.identify import MarkerMatch, identify_markers, nominal_view

KW = {"pixel_spacing_mm": PIXEL_SPACING_MM, "image_shape": IMAGE_SHAPE}
CAGES = {name: get_cage(name) for name in ("uniplanar", "biplanar")}
HARD = {"hidden": 0.3, "n_clutter": 40, "rot_deg": 5.0, "shift_mm": 20.0}
SCENARIOS = {
    "clean": {},
    "hidden30": {"hidden": 0.3},
    # 40 bead-like detections spread over the whole image, i.e. over the cage's projection
    "clutter": {"n_clutter": 40, "n_patient": 40},
    "rot5": {"rot_deg": 5.0},
    "shift20": {"shift_mm": 20.0},
    "magnification": {"focus_depth": 150.0},  # focus ±150 mm along the axis
    "combined": {**HARD, "focus_depth": 100.0},
}


def _assert_correct(match: MarkerMatch, scene, cage) -> None:
    truth = scene.marker
    assert np.array_equal(truth[match.bead_index], match.marker_index), "wrong marker labels"
    assert match.bead_index.size == np.count_nonzero(truth >= 0), "visible markers missed"
    assert np.array_equal(match.patient_mask, truth < 0)
    assert np.array_equal(match.ids, cage.ids[match.marker_index])
    roles = cage.roles[match.marker_index]
    assert np.array_equal(match.roles, roles)
    assert match.n_fiducials == np.count_nonzero(roles == "fiducial")
    assert match.n_controls == np.count_nonzero(roles == "control")


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("cage_name", list(CAGES))
def test_identification_correct(cage_name, scenario):
    cage = CAGES[cage_name]
    for seed in range(3):
        exam = make_exam(cage, 100 * seed + 7, **SCENARIOS[scenario])
        for view, scene in (("A", exam.a), ("B", exam.b)):
            match = identify_markers(scene.uv_px, cage, view=view, **KW)
            _assert_correct(match, scene, cage)
            # σ = 0.05 px per axis: the DLT residual length has RMS ≈ σ√2 ≈ 0.07 px; 0.12 px
            # leaves room for the scatter of a 50–90 marker RMS and the 11 fitted parameters.
            assert match.rms_px < 0.12
            assert np.linalg.norm(match.focus_mm - scene.view.focus_mm) < 2.0


@pytest.mark.parametrize("factor", [1 / 1.1, 1.15])
def test_image_scale_mismatch(factor):
    # Stated pixel spacing off by 10-15 % (e.g. PixelSpacing vs ImagerPixelSpacing): the
    # pattern appears magnified, identification must still be exact.
    cage = CAGES["uniplanar"]
    exam = make_exam(cage, 3, **HARD)
    match = identify_markers(exam.a.uv_px, cage, view="A", pixel_spacing_mm=PIXEL_SPACING_MM *
                             factor, image_shape=IMAGE_SHAPE)
    _assert_correct(match, exam.a, cage)


def test_nan_rows_and_order_preserved():
    cage = CAGES["biplanar"]
    exam = make_exam(cage, 11)
    uv = exam.b.uv_px.copy()
    uv[[0, 5]] = np.nan
    match = identify_markers(uv, cage, view="B", **KW)
    assert not match.patient_mask[[0, 5]].any()
    assert not np.isin([0, 5], match.bead_index).any()
    truth = exam.b.marker
    assert np.array_equal(truth[match.bead_index], match.marker_index)
    assert match.bead_index.size == np.count_nonzero(truth >= 0) - np.count_nonzero(
        truth[[0, 5]] >= 0)


def test_nominal_view_matches_cage_file():
    cage = CAGES["uniplanar"]
    nv = nominal_view(cage, "A", PIXEL_SPACING_MM, IMAGE_SHAPE)
    cv = cage.views["A"]
    np.testing.assert_allclose(nv.focus_mm, cv.focus_mm)
    centre = nv.detector_point([(IMAGE_SHAPE[1] - 1) / 2, (IMAGE_SHAPE[0] - 1) / 2])
    np.testing.assert_allclose(centre, cv.detector_centre_mm, atol=1e-9)
    # detector_up appears as image −v
    np.testing.assert_allclose(-nv.v_axis, cv.detector_up, atol=1e-12)


# -- degenerate input --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hard_exam():
    return make_exam(CAGES["uniplanar"], 1, **HARD)


@pytest.mark.parametrize("flip", ["lr", "ud"])
def test_mirrored_image(hard_exam, flip):
    uv = hard_exam.a.uv_px.copy()
    if flip == "lr":
        uv[:, 0] = IMAGE_SHAPE[1] - 1 - uv[:, 0]
    else:
        uv[:, 1] = IMAGE_SHAPE[0] - 1 - uv[:, 1]
    with pytest.raises(CalibrationError, match=r"view A: .*mirrored.*reversed handedness"):
        identify_markers(uv, CAGES["uniplanar"], view="A", **KW)


def test_wrong_cage(hard_exam):
    with pytest.raises(CalibrationError,
                       match=r"view A: identified \d+ of \d+ fiducials \(need ≥ \d+\): wrong cage"):
        identify_markers(hard_exam.a.uv_px, CAGES["biplanar"], view="A", **KW)


def test_too_few_markers(hard_exam):
    sc = hard_exam.a
    keep = (sc.marker < 0) | (np.cumsum(sc.marker >= 0) <= 5)  # patient beads + 5 markers
    with pytest.raises(CalibrationError, match=r"view A: identified \d+ of \d+ fiducials"):
        identify_markers(sc.uv_px[keep], CAGES["uniplanar"], view="A", **KW)
    with pytest.raises(CalibrationError, match=r"identified 0 of \d+ fiducials"):
        identify_markers(sc.uv_px[:3], CAGES["uniplanar"], view="A", **KW)


def test_no_control_markers(hard_exam):
    cage = CAGES["uniplanar"]
    sc = hard_exam.a
    keep = (sc.marker < 0) | (cage.roles[sc.marker] == "fiducial")
    with pytest.raises(CalibrationError, match=r"identified \d+ of \d+ control markers"):
        identify_markers(sc.uv_px[keep], cage, view="A", **KW)


def test_swapped_view_name(hard_exam):
    # uniplanar: both views see the same fiducial plane; its image lies elsewhere on the
    # detector, and if it is found, the parallax of the controls tells
    with pytest.raises(CalibrationError,
                       match=r"view B: identified \d+ of \d+ (fiducials|control markers)"):
        identify_markers(hard_exam.a.uv_px, CAGES["uniplanar"], view="B", **KW)


def test_collinear_fiducials_found():
    cage = CAGES["uniplanar"]
    sc = make_exam(cage, 1, rot_deg=5.0, shift_mm=20.0).a
    m = np.where(sc.marker >= 0, sc.marker, 0)
    # only the fiducials of one straight strip (x = 140 mm exactly) and the controls visible
    strip = (cage.roles[m] == "fiducial") & (cage.xyz_mm[m, 0] == 140.0)
    keep = (sc.marker < 0) | strip | (cage.roles[m] == "control")
    assert np.count_nonzero(strip & (sc.marker >= 0)) >= 6
    # Never a calibration: either the collinear seed is reported, or (when a stray bead makes
    # the fiducial set non-collinear) the controls cannot be explained.
    with pytest.raises(CalibrationError,
                       match=r"view A: (.*collinear|identified \d+ of \d+ control markers)"):
        identify_markers(sc.uv_px[keep], cage, view="A", min_fraction=0.0, **KW)


def test_collinear_cage_and_bad_input():
    cage = CAGES["uniplanar"]
    xyz = cage.xyz_mm.copy()
    xyz[cage.roles == "fiducial", 1] = 0.0  # all fiducials on the x axis
    bad = replace(cage, xyz_mm=xyz)
    uv = np.zeros((10, 2))
    with pytest.raises(CalibrationError, match="collinear"):
        identify_markers(uv, bad, view="A", **KW)
    with pytest.raises(CalibrationError, match="has no view 'C'"):
        identify_markers(uv, cage, view="C", **KW)
    with pytest.raises(ShapeError, match=r"Expected `uv_px` to have shape \(N, 2\)"):
        identify_markers(np.zeros((10, 3)), cage, view="A", **KW)


def test_linear_estimators_degenerate():
    line = np.column_stack([np.arange(6.0), 2 * np.arange(6.0)])
    with pytest.raises(EstimationError, match="collinear"):
        lin.fit_homography(line, line + 1)
    with pytest.raises(EstimationError, match="at least 4"):
        lin.fit_homography(line[:3], line[:3])
    flat = np.column_stack([np.random.default_rng(0).normal(size=(8, 2)), np.zeros(8)])
    with pytest.raises(EstimationError, match="coplanar"):
        lin.fit_projection(flat, flat[:, :2])
    with pytest.raises(EstimationError, match="at least 6"):
        lin.fit_projection(flat[:5], flat[:5, :2])


def test_order_invariance():
    # the bead order carries no information: permuting the input permutes the answer
    cage = CAGES["biplanar"]
    sc = make_exam(cage, 21, **HARD).a
    m1 = identify_markers(sc.uv_px, cage, view="A", **KW)
    perm = np.random.default_rng(5).permutation(sc.uv_px.shape[0])
    m2 = identify_markers(sc.uv_px[perm], cage, view="A", **KW)
    a = dict(zip(m1.bead_index.tolist(), m1.marker_index.tolist(), strict=True))
    b = dict(zip(perm[m2.bead_index].tolist(), m2.marker_index.tolist(), strict=True))
    assert a == b
    np.testing.assert_array_equal(m2.patient_mask, m1.patient_mask[perm])
