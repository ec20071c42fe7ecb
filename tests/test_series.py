"""Series analysis (labelling → fits → motion → precision) on constructed 3D bead sets."""

import datetime as dt

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from rsa.io.manifest import DEFAULT_THRESHOLDS, ExamSpec, MotionSpec, SegmentSpec, SubjectSpec
from rsa.series import analyse_subject, components, study_precision

SIGMA = 0.01  # mm, bead noise injected below


def _beads(rng, n, centre, extent=40.0):
    pts = []
    while len(pts) < n:
        p = rng.uniform(-extent / 2, extent / 2, size=3)
        if all(np.linalg.norm(p - q) > 6.0 for q in pts):
            pts.append(p)
    return np.array(pts) + centre


def _T(R, t):
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def _apply(T, x):
    return x @ T[:3, :3].T + T[:3, 3]


@pytest.fixture
def scene():
    rng = np.random.default_rng(7)
    bone = _beads(rng, 8, np.array([0.0, -30.0, 300.0]))
    implant = _beads(rng, 6, np.array([0.0, 20.0, 300.0]))
    c_imp = implant.mean(axis=0)
    # true relative motion of the implant (about its centroid) per exam
    mig = {"REF": np.eye(4), "D": np.eye(4),
           "F1": _T(np.eye(3), [0.0, -0.3, 0.0]),
           "F1D": _T(np.eye(3), [0.0, -0.3, 0.0]),
           "F2": _T(Rotation.from_euler("xyz", [0.5, 0, 0], degrees=True).as_matrix(),
                    [0.1, -0.5, 0.05])}
    for k in ("F2",):  # rotate about the implant centroid
        R = mig[k][:3, :3]
        mig[k][:3, 3] += c_imp - R @ c_imp
    exams, points, truth = [], [], {}
    day = {"REF": 0, "D": 0, "F1": 90, "F1D": 90, "F2": 365}
    for eid, kind, partner in (("REF", "reference", None), ("D", "double", "REF"),
                               ("F1", "follow-up", None), ("F1D", "double", "F1"),
                               ("F2", "follow-up", None)):
        place = np.eye(4) if eid == "REF" else _T(Rotation.random(random_state=rng).as_matrix()
                                                  @ np.eye(3), rng.normal(0, 3, 3))
        b = _apply(place, bone)
        i = _apply(place @ mig[eid], implant)
        if eid == "F2":
            b = b[:-1]                                  # bone bead 7 lost
            i = i.copy()
            i[0] += [1.3, 0.0, 0.0]                     # implant bead 0 loosened: unstable
        pts = np.vstack([b, i, [[500.0, 0, 0], [0, 500.0, 0]]])
        pts = pts + rng.normal(scale=SIGMA, size=pts.shape)
        points.append(pts[rng.permutation(len(pts))])
        exams.append(ExamSpec(eid, dt.date(2026, 1, 1) + dt.timedelta(days=day[eid]), kind, (),
                              double_of=partner))
        truth[eid] = mig[eid]
    approx = np.round(bone + rng.normal(0, 0.2, bone.shape), 1)
    segs = (SegmentSpec("bone", "bone", tuple(f"B{k}" for k in range(8)), approx, 1.5),
            SegmentSpec("implant", "implant", tuple(f"I{k}" for k in range(6)),
                        np.round(implant + rng.normal(0, 0.2, implant.shape), 1), 1.5))
    return SubjectSpec("S1", segs, tuple(exams)), points, truth, implant


