"""Beads at the rim of a titanium cylinder's shadow (a pedicle screw) against the renderer's truth.

Regression test of the edge refit's shape restart (``rsa.detect_refits._shape_restart``). Next to
a strong edge the bead fit has a second minimum: a small disc blurred far more than the image's
beads, at several times the amplitude. The step fits of such beads are started again from the
image's typical bead (median radius and blur of the beads away from edges) and the fit of lower
misfit kept.

Scene (:func:`rsa.synthetic.render.render_view`): a 400×400 view with 0.143 mm pixels at normal
incidence (focus 1500 mm from the detector), 120 mm of water everywhere, and a titanium cylinder
of radius 3.25 mm (the spine phantom's pedicle screws; 2.3 ln-attenuation through its axis) lying
300 mm above the detector at 20° to the pixel rows: a shadow 28.4 px in radius. Fifteen 1.0 mm
tantalum beads sit along it with their centres from 10 px inside its projected rim to 4 px
outside, six more (controls) 45 px outside; magnification 1.20–1.30, radius 4.2–4.6 px.

Measured on seeds 0–9 of :func:`_scene`: rim beads fitted with a radius below 3/4 of the
truth ("collapsed"), without the restart 2, 1, 1, 10, 0, 5, 2, 2, 0 and 7 of the 15; with it
none, but for one in seed 6 (a fit outside the restart's criteria, or whose restart ended with
more misfit). All 21 beads are found in every seed either way; a false detection in
seeds 2, 5, 8 and 9 without, in seeds 5 and 8 with. The centres move little here (RMS error of
the 15 rim beads 0.024–0.040 px with, 0.024–0.045 px without; the largest change 0.040 →
0.032 px in seed 6). On the spine phantom (seed 0, all 190 patient bead views of its 7 exams)
the RMS error fell from 0.038 to 0.034 px and the 99th percentile from 0.22 to 0.16 px. The
test uses seed 3, whose fits collapse most without the restart.
"""

from __future__ import annotations

import numpy as np
import pytest
from phantom_views import nearest_detections
from scipy.spatial import cKDTree

import rsa.detect_refits
import rsa.synthetic.render
from rsa.detect import DetectOptions, detect_beads
from rsa.synthetic.geometry import look_at_view
from rsa.synthetic.materials import MU_TITANIUM_PER_MM, MU_WATER_PER_MM
from rsa.synthetic.render import Capsule, RenderOptions, render_view

SEED = 3
SPACING = 0.143
SHAPE = (400, 400)
FOCUS_MM = 1500.0
N_RIM = 15
OPTIONS = DetectOptions(polarity="bright")


def _scene(seed: int):
    """Rendered view, true radii (px) and the signed distance (px) of each rim bead from the
    shadow's rim (negative inside)."""
    rng = np.random.default_rng(seed)
    view = look_at_view(focus_mm=[0.0, 0.0, FOCUS_MM], detector_centre_mm=[0, 0, 0],
                        up=[0, 1, 0], pixel_spacing_mm=SPACING, shape=SHAPE)
    a = np.deg2rad(20.0)
    axis = np.array([np.cos(a), np.sin(a), 0.0])
    c0 = np.array([0.3, -0.2, 300.0])
    cap = Capsule(c0 - 25.0 * axis, c0 + 25.0 * axis, 3.25, MU_TITANIUM_PER_MM)
    rim_px = 3.25 * FOCUS_MM / (FOCUS_MM - c0[2]) / SPACING
    uvc = view.project(c0[None])[0]
    ends = view.project(np.stack([c0 - 10.0 * axis, c0 + 10.0 * axis]))
    d = (ends[1] - ends[0]) / np.linalg.norm(ends[1] - ends[0])
    n = np.array([-d[1], d[0]])
    along = np.linspace(-140.0, 140.0, N_RIM) + rng.uniform(-2.0, 2.0, N_RIM)
    from_rim = np.linspace(-10.0, 4.0, N_RIM) - rng.uniform(-0.3, 0.3, N_RIM)
    uv = uvc + along[:, None] * d - (rim_px + from_rim)[:, None] * n
    ctrl = np.array([[-120.0, 1.0], [0.0, 1.0], [120.0, 1.0], [-120.0, -1.0], [0.0, -1.0],
                     [120.0, -1.0]])
    uv = np.concatenate([uv, uvc + ctrl[:, :1] * d + (ctrl[:, 1:] * (rim_px + 45.0)) * n])
    depth = rng.uniform(250.0, 350.0, len(uv))
    o, r = view.rays(uv)
    centres = o + ((depth - o[:, 2]) / r[:, 2])[:, None] * r
    opts = RenderOptions(photons_per_pixel=2.0e4, supersample=8, background=True)
    water = np.full(SHAPE, MU_WATER_PER_MM * 120.0, np.float32)
    with pytest.MonkeyPatch.context() as mp:   # uniform water replaces the limb anatomy
        mp.setattr(rsa.synthetic.render, "anatomy_attenuation", lambda *a, **k: water.copy())
        rv = render_view(view, centres, np.full(len(uv), 0.5), capsules=[cap], options=opts,
                         rng=seed)
    r_true = 0.5 * view.magnification(centres) / SPACING
    return rv, r_true, from_rim


@pytest.fixture(scope="module")
def rim_scene():
    rv, r_true, from_rim = _scene(SEED)
    beads = detect_beads(rv.image, pixel_spacing_mm=SPACING, options=OPTIONS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rsa.detect_refits, "_shape_restart", lambda e, *a, **k: e)
        plain = detect_beads(rv.image, pixel_spacing_mm=SPACING, options=OPTIONS)
    return rv, r_true, from_rim, beads, plain


def test_scene_layout(rim_scene):
    rv, r_true, from_rim, _, _ = rim_scene
    assert from_rim.min() < -9.0
    assert from_rim.max() > 3.0
    assert np.all((r_true > 4.0) & (r_true < 4.7)), r_true
    assert not rv.hidden.any()
    assert not rv.clipped.any()


def test_every_bead_found_no_false_detection(rim_scene):
    rv, _, _, beads, _ = rim_scene
    d, _, _ = nearest_detections(beads, rv.uv_px)
    assert np.all(d < 1.0), d
    d_false, _ = cKDTree(rv.uv_px).query(beads.uv_px)
    assert np.all(d_false < 1.0), beads.uv_px[d_false >= 1.0]


def test_rim_beads_keep_their_shape(rim_scene):
    rv, r_true, _, beads, _ = rim_scene
    _, j, _ = nearest_detections(beads, rv.uv_px)
    ratio = beads.radius_px[j[:N_RIM]] / r_true[:N_RIM]
    assert np.all(ratio > 0.75), ratio


def test_rim_beads_collapse_without_the_restart(rim_scene):
    # the scene needs the restart: the test above can fail
    rv, r_true, _, _, plain = rim_scene
    _, j, _ = nearest_detections(plain, rv.uv_px)
    ratio = plain.radius_px[j[:N_RIM]] / r_true[:N_RIM]
    assert np.sum(ratio < 0.75) >= 5, ratio


def test_rim_beads_within_their_uncertainty(rim_scene):
    # per bead and axis within max(4σ, 0.05 px) (tests/test_detect_edge.py); at most 0.41 × that
    # bound here, 0.35–0.87 × over seeds 0–9
    rv, _, _, beads, _ = rim_scene
    _, j, err = nearest_detections(beads, rv.uv_px)
    bound = np.maximum(4.0 * beads.sigma_px[j[:N_RIM]], 0.05)
    assert np.all(np.abs(err[:N_RIM]) <= bound), (err[:N_RIM], bound)
