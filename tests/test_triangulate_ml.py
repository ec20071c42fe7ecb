"""Tests of rsa.triangulate_ml (σ-weighted reprojection triangulation) on constructed geometry."""

from __future__ import annotations

import numpy as np
import pytest
from test_triangulate import EXACT_MM, VA, VB, random_beads

from rsa.errors import ShapeError
from rsa.triangulate import intersect_rays
from rsa.triangulate_ml import triangulate_ml

P2 = np.stack([VA.projection_matrix(), VB.projection_matrix()])


def centres(x):
    """(N, 2, 2) exact projections of points x (N, 3) in views A and B."""
    return np.stack([VA.project(x), VB.project(x)], axis=1)


def test_exact_centres_give_the_points(rng):
    x = random_beads(rng, 200, side=200.0)
    sig = rng.uniform(0.01, 1.0, size=(200, 2, 2))
    pts, cov = triangulate_ml(P2, centres(x), sig)
    assert pts.shape == (200, 3)
    assert cov.shape == (200, 3, 3)
    np.testing.assert_allclose(pts, x, rtol=0, atol=EXACT_MM)
    assert np.all(np.linalg.eigvalsh(cov) > 0)


def test_noise_matches_predicted_covariance_and_beats_the_midpoint(rng):
    """View A's centre is 10× less certain than view B's (a bead next to a screw head in A).

    Over M noisy draws the weighted point's error e has the predicted covariance C: the mean of
    eᵀC⁻¹e is χ²₃/M-distributed (mean 3, SD √(6/M)), accepted within 4 SD; the mean error is
    within 4 SD of zero per axis. The midpoint takes half of view A's error into the coordinate
    both views measure (across the epipolar plane, here y): its mean squared error there is
    (σ_A² + σ_B²)/4 against 1/(1/σ_A² + 1/σ_B²) for the weighted point, 25× larger for a 10:1
    ratio; the test asks for > 10× (the sampling SD of either mean square is √(2/M) ≈ 2 %).
    """
    m = 4000
    x = np.array([12.0, -25.0, 160.0])
    sig = np.array([[0.5, 0.5], [0.05, 0.05]])                 # px: view A, view B
    uv = centres(x[None]) + sig * rng.normal(size=(m, 2, 2))
    pts, cov = triangulate_ml(P2, uv, np.broadcast_to(sig, (m, 2, 2)))
    e = pts - x
    C = cov.mean(axis=0)
    np.testing.assert_allclose(cov, np.broadcast_to(C, cov.shape), rtol=1e-2)   # first order
    maha = np.einsum("mi,ij,mj->m", e, np.linalg.inv(C), e)
    assert abs(maha.mean() - 3.0) < 4 * np.sqrt(6.0 / m)
    assert np.all(np.abs(e.mean(0)) < 4 * np.sqrt(np.diag(C) / m))
    o1, d1 = VA.rays(uv[:, 0])
    o2, d2 = VB.rays(uv[:, 1])
    mid, _ = intersect_rays(o1, d1, o2, d2)
    assert np.mean((mid - x)[:, 1] ** 2) > 10 * np.mean(e[:, 1] ** 2)


def test_equal_sigma_is_the_midpoint_up_to_magnification(rng):
    """With one σ everywhere the two differ only by the views' magnifications at the bead."""
    x = random_beads(rng, 300)
    uv = centres(x) + 0.05 * rng.normal(size=(300, 2, 2))
    pts, _ = triangulate_ml(P2, uv, np.full((300, 2), 0.05))
    mid, _ = intersect_rays(*VA.rays(uv[:, 0]), *VB.rays(uv[:, 1]))
    # 0.05 px ≈ 5 µm at the bead; magnifications differ by < 10 %, so < 1 µm apart
    assert np.max(np.linalg.norm(pts - mid, axis=1)) < 1e-3


def test_missing_parallel_and_unusable_sigma(rng):
    x = random_beads(rng, 4)
    uv = centres(x)
    uv[1, 0] = np.nan                                   # missing in view A
    sig = np.full((4, 2, 2), 0.1)
    sig[2, 1] = np.nan                                  # unknown σ: equal weights
    sig[3, 0] = 0.0
    pts, cov = triangulate_ml(P2, uv, sig)
    assert np.isnan(pts[1]).all()
    assert np.isnan(cov[1]).all()
    np.testing.assert_allclose(pts[[0, 2, 3]], x[[0, 2, 3]], rtol=0, atol=EXACT_MM)
    same = np.stack([VA.projection_matrix(), VA.projection_matrix()])       # one focus: parallel
    uv_same = np.stack([VA.project(x), VA.project(x)], axis=1)
    p_same, c_same = triangulate_ml(same, uv_same, np.ones((4, 2)))
    assert np.isnan(p_same).all()
    assert np.isnan(c_same).all()


def test_batch_of_three_views_and_bad_shapes(rng):
    x = random_beads(rng, 50)
    P3 = np.concatenate([P2, P2[:1]])
    uv3 = np.concatenate([centres(x), VA.project(x)[:, None]], axis=1)
    pts, _ = triangulate_ml(P3, uv3, np.ones((50, 3)))
    np.testing.assert_allclose(pts, x, rtol=0, atol=EXACT_MM)
    with pytest.raises(ShapeError, match=r"`projections` to have shape \(K, 3, 4\)"):
        triangulate_ml(P2[:, :, :3], centres(x), np.ones((50, 2)))
    with pytest.raises(ShapeError, match=r"`uv_px` to have shape \(N, 2, 2\)"):
        triangulate_ml(P2, uv3, np.ones((50, 3)))
    flat = P2.copy()
    flat[0, :, :3] = 0.0
    with pytest.raises(ShapeError, match=r"invertible left 3×3 block"):
        triangulate_ml(flat, centres(x), np.ones((50, 2)))
    with pytest.raises(ShapeError, match=r"`sigma_px` to have shape"):
        triangulate_ml(P2, centres(x), np.ones((50, 3)))
    empty, ecov = triangulate_ml(P2, np.zeros((0, 2, 2)), np.zeros((0, 2)))
    assert empty.shape == (0, 3)
    assert ecov.shape == (0, 3, 3)