def test_motion_recovered(scene):
    subject, points, truth, implant = scene
    motion = MotionSpec("implant", "bone")
    s = analyse_subject(subject, points, [motion], DEFAULT_THRESHOLDS)
    mo = s.motions["implant/bone"]
    c = implant.mean(axis=0)
    for e, exam in enumerate(subject.exams):
        T = truth[exam.id]
        true_t = _apply(T, c) - c
        # Centroid translation error ≈ σ·sqrt(1/6 + 1/8) ≈ 0.006 mm (+ rotation × small lever);
        # 0.03 mm is a > 4σ bound.
        np.testing.assert_allclose(mo.translation_mm[e], true_t, atol=0.03)
        true_r = Rotation.from_matrix(T[:3, :3]).as_euler("xyz", degrees=True)
        # Rotation SD ≈ σ / (√N · r_rms) ≈ 0.01 / (√6 · 15) rad ≈ 0.016°; 0.08° > 4σ.
        np.testing.assert_allclose(mo.rotation_deg[e], true_r, atol=0.08)
    # Implant bead 0 moved 1.3 mm relative to the others in F2 → excluded with a reason.
    imp = s.segments["implant"]
    assert imp.excluded[4, 0]
    assert imp.excluded.sum() == 1
    assert "I0" in imp.exclusion_reasons[4][0]
    assert any("unstable bead excluded: I0" in f for f in s.flags["F2"])
    assert any("lost since reference: B7" in f for f in s.flags["F2"])
    assert not any(s.flags[e] for e in ("REF", "D", "F1", "F1D"))
    # ME at noise level (mean of ‖·‖ of 3D Gaussian residuals ≈ 1.6σ·sqrt(1 − 6/(3N)))
    assert np.all(s.segments["bone"].me_mm < 5 * SIGMA)
    assert np.all(np.isfinite(s.segments["bone"].cn))


def test_double_exam_precision(scene):
    subject, points, _, _ = scene
    motion = MotionSpec("implant", "bone")
    s = analyse_subject(subject, points, [motion], DEFAULT_THRESHOLDS)
    prec = study_precision([s], motion)
    assert prec.n == 2
    assert prec.signed is not None
    assert prec.upper is not None
    # Differences are noise: translation SD ≈ σ·sqrt(2 (1/6 + 1/8)) ≈ 0.008 mm plus rotation
    # noise × lever; 0.05 mm is a generous > 5σ bound.
    assert np.all(np.abs(prec.differences[:, :3]) < 0.05)
    comp = components(s.motions["implant/bone"])
    assert comp.shape == (5, 6)


def test_manual_label_override(scene, tmp_path):
    subject, points, _, _ = scene
    # Give the F1 exam's implant beads by a label file: approximate coordinates of 3 beads.
    f1 = points[2]
    s0 = analyse_subject(subject, points, [MotionSpec("implant", "bone")], DEFAULT_THRESHOLDS)
    idx = s0.segments["implant"].observed_index[2]
    path = tmp_path / "labels.csv"
    rows = ["bead_id,x,y,z"] + [f"I{k},{x:.1f},{y:.1f},{z:.1f}"
                                for k, (x, y, z) in enumerate(f1[idx[:3]])]
    path.write_text("\n".join(rows) + "\n")
    exams = list(subject.exams)
    e = exams[2]
    exams[2] = ExamSpec(e.id, e.date, e.kind, e.images, labels=path)
    sub = SubjectSpec(subject.id, subject.segments, tuple(exams))
    s = analyse_subject(sub, points, [MotionSpec("implant", "bone")], DEFAULT_THRESHOLDS)
    np.testing.assert_array_equal(s.segments["implant"].observed_index[2][:3], idx[:3])
    assert np.all(s.segments["implant"].observed_index[2][3:] == -1)


def test_exam_without_fit_gives_nan_motion(scene):
    subject, points, _, _ = scene
    # Keep only 2 implant beads in F1: no pose there, NaN motion, a flag; other exams intact.
    f1 = points[2]
    s0 = analyse_subject(subject, points, [MotionSpec("implant", "bone")], DEFAULT_THRESHOLDS)
    idx = s0.segments["implant"].observed_index[2]
    keep = np.ones(len(f1), bool)
    keep[idx[2:]] = False
    pts = list(points)
    pts[2] = f1[keep]
    s = analyse_subject(subject, pts, [MotionSpec("implant", "bone")], DEFAULT_THRESHOLDS)
    mo = s.motions["implant/bone"]
    assert np.isnan(mo.translation_mm[2]).all()
    assert np.isnan(mo.mtpm_mm[2])
    assert np.isfinite(mo.translation_mm[[0, 1, 3, 4]]).all()
    assert not s.segments["implant"].valid[2]
    assert any("implant: no fit" in f for f in s.flags["F1"])
    # the F1/F1D double pair is dropped from precision, REF/D remains
    prec = study_precision([s], MotionSpec("implant", "bone"))
    assert prec.n == 1


