"""Rigid fit weighted by full per-bead 3D covariances (rsa.rigid.fit_rigid ``covariance``)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from rsa.errors import EstimationError, ShapeError
from rsa.rigid import fit_rigid


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def _beads(rng, n=7):
    return rng.uniform(-20, 20, size=(n, 3)) + [0.0, 0.0, 290.0]


def _needles(rng, n, big, small):
    """Covariances elongated along a random direction each: σ = big along it, small across."""
    Q = Rotation.random(n, random_state=rng).as_matrix()
    return Q @ np.diag([big ** 2, small ** 2, small ** 2]) @ np.swapaxes(Q, -1, -2)


def _pose_error(fit, R, t, c):
    """(…, 6) rotation vector of R_fit Rᵀ (rad) and the translation error at point c (mm)."""
    dw = Rotation.from_matrix(fit.rotation @ R.T).as_rotvec()
    dt = fit.translation + fit.rotation @ c - (t + R @ c)
    return np.concatenate([dw, dt], -1)


def test_isotropic_covariances_equal_weighted_fit(rng):
    x = _beads(rng)
    R = Rotation.from_rotvec([0.02, -0.05, 0.1]).as_matrix()
    s = rng.uniform(0.005, 0.05, len(x))
    y = x @ R.T + [0.4, -0.2, 1.0] + rng.normal(size=x.shape) * s[:, None]
    ref = fit_rigid(x, y, weights=1 / s ** 2)
    cov = s[:, None, None] ** 2 * np.eye(3)
    for split in (0.0, 0.3):   # Σx + Σy = s² I however it is split between x and y
        got = fit_rigid(x, y, covariance=(split * cov, (1 - split) * cov))
        np.testing.assert_allclose(got.rotation, ref.rotation, atol=1e-12)
        np.testing.assert_allclose(got.translation, ref.translation, atol=1e-10)
        np.testing.assert_allclose(got.residuals_mm, ref.residuals_mm, atol=1e-10)
        np.testing.assert_allclose(got.mean_error_mm, ref.mean_error_mm, atol=1e-10)


def test_exact_data_give_exact_pose_for_any_covariances(rng):
    x = _beads(rng)
    R = Rotation.from_rotvec([0.1, 0.15, -0.05]).as_matrix()      # ≈ 10° rotation
    t = np.array([3.0, -1.5, 2.0])
    y = x @ R.T + t
    cov_x = _needles(rng, len(x), 0.2, 0.01)
    cov_y = _needles(rng, len(x), 0.3, 0.005)
    fit = fit_rigid(x, y, covariance=(cov_x, cov_y))
    np.testing.assert_allclose(fit.rotation, R, atol=1e-13)
    np.testing.assert_allclose(fit.translation, t, atol=1e-10)
    assert fit.mean_error_mm < 1e-10


def test_anisotropic_noise_reaches_its_fisher_bound(rng):
    """Monte Carlo: beads 10× more uncertain along one random direction each. The covariance-
    weighted fit's pose scatter equals the inverse Fisher information Σ Jᵀ S⁻¹ J (J = [−[R a]ₓ,
    I], the minimum for unbiased estimators), while the isotropic fit with the best single
    weight per bead (1 / mean variance) scatters clearly more."""
    n_beads, trials = 7, 4000
    x = _beads(rng, n_beads)
    R = Rotation.from_rotvec([0.05, -0.02, 0.03]).as_matrix()
    t = np.array([0.5, 0.2, -0.3])
    cov = _needles(rng, n_beads, 0.05, 0.005)
    L = np.linalg.cholesky(cov)
    noise = np.einsum("nij,knj->kni", L, rng.normal(size=(trials, n_beads, 3)))
    y = x @ R.T + t + noise
    c = x.mean(0)
    fit = fit_rigid(x, y, covariance=(np.zeros_like(cov), cov))
    err = _pose_error(fit, R, t, c)
    a = (x - c) @ R.T
    Ra = np.stack([np.cross(a, np.eye(3)[k]) for k in range(3)], -1)   # [R a]ₓ, column by column
    J = np.concatenate([-Ra, np.broadcast_to(np.eye(3), Ra.shape)], -1)
    H = np.einsum("nai,nab,nbj->ij", J, np.linalg.inv(cov), J)
    bound = np.diag(np.linalg.inv(H))
    var = err.var(axis=0)
    # the variance of `trials` normal draws has relative SD √(2/trials) ≈ 2.2 %: 5 SD
    np.testing.assert_allclose(var / bound, 1.0, atol=5 * np.sqrt(2 / trials))
    assert np.all(np.abs(err.mean(0)) < 5 * np.sqrt(bound / trials))      # unbiased
    iso = fit_rigid(x, y, weights=3 / np.trace(cov, axis1=1, axis2=2))
    var_iso = _pose_error(iso, R, t, c).var(axis=0)
    assert np.all(var_iso > 1.5 * var)


def test_missing_and_zero_weight_beads_are_left_out(rng):
    x = _beads(rng, 8)
    R = Rotation.from_rotvec([0.0, 0.1, 0.0]).as_matrix()
    y = x @ R.T + [1.0, 2.0, 3.0] + rng.normal(size=x.shape) * 0.01
    cov = _needles(rng, len(x), 0.04, 0.01)
    y2 = y.copy()
    y2[2] = np.nan                                     # missing: its covariance is ignored
    cov2 = cov.copy()
    cov2[2] = np.nan
    w = np.ones(len(x))
    w[5] = 0.0                                         # left out by weight
    got = fit_rigid(x, y2, weights=w, covariance=(0 * cov, cov2))
    keep = np.setdiff1d(np.arange(len(x)), [2, 5])
    ref = fit_rigid(x[keep], y[keep], covariance=(0 * cov[keep], cov[keep]))
    np.testing.assert_allclose(got.rotation, ref.rotation, atol=1e-12)
    np.testing.assert_allclose(got.translation, ref.translation, atol=1e-10)
    assert got.n_used == len(keep)
    assert np.isnan(got.residuals_mm[2])


def test_batched_equals_one_by_one(rng):
    x = _beads(rng)
    Rs = Rotation.random(3, random_state=rng).as_matrix()
    ys = np.einsum("bij,nj->bni", Rs, x) + rng.normal(size=(3, 1, 3)) \
        + rng.normal(size=(3, len(x), 3)) * 0.02
    cov = np.stack([_needles(rng, len(x), 0.05, 0.01) for _ in range(3)])
    batch = fit_rigid(x, ys, covariance=(np.zeros(3), cov))
    for b in range(3):
        one = fit_rigid(x, ys[b], covariance=(np.zeros(3), cov[b]))
        np.testing.assert_allclose(batch.rotation[b], one.rotation, atol=1e-12)
        np.testing.assert_allclose(batch.translation[b], one.translation, atol=1e-10)


@pytest.mark.parametrize(("cov", "match"), [
    ("pair", "pair"),
    ((np.eye(3), np.ones((2, 2))), "broadcasting to"),
    ((np.zeros((3, 3)), np.full((3, 3), np.nan)), "finite"),
    ((np.zeros((3, 3)), np.array([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]])), "symmetric"),
    ((np.zeros((3, 3)), -np.eye(3)), "positive semi-definite"),
    ((np.zeros((3, 3)), np.diag([1.0, 1.0, 0.0])), "positive definite"),
])
def test_bad_covariances_are_named(rng, cov, match):
    x = _beads(rng, 5)
    with pytest.raises(ShapeError, match=match):
        fit_rigid(x, x + 1.0, covariance=cov)


def test_too_few_beads_still_reported(rng):
    x = _beads(rng, 3)
    with pytest.raises(EstimationError, match="need ≥ 3"):
        fit_rigid(x, x, weights=[1, 1, 0], covariance=(np.zeros((3, 3)), np.eye(3)))
