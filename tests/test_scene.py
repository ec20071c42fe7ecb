"""Phantom scene model: poses, prescribed motions, exam geometry (rsa.synthetic.scene)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from rsa.errors import InputError
from rsa.synthetic.scene import build_scene, load_definition, rigid, transform
from rsa.synthetic.study import relative_motion


@pytest.fixture(scope="module")
def implant():
    return build_scene("implant", setup="uniplanar", seed=7)


@pytest.fixture(scope="module")
def spine():
    return build_scene("spine", setup="biplanar", seed=7)


def _exam(scene, eid):
    return next(e for e in scene.exams if e.id == eid)


def _rel(scene, exam, seg, base):
    return np.linalg.inv(exam.poses[base]) @ exam.poses[seg]


def test_structure(implant, spine):
    assert [s.name for s in implant.segments] == ["tibia", "implant"]
    assert [len(s.xyz_mm) for s in implant.segments] == [9, 6]
    assert [e.kind for e in implant.exams] == ["reference", "double", "follow-up", "double",
                                               "follow-up", "double"]
    assert implant.motions == (("implant", "tibia"),)
    assert [s.name for s in spine.segments] == ["L4", "L5"]
    assert {e.kind for e in spine.exams} == {"reference", "double", "follow-up", "dynamic"}
    ref = _exam(implant, "REF")
    for T in ref.poses.values():
        np.testing.assert_array_equal(T, np.eye(4))
    for e in implant.exams + spine.exams:
        for T in e.poses.values():
            R = T[:3, :3]
            np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
            assert np.linalg.det(R) == pytest.approx(1.0)
            assert not T.flags.writeable


def test_prescribed_migration_recovered(implant):
    """T_tibia⁻¹ T_implant equals the definition's motion: 0.3 mm subsidence at 3 months,
    (0.10, −0.50, 0.05) mm + 0.4° about x at 1 year (about the implant bead centroid)."""
    beads = implant.segment("implant").xyz_mm
    m03 = relative_motion(_rel(implant, _exam(implant, "M03"), "implant", "tibia"), beads)
    np.testing.assert_allclose(m03["translation_mm"], [0, -0.30, 0], atol=1e-9)
    np.testing.assert_allclose(m03["rotation_deg"], 0, atol=1e-9)
    assert m03["mtpm_mm"] == pytest.approx(0.30, abs=1e-9)
    y01 = relative_motion(_rel(implant, _exam(implant, "Y01"), "implant", "tibia"), beads)
    np.testing.assert_allclose(y01["translation_mm"], [0.10, -0.50, 0.05], atol=1e-9)
    np.testing.assert_allclose(y01["rotation_deg"], [0.4, 0, 0], atol=1e-9)
    # and the patient really moved between exams (the relative motion is not trivially zero)
    shift = transform(_exam(implant, "Y01").poses["tibia"], implant.segment("tibia").xyz_mm)
    assert np.linalg.norm(shift - implant.segment("tibia").xyz_mm, axis=1).max() > 0.5


def test_double_exam_has_zero_relative_motion(implant, spine):
    for scene, seg, base in ((implant, "implant", "tibia"), (spine, "L4", "L5")):
        dbl = _exam(scene, "REF-DOUBLE")
        assert dbl.double_of == "REF"
        np.testing.assert_allclose(_rel(scene, dbl, seg, base), np.eye(4), atol=1e-12)
        moved = transform(dbl.poses[base], scene.segment(base).xyz_mm)
        assert np.linalg.norm(moved - scene.segment(base).xyz_mm, axis=1).max() > 0.5


def test_spine_dynamic_motion_about_disc_centre(spine):
    """Flexion frame: L4 rotates 4° about x through the disc centre and translates 0.8 mm in z,
    so the disc centre moves by exactly the translation."""
    T = _rel(spine, _exam(spine, "Y01-FLEX"), "L4", "L5")
    np.testing.assert_allclose(Rotation.from_matrix(T[:3, :3]).as_euler("xyz", degrees=True),
                               [4.0, 0, 0], atol=1e-9)
    c = spine.patient_centre_mm
    np.testing.assert_allclose(transform(T, c) - c, [0, 0, 0.8], atol=1e-9)


def test_relative_motion_analytic():
    """Rotation θ about z through the centroid: centroid translation 0, helical angle θ, MTPM
    = 2 r sin(θ/2) for the farthest point at distance r from the axis."""
    pts = np.array([[10.0, 0, 0], [0, 20, 0], [-10, 0, 5], [0, -20, -5]])
    c = pts.mean(axis=0)
    theta = np.radians(3.0)
    T = rigid(np.array([0, 0, theta]), [0, 0, 1.5], c)
    m = relative_motion(T, pts)
    np.testing.assert_allclose(m["translation_mm"], [0, 0, 1.5], atol=1e-12)
    assert m["helical_angle_deg"] == pytest.approx(3.0)
    np.testing.assert_allclose(m["helical_axis"], [0, 0, 1], atol=1e-12)
    assert m["helical_translation_mm"] == pytest.approx(1.5)
    r = np.linalg.norm((pts - c)[:, :2], axis=1).max()
    assert m["mtpm_mm"] == pytest.approx(np.hypot(2 * r * np.sin(theta / 2), 1.5))


def test_views_are_perturbed_but_see_everything(implant, spine):
    """Each exam's focus differs from nominal by cm (never exactly nominal), and every cage
    marker of a view and every bead projects inside the 3000-px detector."""
    for scene in (implant, spine):
        offsets = []
        for e in scene.exams:
            beads = np.concatenate(list(scene.exam_beads(e).values()))
            for v in e.views:
                offsets.append(np.linalg.norm(v.focus_mm - scene.cage.views[v.name].focus_mm))
                own = scene.cage.xyz_mm[scene.cage.marker_mask(view=v.name)]
                for pts in (own, beads):
                    uv = v.project(pts)
                    assert np.all(uv > 20)
                    assert np.all(uv < np.array(v.shape[::-1]) - 20)
        assert min(offsets) > 1.0
        assert 5.0 < np.median(offsets) < 60.0


def test_beads_spread_and_outside_implants(implant, spine):
    for scene in (implant, spine):
        caps = [c for s in scene.segments for c in s.capsules]
        every = np.concatenate([s.xyz_mm for s in scene.segments])
        d_all = np.linalg.norm(every[:, None] - every[None], axis=-1)
        assert d_all[np.triu_indices(len(every), 1)].min() > 5.0
        for s in scene.segments:
            x = s.xyz_mm
            d = np.linalg.norm(x[:, None] - x[None], axis=-1)
            assert d[np.triu_indices(len(x), 1)].min() > 5.0
            sv = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
            assert sv[2] / sv[0] > 0.2
            for c in caps:  # bead centres outside every metal capsule (+ bead radius)
                ab = c.p1_mm - c.p0_mm
                t = np.clip((x - c.p0_mm) @ ab / (ab @ ab), 0, 1)
                dist = np.linalg.norm(c.p0_mm + t[:, None] * ab - x, axis=1)
                assert np.all(dist > c.radius_mm + 0.5)


def test_deterministic_in_seed():
    a = build_scene("implant", seed=3)
    b = build_scene("implant", seed=3)
    c = build_scene("implant", seed=4)
    np.testing.assert_array_equal(a.segments[0].xyz_mm, b.segments[0].xyz_mm)
    np.testing.assert_array_equal(a.exams[2].views[1].focus_mm, b.exams[2].views[1].focus_mm)
    np.testing.assert_array_equal(a.exams[1].poses["tibia"], b.exams[1].poses["tibia"])
    assert not np.array_equal(a.segments[0].xyz_mm, c.segments[0].xyz_mm)


@pytest.fixture
def defn():
    return load_definition("implant")[0]


def _broken(defn, edit):
    d = copy.deepcopy(defn)
    edit(d)
    return d


@pytest.mark.parametrize(("edit", "match"), [
    (lambda d: d["exams"][2].update(kind="annual"), r"`exams\[2\]\.kind` must be one of"),
    (lambda d: d["exams"][1].update(kind="reference"), "exactly one reference exam"),
    (lambda d: d["exams"][2].update(id="REF"), "duplicate exam id 'REF'"),
    (lambda d: d["exams"][2]["motion"][0].update(segment="femur"), "unknown segment 'femur'"),
    (lambda d: d["segments"][0].update(role="muscle"), r"`segments\[0\]\.role` must be one"),
    (lambda d: d.pop("placement"), "`placement` is missing"),
    (lambda d: d["study"]["patient_centre_mm"].pop("uniplanar"),
     r"`study\.patient_centre_mm\.uniplanar` is missing"),
    (lambda d: d["segments"][0]["volumes"][0].update(n=400), "cannot place 400 beads"),
    (lambda d: d["exams"][1].pop("double_of"), "double exam 'REF-DOUBLE' needs `double_of`"),
    (lambda d: d["segments"][1]["capsules"][0].pop("radius_mm"), "missing key 'radius_mm'"),
    (lambda d: d["segments"][1].pop("name"), r"`segments\[1\]\.name` is missing"),
    (lambda d: d["study"].update(start_date="5 Jan"), "Invalid isoformat"),
])
def test_bad_definitions(defn, edit, match):
    with pytest.raises(InputError, match=match):
        build_scene(_broken(defn, edit), setup="uniplanar", seed=0)


def test_unknown_variant_and_bad_file(tmp_path):
    with pytest.raises(InputError, match="Unknown phantom variant 'hip'"):
        build_scene("hip")
    p = tmp_path / "bad.toml"
    p.write_text("[study\nid = 1\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"Invalid study definition .*bad\.toml"):
        build_scene(p)