def test_bead_uncertainty_weights(scene):
    subject, points, truth, implant = scene
    spec = MotionSpec("implant", "bone")
    s0 = analyse_subject(subject, points, [spec], DEFAULT_THRESHOLDS)
    j = s0.segments["implant"].observed_index[2][1]           # implant bead I1 in exam F1
    pts = [p.copy() for p in points]
    pts[2][j] += [0.0, 0.0, 0.2]                             # a 0.2 mm measurement error there
    sigma = [np.full(len(p), 0.01) for p in pts]
    sigma[2][j] = 0.2                                        # ... that its uncertainty admits
    c = implant.mean(axis=0)
    true_t = _apply(truth["F1"], c) - c
    plain = analyse_subject(subject, pts, [spec], DEFAULT_THRESHOLDS)
    weighted = analyse_subject(subject, pts, [spec], DEFAULT_THRESHOLDS, sigma_mm=sigma)
    err_plain = np.linalg.norm(plain.motions["implant/bone"].translation_mm[2] - true_t)
    err_w = np.linalg.norm(weighted.motions["implant/bone"].translation_mm[2] - true_t)
    # unweighted: the 0.2 mm error moves the centroid by ≈ 0.2/6 mm; weighted by 1/σ² it
    # contributes (0.01/0.2)² as much, leaving the noise level (≈ 0.006 mm)
    assert err_plain > 0.02
    assert err_w < 0.5 * err_plain


def test_triangulation_sigma_matches_monte_carlo():
    """The propagated 3D σ of a bead agrees with the Monte Carlo spread of its triangulation."""
    from types import SimpleNamespace

    from rsa.correspond import _triangulation_sigma
    from rsa.synthetic.geometry import look_at_view
    from rsa.triangulate import intersect_rays

    views = [look_at_view(focus_mm=[x, 0.0, 1400.0], detector_centre_mm=[0, 0, -25],
                          up=[0, 1, 0], detector_normal=[0, 0, -1], pixel_spacing_mm=0.143,
                          shape=(3000, 3000), name=n) for x, n in ((-510.0, "A"), (510.0, "B"))]
    rng = np.random.default_rng(1)
    X = rng.uniform(-40, 40, size=(20, 3)) + [0, 0, 300]
    sig_px = 0.05
    uv = [v.project(X) for v in views]
    trials = []
    for _ in range(400):
        rays = [v.rays(u + rng.normal(scale=sig_px, size=u.shape)) for v, u in zip(views, uv,
                                                                                     strict=True)]
        p, _ = intersect_rays(rays[0][0], rays[0][1], rays[1][0], rays[1][1])
        trials.append(p - X)
    rms = np.sqrt(np.mean(np.sum(np.array(trials) ** 2, axis=-1), axis=0))  # (20,) 3D RMS
    fdd = [float((v.origin_mm - v.focus_mm) @ v.normal) for v in views]
    calib = [SimpleNamespace(focus_mm=v.focus_mm, focus_detector_distance_mm=f)
             for v, f in zip(views, fdd, strict=True)]
    match = SimpleNamespace(pairs=np.column_stack([np.arange(20)] * 2), points_mm=X)
    dirs = [v.rays(u)[1] for v, u in zip(views, uv, strict=True)]
    pred = _triangulation_sigma(match, calib, dirs, [np.full((20, 2), sig_px)] * 2, [0.143] * 2)
    # A scalar summary of an anisotropic error: it should bound the 3D RMS within a factor 2
    # (the Monte Carlo RMS itself is known to ~4 % with 400 trials).
    ratio = rms / pred
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio


def test_unlikely_point_labelled_only_near_its_model_position(scene):
    subject, points, _, _ = scene
    motion = [MotionSpec("implant", "bone")]
    s0 = analyse_subject(subject, points, motion, DEFAULT_THRESHOLDS)
    idx = s0.segments["implant"].observed_index
    likely = [np.ones(len(p), bool) for p in points]
    # F2's implant bead 0 is 1.3 mm from its place (beyond label_tol_mm 0.3, within the 1.5 mm
    # label gate): as a likely pair it is labelled (and screened as unstable); as a pair whose
    # CLE exceeds its uncertainty it is not; F1's bead 0 (at its place) stays labelled either way.
    likely[4][idx[4, 0]] = False
    likely[2][idx[2, 0]] = False
    s = analyse_subject(subject, points, motion, DEFAULT_THRESHOLDS, likely=likely)
    new = s.segments["implant"].observed_index
    assert idx[4, 0] >= 0
    assert new[4, 0] == -1
    assert new[2, 0] == idx[2, 0]
    np.testing.assert_array_equal(new[:, 1:], idx[:, 1:])
    assert any("I0 not labelled" in n for n in s.notes["F2"])
    assert not s.segments["implant"].excluded[4].any()


