"""Strongly overlapping bead pairs against the physical renderer as ground truth.

Regression test of the joint two-bead fit (``rsa.detect_refits.split_merged``): two beads whose
projected centres are about one radius apart or less leave one candidate, and one bead fitted to
both sits midway between them, ≈ 1–3 px from either, with ``sigma_px`` of 0.02–0.08 px (errors of
40–70 σ). The split refits such a detection as two beads.

Scene (rendered by :func:`rsa.synthetic.render.render_view`, as in tests/test_detect_edge.py:
exact sphere chords, 8×8 sub-sampling, focal-spot blur, Poisson quanta, detector blur
σ = 0.6 px, read-out noise, 14-bit log display): a 400×400 view with 0.143 mm pixels at normal
incidence (focus 1500 mm from the detector) and 120 mm of soft tissue (water) everywhere
(≈ 1700 quanta per pixel behind it). 16 tantalum beads (0.8 / 1.0 mm, magnification 1.25–1.36,
radius 3.5–4.8 px): 6 pairs whose centres are 0.7, 0.8, … 1.2 mean projected radii apart, each
along a random direction, centred in cells of a 75-px grid, and 4 isolated controls in other
cells (≥ 60 px from any other bead). Without the split every pair gives one detection
(checked below), so each is the single-candidate case.

Measured, seed 0 (pair separation in radii; error = distance of the nearest detection to each
true centre):

==========  ===================================  ==========================================
separation  with the split                       without it (``split_merged`` a no-op)
==========  ===================================  ==========================================
0.7         one detection, 1.25 / 1.21 px        the same
0.8         one detection, 2.28 / 1.05 px        the same
0.9         split, 0.07 / 0.10 px (σ ≤ 0.23)     one detection, 1.17 / 2.52 px (σ 0.04)
1.0         split, 0.05 / 0.04 px (σ ≤ 0.12)     one detection, 2.38 / 2.38 px (σ 0.05)
1.1         split, 0.03 / 0.04 px (σ ≤ 0.27)     one detection, 2.99 / 1.59 px (σ 0.06)
1.2         split, 0.04 / 0.02 px (σ ≤ 0.20)     one detection, 1.72 / 3.23 px (σ 0.08)
==========  ===================================  ==========================================

RMS error of the eight split beads 0.053 px (largest 0.10 px, ≤ 0.9 × the reported σ per
axis); controls 0.004–0.04 px (≤ 0.4 × max(4σ, 0.05 px)). 14 detections with the split, 10
without. The split's own fit (shape free) leaves a systematic error of 0.1–0.5 px along the
pair's axis that does not shrink with the dose (seed 0: 0.06–0.33 px, RMS 0.19 px): each
bead's ellipticity takes up part of the other. The split beads' centres are therefore those
of the joint refit with the image's typical shape held that every pair of overlapping beads
gets last (``rsa.detect_overlap.pair_refit``).

Over seeds 0–9, 6 pairs per scene all at one separation (60 pairs each), both beads within
0.5 px with distinct detections:

==========  ====  ====  ====  ====  ====  ====  ====  ====  ====  ====  ====  ====
radii       0.5   0.6   0.7   0.8   0.9   1.0   1.1   1.2   1.3   1.4   1.6   1.8
==========  ====  ====  ====  ====  ====  ====  ====  ====  ====  ====  ====  ====
now         0     1     1     16    47    57    60    57    54    47    46    53
split free  0     1     1     16    38    46    54    56    52    44    44    53
no split    0     0     0     0     0     3     4     6     5     12    20    50
==========  ====  ====  ====  ====  ====  ====  ====  ====  ====  ====  ====  ====

(``split free``: the split beads kept their free-shape fit, as before; ``no split``:
``split_merged`` a no-op, the joint refit on.) From ≈ 1.6–1.8 radii the candidate stage
already finds two candidates.

Known limitations (strict expected failures below, so that they fail loudly once fixed):

* Below ≈ 0.85 radii the merged detection is not flagged (its fitted ellipticity, 0.15–0.29,
  stays under ``max_ellipticity`` = 0.3 and its disc χ² under ``max_chi2``), so the split is
  never tried. From 1.2 radii up the pair's misfit increasingly sets ``near_edge``, which also
  excludes the split unless the fit is elongated to ``max_ellipticity`` with only a weak step
  in its background.
* A pair that is not split still comes out as one midway detection with σ ≈ 0.02–0.08 px.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.spatial import cKDTree

import rsa.detect_stages
import rsa.synthetic.render
from rsa.detect import Beads2D, DetectOptions, detect_beads
from rsa.synthetic.geometry import look_at_view
from rsa.synthetic.materials import MU_WATER_PER_MM
from rsa.synthetic.render import RenderOptions, render_view

SEED = 0
SPACING = 0.143
SHAPE = (400, 400)
FOCUS_MM = 1500.0
TISSUE_MM = 120.0
SEPARATIONS = np.linspace(0.7, 1.2, 6)     # pair separation / mean projected radius
SPLIT = SEPARATIONS > 0.85                # pairs the split handles at this seed
N_CONTROL = 4
FOUND_PX = 0.5
RMS_BOUND = 0.1             # px: 5× the ≈ 0.02 px of an isolated bead (tests/test_detect_edge.py)
OPTIONS = DetectOptions(polarity="bright")


def _scene(seed: int, separations: np.ndarray = SEPARATIONS, noise: bool = True):
    """Rendered view and projected radius (px) of each bead; pairs first (rows 2k, 2k + 1),
    ``separations`` apart (in mean projected radii), then N_CONTROL isolated beads (without
    quantum and read-out noise unless ``noise``)."""
    rng = np.random.default_rng(seed)
    view = look_at_view(focus_mm=[0.0, 0.0, FOCUS_MM], detector_centre_mm=[0, 0, 0],
                        up=[0, 1, 0], pixel_spacing_mm=SPACING, shape=SHAPE)
    grid = np.arange(50.0, 400.0, 75.0)
    cells = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)[rng.permutation(grid.size ** 2)]
    n_pair = len(separations)
    nb = 2 * n_pair + N_CONTROL
    depth = rng.uniform(300.0, 400.0, nb)           # magnification 1.25–1.36
    radii = rng.choice([0.4, 0.5], nb)
    r_px = radii * FOCUS_MM / (FOCUS_MM - depth) / SPACING
    uv = np.zeros((nb, 2))
    for k, sep in enumerate(separations):
        centre = cells[k] + rng.uniform(-3.0, 3.0, 2)
        a = rng.uniform(0.0, np.pi)
        half = 0.25 * sep * (r_px[2 * k] + r_px[2 * k + 1]) * np.array([np.cos(a), np.sin(a)])
        uv[2 * k], uv[2 * k + 1] = centre + half, centre - half
    uv[2 * n_pair:] = cells[n_pair:n_pair + N_CONTROL] + rng.uniform(-3.0, 3.0, (N_CONTROL, 2))
    o, d = view.rays(uv)
    centres = o + ((depth - o[:, 2]) / d[:, 2])[:, None] * d
    opts = RenderOptions(photons_per_pixel=2.0e4, supersample=8, background=True, noise=noise)
    att = np.full(SHAPE, MU_WATER_PER_MM * TISSUE_MM, np.float32)
    with pytest.MonkeyPatch.context() as mp:   # uniform soft tissue replaces the limb anatomy
        mp.setattr(rsa.synthetic.render, "anatomy_attenuation", lambda *a, **k: att.copy())
        rv = render_view(view, centres, radii, options=opts, rng=seed)
    assert not rv.hidden.any()
    assert not rv.clipped.any()
    return rv, radii * view.magnification(centres) / SPACING


def _no_split(r, data, inside, w, *args):
    """Stand-in for ``split_merged``: no pair split, fits and weights unchanged."""
    return r, np.zeros(0, np.intp), w


def _errors(beads: Beads2D, uv_true: np.ndarray):
    """Nearest detection to each true centre: distance, index, error (detected − true)."""
    d, j = cKDTree(beads.uv_px).query(uv_true)
    return d, j, beads.uv_px[j] - uv_true


def _pairs_found(beads: Beads2D, uv_true: np.ndarray) -> np.ndarray:
    """(pairs,) both beads of the pair within FOUND_PX of distinct detections."""
    d, j, _ = _errors(beads, uv_true[:2 * len(SEPARATIONS)])
    d, j = d.reshape(-1, 2), j.reshape(-1, 2)
    return np.all(d < FOUND_PX, axis=1) & (j[:, 0] != j[:, 1])


@pytest.fixture(scope="module")
def overlap_scene():
    rv, r_px = _scene(SEED)
    beads = detect_beads(rv.image, pixel_spacing_mm=SPACING, options=OPTIONS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rsa.detect_stages, "split_merged", _no_split)
        plain = detect_beads(rv.image, pixel_spacing_mm=SPACING, options=OPTIONS)
    pair = np.arange(len(r_px)) < 2 * len(SEPARATIONS)
    return rv, r_px, pair, beads, plain


def test_scene_layout(overlap_scene):
    rv, r_px, pair, _, _ = overlap_scene
    uv = rv.uv_px
    gap = np.linalg.norm(uv[0:-N_CONTROL:2] - uv[1:-N_CONTROL:2], axis=1)
    np.testing.assert_allclose(gap / (0.5 * (r_px[0:-N_CONTROL:2] + r_px[1:-N_CONTROL:2])),
                               SEPARATIONS)
    # pairs and controls are isolated from each other
    mid = np.concatenate([0.5 * (uv[0:-N_CONTROL:2] + uv[1:-N_CONTROL:2]), uv[~pair]])
    d, _ = cKDTree(mid).query(mid, k=2)
    assert d[:, 1].min() > 60.0


def test_single_detection_per_pair_without_split(overlap_scene):
    # the scene is the case the split is for: the candidate stage finds one bead per pair, and
    # the one fit is overconfident (its error is many times its sigma)
    rv, _, pair, _, plain = overlap_scene
    d, j, err = _errors(plain, rv.uv_px)
    j = j[pair].reshape(-1, 2)
    assert np.all(j[:, 0] == j[:, 1]), j
    assert np.all(d[pair] > 0.5), d[pair]
    z = np.abs(err[pair]) / plain.sigma_px[j.ravel()]
    assert np.all(z.max(axis=1) > 10.0), z


def test_split_pairs_found(overlap_scene):
    # the pairs at 0.9–1.2 radii: both beads within 0.5 px, on two distinct detections
    rv, _, _, beads, _ = overlap_scene
    found = _pairs_found(beads, rv.uv_px)
    assert found[SPLIT].all(), (SEPARATIONS, found)


def test_split_on_a_noise_free_image():
    # the same scene without noise: windows whose noise estimate is 0 (an exactly smooth
    # image), which the split's misfit test divided by (RuntimeWarning; its outcome then hung on
    # how inf and NaN compare); the least noise seen stands in, and the pairs split as with noise
    rv, _ = _scene(SEED, noise=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        beads = detect_beads(rv.image, pixel_spacing_mm=SPACING, options=OPTIONS)
    assert _pairs_found(beads, rv.uv_px)[SPLIT].all()


def test_split_fails_without_split(overlap_scene):
    # the same test on the same image with the split switched off: it can fail
    rv, _, _, _, plain = overlap_scene
    found = _pairs_found(plain, rv.uv_px)
    assert not found[SPLIT].any(), (SEPARATIONS, found)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "pairs at 0.7–0.8 radii are not flagged merged (ellipticity < max_ellipticity, disc χ² "
    "< max_chi2): the split is not tried (module doc)"))
def test_all_pairs_found(overlap_scene):
    rv, _, _, beads, _ = overlap_scene
    found = _pairs_found(beads, rv.uv_px)
    assert found.all(), (SEPARATIONS, found)


def test_split_beads_within_their_uncertainty(overlap_scene):
    # the split centres are far less certain than an isolated bead's; their reported sigma
    # covers the error (per axis within 4σ, RMS within the RMS of the reported σ)
    rv, _, _, beads, _ = overlap_scene
    rows = np.flatnonzero(np.repeat(SPLIT, 2))
    _, j, err = _errors(beads, rv.uv_px[rows])
    sig = beads.sigma_px[j]
    assert np.all(np.abs(err) <= 4.0 * sig), (err, sig)
    rms = np.sqrt(np.mean(np.sum(err ** 2, axis=1)))
    assert rms <= np.sqrt(np.mean(np.sum(sig ** 2, axis=1))), (rms, sig)


def test_split_beads_rms(overlap_scene):
    # within the noise-derived bound (module doc): measured 0.053 px over the eight beads
    rv, _, _, beads, _ = overlap_scene
    rows = np.flatnonzero(np.repeat(SPLIT, 2))
    _, _, err = _errors(beads, rv.uv_px[rows])
    rms = np.sqrt(np.mean(np.sum(err ** 2, axis=1)))
    assert rms <= RMS_BOUND, rms


def test_no_false_detection(overlap_scene):
    # every detection lies on a bead (within the smallest bead radius of a true centre; an
    # unsplit pair's midway detection is 1–3 px from either) and no bead is found twice
    rv, r_px, _, beads, _ = overlap_scene
    d, k = cKDTree(rv.uv_px).query(beads.uv_px)
    assert np.all(d < r_px.min()), beads.uv_px[d >= r_px.min()]
    on = d < FOUND_PX
    assert len(np.unique(k[on])) == on.sum(), k[on]
    assert len(beads) <= len(r_px)


def test_control_beads_within_their_uncertainty(overlap_scene):
    rv, _, pair, beads, _ = overlap_scene
    _, j, err = _errors(beads, rv.uv_px)
    bound = np.maximum(4.0 * beads.sigma_px[j[~pair]], 0.05)
    assert np.all(np.abs(err[~pair]) <= bound), (err[~pair], bound)
