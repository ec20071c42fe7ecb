"""Beads on a sharp straight edge (implant plate) against the physical renderer as ground truth.

Regression test of the straight blurred-step background term of the bead fit
(``rsa.detect_refine.edge_profile``, ``rsa.detect_refits.edge_refit``). Without it, a bead on
or next to an implant or cortical edge is fitted with a quadratic background and pulled by
0.1–2 px perpendicular to the edge.

Scene (rendered by :func:`rsa.synthetic.render.render_view`: exact sphere chords, 8×8
sub-sampling, focal-spot blur, Poisson quanta, detector blur σ = 0.6 px, read-out noise, 14-bit
log display): a 400×400 view with 0.143 mm pixels at normal incidence (focus 1500 mm from the
detector), 120 mm of soft tissue (water) everywhere — 2·10⁴ quanta per pixel unattenuated, so
≈ 1700 behind the tissue — and a titanium plate 4 mm thick covering a half-plane whose straight
edge runs at 20° to the pixel columns through a point off the pixel grid, focal-blurred at
magnification 1.3. The plate absorbs 75 % of the beam (step of 1.39 in ln-attenuation, ≈ 2000
display units); 17 tantalum beads (0.8 / 1.0 mm, magnification 1.25–1.36, radius 3.5–4.7 px):
13 along the edge with their centres at signed distances of −1 to +1 bead radius from the edge
line (negative = behind the plate), 4 controls 45–60 px from it (two on each side). The plate is
added as the renderer's background term (``anatomy_attenuation`` patched for the render), so it
goes through the same Beer–Lambert, noise and display chain as everything else.

A bead's contrast in the log display is its own ln-attenuation (≈ 3.5–6 at the blurred peak,
5000–8900 display units here), whatever lies behind it; a step several times larger would leave
< 1 quantum behind the plate. Stronger steps than this one start to lose beads (10 seeds each):
with a 5.75 mm plate (step 2.0) 1–2 of the 13 edge beads are lost in 3 seeds, with 8 mm (step
2.8) 1–3 in 9 seeds (the one case examined: the first, quadratic-background pass drifts > 3 px
and the drift test rejects the bead before the edge refit sees it) — without the rescue of
failed candidates, which finds them all (metal-edge tests at the end of this module).

Tolerances, from the noise: ``sigma_px`` of these beads is 0.01–0.02 px per axis (its
calibration against truth is tested in tests/test_detect.py; here the control beads check it
again), so noise alone gives an RMS centre error of ≈ 0.02 px. The RMS bound of 0.1 px (5× that)
leaves room only for a bias well below the 0.47–0.80 px RMS of the quadratic background. Per
bead, each axis must be within max(4σ, 0.05 px): Gaussian noise exceeds 4σ with probability
6·10⁻⁵ per axis; the 0.05 px floor allows a small model error.

Measured (seed 0). "Without" replaces ``edge_refit`` by the plain fit in the edge layout (step
amplitude 0):

===========================  ==========================  =====================================
13 beads on the edge         with the step term          without it
===========================  ==========================  =====================================
within 1 px of the truth     13 / 13                     11 / 13 (two 1.04 and 1.08 px off)
RMS error                    0.035 px                    0.65 px
largest error                0.060 px                    1.08 px
beyond max(4σ, 0.05 px)      0 (at most 0.78 × the bound)  9 (with σ up to 0.24 px)
===========================  ==========================  =====================================

Over seeds 0–9: RMS 0.034–0.043 px with the step term; without it 0.43–0.77 px, and 7.2 px in
seed 4, where a bead is lost and its nearest detection is another bead. With the step term all
13 are found and flagged ``near_edge``, and the 4 controls are within max(4σ, 0.05 px) (at most
0.59 × the bound).

The detector blurs the quanta *after* the plate has attenuated them, so in the log display bead
and step do not add as the step term assumes. The blur-tilt correction (``uv -= s_det² · grad /
gain``, ``grad`` the fitted background's gradient, step term included, averaged over the bead's
rim: ``rsa.detect_stages._blur_tilt``) removes the first-order part of this. Mean bias of the 13
beads perpendicular to the edge, towards the plate, over seeds 0–9:

==============================================  =====  =====  =====  =====  =====
ln-attenuation step                             0.3    0.6    1.0    1.39   2.0
==============================================  =====  =====  =====  =====  =====
plane gradient, each bead's amplitude as gain   0.008  0.017  0.030  0.046  0.068
edge gradient, each bead's amplitude as gain    0.001  0.010  0.019  0.031  0.044
edge gradient, the image's gain (now)           0.000  0.003  0.006  0.006  0.020
==============================================  =====  =====  =====  =====  =====

(px; the mean of −error·n over the 13 edge beads of :func:`_scene` at each step, seeds 0–9.) The
gain is one number of the image, the median amplitude of its clean beads. A bead's own amplitude
stood in for it until stop 28; next to an edge the fit often trades radius for blur (a small,
blurred disc of several times the amplitude), so its shift came out that much too small. What is
left is of higher order in the step. ``sigma_px`` does not include it: at step 1.39 one bead of
the 130 (seeds 0–9) exceeds max(4σ, 0.05 px), 1.13 × the bound in seed 3; seed 0, tested below,
has none (before: one in seeds 0 and 1, 1.17 and 1.15 × the bound).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from phantom_views import nearest_detections
from scipy.spatial import cKDTree
from scipy.special import ndtr

import rsa.detect_stages
import rsa.synthetic.render
from rsa.detect import Beads2D, DetectOptions, detect_beads
from rsa.detect_refine import IA, IBU, IBV, ILC, ILK, ILS, IR, IU, IV, NPAR, NPAR_EDGE, make_setup
from rsa.synthetic.geometry import look_at_view
from rsa.synthetic.materials import MU_COCR_PER_MM, MU_TITANIUM_PER_MM, MU_WATER_PER_MM
from rsa.synthetic.render import Capsule, RenderOptions, render_view

SEED = 0
SPACING = 0.143
SHAPE = (400, 400)
FOCUS_MM = 1500.0
TISSUE_MM = 120.0
PLATE_MM = 4.0
PLATE_M = 1.3               # magnification of the plate (sets its focal blur)
ANGLE_DEG = 20.0            # edge direction from the pixel columns
N_EDGE = 13                 # beads along the edge; the rest are controls
RMS_BOUND = 0.1             # px
OPTIONS = DetectOptions(polarity="bright")


def _edge_frame():
    """A point on the edge line (px, off the pixel grid), its unit normal (plate where n·x < 0)
    and its unit direction."""
    a = np.deg2rad(ANGLE_DEG)
    x0 = np.array([(SHAPE[1] - 1) / 2 + 3.3, (SHAPE[0] - 1) / 2 - 1.7])
    return x0, np.array([np.cos(a), -np.sin(a)]), np.array([np.sin(a), np.cos(a)])


def _line_distance(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (px) of pixel positions from the edge line (plate where negative)."""
    x0, n, _ = _edge_frame()
    return n[0] * (u - x0[0]) + n[1] * (v - x0[1])


