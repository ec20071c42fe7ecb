"""A patient bead with a screw's edge through it, from the spine phantom, against its truth.

Regression test of which beads the edge refit tries (``rsa.detect_stages``, step 7). In view A
of exam REF of the uniplanar spine phantom, seed 0, bead L4-07 lies on the edge of a pedicle
screw's shadow, 15 px from L4-04, which the screw hides. In some noise draws
(``write_study(..., noise_draw=d)``) the plain fit takes the edge into its shape, with a blur
2.4× the image's typical bead and a radius of 0.7–0.8× the typical, and its centre goes
0.40–0.48 px off along the edge normal. Neither test of structure caught it: the fitted
background's change across the bead, the ring's misfit and its anisotropy were all below their
limits, and the cheap linear screen (the step at the structure tensor's direction) was at
0.15–0.75 of its threshold. The step fit, when tried, lowers χ² far beyond noise (95 against
the 18.5 of the test) and puts the centre within 0.04 px. Such a bead's σ (0.12–0.16 px) left
the error at 3–4σ. A plain fit blurred more than half again as much as the image's typical bead
and smaller than it is now also refitted with the step
(``rsa.detect_refits.traded_radius_for_blur``).

The bound is 0.1 px: the Cramér–Rao bound of this bead's centre is 0.018 px (u) and 0.013 px
(v) (benchmarks/_crlb.py); the failure was 4× beyond it. The bead must also be flagged near an
edge, since its step was kept.
"""

import numpy as np
import pytest
from phantom_views import assert_visible, nearest_detections, phantom_view

from rsa.detect import detect_beads

SEED = 0


@pytest.fixture(scope="module", params=(1, 3), ids=("draw1", "draw3"))
def edge_bead(request):
    _, view, rv, beads = phantom_view("spine", SEED, "REF", "A", noise_draw=request.param)
    found = detect_beads(rv.image, pixel_spacing_mm=view.pixel_spacing_mm)
    return rv, beads["L4-07"], found


def test_scene_bead_is_visible(edge_bead):
    rv, bead, _ = edge_bead
    assert_visible(rv, bead)


def test_bead_on_screw_edge_is_refitted_with_the_step(edge_bead):
    _, bead, found = edge_bead
    _, k, err = nearest_detections(found, bead[None])
    assert np.all(np.abs(err) < 0.1), err
    assert found.near_edge[k[0]]
