"""Tests of rsa.rigid: rigid fit, Pose, condition number, bead stability and screening."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from rsa._rigid_solver import optimal_rotation, svd_rotation
from rsa.errors import EstimationError, ShapeError
from rsa.rigid import (
    Pose,
    RigidFit,
    condition_number,
    distance_stability,
    fit_rigid,
    screen_unstable,
)


def random_rotation(rng, size=None):
    return Rotation.random(size, rng=rng).as_matrix()


def beads(rng, n=8, spread=15.0, shape=()):
    return rng.normal(scale=spread, size=(*shape, n, 3)) + np.array([20.0, -40.0, 100.0])


def move(R, t, x):
    return np.einsum("...ij,...nj->...ni", R, x) + np.asarray(t)[..., None, :]


# ------------------------------------------------------------------ exact recovery


@given(
    q=st.tuples(*[st.floats(-1, 1) for _ in range(4)]).filter(
        lambda q: np.linalg.norm(q) > 0.1),
    t=st.tuples(*[st.floats(-200, 200) for _ in range(3)]),
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(3, 12),
)
def test_fit_recovers_any_rigid_motion(q, t, seed, n):
    rng = np.random.default_rng(seed)
    R = Rotation.from_quat(np.array(q) / np.linalg.norm(q)).as_matrix()
    x = beads(rng, n)
    fit = fit_rigid(x, move(R, t, x))
    np.testing.assert_allclose(fit.rotation, R, atol=1e-9)
    np.testing.assert_allclose(fit.translation, t, atol=1e-9)
    assert fit.mean_error_mm < 1e-9
    assert abs(np.linalg.det(fit.rotation) - 1) < 1e-12


def test_batch_shapes_and_broadcast_reference(rng):
    x = beads(rng, 6, shape=(3, 4))
    R = random_rotation(rng, 12).reshape(3, 4, 3, 3)
    t = rng.normal(size=(3, 4, 3))
    fit = fit_rigid(x, move(R, t, x))
    assert fit.rotation.shape == (3, 4, 3, 3)
    assert fit.translation.shape == (3, 4, 3)
    assert fit.residuals_mm.shape == (3, 4, 6)
    assert fit.mean_error_mm.shape == (3, 4)
    assert fit.n_used.shape == (3, 4)
    np.testing.assert_allclose(fit.rotation, R, atol=1e-9)
    # one reference (N, 3) against several exams (E, N, 3)
    ref = x[0, 0]
    fit2 = fit_rigid(ref, move(R[0], t[0], ref))
    np.testing.assert_allclose(fit2.rotation, R[0], atol=1e-9)
    assert not fit.rotation.flags.writeable
    assert not fit.residuals_mm.flags.writeable


def test_unbatched_and_weighted_paths_agree(rng):
    x = beads(rng, 7)
    y = move(random_rotation(rng), [1.0, 2.0, 3.0], x) + rng.normal(scale=0.05, size=(7, 3))
    fast = fit_rigid(x, y)
    slow = fit_rigid(x, y, weights=np.ones(7))  # masked path
    np.testing.assert_allclose(fast.rotation, slow.rotation, atol=1e-12)
    np.testing.assert_allclose(fast.residuals_mm, slow.residuals_mm, atol=1e-12)
    np.testing.assert_allclose(fast.mean_error_mm, slow.mean_error_mm, atol=1e-12)
    np.testing.assert_allclose(fast.centroid_mm, x.mean(axis=0), atol=1e-12)


def test_fast_path_blocks_match_masked_path(rng):
    from rsa import rigid

    m = 2 * rigid._BLOCK + 7  # crosses block boundaries of the all-valid fast path
    x = beads(rng, 5, shape=(m,))
    y = move(random_rotation(rng, m), rng.normal(size=(m, 3)), x)
    y += rng.normal(scale=0.05, size=y.shape)
    fast = fit_rigid(x, y)
    slow = fit_rigid(x, y, weights=np.ones(5))
    np.testing.assert_allclose(fast.rotation, slow.rotation, atol=1e-12)
    np.testing.assert_allclose(fast.translation, slow.translation, atol=1e-9)
    np.testing.assert_allclose(fast.residuals_mm, slow.residuals_mm, atol=1e-9)
    np.testing.assert_allclose(fast.centroid_mm, slow.centroid_mm, atol=1e-9)


def test_matches_scipy_align_vectors_with_noise(rng):
    x = beads(rng, 8, shape=(50,))
    y = move(random_rotation(rng, 50), rng.normal(size=(50, 3)), x)
    y += rng.normal(scale=0.05, size=y.shape)
    fit = fit_rigid(x, y)
    A = x - x.mean(axis=1, keepdims=True)
    B = y - y.mean(axis=1, keepdims=True)
    for i in range(50):
        ref = Rotation.align_vectors(B[i], A[i])[0].as_matrix()
        np.testing.assert_allclose(fit.rotation[i], ref, atol=1e-10)


def test_quaternion_solver_matches_svd_formula(rng):
    # Includes det C < 0 (reflection-prone), near-180° rotations and rank-2 (planar) C.
    C = rng.normal(size=(20000, 3, 3))
    C[:2000, :, 2] = 0.0  # planar bead sets give rank-2 C
    R, collinear = optimal_rotation(C, 1e-12)
    R_ref, _ = svd_rotation(C)
    np.testing.assert_allclose(R, R_ref, atol=1e-9)
    assert not collinear.any()
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    _, col = optimal_rotation(np.stack([np.zeros((3, 3)), np.outer([1, 2, 3], [3, 1, 1.0])]),
                              1e-12)
    assert col.all()


# ------------------------------------------------------------------ noise: derived tolerances


def test_noisy_beads_rotation_spread_matches_theory(rng):
    """Rotation error from iid bead noise matches the linearised LS covariance σ² J⁻¹.

    With y = R x + t + e, e ~ N(0, σ² I) per bead, the linearised least-squares rotation error
    δθ (rotation vector, lab frame) has covariance σ² J⁻¹, J = Σ (|aᵢ|² I − aᵢ aᵢᵀ) the inertia
    tensor of the rotated, centred beads aᵢ (so its SD scales like σ/(√N r_rms)); the centroid
    translation error has SD σ/√N per axis. Over M trials the sample SD of a normal variable has
    relative standard error 1/√(2M); we accept the SDs within 4 such standard errors, and every
    single error within 5.5 predicted SDs (P(exceed) ≈ 4e-8 per value, ~2e-4 over all 6M).
    """
    sigma, n, M = 0.05, 8, 3000
    x = beads(rng, n, spread=12.0)
    R0 = random_rotation(rng)
    t0 = np.array([3.0, -2.0, 1.0])
    y_true = move(R0, t0, x)
    y = y_true + rng.normal(scale=sigma, size=(M, n, 3))
    fit = fit_rigid(x, y)
    dtheta = Rotation.from_matrix(fit.rotation @ R0.T).as_rotvec()  # (M, 3)
    a = (x - x.mean(axis=0)) @ R0.T
    J = (a * a).sum() * np.eye(3) - a.T @ a
    cov = sigma**2 * np.linalg.inv(J)
    # rotate into J's principal axes so the components are uncorrelated
    evals, evecs = np.linalg.eigh(cov)
    comp = dtheta @ evecs
    sd_pred = np.sqrt(evals)
    sd_emp = comp.std(axis=0, ddof=1)
    np.testing.assert_allclose(sd_emp, sd_pred, rtol=4 / np.sqrt(2 * M))
    assert np.all(np.abs(comp) < 5.5 * sd_pred)
    # centroid translation: error of R x̄ + t at the reference centroid
    c_err = (fit.apply(x.mean(axis=0)) - (R0 @ x.mean(axis=0) + t0))
    np.testing.assert_allclose(c_err.std(axis=0, ddof=1), sigma / np.sqrt(n),
                               rtol=4 / np.sqrt(2 * M))
    # residuals of pure noise: Σᵢ‖rᵢ‖² ~ σ² χ²(3N − 6) per trial (6 dof fitted), so the mean
    # squared residual is σ²(3N − 6)/N; its relative SE over M trials is √(2/(M(3N − 6))).
    dof = 3 * n - 6
    ms = np.mean(fit.residuals_mm**2)
    np.testing.assert_allclose(ms, sigma**2 * dof / n, rtol=4 * np.sqrt(2 / (M * dof)))


def test_planar_configuration_gives_proper_rotation(rng):
    # Coplanar beads (z = 0 in the reference): noise makes det(P Qᵀ) = −1 possible; the fit
    # must still return det +1 and, noise-free, the exact rotation.
    m, n = 400, 5
    x = np.concatenate([rng.normal(scale=10.0, size=(m, n, 2)), np.zeros((m, n, 1))], axis=-1)
    R = random_rotation(rng, m)
    y = move(R, rng.normal(size=(m, 3)), x)
    exact = fit_rigid(x, y)
    np.testing.assert_allclose(exact.rotation, R, atol=1e-9)
    noisy = fit_rigid(x, y + rng.normal(scale=0.05, size=y.shape))
    np.testing.assert_allclose(np.linalg.det(noisy.rotation), 1.0, atol=1e-12)
    # unconstrained orthogonal Procrustes would return reflections for some of these
    P, _, Qt = np.linalg.svd(np.swapaxes(y, -1, -2) @ (x - x.mean(axis=1, keepdims=True)))
    assert np.all(np.abs(np.linalg.det(P @ Qt)) > 0.99)
    yn = y + rng.normal(scale=0.05, size=y.shape)
    A = x - x.mean(axis=1, keepdims=True)
    B = yn - yn.mean(axis=1, keepdims=True)
    R_ref, _ = svd_rotation(np.swapaxes(B, -1, -2) @ A)  # Söderkvist–Wedin reference formula
    np.testing.assert_allclose(fit_rigid(x, yn).rotation, R_ref, atol=1e-9)


def test_reflection_case_returns_rotation():
    # y is a mirror image of x (a reflection fits perfectly); the best *proper* rotation is
    # returned, with non-zero residuals.
    x = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10.0], [3, 4, 5]])
    y = x * np.array([1, 1, -1.0])
    fit = fit_rigid(x, y)
    np.testing.assert_allclose(np.linalg.det(fit.rotation), 1.0, atol=1e-12)
    assert fit.mean_error_mm > 1.0


# ------------------------------------------------------------------ weights and missing beads


def test_weights_zero_equals_removed_and_integer_equals_duplicated(rng):
    x = beads(rng, 7)
    y = move(random_rotation(rng), [5, 0, 0], x) + rng.normal(scale=0.1, size=(7, 3))
    w = np.ones(7)
    w[3] = 0.0
    f0 = fit_rigid(x, y, weights=w)
    keep = np.arange(7) != 3
    f1 = fit_rigid(x[keep], y[keep])
    np.testing.assert_allclose(f0.rotation, f1.rotation, atol=1e-12)
    np.testing.assert_allclose(f0.translation, f1.translation, atol=1e-10)
    assert f0.n_used == 6
    assert np.isfinite(f0.residuals_mm[3])  # zero-weight bead still gets a residual
    w2 = np.ones(7)
    w2[1] = 2.0
    f2 = fit_rigid(x, y, weights=w2)
    f3 = fit_rigid(np.vstack([x, x[1:2]]), np.vstack([y, y[1:2]]))
    np.testing.assert_allclose(f2.rotation, f3.rotation, atol=1e-12)
    np.testing.assert_allclose(f2.translation, f3.translation, atol=1e-10)


def test_nan_beads_are_ignored_and_reported(rng):
    x = beads(rng, 6, shape=(2,))
    R = random_rotation(rng, 2)
    y = move(R, np.zeros((2, 3)), x)
    x[0, 2] = np.nan
    y[1, 4] = np.nan
    fit = fit_rigid(x, y)
    np.testing.assert_allclose(fit.rotation, R, atol=1e-9)
    assert np.isnan(fit.residuals_mm[0, 2])
    assert np.isnan(fit.residuals_mm[1, 4])
    np.testing.assert_array_equal(fit.n_used, [5, 5])
    assert np.all(np.isfinite(fit.mean_error_mm))


# ------------------------------------------------------------------ degenerate input


def test_too_few_beads_names_batch_index(rng):
    x = beads(rng, 4, shape=(3, 2))
    y = x.copy()
    y[2, 0, :2] = np.nan
    with pytest.raises(EstimationError, match=r"batch index \(2, 0\): 2 valid beads, need ≥ 3"):
        fit_rigid(x, y)
    with pytest.raises(EstimationError, match=r"^2 valid beads, need ≥ 3"):
        fit_rigid(x[0, 0, :2], y[0, 0, :2])


def test_nan_only_and_collinear():
    x = np.full((4, 3), np.nan)
    with pytest.raises(EstimationError, match="0 valid beads"):
        fit_rigid(x, x)
    line = np.outer(np.arange(5.0), [1.0, 2.0, -1.0]) + 7.0
    with pytest.raises(EstimationError, match="collinear"):
        fit_rigid(line, line + 1)
    batch = np.stack([np.eye(3) * 10, line[:3]])
    with pytest.raises(EstimationError, match=r"batch index \(1,\): the 3 valid beads are coll"):
        fit_rigid(batch, batch)


def test_shape_errors(rng):
    x = beads(rng, 5)
    with pytest.raises(ShapeError, match="same number of beads N, got 5 and 4"):
        fit_rigid(x, x[:4])
    with pytest.raises(ShapeError,
                       match=r"Expected `x` to have shape \(\.\.\., N, 3\), got \(5, 2\)"):
        fit_rigid(x[:, :2], x)
    with pytest.raises(ShapeError, match="broadcastable batch shapes"):
        fit_rigid(np.zeros((2, 5, 3)), np.zeros((3, 5, 3)))
    with pytest.raises(ShapeError, match="non-negative"):
        fit_rigid(x, x, weights=-np.ones(5))
    with pytest.raises(ShapeError, match="weights"):
        fit_rigid(x, x, weights=np.ones(4))


# ------------------------------------------------------------------ Pose


def test_pose_algebra(rng):
    R = random_rotation(rng, 4)
    t = rng.normal(size=(4, 3))
    a = Pose(R, t)
    b = Pose(random_rotation(rng), [1.0, 2.0, 3.0])  # broadcasts against a
    p = rng.normal(size=(4, 6, 3))
    np.testing.assert_allclose((a @ b).apply(p), a.apply(b.apply(p)), atol=1e-12)
    np.testing.assert_allclose(a.inv().apply(a.apply(p)), p, atol=1e-12)
    np.testing.assert_allclose(Pose.from_matrix(a.as_matrix()).rotation, R)
    np.testing.assert_allclose(a.apply(p[0, 0]), np.einsum("bij,j->bi", R, p[0, 0]) + t)
    assert Pose.identity((2,)).batch_shape == (2,)
    fit = fit_rigid(p[0], a.apply(p[0])[1])
    assert isinstance(fit, RigidFit)
    assert isinstance(fit.inv(), Pose)


def test_pose_rejects_non_rotations():
    with pytest.raises(ShapeError, match="proper rotation"):
        Pose(np.diag([1.0, 1.0, -1.0]), np.zeros(3))
    with pytest.raises(ShapeError, match="proper rotation"):
        Pose(2 * np.eye(3), np.zeros(3))
    with pytest.raises(ShapeError, match=r"\(\.\.\., 3, 3\)"):
        Pose(np.eye(2), np.zeros(3))
    with pytest.raises(ShapeError, match="last row"):
        Pose.from_matrix(np.ones((4, 4)))


# ------------------------------------------------------------------ condition number


def test_condition_number_isotropic_collinear_and_scaling():
    a = 10.0
    octa = np.array([[a, 0, 0], [-a, 0, 0], [0, a, 0], [0, -a, 0], [0, 0, a], [0, 0, -a]])
    # σ1² = σ2² = σ3² = 2a² -> CN = 1000 / sqrt(4a²) = 500 / a
    np.testing.assert_allclose(condition_number(octa), 500.0 / a, rtol=1e-12)
    np.testing.assert_allclose(condition_number(2 * octa + 50), 250.0 / a, rtol=1e-12)
    line = np.outer(np.arange(6.0), [1.0, -2.0, 0.5]) + 3.0
    assert condition_number(line) == np.inf
    assert condition_number(octa[:2]) == np.inf
    # beads approaching a line: off-line spread ε -> CN grows like 1/ε
    eps = np.array([1.0, 0.1, 0.01, 1e-4])
    cfg = np.zeros((4, 4, 3))
    cfg[:, :, 0] = [-30, -10, 10, 30]
    cfg[:, 1, 1] = eps
    cfg[:, 2, 2] = -eps
    cn = condition_number(cfg)
    assert np.all(np.diff(cn) > 0)
    # exact: only beads 1, 2 leave the line, σ2² + σ3² = ε²(1 − 1/4)·... computed directly
    A = cfg - cfg.mean(axis=1, keepdims=True)
    s = np.linalg.svd(A, compute_uv=False)
    np.testing.assert_allclose(cn, 1000 / np.sqrt(s[:, 1] ** 2 + s[:, 2] ** 2), rtol=1e-9)


def test_condition_number_nan_and_batches(rng):
    x = beads(rng, 6, shape=(2, 3))
    cn = condition_number(x)
    assert cn.shape == (2, 3)
    x2 = np.concatenate([x, np.full((2, 3, 1, 3), np.nan)], axis=2)
    np.testing.assert_allclose(condition_number(x2), cn, rtol=1e-12)
    with pytest.raises(ShapeError, match="Expected `x` to have shape"):
        condition_number(np.zeros(3))


# ------------------------------------------------------------------ stability and screening


def test_distance_stability_analytic():
    x = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10.0]])
    R = Rotation.from_euler("xyz", [10, 20, 30], degrees=True).as_matrix()
    y = x @ R.T + 5.0
    ds = distance_stability(x, y)
    assert ds.mean_change_mm < 1e-12
    assert ds.n_pairs == 6
    y2 = x.copy()
    y2[1, 0] += 1.0  # bead 1 moves 1 mm along x (radially away from bead 0)
    ds2 = distance_stability(x, y2)
    # pair changes: (0,1): 1; (1,2), (1,3): sqrt(11²+10²) − sqrt(200); others 0
    d12 = np.hypot(11.0, 10.0) - np.hypot(10.0, 10.0)
    np.testing.assert_allclose(ds2.mean_change_mm, (1 + 2 * d12) / 6)
    np.testing.assert_allclose(ds2.per_bead_mm, [1 / 3, (1 + 2 * d12) / 3, d12 / 3, d12 / 3])
    y2[3] = np.nan
    ds3 = distance_stability(x, y2)
    assert np.isnan(ds3.per_bead_mm[3])
    assert ds3.n_pairs == 3


def test_screen_unstable_finds_moved_bead(rng):
    sigma = 0.02
    x = beads(rng, 6, spread=12.0, shape=(3,))
    R = random_rotation(rng, 3)
    y = move(R, rng.normal(size=(3, 3)), x) + rng.normal(scale=sigma, size=(3, 6, 3))
    y[1, 4] += [0.0, 1.5, 0.0]  # bead 4 of exam 1 loosened and moved 1.5 mm
    y[2, 0] += [3.0, 0.0, 0.0]  # a large move also inflates other beads' distance change
    res = screen_unstable(x, y, limit_mm=0.35)
    expected = np.zeros((3, 6), bool)
    expected[1, 4] = expected[2, 0] = True
    np.testing.assert_array_equal(res.exclude, expected)
    assert len(res.reasons) == 2
    assert any(r.startswith("batch index (1,): bead 4: mean inter-bead distance change")
               for r in res.reasons)
    assert all("> limit 0.35 mm; leave-one-out ME" in r for r in res.reasons)
    # after exclusion the ME is at noise level (≈ σ·√(2/3·…) < 3σ), before it was large
    assert np.all(res.mean_error_after_mm < 3 * sigma * np.sqrt(3))
    assert res.mean_error_before_mm[1] > 0.2


def test_screen_unstable_respects_min_beads_and_validates(rng):
    x = beads(rng, 4)
    y = x.copy()
    y[0] += 2.0
    assert not screen_unstable(x, y, min_beads=4).exclude.any()
    assert screen_unstable(x, y, min_beads=3).exclude[0]
    with pytest.raises(ShapeError, match="limit_mm"):
        screen_unstable(x, y, limit_mm=0)
    with pytest.raises(ShapeError, match="min_beads"):
        screen_unstable(x, y, min_beads=2)
    with pytest.raises(EstimationError, match="valid beads"):
        screen_unstable(x[:2], y[:2])


def test_solver_degenerate_gap_falls_back_to_svd(rng):
    # σ2 = σ3 with det C < 0: the optimal rotation is not unique (double eigenvalue of Horn's
    # matrix); any optimum must reach tr(Rᵀ C) = σ1 + σ2 − σ3 with det R = +1.
    U, V = random_rotation(rng), random_rotation(rng)
    C = U @ np.diag([3.0, 1.0, -1.0]) @ V.T
    R, col = optimal_rotation(C[None], 1e-12)
    assert not col[0]
    np.testing.assert_allclose(np.trace(R[0].T @ C), 3.0 + 1.0 - 1.0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R[0]), 1.0, atol=1e-12)