def _plate_attenuation(options: RenderOptions, plate_mm: float = PLATE_MM,
                       distance=_line_distance) -> np.ndarray:
    """Attenuation ``Σ μ·L`` (rows, cols) of the tissue and the plate, as the renderer forms a
    capsule's: transmission focal-blurred (an edge blurred by a Gaussian is Φ of the distance,
    for a curved edge while its radius is large against the blur), averaged over s×s
    sub-samples per pixel, then −log. ``distance(u, v)``: signed distance from the plate's
    edge in px, negative on the plate."""
    rows, cols = SHAPE
    sigma = options.focal_spot_mm / (2 * np.sqrt(2 * np.log(2))) * (PLATE_M - 1) / SPACING
    s = options.supersample
    sub = (np.arange(s) + 0.5) / s - 0.5
    v, u = np.mgrid[0:rows, 0:cols].astype(float)
    blocked = -np.expm1(-MU_TITANIUM_PER_MM * plate_mm)
    trans = np.zeros(SHAPE)
    for du in sub:
        for dv in sub:
            trans += 1.0 - blocked * ndtr(-distance(u + du, v + dv) / sigma)
    trans /= s * s
    return (MU_WATER_PER_MM * TISSUE_MM - np.log(trans)).astype(np.float32)


def _scene(seed: int, plate_mm: float = PLATE_MM):
    """Rendered view, truth centres, signed distance of each to the edge line (px) and radius."""
    rng = np.random.default_rng(seed)
    view = look_at_view(focus_mm=[0.0, 0.0, FOCUS_MM], detector_centre_mm=[0, 0, 0],
                        up=[0, 1, 0], pixel_spacing_mm=SPACING, shape=SHAPE)
    x0, n, t = _edge_frame()
    nb = N_EDGE + 4
    depth = rng.uniform(300.0, 400.0, nb)           # magnification 1.25–1.36
    radii = rng.choice([0.4, 0.5], nb)
    r_px = radii * FOCUS_MM / (FOCUS_MM - depth) / SPACING
    along = np.linspace(-165.0, 165.0, N_EDGE) + rng.uniform(-2.0, 2.0, N_EDGE)
    across = np.linspace(-1.0, 1.0, N_EDGE) * r_px[:N_EDGE]
    along = np.concatenate([along, [-90.0, 80.0, -80.0, 90.0]])
    across = np.concatenate([across, [-45.0, -60.0, 45.0, 60.0]])
    uv = x0 + along[:, None] * t + across[:, None] * n
    o, d = view.rays(uv)
    centres = o + ((depth - o[:, 2]) / d[:, 2])[:, None] * d
    opts = RenderOptions(photons_per_pixel=2.0e4, supersample=8, background=True)
    att = _plate_attenuation(opts, plate_mm)
    with pytest.MonkeyPatch.context() as mp:   # the plate and tissue replace the limb anatomy
        mp.setattr(rsa.synthetic.render, "anatomy_attenuation", lambda *a, **k: att.copy())
        rv = render_view(view, centres, radii, options=opts, rng=seed)
    assert not rv.hidden.any()
    assert not rv.clipped.any()
    return rv, (rv.uv_px - x0) @ n, radii * view.magnification(centres) / SPACING


