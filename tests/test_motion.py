"""Tests of rsa.motion: Euler angles, helical axis, relative motion, MTPM and precision."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from rsa.errors import EstimationError, ShapeError
from rsa.motion import (
    EULER_ORDERS,
    euler_angles,
    helical_axis,
    mtpm,
    precision,
    precision_upper,
    relative_motion,
)
from rsa.rigid import Pose, fit_rigid


def axis_rotation(axis: str, deg):
    """Elementary right-handed rotation matrices about x, y or z (independent of scipy)."""
    a = np.radians(np.asarray(deg, dtype=float))
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    m = {"x": [[o, z, z], [z, c, -s], [z, s, c]],
         "y": [[c, z, s], [z, o, z], [-s, z, c]],
         "z": [[c, -s, z], [s, c, z], [z, z, o]]}[axis]
    return np.moveaxis(np.array(m), (0, 1), (-2, -1))


def compose(order: str, angles):
    """R for an order string: lower case extrinsic (R = R3 R2 R1), upper intrinsic (R1 R2 R3)."""
    mats = [axis_rotation(ax.lower(), angles[..., i]) for i, ax in enumerate(order)]
    if order.islower():
        return mats[2] @ mats[1] @ mats[0]
    return mats[0] @ mats[1] @ mats[2]


ALL_ORDERS = list(EULER_ORDERS) + [o.upper() for o in EULER_ORDERS]


# ------------------------------------------------------------------ Euler angles


@pytest.mark.parametrize("order", ALL_ORDERS)
def test_euler_round_trip_all_orders(order, rng):
    R = Rotation.random(200, rng=rng).as_matrix().reshape(4, 50, 3, 3)
    ang = euler_angles(R, order=order)
    assert ang.shape == (4, 50, 3)
    np.testing.assert_allclose(compose(order, ang), R, atol=1e-12)
    mid = ang[..., 1]
    if order[0].lower() == order[2].lower():  # proper Euler: second angle in [0, 180]
        assert np.all((mid >= 0) & (mid <= 180))
    else:
        assert np.all(np.abs(mid) <= 90)


@pytest.mark.parametrize("order", ALL_ORDERS)
def test_euler_gimbal_lock_reconstructs_and_zeroes_third_angle(order):
    proper = order[0].lower() == order[2].lower()
    mids = [0.0, 180.0] if proper else [90.0, -90.0]
    angles = np.array([[25.0, m, 40.0] for m in mids])
    R = compose(order, angles)
    ang = euler_angles(R, order=order)  # must not warn (pytest filterwarnings = error)
    np.testing.assert_allclose(compose(order, ang), R, atol=1e-12)
    np.testing.assert_allclose(ang[:, 2], 0.0, atol=1e-12)


def test_euler_known_values():
    R = compose("xyz", np.array([10.0, -5.0, 3.0]))  # R = Rz(3) Ry(-5) Rx(10)
    np.testing.assert_allclose(euler_angles(R), [10.0, -5.0, 3.0], atol=1e-12)
    np.testing.assert_allclose(euler_angles(R, order="ZYX"), [3.0, -5.0, 10.0], atol=1e-12)
    np.testing.assert_allclose(euler_angles(axis_rotation("y", 7.0), order="XYZ"), [0, 7, 0],
                               atol=1e-12)


def test_euler_errors():
    with pytest.raises(ShapeError, match="Expected `order` to be one of"):
        euler_angles(np.eye(3), order="xxy")
    with pytest.raises(ShapeError, match="Expected `order`"):
        euler_angles(np.eye(3), order="xYz")
    with pytest.raises(ShapeError, match="proper rotation"):
        euler_angles(np.diag([1.0, -1.0, 1.0]))
    with pytest.raises(ShapeError, match=r"\(\.\.\., 3, 3\)"):
        euler_angles(np.eye(4))


# ------------------------------------------------------------------ helical axis


def screw(axis, angle_deg, point, slide):
    n = np.asarray(axis, float) / np.linalg.norm(axis)
    R = Rotation.from_rotvec(np.radians(angle_deg) * n).as_matrix()
    p = np.asarray(point, float)
    return R, p - R @ p + slide * n, n


@pytest.mark.parametrize("angle", [1e-4, 0.5, 40.0, 120.0, 179.0, 180.0])
def test_helical_axis_of_known_screw(angle):
    R, t, n = screw([1.0, 2.0, 2.0], angle, point=[5.0, -3.0, 2.0], slide=1.5)
    h = helical_axis(R, t)
    np.testing.assert_allclose(h.angle_deg, angle, rtol=1e-10, atol=1e-12)
    sign = 1.0 if angle < 180 else np.sign(h.axis @ n)  # 180°: ±n describe the same motion
    np.testing.assert_allclose(h.axis, sign * n, atol=1e-9)
    np.testing.assert_allclose(h.slide_mm, sign * 1.5, atol=1e-9 / np.radians(angle))
    p0 = np.array([5.0, -3.0, 2.0])
    closest = p0 - (p0 @ n) * n
    # axis point accuracy degrades like ε/θ for tiny rotations (the axis is ill-defined)
    np.testing.assert_allclose(h.point_mm, closest, atol=1e-12 / np.radians(angle) * 10)
    # the point is on the axis: R p + t − p = slide · n
    np.testing.assert_allclose(R @ h.point_mm + t - h.point_mm, h.slide_mm * h.axis, atol=1e-6)


def test_helical_axis_exact_half_turn():
    # R = diag(1, −1, −1): 180° about x; through the point (0, 2, 3) with slide 0.5
    R = np.diag([1.0, -1.0, -1.0])
    p0 = np.array([0.0, 2.0, 3.0])
    t = p0 - R @ p0 + [0.5, 0.0, 0.0]
    h = helical_axis(R, t)
    np.testing.assert_allclose(h.angle_deg, 180.0)
    s = np.sign(h.axis[0])
    np.testing.assert_allclose(h.axis, [s, 0.0, 0.0])
    np.testing.assert_allclose(h.slide_mm, 0.5 * s)
    np.testing.assert_allclose(h.point_mm, p0, atol=1e-12)


def test_helical_axis_reference_point_zero_rotation_and_batch():
    R, t, _ = screw([0, 0, 1.0], 30.0, point=[10.0, 0.0, 0.0], slide=-2.0)
    h = helical_axis(R, t, reference_point=[0.0, 0.0, 50.0])
    np.testing.assert_allclose(h.point_mm, [10.0, 0.0, 50.0], atol=1e-9)
    z = helical_axis(np.eye(3), [3.0, 0.0, 4.0])
    assert np.all(np.isnan(z.axis))
    assert np.all(np.isnan(z.point_mm))
    assert z.slide_mm == 5.0
    assert z.angle_deg == 0.0
    Rb = np.stack([R, np.eye(3)])
    hb = helical_axis(Rb[None].repeat(3, axis=0), np.zeros((3, 2, 3)))
    assert hb.axis.shape == (3, 2, 3)
    assert hb.angle_deg.shape == (3, 2)
    with pytest.raises(ShapeError, match="broadcastable"):
        helical_axis(Rb, np.zeros((3, 3)))


# ------------------------------------------------------------------ relative motion


def test_bone_and_implant_moving_together_give_zero_motion(rng):
    R = Rotation.random(5, rng=rng).as_matrix()
    t = rng.normal(scale=5.0, size=(5, 3))
    m = relative_motion((R, t), Pose(R, t), point=[10.0, 20.0, 30.0])
    np.testing.assert_allclose(m.translation_mm, 0.0, atol=1e-12)
    np.testing.assert_allclose(m.rotation_deg, 0.0, atol=1e-12)
    np.testing.assert_allclose(m.total_translation_mm, 0.0, atol=1e-12)
    assert np.all(np.isnan(m.helical.axis))


def test_relative_motion_recovers_known_migration(rng):
    # reference-exam beads of bone and implant; follow-up: patient moved (T_B) and the implant
    # migrated relative to the bone by T_rel (in reference-exam lab coordinates).
    bone = rng.normal(scale=15.0, size=(4, 8, 3))
    implant = rng.normal(scale=10.0, size=(4, 6, 3)) + [0, 40.0, 0]
    TB = Pose(Rotation.random(4, rng=rng).as_matrix(), rng.normal(scale=20, size=(4, 3)))
    ang_true = np.array([[0.5, -0.3, 0.2], [1.0, 0.0, 0.0], [0.0, 2.0, -1.0], [0.1, 0.1, 0.1]])
    Trel = Pose(compose("xyz", ang_true), [[0.2, -0.5, 0.1]] * 4)
    fb = fit_rigid(bone, TB.apply(bone))
    fs = fit_rigid(implant, (TB @ Trel).apply(implant))
    m = relative_motion(fb, fs, points=implant)
    np.testing.assert_allclose(m.pose.rotation, Trel.rotation, atol=1e-9)
    np.testing.assert_allclose(m.rotation_deg, ang_true, atol=1e-9)
    c = implant.mean(axis=1)  # default point: the implant's fitted bead centroid
    np.testing.assert_allclose(m.point_mm, c, atol=1e-9)
    expected = Trel.apply(c[:, None, :])[:, 0] - c
    np.testing.assert_allclose(m.translation_mm, expected, atol=1e-9)
    np.testing.assert_allclose(m.total_translation_mm, np.linalg.norm(expected, axis=-1))
    disp = np.linalg.norm(Trel.apply(implant) - implant, axis=-1)
    np.testing.assert_allclose(m.mtpm_mm, disp.max(axis=-1), atol=1e-9)
    np.testing.assert_array_equal(m.mtpm_index, disp.argmax(axis=-1))
    assert m.order == "xyz"


def test_relative_motion_in_anatomical_axes():
    # Anatomical frame whose x axis is the lab y axis, etc. (cyclic permutation).
    A = np.array([[0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0]])
    T = Pose(np.eye(3), [1.0, 2.0, 3.0])
    m = relative_motion(Pose.identity(), T, point=np.zeros(3), axes=A)
    np.testing.assert_allclose(m.translation_mm, [2.0, 3.0, 1.0])
    R = axis_rotation("y", 5.0)  # rotation about lab y = anatomical x
    m2 = relative_motion(Pose.identity(), (R, np.zeros(3)), point=np.zeros(3), axes=A)
    np.testing.assert_allclose(m2.rotation_deg, [5.0, 0.0, 0.0], atol=1e-12)


def test_relative_motion_errors():
    with pytest.raises(ShapeError, match="Expected `point`"):
        relative_motion(Pose.identity(), (np.eye(3), np.zeros(3)))
    with pytest.raises(ShapeError, match="Pose/RigidFit or a"):
        relative_motion(np.eye(4), Pose.identity(), point=np.zeros(3))
    with pytest.raises(ShapeError, match="pose_segment"):
        relative_motion(Pose.identity(), (2 * np.eye(3), np.zeros(3)), point=np.zeros(3))


# ------------------------------------------------------------------ MTPM


def test_mtpm_analytic():
    # rotation θ about z through the origin plus axial slide d: a point at radius r moves
    # sqrt((2 r sin(θ/2))² + d²).
    theta, d = 3.0, 0.2
    R = axis_rotation("z", theta)
    pts = np.array([[5.0, 0, 0], [0, 20.0, 7.0], [np.nan, 0, 0], [-10.0, 0, -3.0]])
    val, idx = mtpm(R, [0.0, 0.0, d], pts)
    np.testing.assert_allclose(val, np.hypot(2 * 20.0 * np.sin(np.radians(theta) / 2), d))
    assert idx == 1
    Rb = np.stack([R, np.eye(3)])
    vb, ib = mtpm(Rb, np.array([[0, 0, d], [1.0, 0, 0]]), pts)
    np.testing.assert_allclose(vb[1], 1.0)
    assert vb.shape == (2,)
    assert ib.shape == (2,)
    with pytest.raises(EstimationError, match="at least one finite point"):
        mtpm(R, np.zeros(3), np.full((2, 3), np.nan))
    with pytest.raises(ShapeError, match="broadcastable"):
        mtpm(Rb, np.zeros((3, 3)), pts)


# ------------------------------------------------------------------ precision


def test_precision_hand_computed():
    d = np.array([0.10, -0.05, 0.02, 0.08, -0.01])
    mean = 0.14 / 5  # 0.028
    ss = sum((v - mean) ** 2 for v in d)  # 0.01548
    sd = np.sqrt(ss / 4)
    t975 = 2.7764451051977987  # t(0.975, 4)
    p = precision(d)
    assert p.n == 5
    np.testing.assert_allclose(p.bias, mean)
    np.testing.assert_allclose(p.sd, sd)
    np.testing.assert_allclose(p.t_quantile, t975, rtol=1e-12)
    np.testing.assert_allclose(p.limit, t975 * sd, rtol=1e-12)
    np.testing.assert_allclose([p.lower, p.upper], [mean - t975 * sd, mean + t975 * sd])
    np.testing.assert_allclose(p.prediction_limit, t975 * sd * np.sqrt(1.2), rtol=1e-12)
    np.testing.assert_allclose(p.within_subject_sd, sd / np.sqrt(2))
    np.testing.assert_allclose(p.repeatability_coefficient, 1.959963984540054 * sd, rtol=1e-12)


def test_precision_components_nan_and_errors():
    d = np.array([[0.1, 1.0], [-0.05, np.nan], [0.02, 2.0], [0.08, 3.0], [-0.01, np.nan]])
    p = precision(d)
    np.testing.assert_array_equal(p.n, [5, 3])
    np.testing.assert_allclose(p.bias, [0.028, 2.0])
    np.testing.assert_allclose(p.sd[1], 1.0)
    np.testing.assert_allclose(p.t_quantile[1], 4.302652729749464, rtol=1e-12)  # t(0.975, 2)
    with pytest.raises(EstimationError, match="component 1: 1 finite values"):
        precision(np.array([[0.1, 1.0], [0.2, np.nan]]))
    with pytest.raises(EstimationError, match="need ≥ 2"):
        precision([0.3])
    with pytest.raises(ShapeError, match="confidence"):
        precision(d, confidence=95)
    with pytest.raises(ShapeError, match=r"\(n,\) or \(n, K\)"):
        precision(np.zeros((2, 2, 2)))


def test_precision_upper_hand_computed():
    v = np.array([0.10, 0.05, 0.02, 0.08, 0.01])
    mean, sd = 0.052, np.std(v, ddof=1)
    t95 = 2.131846786326649  # one-sided t(0.95, 4)
    u = precision_upper(v)
    np.testing.assert_allclose(u.t_quantile, t95, rtol=1e-12)
    np.testing.assert_allclose(u.upper_t, mean + t95 * sd, rtol=1e-12)
    s = np.sort(v)  # position 0.95 · (5 − 1) = 3.8 -> linear interpolation
    np.testing.assert_allclose(u.percentile, s[3] + 0.8 * (s[4] - s[3]))
    with pytest.raises(ShapeError, match="non-negative"):
        precision_upper(-v)
