"""A patient bead touching a cage marker, from the phantom, against its truth.

Regression test of the deblending stage of ``rsa.detect_stages.refine_candidates``. In view B of
the reference exam of the uniplanar implant phantom, seed 1 (as ``rsa phantom`` /
``rsa.synthetic.write_study`` render it), the patient bead implant-01 touches a cage marker
(centres 6.6 px apart, radii 4.3 and 3.5 px). The candidate stage finds three candidates there:
one on each bead and one on the saddle between them. The first pass fits the saddle candidate
onto the marker, a duplicate. While both took part in deblending, each subtracted the other's
model of that marker, drove both fits negative and lost the patient bead (the nearest detection
was 74 px away, so the bead was missing in that exam). The weaker of two candidates converged
on one bead now stays out of deblending.

Their discs overlap, so each is refitted last jointly with the other
(``rsa.detect_overlap.pair_refit``). Measured: implant-01 found (0.007, 0.011) px from the
truth (σ 0.017, 0.016 px, flagged touching), the marker (0.014, −0.012) px from it (σ 0.021,
0.019 px). Deblended alone (before the joint refit) the centres were biased beyond their σ:
0.17 px (σ 0.06) and 0.58 px (σ 0.09).
"""

import numpy as np
import pytest
from phantom_views import phantom_view

from rsa.detect import detect_beads

SEED = 1


@pytest.fixture(scope="module")
def touching_view():
    scene, view, rv, beads = phantom_view("implant", SEED, "REF", "B")
    markers = rv.uv_px[:len(scene.cage.xyz_mm)]
    bead = beads["implant-01"]
    marker = markers[np.argmin(np.linalg.norm(markers - bead, axis=1))]
    return rv, view, bead, marker


def test_scene_is_a_bead_touching_a_marker(touching_view):
    _, _, bead, marker = touching_view
    assert 5.0 < np.linalg.norm(bead - marker) < 8.0   # radii 4.3 and 3.5 px: discs touch


def test_bead_touching_marker_found(touching_view):
    rv, view, bead, marker = touching_view
    beads = detect_beads(rv.image, pixel_spacing_mm=view.pixel_spacing_mm)
    d = np.linalg.norm(beads.uv_px - bead, axis=1)
    j = int(np.argmin(d))
    # found: within 0.5 px (a bead's disc is ≈ 4 px in radius)
    assert d[j] < 0.5, d[j]
    assert beads.touching[j]
    # the marker is found too, not merged with the bead
    k = int(np.argmin(np.linalg.norm(beads.uv_px - marker, axis=1)))
    assert np.linalg.norm(beads.uv_px[k] - marker) < 1.0
    # both within their uncertainty (per axis, 4σ or the 0.05 px floor of the other tests)
    for i, t in ((j, bead), (k, marker)):
        err = np.abs(beads.uv_px[i] - t)
        assert np.all((err <= 4 * beads.sigma_px[i]) | (err <= 0.05)), (err, beads.sigma_px[i])
