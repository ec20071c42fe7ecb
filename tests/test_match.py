"""Labelling against a reference marker model (rsa.match): truth from constructed configurations."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from rsa.errors import EstimationError
from rsa.match import assign_by_proximity, label_beads


def _segment(rng, n, extent=40.0):
    """n beads spread in a bone-like volume (no two closer than 4 mm)."""
    pts = []
    while len(pts) < n:
        p = rng.uniform(-extent / 2, extent / 2, size=3)
        if all(np.linalg.norm(p - q) > 4.0 for q in pts):
            pts.append(p)
    return np.array(pts)


def _scene(rng, *, n_model=8, n_other=10, drop=(), noise=0.02):
    model = _segment(rng, n_model)
    other = _segment(rng, n_other) + [60.0, 0, 0]          # a second segment nearby
    R = Rotation.random(random_state=rng).as_matrix()
    t = rng.uniform(-20, 20, size=3)
    observed_model = model @ R.T + t + rng.normal(scale=noise, size=model.shape)
    keep = np.setdiff1d(np.arange(n_model), drop)
    obs = np.vstack([observed_model[keep], other @ R.T + t])
    perm = rng.permutation(len(obs))
    obs = obs[perm]
    truth = np.full(n_model, -1)
    truth[keep] = np.argsort(perm)[: len(keep)]
    return model, obs, truth, R, t


@pytest.mark.parametrize("seed", range(5))
def test_recovers_labels_and_pose(seed):
    rng = np.random.default_rng(seed)
    model, obs, truth, R, t = _scene(rng)
    lab = label_beads(model, obs)
    np.testing.assert_array_equal(lab.observed_of_model, truth)
    assert lab.n_matched == 8
    assert not lab.ambiguous
    # Rotation error of an 8-bead fit with 0.02 mm noise over a ~20 mm radius is ~1e-3 rad;
    # 0.01 rad is a > 5 sigma bound.
    dR = lab.pose.rotation @ R.T
    assert np.arccos(np.clip((np.trace(dR) - 1) / 2, -1, 1)) < 0.01
    # Translation error ≈ rotation error × lever arm (≤ 40 mm to the origin) + centroid noise.
    np.testing.assert_allclose(lab.pose.translation, t, atol=0.5)
    assert np.all(lab.distance_mm < 0.1)  # 5 sigma of the ~0.02 mm residual scale
    assert np.all(lab.model_of_observed[truth] == np.arange(8))


def test_missing_beads_are_minus_one():
    rng = np.random.default_rng(11)
    model, obs, truth, _, _ = _scene(rng, drop=(1, 5))
    lab = label_beads(model, obs)
    np.testing.assert_array_equal(lab.observed_of_model, truth)
    assert lab.n_matched == 6
    assert np.isnan(lab.distance_mm[[1, 5]]).all()


def test_nan_rows_ignored():
    rng = np.random.default_rng(3)
    model, obs, truth, _, _ = _scene(rng)
    obs = np.vstack([obs, [np.nan, np.nan, np.nan]])
    model = model.copy()
    model[2] = np.nan
    lab = label_beads(model, obs)
    expected = truth.copy()
    expected[2] = -1
    np.testing.assert_array_equal(lab.observed_of_model, expected)


def test_symmetric_model_is_ambiguous():
    # A square is symmetric under 90° rotations: every rotated labelling has full support.
    square = np.array([[0, 0, 0], [20, 0, 0], [20, 20, 0], [0, 20, 0], [10, 10, 15]], float)
    lab = label_beads(square, square[[2, 0, 4, 1, 3]])
    assert lab.ambiguous


def test_too_few_matches():
    rng = np.random.default_rng(5)
    model = _segment(rng, 6)
    unrelated = _segment(rng, 6) * 1.7
    with pytest.raises(EstimationError, match="match"):
        label_beads(model, unrelated)
    with pytest.raises(EstimationError, match="needs ≥ 3 beads"):
        label_beads(model[:2], model)


def test_collinear_model():
    line = np.outer(np.arange(5.0) * 7, [1, 0, 0])
    with pytest.raises(EstimationError, match="well-shaped triangle"):
        label_beads(line, line)


def test_assign_by_proximity():
    rng = np.random.default_rng(0)
    model = _segment(rng, 6)
    obs = np.vstack([model[[3, 1, 0]] + 0.1, [[100.0, 0, 0]]])
    out = assign_by_proximity(model, obs, tol_mm=0.5)
    np.testing.assert_array_equal(out, [2, 1, -1, 0, -1, -1])