def _without_edge_refit(r, *args, **kwargs):
    """Stand-in for ``edge_refit``: the plain fit in the edge layout, step amplitude 0."""
    p = np.zeros((len(r.params), NPAR_EDGE))
    p[:, :NPAR] = r.params
    return dataclasses.replace(r, params=p)


def _errors(beads: Beads2D, uv_true: np.ndarray):
    """Nearest detection to each true centre: distance, index, error (detected − true)."""
    return nearest_detections(beads, uv_true)


@pytest.fixture(scope="module")
def edge_scene():
    rv, dist, r_px = _scene(SEED)
    beads = detect_beads(rv.image, pixel_spacing_mm=SPACING, options=OPTIONS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rsa.detect_stages, "edge_refit", _without_edge_refit)
        plain = detect_beads(rv.image, pixel_spacing_mm=SPACING, options=OPTIONS)
    near = np.arange(len(dist)) < N_EDGE
    return rv, dist, r_px, near, beads, plain


def test_scene_layout(edge_scene):
    _, dist, r_px, near, _, _ = edge_scene
    assert np.all(np.abs(dist[near]) <= r_px[near] + 1e-9)
    assert np.ptp(dist[near] / r_px[near]) == pytest.approx(2.0)
    assert np.all(np.abs(dist[~near]) >= 10 * r_px[~near])


def test_every_bead_found_no_false_detection(edge_scene):
    rv, _, _, _, beads, _ = edge_scene
    d, _, _ = _errors(beads, rv.uv_px)
    assert np.all(d < 1.0), d
    # every detection is one of the beads (no edge fragment accepted as a bead)
    d_false, _ = cKDTree(rv.uv_px).query(beads.uv_px)
    assert np.all(d_false < 1.0), beads.uv_px[d_false >= 1.0]


