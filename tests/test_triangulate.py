"""Tests of rsa.triangulate against constructed geometry (DESIGN §3.2–3.3)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from rsa.errors import EstimationError, ShapeError
from rsa.synthetic.geometry import look_at_view
from rsa.triangulate import (
    RayMatch,
    cle_matrix,
    closest_point_to_lines,
    intersect_rays,
    match_rays,
    triangulate_views,
)

# Float64 rounding of coordinates ~1.5e3 mm is ~3e-13 mm; 1e-9 mm leaves three orders of margin
# for the conditioning of two rays 40° apart and still catches any formula error.
EXACT_MM = 1e-9
PIXEL_MM = 0.1


def uniplanar_views():
    """Detector plane z = 0, foci 1500 mm away at ±20° about y (a uniplanar RSA set-up)."""
    views = []
    for name, sign in (("A", -1.0), ("B", 1.0)):
        ang = np.deg2rad(20.0) * sign
        focus = 1500.0 * np.array([np.sin(ang), 0.0, np.cos(ang)])
        views.append(look_at_view(focus_mm=focus, detector_centre_mm=[0.0, 0.0, 0.0],
                                  up=[0.0, 1.0, 0.0], pixel_spacing_mm=PIXEL_MM,
                                  shape=(3000, 3000), detector_normal=[0.0, 0.0, 1.0], name=name))
    return views


VA, VB = uniplanar_views()


def random_beads(rng, n, side=100.0):
    """Beads in a cube of `side` mm centred 150 mm in front of the detector."""
    return rng.uniform(-side / 2, side / 2, size=(n, 3)) + np.array([0.0, 0.0, 150.0])


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


vec3 = st.lists(st.floats(-1.0, 1.0), min_size=3, max_size=3).map(np.array).filter(
    lambda v: np.linalg.norm(v) > 0.1)


def skew_pair(p, n, h, d1, d2, s, t):
    """Two lines whose common perpendicular is the segment p ± (h/2) n (n ⟂ d1, d2)."""
    p1, p2 = p + 0.5 * h * n, p - 0.5 * h * n
    return p1 - s * d1, d1, p2 - t * d2, d2


def perpendicular_dirs(n, a1, a2):
    """Two unit directions ⟂ n at angles a1, a2 in the plane ⟂ n."""
    e1 = unit(np.cross(n, [1.0, 0.0, 0.0] if abs(n[0]) < 0.9 else [0.0, 1.0, 0.0]))
    e2 = np.cross(n, e1)
    return (np.cos(a1) * e1 + np.sin(a1) * e2, np.cos(a2) * e1 + np.sin(a2) * e2)


# --------------------------------------------------------------------------------------------
# intersect_rays
# --------------------------------------------------------------------------------------------
def test_intersect_rays_through_two_foci_recovers_points(rng):
    x = random_beads(rng, 500, side=200.0)
    o1, d1 = VA.rays(VA.project(x))
    o2, d2 = VB.rays(VB.project(x))
    points, cle = intersect_rays(o1, d1, o2, d2)
    assert points.shape == (500, 3)
    assert cle.shape == (500,)
    np.testing.assert_allclose(points, x, rtol=0, atol=EXACT_MM)
    assert np.all(cle < EXACT_MM)


@given(p=vec3, n=vec3, h=st.floats(0.0, 50.0), a1=st.floats(0, 2 * np.pi),
       da=st.floats(0.05, np.pi - 0.05), s=st.floats(-2e3, 2e3), t=st.floats(-2e3, 2e3),
       k1=st.floats(0.01, 100.0), k2=st.floats(0.01, 100.0))
def test_intersect_rays_skew_lines_analytic(p, n, h, a1, da, s, t, k1, k2):
    p = 100.0 * p
    n = unit(n)
    d1, d2 = perpendicular_dirs(n, a1, a1 + da)
    o1, _, o2, _ = skew_pair(p, n, h, d1, d2, s, t)
    # Directions scaled arbitrarily (need not be unit) and flipped: same lines.
    point, cle = intersect_rays(o1, k1 * d1, o2, -k2 * d2)
    # Conditioning: the closest points move by ~|o|·eps / sin(angle); angle ≥ 0.05 rad.
    tol = 1e-11 * (np.abs(s) + np.abs(t) + 200.0) / np.sin(da)
    assert cle == pytest.approx(h, abs=tol)
    np.testing.assert_allclose(point, p, rtol=0, atol=tol)


@given(rot=st.integers(0, 2**32 - 1), shift=vec3)
def test_intersect_rays_rigid_invariance(rot, shift):
    rng = np.random.default_rng(rot)
    o1, d1, o2, d2 = rng.normal(scale=100.0, size=(4, 20, 3))
    R = Rotation.random(random_state=rng).as_matrix()
    t = 500.0 * shift
    p, cle = intersect_rays(o1, d1, o2, d2)
    p2, cle2 = intersect_rays(o1 @ R.T + t, d1 @ R.T, o2 @ R.T + t, d2 @ R.T)
    # Random (non-nearly-parallel) rays: errors ~ 1e3 mm · eps · condition, far below 1e-8.
    np.testing.assert_allclose(cle2, cle, rtol=0, atol=1e-8)
    np.testing.assert_allclose(p2, p @ R.T + t, rtol=0, atol=1e-8)


def test_intersect_rays_broadcasts_batch_dims(rng):
    x = random_beads(rng, 20).reshape(4, 5, 3)
    _, d1 = VA.rays(VA.project(x))
    _, d2 = VB.rays(VB.project(x))
    points, cle = intersect_rays(VA.focus_mm, d1, VB.focus_mm, d2)  # one focus per view
    assert points.shape == (4, 5, 3)
    assert cle.shape == (4, 5)
    np.testing.assert_allclose(points, x, rtol=0, atol=EXACT_MM)
    p0, c0 = intersect_rays(VA.focus_mm, d1[2, 3], VB.focus_mm, d2[2, 3])
    assert p0.shape == (3,)
    assert np.ndim(c0) == 0
    np.testing.assert_array_equal(p0, points[2, 3])


def test_intersect_rays_parallel_gives_nan_without_warnings():
    o1 = np.zeros((5, 3))
    o2 = np.array([[0.0, 1.0, 0.0]] * 5)
    d1 = np.array([[1.0, 0, 0]] * 5)
    d2 = np.array([
        [1.0, 0.0, 0.0],  # exactly parallel
        [-3.0, 0.0, 0.0],  # antiparallel
        [1.0, 1e-7, 0.0],  # sin²θ = 1e-14 < 1e-12: treated as parallel
        [1.0, 1e-5, 0.0],  # sin²θ = 1e-10: still a valid (ill-conditioned) intersection
        [0.0, 0.0, 0.0],  # zero direction
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        points, cle = intersect_rays(o1, d1, o2, d2)
    assert np.all(np.isnan(points[[0, 1, 2, 4]]))
    assert np.all(np.isnan(cle[[0, 1, 2, 4]]))
    # Row 3: the lines y = 0 and y = 1 + 1e-5 x (z = 0) meet at x = -1e5. The intersection's
    # intrinsic relative sensitivity to rounding is eps/θ ≈ 2e-11; allow 1e-9 relative.
    assert cle[3] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(points[3], [-1e5, 0.0, 0.0], rtol=0, atol=1e-9 * 1e5)
    assert not np.any(np.isinf(points))


def test_intersect_rays_nan_and_inf_rays_give_nan():
    o = np.zeros((3, 3))
    d1 = np.array([[1.0, 0, 0], [np.nan, 0, 0], [np.inf, 0, 0]])
    d2 = np.array([[0.0, 1.0, 0.0]] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        points, cle = intersect_rays(o, d1, o + [0.0, 0.0, 1.0], d2)
    np.testing.assert_allclose(points[0], [0.0, 0.0, 0.5])
    assert cle[0] == pytest.approx(1.0)
    assert np.all(np.isnan(points[1:]))
    assert np.all(np.isnan(cle[1:]))


def test_intersect_rays_bad_shapes():
    with pytest.raises(ShapeError,
                       match=r"Expected `d1` to have shape \(\.\.\., 3\), got \(4, 2\)"):
        intersect_rays(np.zeros(3), np.ones((4, 2)), np.zeros(3), np.ones((4, 3)))
    with pytest.raises(ShapeError, match=r"to broadcast to one shape .* got \(3,\), \(4, 3\), "
                                         r"\(3,\), \(5, 3\)"):
        intersect_rays(np.zeros(3), np.ones((4, 3)), np.zeros(3), np.ones((5, 3)))
    with pytest.raises(ShapeError, match="numeric array"):
        intersect_rays("abc", np.ones(3), np.zeros(3), np.ones(3))


# --------------------------------------------------------------------------------------------
# closest_point_to_lines
# --------------------------------------------------------------------------------------------
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(2, 12))
def test_closest_point_lines_through_known_point(seed, k):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-200, 200, 3)
    d = rng.normal(size=(k, 3)) * rng.uniform(0.1, 10.0, size=(k, 1))  # not unit
    o = x + rng.uniform(-1500, 1500, size=(k, 1)) * d
    if k == 2 and 1 - (unit(d[0]) @ unit(d[1])) ** 2 < 1e-4:
        return  # nearly parallel random pair: ill-conditioned, tested separately
    point, res = closest_point_to_lines(o, d, return_residuals=True)
    np.testing.assert_allclose(point, x, rtol=0, atol=1e-8)
    assert res.shape == (k,)
    assert np.all(res < 1e-8)


@given(seed=st.integers(0, 2**32 - 1), shift=vec3, scale=st.sampled_from([1.0, 1e2, 1e4]))
def test_closest_point_rigid_invariance(seed, shift, scale):
    """Rotating and translating the lines (far from the origin too) moves the point rigidly."""
    rng = np.random.default_rng(seed)
    o = rng.normal(scale=100.0, size=(6, 3))
    d = rng.normal(size=(6, 3))
    w = rng.uniform(0.2, 2.0, 6)
    R = Rotation.random(random_state=rng).as_matrix()
    t = scale * 100.0 * shift
    x, res = closest_point_to_lines(o, d, weights=w, return_residuals=True)
    y, res2 = closest_point_to_lines(o @ R.T + t, d @ R.T, weights=w, return_residuals=True)
    # Rounding of coordinates of size |t| ≲ 1.7e6 mm: ~|t|·eps ≈ 4e-10 mm, times conditioning.
    tol = 1e-9 * (1.0 + np.linalg.norm(t) / 100.0)
    np.testing.assert_allclose(y, x @ R.T + t, rtol=0, atol=tol)
    np.testing.assert_allclose(res2, res, rtol=0, atol=tol)


def test_closest_point_two_lines_equals_intersect_rays(rng):
    o1, d1, o2, d2 = rng.normal(scale=50.0, size=(4, 30, 3))
    p, cle = intersect_rays(o1, d1, o2, d2)
    q, res = closest_point_to_lines(np.stack([o1, o2], -2), np.stack([d1, d2], -2),
                                    return_residuals=True)
    np.testing.assert_allclose(q, p, rtol=0, atol=1e-9)
    np.testing.assert_allclose(res, np.stack([cle, cle], -1) / 2, rtol=0, atol=1e-9)


def test_closest_point_noise_matches_predicted_covariance(rng):
    """Direction noise σ at distance r moves each line by r·σ per transverse axis.

    The least-squares point then has covariance C = (rσ)² A⁻¹, A = Σ(I − d dᵀ) (first order).
    Over M batched trials, the mean of eᵀC⁻¹e is χ²₃/M-distributed: mean 3, SD √(6/M); we accept
    4 SD. The mean error itself must be within 4 SD of zero per axis.
    """
    m, k, r, sigma = 4000, 5, 1500.0, 1e-4
    x = np.array([10.0, -20.0, 150.0])
    foci = 1500.0 * unit(rng.normal(size=(k, 3)) * [1.0, 1.0, 0.3] + [0.0, 0.0, 1.0])
    foci = x + r * unit(foci)
    d = unit(x - foci)
    noisy = d + sigma * rng.normal(size=(m, k, 3))
    points = closest_point_to_lines(np.broadcast_to(foci, (m, k, 3)), noisy)
    assert points.shape == (m, 3)
    A = k * np.eye(3) - np.einsum("ki,kj->ij", d, d)
    C = (r * sigma) ** 2 * np.linalg.inv(A)
    e = points - x
    maha = np.einsum("mi,ij,mj->m", e, np.linalg.inv(C), e)
    assert abs(maha.mean() - 3.0) < 4 * np.sqrt(6.0 / m)
    assert np.all(np.abs(e.mean(0)) < 4 * np.sqrt(np.diag(C) / m))


def test_closest_point_weights_semantics(rng):
    o = rng.normal(scale=50.0, size=(4, 3))
    d = rng.normal(size=(4, 3))
    # Weight 0 is the same as dropping the line.
    np.testing.assert_allclose(closest_point_to_lines(o, d, weights=[1, 1, 1, 0]),
                               closest_point_to_lines(o[:3], d[:3]), rtol=0, atol=1e-9)
    # Integer weight 3 is the same as the line repeated three times.
    o_rep = np.concatenate([o, o[[1, 1]]])
    d_rep = np.concatenate([d, d[[1, 1]]])
    np.testing.assert_allclose(closest_point_to_lines(o, d, weights=[1, 3, 1, 1]),
                               closest_point_to_lines(o_rep, d_rep), rtol=0, atol=1e-9)
    # Only relative weights matter.
    w = rng.uniform(0.1, 2.0, 4)
    np.testing.assert_allclose(closest_point_to_lines(o, d, weights=w),
                               closest_point_to_lines(o, d, weights=1e3 * w), rtol=0, atol=1e-9)
    # Independent check of the normal equations with weights.
    u = unit(d)
    A = sum(wi * (np.eye(3) - np.outer(ui, ui)) for wi, ui in zip(w, u, strict=True))
    b = sum(wi * (np.eye(3) - np.outer(ui, ui)) @ oi for wi, ui, oi in zip(w, u, o, strict=True))
    np.testing.assert_allclose(closest_point_to_lines(o, d, weights=w), np.linalg.solve(A, b),
                               rtol=0, atol=1e-9)


def test_closest_point_nan_lines_get_zero_weight(rng):
    o = rng.normal(scale=50.0, size=(5, 3))
    d = rng.normal(size=(5, 3))
    o_nan, d_nan = o.copy(), d.copy()
    o_nan[1, 0] = np.nan
    d_nan[3] = np.nan
    point, res = closest_point_to_lines(o_nan, d_nan, return_residuals=True)
    expected, res_ok = closest_point_to_lines(o[[0, 2, 4]], d[[0, 2, 4]], return_residuals=True)
    np.testing.assert_allclose(point, expected, rtol=0, atol=1e-9)
    assert np.isnan(res[[1, 3]]).all()
    np.testing.assert_allclose(res[[0, 2, 4]], res_ok, rtol=0, atol=1e-9)


def test_closest_point_batch_shape(rng):
    o = rng.normal(scale=50.0, size=(4, 5, 6, 3))
    d = rng.normal(size=(4, 5, 6, 3))
    w = rng.uniform(0.5, 1.5, size=(4, 5, 6))
    points, res = closest_point_to_lines(o, d, weights=w, return_residuals=True)
    assert points.shape == (4, 5, 3)
    assert res.shape == (4, 5, 6)
    np.testing.assert_allclose(points[3, 2], closest_point_to_lines(o[3, 2], d[3, 2],
                                                                    weights=w[3, 2]),
                               rtol=0, atol=1e-12)
    # Shared origins broadcast over the batch (e.g. the same foci for every bead).
    shared = closest_point_to_lines(o[0, 0], d)
    np.testing.assert_allclose(shared[1, 4], closest_point_to_lines(o[0, 0], d[1, 4]),
                               rtol=0, atol=1e-12)


def test_closest_point_degenerate_raises_with_batch_index(rng):
    o = rng.normal(size=(4, 5, 3, 3))
    d = rng.normal(size=(4, 5, 3, 3))
    d_par = d.copy()
    d_par[2, 3] = [[1.0, 2.0, 3.0], [-2.0, -4.0, -6.0], [0.5, 1.0, 1.5]]  # all parallel
    with pytest.raises(EstimationError, match=r"batch index \(2, 3\): the lines are \(nearly\) "
                                              r"parallel; 1 of 20 batch entries"):
        closest_point_to_lines(o, d_par)
    d_nan = d.copy()
    d_nan[1, 4, :2] = np.nan
    with pytest.raises(EstimationError, match=r"batch index \(1, 4\): fewer than 2 valid lines"):
        closest_point_to_lines(o, d_nan)
    with pytest.raises(EstimationError, match=r"fewer than 2 valid lines \(1\)"):
        closest_point_to_lines(o[0, 0, :1], d[0, 0, :1])
    with pytest.raises(EstimationError, match=r"fewer than 2 valid lines \(1\)"):
        closest_point_to_lines(o[0, 0], d[0, 0], weights=[0.0, 2.0, 0.0])


def test_closest_point_bad_input():
    o, d = np.zeros((3, 3)), np.eye(3)
    with pytest.raises(ShapeError, match=r"Expected `origins` to have shape \(\.\.\., K, 3\), "
                                         r"got \(3,\)"):
        closest_point_to_lines(np.zeros(3), d)
    with pytest.raises(ShapeError, match=r"Expected `directions` to have shape \(\.\.\., K, 3\), "
                                         r"got \(3, 2\)"):
        closest_point_to_lines(o, np.ones((3, 2)))
    with pytest.raises(ShapeError, match="same number of lines K, got"):
        closest_point_to_lines(o, np.eye(3)[:2])
    with pytest.raises(ShapeError, match="broadcastable batch dimensions"):
        closest_point_to_lines(np.zeros((2, 3, 3)), np.ones((4, 3, 3)))
    with pytest.raises(ShapeError, match=r"Expected `weights` to have shape \(3,\)"):
        closest_point_to_lines(o, d, weights=[1.0, 2.0])
    with pytest.raises(ShapeError, match="finite and non-negative"):
        closest_point_to_lines(o, d, weights=[1.0, -1.0, 1.0])
    with pytest.raises(ShapeError, match="finite and non-negative"):
        closest_point_to_lines(o, d, weights=[1.0, np.nan, 1.0])
    with pytest.raises(ShapeError, match="found inf"):
        closest_point_to_lines(o + [np.inf, 0, 0], d)
    with pytest.raises(ShapeError, match="non-zero vectors"):
        closest_point_to_lines(o, [[1.0, 0, 0], [0, 0, 0], [0, 0, 1.0]])


# --------------------------------------------------------------------------------------------
# triangulate_views
# --------------------------------------------------------------------------------------------
def test_triangulate_views_k2_is_midpoint_and_half_cle(rng):
    o1, d1, o2, d2 = rng.normal(scale=50.0, size=(4, 10, 3))
    p, cle = intersect_rays(o1, d1, o2, d2)
    q, rms = triangulate_views(np.stack([o1, o2], 1), np.stack([d1, d2], 1))
    np.testing.assert_allclose(q, p, rtol=0, atol=1e-9)
    np.testing.assert_allclose(rms, cle / 2, rtol=0, atol=1e-9)


def test_triangulate_views_three_views_and_missing(rng):
    x = random_beads(rng, 6)
    vc = look_at_view(focus_mm=[0.0, 1400.0, 600.0], detector_centre_mm=[0, 0, 0], up=[0, 0, 1],
                      pixel_spacing_mm=PIXEL_MM, shape=(3000, 3000), name="C")
    rays = [v.rays(v.project(x)) for v in (VA, VB, vc)]
    o = np.stack([r[0] for r in rays], 1)
    d = np.stack([r[1] for r in rays], 1)
    d[1, 2] = np.nan  # bead 1 missing in view C: still two views
    d[4, 1:] = np.nan  # bead 4 seen in view A only
    points, rms = triangulate_views(o, d)
    ok = [0, 1, 2, 3, 5]
    np.testing.assert_allclose(points[ok], x[ok], rtol=0, atol=EXACT_MM)
    assert np.all(rms[ok] < EXACT_MM)
    assert np.isnan(points[4]).all()
    assert np.isnan(rms[4])


# --------------------------------------------------------------------------------------------
# cle_matrix and match_rays
# --------------------------------------------------------------------------------------------
def test_cle_matrix_matches_pairwise_intersections(rng):
    oa, da = rng.normal(scale=50.0, size=(2, 4, 3))
    ob, db = rng.normal(scale=50.0, size=(2, 6, 3))
    m = cle_matrix(oa, da, ob, db)
    assert m.shape == (4, 6)
    for i in range(4):
        for j in range(6):
            assert m[i, j] == pytest.approx(intersect_rays(oa[i], da[i], ob[j], db[j])[1],
                                            abs=1e-10)
    # A single focus per view is accepted and batch dims broadcast.
    mb = cle_matrix(oa[0], np.broadcast_to(da, (3, 4, 3)), ob[0], db)
    assert mb.shape == (3, 4, 6)
    np.testing.assert_allclose(mb[1], cle_matrix(oa[0], da, ob[0], db), rtol=0, atol=1e-12)


def noisy_rays(view, x, rng, sigma_px):
    uv = view.project(x)
    return view.rays(uv + sigma_px * rng.normal(size=uv.shape))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_match_rays_recovers_permutation(seed):
    """40 beads, view B shuffled, 0.05 px image noise; extra beads seen in one view only.

    0.05 px = 0.005 mm on the detector gives true-pair CLEs of order 0.01 mm, far below the
    0.5 mm gate, so every bead must be matched to its true partner.
    """
    rng = np.random.default_rng(seed)
    x = random_beads(rng, 40 + 3 + 2)  # 40 common, 3 only in A, 2 only in B
    in_a = np.r_[0:40, 40:43]
    in_b = rng.permutation(np.r_[0:40, 43:45])
    oa, da = noisy_rays(VA, x[in_a], rng, 0.05)
    ob, db = noisy_rays(VB, x[in_b], rng, 0.05)
    # Precondition on the scene (not on the code): the true pairing is strictly cheaper than
    # swapping the partners of any two beads, i.e. no two beads share an epipolar plane to within
    # the noise. Fails loudly if a seed produces an undecidable scene.
    cle = cle_matrix(oa, da, ob, db)
    inv = np.argsort(in_b)[:40]  # column of bead k in view B
    true_cost = cle[np.arange(40), inv]
    swap = cle[np.arange(40)[:, None], inv[None, :]] + cle[np.arange(40)[None, :], inv[:, None]]
    np.fill_diagonal(swap, np.inf)
    assert np.all(swap > true_cost[:, None] + true_cost[None, :]), "ambiguous scene"
    result = match_rays(oa, da, ob, db)
    assert isinstance(result, RayMatch)
    matched = {(int(in_a[i]), int(in_b[j])) for i, j in result.pairs}
    assert matched == {(k, k) for k in range(40)}
    assert len(result) == 40
    np.testing.assert_array_equal(result.pairs[:, 0], np.arange(40))  # sorted by view A
    truth_pts, truth_cle = intersect_rays(oa[result.pairs[:, 0]], da[result.pairs[:, 0]],
                                          ob[result.pairs[:, 1]], db[result.pairs[:, 1]])
    np.testing.assert_array_equal(result.cle_mm, truth_cle)
    np.testing.assert_array_equal(result.points_mm, truth_pts)
    # Bead error ≲ a few × 0.005 mm / magnification; 0.05 mm is > 8σ.
    assert np.max(np.linalg.norm(result.points_mm - x[:40], axis=1)) < 0.05
    assert np.all(result.cle_mm <= result.gate_mm)
    # Every reported alternative is an admissible pair not in the matching.
    alt_cle = cle_matrix(oa, da, ob, db)[result.alternatives[:, 0], result.alternatives[:, 1]]
    np.testing.assert_array_equal(result.alternatives_cle_mm, alt_cle)
    assert np.all(alt_cle <= 0.5)
    assert not ({tuple(p) for p in result.alternatives} & {tuple(p) for p in result.pairs})


def test_match_rays_respects_gate(rng):
    x = random_beads(rng, 10)
    oa, da = VA.rays(VA.project(x))
    ob, db = VB.rays(VB.project(x))
    # Move bead 4's B ray rigidly by 0.8 mm along the common normal: its CLE becomes 0.8 mm.
    n = unit(np.cross(da[4], db[4]))
    ob = ob.copy()
    ob[4] += 0.8 * n
    assert cle_matrix(oa, da, ob, db)[4, 4] == pytest.approx(0.8, abs=1e-9)
    result = match_rays(oa, da, ob, db, gate_mm=0.5)
    assert (4, 4) not in {tuple(p) for p in result.pairs}
    assert np.all(result.cle_mm <= 0.5)
    wide = match_rays(oa, da, ob, db, gate_mm=1.0)
    assert (4, 4) in {tuple(p) for p in wide.pairs}
    none = match_rays(oa, da, ob, db, gate_mm=0.0)  # exact projections: CLE > 0 by rounding
    assert all(c == 0.0 for c in none.cle_mm)


def test_match_rays_does_not_break_a_clean_pair_for_clutter(rng):
    """One spurious ray per view, each crossing a ray of bead 0 at 0.4 mm (inside the gate).

    Pairing bead 0's rays with the two spurious ones gives one more admissible pair than the
    true pairing (the old largest-cardinality rule took it and lost bead 0); the likelihood
    rule pays 2·0.4² = 0.32 mm² for that against 2·gate²/2 = 0.25 mm² for two unmatched rays,
    and keeps bead 0.
    """
    x = random_beads(rng, 6)
    oa, da = VA.rays(VA.project(x))
    ob, db = VB.rays(VB.project(x))

    def crossing(focus, o, d, depth):
        """A ray from ``focus`` passing 0.4 mm from the ray (o, d) at ``depth`` along it."""
        q = o + depth * d
        r0 = unit(q - focus)
        return focus, unit(q + 0.4 * unit(np.cross(d, r0)) - focus)

    fa_o, fa_d = crossing(VA.focus_mm, ob[0], db[0], np.linalg.norm(x[0] - ob[0]) - 25.0)
    fb_o, fb_d = crossing(VB.focus_mm, oa[0], da[0], np.linalg.norm(x[0] - oa[0]) + 25.0)
    oa2, da2 = np.vstack([oa, fa_o]), np.vstack([da, fa_d])
    ob2, db2 = np.vstack([ob, fb_o]), np.vstack([db, fb_d])
    cle = cle_matrix(oa2, da2, ob2, db2)
    # preconditions on the scene: both clutter crossings inside the gate near 0.4 mm, the
    # clutter rays do not pair with each other or with the other beads
    assert 0.36 < cle[6, 0] < 0.44
    assert 0.36 < cle[0, 6] < 0.44
    assert cle[6, 6] > 0.5
    assert np.all(cle[6, 1:6] > 0.5)
    assert np.all(cle[1:6, 6] > 0.5)
    result = match_rays(oa2, da2, ob2, db2, gate_mm=0.5)
    assert {tuple(int(v) for v in p) for p in result.pairs} == {(k, k) for k in range(6)}


def test_match_rays_with_sigma_keeps_the_precise_pair(rng):
    """A poor detection (σ 0.05 mm) near a precise pair must not take it over.

    Rays: A = [bead 0, a stray precise ray crossing bead 0's B ray at 0.12 mm], B = [bead 0,
    a poor ray crossing bead 0's A ray at 0.04 mm]. Squared CLE alone pairs (A0, B1) and
    (A1, B0), 0.04² + 0.12² < gate²; with the rays' σ, the precise pair (A0, B0) is far more
    likely than either crossing, the stray precise ray is 0.12 mm = 30σ from B0 and > 2.5σ
    from the poor ray (those two pair only in the second, plain pass over the leftovers).
    """
    x = random_beads(rng, 1)
    oa, da = VA.rays(VA.project(x))
    ob, db = VB.rays(VB.project(x))

    def crossing(focus, o, d, depth, dist):
        q = o + depth * d
        r0 = unit(q - focus)
        return focus, unit(q + dist * unit(np.cross(d, r0)) - focus)

    stray = crossing(VA.focus_mm, ob[0], db[0], np.linalg.norm(x[0] - ob[0]) - 20.0, 0.12)
    poor = crossing(VB.focus_mm, oa[0], da[0], np.linalg.norm(x[0] - oa[0]) + 20.0, 0.04)
    oa2, da2 = np.vstack([oa, stray[0]]), np.vstack([da, stray[1]])
    ob2, db2 = np.vstack([ob, poor[0]]), np.vstack([db, poor[1]])
    cle = cle_matrix(oa2, da2, ob2, db2)
    assert 0.1 < cle[1, 0] < 0.14          # preconditions on the scene
    assert 0.03 < cle[0, 1] < 0.05
    assert cle[1, 1] > 0.13               # the stray and poor rays: > 2.5σ of the poor one
    plain = match_rays(oa2, da2, ob2, db2, gate_mm=0.5)
    assert {tuple(int(v) for v in p) for p in plain.pairs} == {(0, 1), (1, 0)}
    sig = (np.array([0.003, 0.003]), np.array([0.003, 0.05]))
    result = match_rays(oa2, da2, ob2, db2, gate_mm=0.5, sigma_mm=sig)
    # the precise pair first; the two leftover rays still cross within the gate and pair
    # afterwards, marked as not likely
    got = {tuple(int(v) for v in p): bool(k) for p, k in zip(result.pairs, result.likely,
                                                              strict=True)}
    assert got == {(0, 0): True, (1, 1): False}
    assert plain.likely.all()
    with pytest.raises(ShapeError):
        match_rays(oa2, da2, ob2, db2, sigma_mm=(np.ones(3), np.ones(2)))
    with pytest.raises(ShapeError):
        match_rays(oa2, da2, ob2, db2, sigma_mm=(np.ones(2), np.zeros(2)))


def test_match_rays_flags_epipolar_ambiguity(rng):
    """Two beads on one epipolar plane: all four rays coplanar, both pairings have CLE ≈ 0."""
    p = np.array([5.0, 10.0, 150.0])
    baseline = unit(VB.focus_mm - VA.focus_mm)
    normal = unit(np.cross(baseline, p - VA.focus_mm))
    q = p + 30.0 * unit(np.cross(normal, baseline))  # in the plane (F_A, F_B, p)
    # Other beads on epipolar planes ≥ 8 mm apart (the baseline is along x, so at equal depth z
    # the plane is set by y): none of them can be confused within the 0.5 mm gate.
    ys = p[1] + 8.0 * np.array([-3, -2, -1, 1, 2, 3])
    others = np.column_stack([rng.uniform(-50, 50, 6), ys, np.full(6, p[2])])
    x = np.vstack([p, q, others])
    oa, da = VA.rays(VA.project(x))
    perm = rng.permutation(len(x))
    ob, db = VB.rays(VB.project(x[perm]))
    result = match_rays(oa, da, ob, db)
    jp, jq = int(np.flatnonzero(perm == 0)[0]), int(np.flatnonzero(perm == 1)[0])
    pairs = {tuple(int(v) for v in r) for r in result.pairs}
    right, crossed = {(0, jp), (1, jq)}, {(0, jq), (1, jp)}
    assert right <= pairs or crossed <= pairs  # undecidable from two views
    flagged = {tuple(int(v) for v in r) for r, a in zip(result.pairs, result.ambiguous,
                                                         strict=True) if a}
    assert flagged == (right if right <= pairs else crossed)
    alternatives = {tuple(int(v) for v in r) for r in result.alternatives}
    assert alternatives == (crossed if right <= pairs else right)
    assert np.all(result.alternatives_cle_mm < 1e-9)


def test_match_rays_empty_and_nan_rays(rng):
    x = random_beads(rng, 3)
    oa, da = VA.rays(VA.project(x))
    ob, db = VB.rays(VB.project(x))
    da[1] = np.nan
    result = match_rays(VA.focus_mm, da, VB.focus_mm, db)
    assert [tuple(p) for p in result.pairs] == [(0, 0), (2, 2)]
    empty = match_rays(oa[:0], da[:0], ob, db)
    assert empty.pairs.shape == (0, 2)
    assert empty.points_mm.shape == (0, 3)
    assert empty.alternatives.shape == (0, 2)


def test_match_rays_result_is_frozen(rng):
    x = random_beads(rng, 3)
    result = match_rays(*VA.rays(VA.project(x)), *VB.rays(VB.project(x)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.gate_mm = 1.0
    with pytest.raises(ValueError, match="read-only"):
        result.pairs[0, 0] = 5


def test_match_rays_bad_input():
    d = np.ones((4, 3))
    with pytest.raises(ShapeError, match=r"Expected `d1` to have shape \(N, 3\), got \(2, 4, 3\)"):
        match_rays(np.zeros(3), np.ones((2, 4, 3)), np.zeros(3), d)
    with pytest.raises(ShapeError, match=r"Expected `o2` to have shape \(3,\) or \(\.\.\., N, 3\) "
                                         r"with N = 4"):
        match_rays(np.zeros(3), d, np.zeros((5, 3)), d)
    with pytest.raises(ShapeError, match="`gate_mm` to be a finite non-negative number"):
        match_rays(np.zeros(3), d, np.zeros(3), d, gate_mm=-1.0)
    with pytest.raises(ShapeError, match=r"Expected `d2` to have shape \(\.\.\., N, 3\), "
                                         r"got \(4, 2\)"):
        match_rays(np.zeros(3), d, np.zeros(3), np.ones((4, 2)))


def test_match_rays_flags_one_sided_ambiguity():
    """Bead r shares p's epipolar plane but is seen in view A only: B's ray of p has two
    admissible partners in A, while the matched A ray has a single one in B."""
    p = np.array([-5.0, 12.0, 140.0])
    baseline = unit(VB.focus_mm - VA.focus_mm)
    normal = unit(np.cross(baseline, p - VA.focus_mm))
    r = p + 25.0 * unit(np.cross(normal, baseline))
    oa, da = VA.rays(VA.project(np.vstack([p, r])))
    ob, db = VB.rays(VB.project(p[None]))
    result = match_rays(oa, da, ob, db)
    assert len(result) == 1
    assert result.ambiguous.tolist() == [True]
    (i, j), = result.pairs.tolist()
    assert j == 0
    assert result.alternatives.tolist() == [[1 - i, 0]]
