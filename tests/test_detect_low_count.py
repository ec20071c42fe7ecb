"""A bead with a core pixel that received no quanta, from the spine phantom (known limitation).

In view B of exam REF-DOUBLE of the uniplanar spine phantom, seed 5 (as
``rsa.synthetic.write_study`` renders it), bead L4-06 sits at the rounded end of a pedicle
screw. The pixels of its core expect only a few quanta (4.6 at the centre: the bead, the
anatomy and the screw's edge all attenuate), and one of them, 0.4 px from the true centre,
received next to none (under half a quantum after the detector blur, which the log display
puts at the top of its range). The detector fits that pixel as
a measurement with the Gaussian weight of a pixel expecting 4.6 quanta, and the edge refit then
prefers a step at the window's border: the bead comes out 0.51 px off with σ ≈ 0.12 px (4.4σ),
the largest single 2D error behind the spine double-exam precision (ry +8.3 of the pair's −17.8
mdeg; scratch analysis at stop 18).

Measured while diagnosing (scratch scripts, /work/scratch/s19): 19 other noise draws of the
same view put the bead 0.00–0.10 px off; the noise-free image 0.09 px; the same image with
that one pixel left out of every fit 0.02 px, or replaced by the mean of its four neighbours
0.016 px (σ 0.06 px; the first test). Leaving all pixels at the top of the range out
of the fits (censoring) fixes this bead, but, done from the first fit on, lets fits next to a
clipped metal implant pass the detector's tests (false and duplicate detections through the
rescue and split paths); done only in a last refit, the edge model chosen with the pixel in
keeps the centre where it was.

The outcome depends on floating-point details: on the AVX-512 machine of stop 23 (numpy 2.4.6)
the same image gives the bead 0.017 px off with σ 0.056 px (the edge refit chooses otherwise
with the pixel in). Hence ``xfail(strict=False)``: a known limitation that shows on some
machines, not a guarantee either way.
"""

import numpy as np
import pytest
from phantom_views import phantom_view

from rsa.detect import DetectOptions, detect_beads

SEED = 5
OPTIONS = DetectOptions(polarity="bright")


@pytest.fixture(scope="module")
def core_view():
    _, view, rv, beads = phantom_view("spine", SEED, "REF-DOUBLE", "B")
    return rv, beads["L4-06"], view.pixel_spacing_mm


def _nearest(found, bead):
    k = int(np.argmin(np.linalg.norm(found.uv_px - bead, axis=1)))
    return found.uv_px[k] - bead, found.sigma_px[k]


def test_core_pixel_without_quanta_is_at_the_top(core_view):
    """The diagnosis: one pixel of the bead's core is at the image maximum, and with it
    replaced by the mean of its four neighbours the bead is found within 4σ."""
    rv, bead, spacing = core_view
    img = rv.image.astype(float)
    u, v = np.rint(bead).astype(int)
    core = img[v - 1:v + 2, u - 1:u + 2]
    assert np.count_nonzero(core == img.max()) == 1
    dv, du = np.argwhere(core == img.max())[0] - 1
    y, x = v + dv, u + du
    fixed = img.copy()
    fixed[y, x] = np.mean([img[y - 1, x], img[y + 1, x], img[y, x - 1], img[y, x + 1]])
    err, sig = _nearest(detect_beads(fixed.astype(rv.image.dtype), pixel_spacing_mm=spacing,
                                     options=OPTIONS), bead)
    assert np.all(np.abs(err) <= np.maximum(4.0 * sig, 0.05)), (err, sig)


@pytest.mark.xfail(strict=False, reason="a core pixel that received next to no quanta (log "
                   "display: at the top of the range) is fitted as a measurement with a "
                   "Gaussian weight: 0.51 px, 4.4 sigma on some machines (module doc)")
def test_bead_with_empty_core_pixel_within_its_uncertainty(core_view):
    rv, bead, spacing = core_view
    err, sig = _nearest(detect_beads(rv.image, pixel_spacing_mm=spacing, options=OPTIONS), bead)
    assert np.all(np.abs(err) <= np.maximum(4.0 * sig, 0.05)), (err, sig)