def test_edge_beads_flagged(edge_scene):
    rv, dist, r_px, near, beads, _ = edge_scene
    _, j, _ = _errors(beads, rv.uv_px)
    assert beads.near_edge[j[near]].all(), (dist / r_px)[near][~beads.near_edge[j[near]]]


def test_edge_beads_rms(edge_scene):
    rv, _, _, near, beads, _ = edge_scene
    _, _, err = _errors(beads, rv.uv_px)
    rms = np.sqrt(np.mean(np.sum(err[near] ** 2, axis=1)))
    assert rms <= RMS_BOUND, rms


def test_control_beads_within_their_uncertainty(edge_scene):
    # away from the edge the bound holds: the reported sigma describes this image's noise
    rv, _, _, near, beads, _ = edge_scene
    _, j, err = _errors(beads, rv.uv_px)
    bound = np.maximum(4.0 * beads.sigma_px[j[~near]], 0.05)
    assert np.all(np.abs(err[~near]) <= bound), (err[~near], bound)


def test_edge_beads_within_their_uncertainty(edge_scene):
    rv, dist, r_px, near, beads, _ = edge_scene
    _, j, err = _errors(beads, rv.uv_px)
    bound = np.maximum(4.0 * beads.sigma_px[j[near]], 0.05)
    bad = np.any(np.abs(err[near]) > bound, axis=1)
    assert not bad.any(), ((dist / r_px)[near][bad], err[near][bad], bound[bad])


def test_blur_tilt_uses_the_edge_gradient(edge_scene):
    # the same image with the blur-tilt correction from the plane gradient alone (as before the
    # step term entered it): the beads sit further towards the plate. Over seeds 0–9, both with
    # the image's gain, the step's gradient removes most of the bias (0.046 → 0.003 px; per
    # seed it leaves at most 0.55 of the plane's, seed 2); here at least a quarter.
    rv, _, _, near, beads, _ = edge_scene
    _, n, _ = _edge_frame()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rsa.detect_stages, "background_gradient",
                   lambda p, pu, pv, setup: p[:, [IBU, IBV]])
        plane = detect_beads(rv.image, pixel_spacing_mm=SPACING, options=OPTIONS)
    bias = [np.mean(_errors(b, rv.uv_px)[2][near] @ n) for b in (beads, plane)]
    assert bias[1] < 0.0, bias                   # towards the plate (n·x < 0) ...
    assert abs(bias[0]) < 0.75 * abs(bias[1]), bias   # ... and much less so with the edge


def test_blur_tilt_divides_by_the_images_gain():
    # on a plane background the tilt is σ_d² · gradient / gain exactly, with the gain the median
    # amplitude of the clean beads: a bead whose own amplitude is 10× (a fit that traded radius
    # for blur) is shifted as much as the others; with fewer than three clean beads each bead's
    # own amplitude stands in, and a linear display is not shifted
    setup = make_setup(3.0, 5.0)
    w = 2 * setup.half + 1
    n = 5
    pu = np.tile(100.0 + np.arange(w), (n, 1))
    pv = np.tile(200.0 + np.arange(w), (n, 1))
    p = np.zeros((n, NPAR))
    p[:, IU], p[:, IV] = pu[:, setup.half] + 0.3, pv[:, setup.half] - 0.2
    p[:, IR], p[:, ILS], p[:, ILK], p[:, ILC] = 4.0, 0.0, np.log(5.0), 5.0
    p[:, IA] = [1.0, 1.2, 0.9, 1.1, 10.0]
    p[:, IBU], p[:, IBV] = 0.02, -0.01
    s_det = 0.6
    clean = np.array([True, True, True, True, False])
    shift = rsa.detect_stages._blur_tilt(p, pu, pv, setup, s_det, clean)
    expected = s_det ** 2 * np.array([0.02, -0.01]) / np.median(p[:4, IA])
    np.testing.assert_allclose(shift, np.tile(expected, (n, 1)), rtol=1e-9)
    few = rsa.detect_stages._blur_tilt(p, pu, pv, setup, s_det, clean & (p[:, IA] < 1.0))
    np.testing.assert_allclose(few, s_det ** 2 * np.array([0.02, -0.01]) / p[:, IA, None],
                               rtol=1e-9)
    p[:, ILC] = 0.0
    assert not rsa.detect_stages._blur_tilt(p, pu, pv, setup, s_det, clean).any()


