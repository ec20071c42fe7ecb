"""Beads whose discs overlap but which leave two candidates, against the physical renderer.

Two beads 1.6–1.8 projected radii apart give two candidates. Deblending fits each in its own
window with the other's model subtracted, alternately; with each fit's ellipticity free, the
ellipticity absorbs what the neighbour's subtracted model leaves on the disc and the
alternation settles with both centres pulled towards each other (uniplanar spine phantom
seed 1, REF-DOUBLE view A: L5-07 and L5-04 1.6 radii apart, L5-07 found 0.86 px off with σ
0.08 px). Last in the fitting stage, each such bead is therefore refitted jointly with its
neighbour, both with the image's typical shape (``rsa.detect_overlap.pair_refit``).

Scene (``rsa.synthetic.render.render_view``, 8×8 sub-sampling, default dose, log display): a
900×900 view with 0.12 mm pixels tilted 20°, 1.0 mm tantalum beads at magnification 1.2–1.45
(radius ≈ 5–6 px): 6 pairs at 1.6 and 6 at 1.8 radii, each along a random direction, and 12
isolated beads, in the cells of a grid.

Measured (pair beads found within 2 px; ``free`` = the refit switched off; the beyond count is
of beads off by more than max(4σ, 0.05 px) on an axis):

====  ====================  ====================  ==============
seed  RMS free / joint px   max free / joint px   beyond
====  ====================  ====================  ==============
0     0.360 / 0.130         0.894 / 0.478         5 / 0
1     0.456 / 0.189         1.312 / 0.866         5 / 0
2     0.301 / 0.039         0.739 / 0.090         5 / 0
3     0.253 / 0.223         0.667 / 0.667         2 / 0
4     0.458 / 0.032         1.969 / 0.069         3 / 0
5     0.421 / 0.265         1.854 / 1.230         5 / 0
====  ====================  ====================  ==============

Pooled over seeds 0–5 (131 pair beads): median 0.071 → 0.028 px, 75th percentile 0.246 →
0.044 px. The isolated beads are bit-identical: the refit changes only the overlapping beads'
own rows. The remaining large errors (up to 1.2 px) are within 4σ of the joint fit's
covariance: the pair's centres are strongly correlated along its axis.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

import rsa.detect_stages as stages
from rsa.detect import detect_beads
from rsa.synthetic.geometry import look_at_view
from rsa.synthetic.render import RenderOptions, render_view

SPACING = 0.12
SEEDS = (0, 1, 2, 4)


def _scene(seed: int, seps=(1.6, 1.8), per: int = 6, lone: int = 12):
    """Rendered view, and per true bead the separation of its pair in radii (−1: isolated)."""
    rng = np.random.default_rng(seed)
    t = np.deg2rad(20.0)
    view = look_at_view(focus_mm=[1500 * np.sin(t), 0, 1500 * np.cos(t)],
                        detector_centre_mm=[0, 0, 0], up=[0, 1, 0], pixel_spacing_mm=SPACING,
                        shape=(900, 900), detector_normal=[0, 0, -1])
    n_pairs = len(seps) * per
    g = int(np.ceil(np.sqrt(n_pairs + lone)))
    us = np.linspace(50, 850, g)
    U, V = np.meshgrid(us, us)
    cells = np.stack([U.ravel(), V.ravel()], 1)[rng.permutation(g * g)[:n_pairs + lone]]
    cells += rng.uniform(-5, 5, cells.shape)
    z = rng.uniform(250, 450, len(cells))
    X, sep = [], []
    for k, c in enumerate(cells):
        o, d = view.rays(c[None])
        x0 = o[0] + ((z[k] - o[0, 2]) / d[0, 2]) * d[0]
        X.append(x0)
        if k >= n_pairs:
            sep.append(-1.0)
            continue
        s = seps[k // per]
        ang = rng.uniform(0, np.pi)
        r_px = 0.5 * view.magnification(x0[None])[0] / SPACING
        o2, d2 = view.rays((c + s * r_px * np.array([np.cos(ang), np.sin(ang)]))[None])
        X.append(o2[0] + ((z[k] - o2[0, 2]) / d2[0, 2]) * d2[0])
        sep += [s, s]
    X = np.array(X)
    rv = render_view(view, X, np.full(len(X), 0.5),
                     options=RenderOptions(supersample=8), rng=seed)
    return rv, np.array(sep)


def _errors(rv, sep):
    beads = detect_beads(rv.image, pixel_spacing_mm=SPACING)
    d, j = cKDTree(beads.uv_px).query(rv.uv_px)
    err = np.abs(beads.uv_px[j] - rv.uv_px)
    beyond = np.any((err > 4 * beads.sigma_px[j]) & (err > 0.05), axis=1)
    pair = (sep > 0) & (d < 2.0)
    return d[pair], beyond[pair], beads.uv_px[j[sep < 0]], len(beads.uv_px)


def _off(r, data0, inside, *args):
    return np.zeros(0, np.intp), None, np.zeros((0,) + inside.shape[1:])


@pytest.fixture(scope="module")
def results():
    out = {"joint": [], "free": []}
    with pytest.MonkeyPatch.context() as mp:
        for seed in SEEDS:
            rv, sep = _scene(seed)
            mp.undo()
            out["joint"].append(_errors(rv, sep))
            mp.setattr(stages, "pair_refit", _off)
            out["free"].append(_errors(rv, sep))
    return out


def _pooled(res):
    d = np.concatenate([r[0] for r in res])
    return np.sqrt(np.mean(d ** 2)), int(sum(r[1].sum() for r in res)), len(d)


def test_joint_refit_of_overlapping_pairs(results):
    rms_j, beyond_j, n_j = _pooled(results["joint"])
    rms_f, beyond_f, n_f = _pooled(results["free"])
    assert n_j >= 0.85 * 24 * len(SEEDS)
    # the refit loses no pair bead (it may bring one that the free fits put more than 2 px
    # off within 2 px). It can change a decision: the SNR test comes after it, and its
    # amplitudes move a candidate across the threshold either way (on the machine of stop 23,
    # seed 0 one detection more, seed 2 one fewer, of 33–37)
    assert n_j >= n_f
    assert all(abs(j[3] - f[3]) <= 1 for j, f in zip(results["joint"], results["free"],
                                                     strict=True))
    # measured 0.119 vs 0.401 px over these seeds
    assert rms_j <= 0.5 * rms_f, (rms_j, rms_f)
    # beyond max(4σ, 0.05 px) on an axis: 0 of 86 measured (18 free). Gaussian errors with
    # honest σ give 4σ on either of 2 axes with probability 1.3e-4 per bead
    assert beyond_j <= 1, (beyond_j, beyond_f)


def test_isolated_beads_untouched(results):
    for joint, free in zip(results["joint"], results["free"], strict=True):
        np.testing.assert_array_equal(joint[2], free[2])