def _without(points, e, j):
    keep = np.ones(len(points[e]), bool)
    keep[j] = False
    out = list(points)
    out[e] = points[e][keep]
    return out


def test_bead_missed_in_reference_joins_the_model(scene):
    subject, points, _, _ = scene
    spec = MotionSpec("implant", "bone")
    s0 = analyse_subject(subject, points, [spec], DEFAULT_THRESHOLDS)
    bone0 = s0.segments["bone"]
    ref_b2 = points[0][bone0.observed_index[0, 2]]     # REF is placed at the identity
    pts = _without(points, 0, bone0.observed_index[0, 2])   # B2 hidden in the reference exam
    s = analyse_subject(subject, pts, [spec], DEFAULT_THRESHOLDS)
    bone = s.segments["bone"]
    assert bone.completed.tolist() == [k == 2 for k in range(8)]
    assert np.isnan(bone.reference_xyz_mm[2]).all()
    # placed from the 4 other exams: each maps back with its noise (σ = 0.01 mm per axis) plus
    # its pose error (≈ σ/√7); the mean's error per axis ≈ 0.006 mm, measured against the
    # reference exam's own (noisy, σ) point: 0.05 mm is > 4σ of the difference's norm
    assert np.linalg.norm(bone.model_xyz_mm[2] - ref_b2) < 0.05
    assert np.all(bone.observed_index[1:, 2] == bone0.observed_index[1:, 2])
    np.testing.assert_array_equal(bone.n_used[1:], bone0.n_used[1:])
    assert bone.n_used[0] == bone0.n_used[0] - 1
    assert any("B2 not found in the reference exam; placed" in n for n in s.notes["REF"])
    assert not any("lost since reference: B2" in f for fl in s.flags.values() for f in fl)
    # the motion point stays the reference definition's: same motions within noise
    np.testing.assert_allclose(s.motions["implant/bone"].translation_mm,
                               s0.motions["implant/bone"].translation_mm, atol=0.01)
    # turned off by a large threshold
    off = analyse_subject(subject, pts, [spec], {**DEFAULT_THRESHOLDS, "model_min_exams": 99})
    assert not off.segments["bone"].completed.any()
    assert np.all(off.segments["bone"].observed_index[:, 2] == -1)


def test_point_seen_once_or_inconsistently_does_not_join_the_model(scene):
    subject, points, _, _ = scene
    spec = MotionSpec("implant", "bone")
    s0 = analyse_subject(subject, points, [spec], DEFAULT_THRESHOLDS)
    idx = s0.segments["bone"].observed_index[:, 2]
    # B2 only in F1 (one exam < model_min_exams = 2)
    pts = list(points)
    for e in (0, 1, 3, 4):
        pts = _without(pts, e, idx[e])
    s = analyse_subject(subject, pts, [spec], DEFAULT_THRESHOLDS)
    assert not s.segments["bone"].completed.any()
    # a spurious point near B2's predicted place in D and F1, 0.8 mm apart in the bone frame:
    # the two exams disagree by more than label_tol_mm, so nothing is placed
    pts = list(points)
    for e in range(5):
        pts = _without(pts, e, idx[e])
    for e, off in ((1, [0.4, 0, 0]), (2, [-0.4, 0, 0])):
        T = s0.segments["bone"].pose
        y = T.rotation[e] @ (subject.segments[0].xyz_mm[2] + off) + T.translation[e]
        pts[e] = np.vstack([pts[e], y])
    s = analyse_subject(subject, pts, [spec], DEFAULT_THRESHOLDS)
    assert not s.segments["bone"].completed.any()