def test_bound_fails_without_edge_refit(edge_scene):
    # the same bound on the same image with the step term switched off: the test can fail
    rv, _, _, near, _, plain = edge_scene
    _, _, err = _errors(plain, rv.uv_px)
    rms = np.sqrt(np.mean(np.sum(err[near] ** 2, axis=1)))
    assert rms > RMS_BOUND, rms


# A metal edge: an 8 mm titanium plate (step 2.78 in ln-attenuation, 6 % of the quanta behind
# it). The plain fit of a bead half over such an edge drifts onto the edge and fails the
# detector's tests before the edge refit can see it; the rescue (``rsa.detect_refits.
# edge_rescue``: typical shape, step, pixel noise growing with the background level) refits the
# failed candidates. Measured (seeds 0, 1): without the rescue 4 and 3 of the 13 edge beads are
# lost (centres 0 to 0.67 radii on the open side); with it all are found, 0.10–0.18 px from the
# truth (a bias along the edge normal, towards the plate), flagged occluded and near_edge, with
# sigma_px widened by the detector blur σ_d ≈ 0.6 px along the normal (|error| ≤ 0.4 σ).
METAL_MM = 8.0
METAL_SEEDS = (0, 1)


def _without_rescue(p0, *args, **kwargs):
    """Stand-in for ``edge_rescue`` whose fits all fail (no candidate is rescued)."""
    r, w = _edge_rescue(p0, *args, **kwargs)
    params = r.params.copy()
    params[:, 0] = np.nan
    return dataclasses.replace(r, params=params), w


_edge_rescue = rsa.detect_stages.edge_rescue


@pytest.fixture(scope="module")
def metal_scenes():
    out = []
    for seed in METAL_SEEDS:
        rv, _, _ = _scene(seed, METAL_MM)
        beads = detect_beads(rv.image, pixel_spacing_mm=SPACING, options=OPTIONS)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(rsa.detect_stages, "edge_rescue", _without_rescue)
            plain = detect_beads(rv.image, pixel_spacing_mm=SPACING, options=OPTIONS)
        out.append((rv, beads, plain))
    return out


def test_metal_edge_beads_lost_without_rescue(metal_scenes):
    # the scenes need the rescue: the tests below can fail
    lost = [int(np.sum(_errors(plain, rv.uv_px)[0] >= 1.0)) for rv, _, plain in metal_scenes]
    assert min(lost) >= 1, lost


def test_metal_edge_beads_rescued(metal_scenes):
    s_det = RenderOptions().detector_blur_px   # the scene's detector blur, px
    for rv, beads, plain in metal_scenes:
        d, j, err = _errors(beads, rv.uv_px)
        assert np.all(d < 1.0), d
        d_false, _ = cKDTree(rv.uv_px).query(beads.uv_px)
        assert np.all(d_false < 1.0), beads.uv_px[d_false >= 1.0]
        rescued = _errors(plain, rv.uv_px)[0] >= 1.0
        k = j[rescued]
        assert beads.occluded[k].all()
        assert beads.near_edge[k].all()
        # the bias the model leaves (detector blur after the plate's attenuation) is below the
        # detector blur, and the widened sigma covers it; noise alone is ≈ 0.02 px here
        assert np.all(np.hypot(*err[rescued].T) <= 0.5 * s_det), err[rescued]
        assert np.all(np.abs(err[rescued]) <= 3.0 * beads.sigma_px[k]), (err[rescued],
                                                                          beads.sigma_px[k])


