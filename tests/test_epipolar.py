"""Epipolar lines and one-view overlap candidates (rsa.epipolar) on exact pinhole views."""

import numpy as np

from rsa.epipolar import epipolar_lines, one_view_overlaps
from rsa.synthetic.geometry import look_at_view

SHAPE = (2000, 2000)


def _views():
    # two tubes 30° apart, one detector plane (uniplanar set-up), 0.15 mm pixels
    a = look_at_view(focus_mm=[-400.0, 0.0, 1400.0], detector_centre_mm=[0, 0, 0], up=[0, 1, 0],
                     pixel_spacing_mm=0.15, shape=SHAPE, detector_normal=[0, 0, 1], name="A")
    b = look_at_view(focus_mm=[400.0, 0.0, 1400.0], detector_centre_mm=[0, 0, 0], up=[0, 1, 0],
                     pixel_spacing_mm=0.15, shape=SHAPE, detector_normal=[0, 0, 1], name="B")
    return a, b


def test_projection_lies_on_epipolar_line():
    a, b = _views()
    rng = np.random.default_rng(0)
    xyz = rng.uniform([-40, -40, 100], [40, 40, 250], (20, 3))
    p, n, length = epipolar_lines(a, b, a.project(xyz))
    # exact geometry: the B projection of each point is on its A point's line, within rounding
    dist = np.einsum("ki,ki->k", b.project(xyz) - p, n)
    np.testing.assert_allclose(dist, 0.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0)
    along = np.einsum("ki,ki->k", b.project(xyz) - p, np.stack([n[:, 1], -n[:, 0]], 1))
    assert np.all((along >= 0) & (along <= length))      # on the stretch where beads can be


def test_candidates_for_a_one_view_overlap():
    a, b = _views()
    # beads 1 and 2 on one ray of A (seen as one there), apart in B; bead 0 elsewhere
    o, d = a.rays(np.array([[1000.0, 1000.0]]))
    x1 = o[0] + d[0] * ((200.0 - o[0, 2]) / d[0, 2])
    x2 = o[0] + d[0] * ((150.0 - o[0, 2]) / d[0, 2])
    x0 = np.array([30.0, -20.0, 180.0])
    xyz = np.stack([x0, x1, x2])
    uv_a = a.project(xyz)
    assert np.linalg.norm(uv_a[1] - uv_a[2]) < 1e-6
    uv_a = uv_a[:2]                    # A: one detection for beads 1 and 2
    uv_b = b.project(xyz)              # B: all three apart
    assert np.linalg.norm(uv_b[1] - uv_b[2]) > 50.0
    pairs = np.array([[0, 0], [1, 1]])     # bead 2's B detection has no partner
    c = one_view_overlaps(a, b, uv_a, uv_b, pairs, radius_px=4.0)
    assert len(c) == 1
    np.testing.assert_array_equal(c.x[0], [1, -1])       # A detection 1 keeps bead 1 ...
    np.testing.assert_array_equal(c.y[0], [1, 2])        # ... on B 1's line; bead 2 is new
    np.testing.assert_allclose(c.centre[0], uv_a[1])
    # both lines pass through the merged detection
    dist = np.einsum("kbi,kbi->kb", uv_a[1][None, None] - c.points, c.normals)
    np.testing.assert_allclose(dist, 0.0, atol=1e-6)
    # nothing to do when every detection has a partner
    assert len(one_view_overlaps(a, b, uv_a, uv_b[:2], pairs, radius_px=4.0)) == 0


def test_candidates_for_a_turned_down_pair_and_touching_detections():
    a, b = _views()
    o, d = a.rays(np.array([[900.0, 1100.0]]))
    x1 = o[0] + d[0] * ((200.0 - o[0, 2]) / d[0, 2])
    x2 = o[0] + d[0] * ((170.0 - o[0, 2]) / d[0, 2])
    uv_b = b.project(np.stack([x1, x2]))
    # A has no detection there, only a turned-down candidate; both B detections are lone
    c = one_view_overlaps(a, b, np.zeros((0, 2)), uv_b, np.zeros((0, 2), np.intp),
                          radius_px=4.0, turned_down_x=a.project(x1[None]))
    assert len(c) == 1
    np.testing.assert_array_equal(c.x[0], [-1, -1])
    assert set(c.y[0].tolist()) == {0, 1}
    # two touching A detections (3 px apart) paired with the B beads, one pair unsound
    uv_a = a.project(np.stack([x1, x2])) + np.array([[1.5, 0.0], [-1.5, 0.0]])
    pairs = np.array([[0, 0], [1, 1]])
    c = one_view_overlaps(a, b, uv_a, uv_b, pairs, radius_px=4.0,
                          sound=np.array([True, False]))
    assert len(c) == 1
    np.testing.assert_array_equal(c.x[0], [0, 1])
    np.testing.assert_array_equal(c.y[0], [0, 1])
    # both sound: left alone
    assert len(one_view_overlaps(a, b, uv_a, uv_b, pairs, radius_px=4.0,
                                 sound=np.array([True, True]))) == 0