def test_pose_sigma_matches_monte_carlo():
    from rsa.rigid import fit_rigid, pose_point_sigma
    rng = np.random.default_rng(3)
    model = _beads(rng, 5, np.zeros(3), extent=30.0)
    sig = rng.uniform(0.005, 0.03, len(model))          # unequal bead errors, per axis
    far = np.array([[0.0, 0.0, 0.0], [60.0, -40.0, 25.0]])   # centroid-ish and far away
    R = Rotation.from_euler("xyz", [3, -5, 10], degrees=True).as_matrix()
    t = np.array([1.0, 2.0, -3.0])
    n = 4000
    y = model @ R.T + t + rng.normal(size=(n, *model.shape)) * sig[:, None]
    fit = fit_rigid(np.broadcast_to(model, y.shape), y, weights=np.broadcast_to(
        1 / sig ** 2, y.shape[:2]))
    mapped = np.einsum("nij,kj->nki", fit.rotation, far) + fit.translation[:, None]
    sd = np.sqrt(np.mean((mapped - (far @ R.T + t)) ** 2, axis=(0, 2)))   # per axis, RMS
    # Monte Carlo SD of n = 4000 draws (3 axes pooled): relative SD ≈ 1/√(2·3n) ≈ 0.6 %;
    # the linearisation is exact to O(σ/r) ≈ 1e-3: 3 % is a > 4σ tolerance
    np.testing.assert_allclose(pose_point_sigma(model, sig ** 2, far), sd, rtol=0.03)


def test_unlikely_reference_point_replaced_in_the_model(scene):
    subject, points, _, _ = scene
    spec = MotionSpec("implant", "bone")
    s0 = analyse_subject(subject, points, [spec], DEFAULT_THRESHOLDS)
    j = s0.segments["bone"].observed_index[0, 3]
    true_b3 = points[0][j].copy()
    pts = [p.copy() for p in points]
    pts[0][j] += [0.15, -0.1, 0.1]          # B3 in REF: a wrong pair (0.21 mm off) ...
    likely = [np.ones(len(p), bool) for p in pts]
    likely[0][j] = False                     # ... flagged unlikely by its crossing-line error
    s = analyse_subject(subject, pts, [spec], DEFAULT_THRESHOLDS, likely=likely)
    bone = s.segments["bone"]
    assert bone.completed.tolist() == [k == 3 for k in range(8)]
    # placed from the 4 other exams (error of the mean ≈ 0.006 mm per axis, see above) instead
    # of the 0.21 mm wrong reference point
    assert np.linalg.norm(bone.model_xyz_mm[3] - true_b3) < 0.05
    np.testing.assert_array_equal(bone.reference_xyz_mm[3], pts[0][j])   # definition kept
    assert any("B3 seen in the reference exam only as an unlikely ray pair" in n
               for n in s.notes["REF"])
    # the reference exam's own fit leaves the wrong point out: identity, zero motion there
    np.testing.assert_allclose(bone.pose.translation[0], 0.0, atol=1e-9)
    np.testing.assert_allclose(bone.pose.rotation[0], np.eye(3), atol=1e-12)
    # and the follow-ups' bone poses carry the bone centroid where the clean analysis does,
    # within noise (the model differs by the placed bead's error, ≈ 0.01–0.02 mm / 8 beads); the
    # wrong point unreplaced would pull every fit by up to 0.21 mm / 8 beads ≈ 0.026 mm
    c = bone.reference_xyz_mm[np.arange(8) != 3].mean(axis=0)
    at_c = [(S.pose.rotation[1:] @ c) + S.pose.translation[1:] for S in (bone, s0.segments["bone"])]
    np.testing.assert_allclose(at_c[0], at_c[1], atol=0.01)
    # a likely reference point is kept
    s2 = analyse_subject(subject, pts, [spec], DEFAULT_THRESHOLDS)
    assert not s2.segments["bone"].completed.any()