# Beads at the limb of a cobalt-chrome rod (a stem seen side-on: 6 mm radius, ln-attenuation
# up to 14 through its axis), rendered with the renderer's own capsule. 13 beads with centres
# −1 to +1 bead radius about the limb (positive: outside the rod), 12 controls away from it.
# Next to so strong an edge a bead's LoG peak can lie on the edge, a radius or more from the
# bead and beyond the rescue's box: a rescue that fails but caught part of a bead (0.2–2× the
# typical amplitude) starts once more a typical radius along the normal of the step it fitted,
# the way it moved (``rsa.detect_stages._shifted_rescue``). Measured, seeds 0–7: the
# restart finds 2 beads in seed 0, 1 in seed 1 and 1 in seed 2 (0.67–0.83 radii outside the
# rod; 0.02–0.06 px from the truth, |error| ≤ 0.14 σ) and adds no detection; 0–4 beads per
# seed with centres within about half a radius of the limb leave no LoG candidate at all and
# stay lost (not tested).
ROD_SEED = 0


def _rod_scene(seed: int):
    rng = np.random.default_rng(seed)
    view = look_at_view(focus_mm=[0.0, 0.0, FOCUS_MM], detector_centre_mm=[0, 0, 0],
                        up=[0, 1, 0], pixel_spacing_mm=SPACING, shape=SHAPE)
    a = np.deg2rad(ANGLE_DEG)
    t, n = np.array([np.sin(a), np.cos(a), 0.0]), np.array([np.cos(a), -np.sin(a), 0.0])
    c0, rod_r = np.array([0.3, -0.2, 350.0]), 6.0
    rod = Capsule(c0 - 40 * t, c0 + 40 * t, rod_r, MU_COCR_PER_MM)
    depth = rng.uniform(300.0, 400.0, N_EDGE)
    radii = rng.choice([0.4, 0.5], N_EDGE)
    r_px = radii * FOCUS_MM / (FOCUS_MM - depth) / SPACING
    uv0 = view.project(c0[None])[0]
    pt, pn = (view.project((c0 + x)[None])[0] - uv0 for x in (t, n))
    pt, pn = pt / np.linalg.norm(pt), pn / np.linalg.norm(pn)
    m_rod = FOCUS_MM / (FOCUS_MM - c0[2])
    uv = (uv0 + (np.linspace(-22, 22, N_EDGE) * m_rod / SPACING)[:, None] * pt
          + (rod_r * m_rod / SPACING + np.linspace(-1, 1, N_EDGE) * r_px)[:, None] * pn)
    uv = np.concatenate([uv, [[40.0 + 45 * i, 370.0] for i in range(8)]
                         + [[40.0 + 45 * i, 30.0] for i in range(4)]])
    depth = np.concatenate([depth, rng.uniform(300.0, 400.0, 12)])
    radii = np.concatenate([radii, rng.choice([0.4, 0.5], 12)])
    o, d = view.rays(uv)
    centres = o + ((depth - o[:, 2]) / d[:, 2])[:, None] * d
    opts = RenderOptions(photons_per_pixel=2.0e4, supersample=8, background=False)
    return render_view(view, centres, radii, capsules=[rod], options=opts, rng=seed)


def _no_restart(q, centres, *args):
    pe, snr, ok, windows = rsa.detect_stages._rescue(q, centres, *args)
    return pe, snr, np.zeros_like(ok), windows


def test_rod_limb_beads_found_by_the_restarted_rescue():
    rv = _rod_scene(ROD_SEED)
    beads = detect_beads(rv.image, pixel_spacing_mm=SPACING, options=OPTIONS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rsa.detect_stages, "_shifted_rescue", _no_restart)
        before = detect_beads(rv.image, pixel_spacing_mm=SPACING, options=OPTIONS)
    visible = ~rv.hidden
    d0 = _errors(before, rv.uv_px)[0]
    d, j, err = _errors(beads, rv.uv_px)
    gained = visible & (d < 1.0) & (d0 >= 1.0)
    assert gained.sum() >= 1, d0[visible]                 # the scene needs the restart
    assert np.all(d[visible & (d0 < 1.0)] < 1.0)          # ... which loses no bead
    assert np.all(np.abs(err[gained]) <= 3.0 * beads.sigma_px[j[gained]])
    assert beads.occluded[j[gained]].all()
    # no detection that is not a bead (hidden ones included)
    far = [int(np.sum(cKDTree(rv.uv_px).query(b.uv_px)[0] >= 1.0)) for b in (beads, before)]
    assert far[0] <= far[1], far