def test_point_wanted_by_two_missed_beads_goes_to_the_nearer(scene):
    subject, points, _, _ = scene
    spec = MotionSpec("implant", "bone")
    s0 = analyse_subject(subject, points, [spec], DEFAULT_THRESHOLDS)
    idx = s0.segments["bone"].observed_index
    bone = subject.segments[0]
    # the two closest bone beads: P missed in the reference exam and seen in the others, Q
    # missed everywhere; a tolerance wide enough that Q's predicted place also reaches P's point
    dist = np.linalg.norm(bone.xyz_mm[:, None] - bone.xyz_mm[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    p, q = np.unravel_index(np.argmin(dist), dist.shape)
    pts = list(points)
    for e in range(5):
        pts = _without(pts, e, [idx[e, q]] + ([idx[e, p]] if e == 0 else []))
    wide = SegmentSpec(bone.name, bone.role, bone.bead_ids, bone.xyz_mm, dist[p, q] + 2.0)
    sub = SubjectSpec(subject.id, (wide, subject.segments[1]), subject.exams)
    s = analyse_subject(sub, pts, [spec], DEFAULT_THRESHOLDS)
    done = s.segments["bone"].completed
    assert done[p]
    assert not done[q]
    np.testing.assert_allclose(s.segments["bone"].model_xyz_mm[p],
                               s0.segments["bone"].reference_xyz_mm[p], atol=0.05)


def _lever_subject(rng):
    """Bone (6 beads) and an implant of 5 beads, I1, I2, I4 on one line: the rotation about that
    line is fixed by I3 (2 mm off it) alone once I0 (20 mm off it) is left out."""
    bone = _beads(rng, 6, np.array([0.0, -30.0, 300.0]))
    implant = np.array([[10.0, 0.0, 20.0], [0.0, 0.0, 0.0], [20.0, 0.0, 0.0], [10.0, 2.0, 0.0],
                        [30.0, 0.0, 0.0]])
    implant = implant + [0.0, 20.0, 300.0]
    segs = (SegmentSpec("bone", "bone", tuple(f"B{k}" for k in range(6)), bone.round(1), 1.5),
            SegmentSpec("implant", "implant", tuple(f"I{k}" for k in range(5)), implant.round(1),
                        1.5))
    exams = (ExamSpec("REF", dt.date(2026, 1, 1), "reference", ()),
             ExamSpec("F1", dt.date(2026, 4, 1), "follow-up", ()))
    return SubjectSpec("S1", segs, exams), bone, implant


def test_uncertain_bead_does_not_get_a_good_one_excluded():
    # F1's I3 is measured 0.35 mm off (beyond label_tol_mm 0.3) with σ 0.3 mm, e.g. a bead
    # fitted next to a screw head. Left out in turn, I0's place predicted from the others tilts
    # about the I1–I2–I4 line by 0.35/2 rad: 3.5 mm. Unweighted, that gets the good I0 excluded and
    # the implant fitted on three beads whose rotation I3's error sets. Weighted, that
    # prediction's own uncertainty (σ of I3 over the same lever) says the offset is not
    # significant: all five beads are fitted, I3 with weight (0.01/0.3)².
    rng = np.random.default_rng(11)
    subject, bone, implant = _lever_subject(rng)
    place = _T(Rotation.from_euler("xyz", [5.0, -3.0, 8.0], degrees=True).as_matrix(),
               [1.0, -2.0, 0.5])
    true_t = np.array([0.05, -0.10, 0.0])
    ref = np.vstack([bone, implant])
    f1 = np.vstack([_apply(place, bone), _apply(place, implant + true_t)])
    points = [p + rng.normal(scale=SIGMA, size=p.shape) for p in (ref, f1)]
    points[1][9] += place[:3, :3] @ [0.0, 0.0, 0.35]          # I3, across the I1–I2–I3 plane
    sigma = [np.full(11, SIGMA), np.full(11, SIGMA)]
    sigma[1][9] = 0.3
    spec = MotionSpec("implant", "bone")
    plain = analyse_subject(subject, points, [spec], DEFAULT_THRESHOLDS)
    assert plain.segments["implant"].excluded[1, 0]         # the hostile case, unweighted
    s = analyse_subject(subject, points, [spec], DEFAULT_THRESHOLDS, sigma_mm=sigma)
    assert not s.segments["implant"].excluded[1].any()
    mo = s.motions["implant/bone"]
    # translation SD at the centroid ≈ σ·sqrt(1/4 + 1/6) ≈ 0.007 mm (+ rotation × lever);
    # rotation SD about the line ≈ σ / 20 mm rad ≈ 0.03°: bounds of > 4σ
    np.testing.assert_allclose(mo.translation_mm[1], true_t, atol=0.03)
    np.testing.assert_allclose(mo.rotation_deg[1], 0.0, atol=0.15)


def test_displaced_bead_excluded_with_uncertainties():
    # a bead 1.3 mm off with σ 0.01 mm is displaced whether or not σ is known
    rng = np.random.default_rng(12)
    subject, bone, implant = _lever_subject(rng)
    ref = np.vstack([bone, implant])
    f1 = ref.copy()
    f1[6] += [1.3, 0.0, 0.0]                                    # I0 loosened
    points = [p + rng.normal(scale=SIGMA, size=p.shape) for p in (ref, f1)]
    s = analyse_subject(subject, points, [MotionSpec("implant", "bone")], DEFAULT_THRESHOLDS,
                        sigma_mm=[np.full(11, SIGMA)] * 2)
    assert s.segments["implant"].excluded[1].tolist() == [True, False, False, False, False]


def test_isotropic_covariances_equal_sigma_weights(scene):
    """Covariances σ²I per point give the σ-weighted fits exactly (the covariance-weighted fit
    with isotropic covariances is the isotropic one); a point without a finite covariance falls
    back to its σ."""
    subject, points, _, _ = scene
    spec = MotionSpec("implant", "bone")
    rng = np.random.default_rng(3)
    sigma = [rng.uniform(0.005, 0.05, len(p)) for p in points]
    cov = [s[:, None, None] ** 2 * np.eye(3) for s in sigma]
    cov[2][0] = np.nan
    iso = analyse_subject(subject, points, [spec], DEFAULT_THRESHOLDS, sigma_mm=sigma)
    full = analyse_subject(subject, points, [spec], DEFAULT_THRESHOLDS, sigma_mm=sigma,
                           cov_mm2=cov)
    a, b = iso.motions["implant/bone"], full.motions["implant/bone"]
    np.testing.assert_allclose(b.translation_mm, a.translation_mm, atol=1e-10)
    np.testing.assert_allclose(b.rotation_deg, a.rotation_deg, atol=1e-9)
    for name in ("implant", "bone"):
        np.testing.assert_allclose(full.segments[name].me_mm, iso.segments[name].me_mm,
                                   atol=1e-10)


def test_segment_fits_use_model_and_exam_covariances(scene):
    """Each segment fit is the covariance-weighted fit of its marker model (covariances of the
    reference exam's points) to the exam's points (theirs), over the beads it uses."""
    from rsa.rigid import fit_rigid

    subject, points, _, _ = scene
    spec = MotionSpec("implant", "bone")
    rng = np.random.default_rng(5)
    pts = [p + rng.normal(size=p.shape) * 0.01 for p in points]
    cov = []
    for p in pts:          # σ 0.05 mm along a random direction per point, 0.005 mm across
        Q = Rotation.random(len(p), random_state=rng).as_matrix()
        cov.append(Q @ np.diag([0.05 ** 2, 0.005 ** 2, 0.005 ** 2]) @ np.swapaxes(Q, 1, 2))
    sigma = [np.full(len(p), 0.05) for p in pts]
    iso = analyse_subject(subject, pts, [spec], DEFAULT_THRESHOLDS, sigma_mm=sigma)
    full = analyse_subject(subject, pts, [spec], DEFAULT_THRESHOLDS, sigma_mm=sigma,
                           cov_mm2=cov)
    for name in ("implant", "bone"):
        S = full.segments[name]
        obs = S.observed_index
        for e in range(1, len(pts)):
            use = (obs[e] >= 0) & ~S.excluded[e] & (obs[0] >= 0)
            x = S.model_xyz_mm[use]
            fit = fit_rigid(x, pts[e][obs[e, use]],
                            covariance=(cov[0][obs[0, use]], cov[e][obs[e, use]]))
            np.testing.assert_allclose(S.pose.rotation[e], fit.rotation, atol=1e-12)
            np.testing.assert_allclose(S.pose.translation[e], fit.translation, atol=1e-9)
    # and the covariances made a difference
    assert np.abs(full.motions["implant/bone"].translation_mm
                  - iso.motions["implant/bone"].translation_mm).max() > 1e-4
