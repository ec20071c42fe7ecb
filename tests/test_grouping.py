"""Beads grouped by rigid-motion consistency (rsa.grouping): truth from constructed series.

Scene: three segments of 6, 6 and 5 beads (≥ 5 mm apart, segment centres 40 mm apart), listed
in a shuffled order. Every exam moves the whole body (placement: ≤ 5°, ≤ 5 mm) and each segment
relative to it (2–5° about its centroid and 1–2 mm), with N(0, 0.01 mm) noise per axis on every
point, the reference exam's included. A bead's position relative to its segment's fitted pose
then errs by ≈ √3 · √2 · 0.01 ≈ 0.025 mm (rms), so the default tolerance of 0.15 mm is > 5σ;
each scene asserts that every bead moves by more than 2 × 0.15 mm relative to every other
segment in some exam, so that the segments are separable at all.
"""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from rsa.errors import ShapeError
from rsa.grouping import TOL_MM, group_rigid

SIZES = (6, 6, 5)
NOISE_MM = 0.01


def _segment(rng, n, centre):
    pts = []
    while len(pts) < n:
        p = rng.uniform(-10, 10, size=3)
        if all(np.linalg.norm(p - q) > 5.0 for q in pts):
            pts.append(p)
    return np.array(pts) + centre


def _motion(rng, lo_deg, hi_deg, lo_mm, hi_mm):
    """Random rotation (angle in [lo, hi] degrees) and translation (length in [lo, hi] mm)."""
    axis = rng.normal(size=3)
    rot = Rotation.from_rotvec(axis / np.linalg.norm(axis) * np.radians(rng.uniform(lo_deg,
                                                                                     hi_deg)))
    t = rng.normal(size=3)
    return rot.as_matrix(), t / np.linalg.norm(t) * rng.uniform(lo_mm, hi_mm)


def _series(seed, *, n_exams=3, same_motion=()):
    """Reference beads (shuffled), their segment, and the exams' true bead positions (E, K, 3).

    Segments listed in `same_motion` move together in every exam (one rigid body).
    """
    rng = np.random.default_rng(seed)
    segs = [_segment(rng, n, [0.0, 40.0 * (s - 1), 0.0]) for s, n in enumerate(SIZES)]
    truth = np.repeat(np.arange(len(SIZES)), SIZES)
    x = np.vstack(segs)
    perm = rng.permutation(len(x))
    x, truth = x[perm], truth[perm]
    exams = []
    for _ in range(n_exams):
        Rp, tp = _motion(rng, 0, 5, 0, 5)
        moves = [_motion(rng, 2, 5, 1, 2) for _ in SIZES]
        for s in same_motion:
            moves[s] = moves[same_motion[0]]
        y = np.empty_like(x)
        for s, (R, t) in enumerate(moves):
            body = np.isin(truth, same_motion) if s in same_motion else truth == s
            c = x[body].mean(axis=0)   # rotation about the centroid of the moving body
            y[truth == s] = (x[truth == s] - c) @ R.T + c + t
        exams.append(y @ Rp.T + tp)
    return x, truth, np.array(exams), rng


def _min_relative_motion(x, truth, exams):
    """Smallest over beads and other segments of the largest (over exams) distance between a
    bead and where the other segment's exact pose puts it."""
    from rsa.rigid import fit_rigid

    worst = np.inf
    for s in np.unique(truth):
        for o in np.setdiff1d(np.unique(truth), s):
            pose = fit_rigid(x[truth == o], exams[:, truth == o])
            d = np.linalg.norm(pose.apply(x[truth == s][None]) - exams[:, truth == s], axis=-1)
            worst = min(worst, d.max(axis=0).min())
    return worst


def _observe(rng, exams, drop=()):
    """Noisy, shuffled exam points; returns the point arrays and where each bead went (-1 =
    dropped). `drop` holds (exam, bead) pairs."""
    points, where = [], np.full(exams.shape[:2], -1)
    for e, y in enumerate(exams):
        keep = np.array([b for b in range(len(y)) if (e, b) not in drop])
        p = y[keep] + rng.normal(scale=NOISE_MM, size=(len(keep), 3))
        perm = rng.permutation(len(p))
        points.append(p[perm])
        where[e, keep[perm]] = np.arange(len(p))
    return points, where


def _partition(labels):
    return {frozenset(np.flatnonzero(labels == g).tolist()) for g in np.unique(labels) if g >= 0}


@pytest.mark.parametrize("seed", range(5))
def test_recovers_segments_with_missing_loose_and_false_points(seed):
    x, truth, exams, rng = _series(seed)
    assert _min_relative_motion(x, truth, exams) > 2 * TOL_MM   # the segments are separable
    loose = int(np.flatnonzero(truth == 0)[0])
    exams[1, loose] += [0.0, 1.0, 0.0]            # a loose bead: 1 mm off its segment once
    missing = int(np.flatnonzero(truth == 2)[1])
    points, where = _observe(rng, exams, drop={(2, missing)})
    points[0] = np.vstack([points[0], exams[0].mean(axis=0) + [0.0, 20.0, 30.0]])  # spurious
    ref = x + rng.normal(scale=NOISE_MM, size=x.shape)
    ref = np.vstack([ref, [5.0, 25.0, 5.0], [np.nan] * 3])   # a false point, a left-out row

    res = group_rigid(ref, points)

    expected = np.append(truth, [-1, -1])
    expected[loose] = -1
    assert _partition(res.group) == _partition(expected)
    assert res.group[loose] == -1
    assert res.displaced[1, loose]
    assert res.displaced.sum() == 1
    assert res.group[-2:].tolist() == [-1, -1]
    assert not res.ambiguous.any()
    # numbering: segment 1 (6 beads) first, then the two 5-bead groups by lowest bead index
    sizes = np.bincount(res.group[res.group >= 0])
    assert sizes.tolist() == [6, 5, 5]
    first = [np.flatnonzero(res.group == g).min() for g in (1, 2)]
    assert first[0] < first[1]
    assert np.all(res.group[:-2][truth == 1] == 0)
    # correspondence: every grouped bead found at its own point, the dropped one nowhere
    grouped = np.flatnonzero(res.group >= 0)
    np.testing.assert_array_equal(res.index[:, grouped], where[:, grouped])
    assert res.index[2, missing] == -1
    assert res.index.shape == (3, len(ref))


def test_segments_that_never_move_apart_form_one_group():
    """Documented limitation: segments 0 and 1 move as one body in every exam."""
    x, truth, exams, rng = _series(7, same_motion=(0, 1))
    points, _ = _observe(rng, exams)
    res = group_rigid(x + rng.normal(scale=NOISE_MM, size=x.shape), points)
    assert _partition(res.group) == _partition(np.where(truth == 2, 1, 0))
    assert res.n_groups == 2
    assert res.members(0).size == SIZES[0] + SIZES[1]


def _assert_only_ambiguous(res, truth, bead):
    """``bead`` alone is ambiguous and ungrouped; every other bead in its true group."""
    assert res.ambiguous.tolist() == [b == bead for b in range(len(truth))]
    expected = truth.copy()
    expected[bead] = -1
    assert _partition(res.group) == _partition(expected)


def test_bead_unseen_where_segments_separate_is_ambiguous():
    """Only exam 0 moves the segments apart; a bead missing there fits either group."""
    x, truth, moved, rng = _series(3, n_exams=1)
    still = (x @ Rotation.from_euler("z", 3, degrees=True).as_matrix().T + [1.0, 2.0, 0.0])
    bead = int(np.flatnonzero(truth == 2)[0])
    points, _ = _observe(rng, np.stack([moved[0], still]), drop={(0, bead)})
    _assert_only_ambiguous(group_rigid(x, points), truth, bead)


def test_bead_on_every_relative_rotation_axis_is_ambiguous():
    """Segment 1 turns relative to segment 0 by 4° about one of its beads in every exam (axes
    differ): that bead keeps its place relative to both segments and belongs to neither for
    sure; the other beads of segment 1 move apart from segment 0 in some exam."""
    x, truth, exams, rng = _series(4)
    pivot = int(np.flatnonzero(truth == 1)[0])
    seg0, seg1 = truth == 0, truth == 1
    shift = []
    for y in exams:
        # segment 0's exact pose in this exam, composed with a 4° turn about the pivot
        c0 = x[seg0].mean(axis=0)
        R0 = Rotation.align_vectors(y[seg0] - y[seg0].mean(axis=0), x[seg0] - c0)[0]
        axis = rng.normal(size=3)
        turn = Rotation.from_rotvec(axis / np.linalg.norm(axis) * np.radians(4.0))
        local = turn.apply(x[seg1] - x[pivot]) + x[pivot]
        y[seg1] = R0.apply(local - c0) + y[seg0].mean(axis=0)
        shift.append(np.linalg.norm(local - x[seg1], axis=1))
    others = np.flatnonzero(seg1) != pivot
    assert np.all(np.max(shift, axis=0)[others] > 2 * TOL_MM)
    points, _ = _observe(rng, exams)
    _assert_only_ambiguous(group_rigid(x, points), truth, pivot)


def test_too_few_beads_gives_no_group():
    x, _, exams, _ = _series(1)
    res = group_rigid(x[:2], list(exams[:, :2]))
    assert res.group.tolist() == [-1, -1]
    assert res.n_groups == 0


@pytest.mark.parametrize(("ref", "exams", "kwargs", "match"), [
    (np.zeros((5, 2)), [np.zeros((5, 3))], {},
     r"Expected `reference_xyz` to have shape \(K, 3\), got \(5, 2\)\."),
    (np.zeros((2, 5, 3)), [np.zeros((5, 3))], {},
     r"Expected `reference_xyz` to have shape \(K, 3\), got \(2, 5, 3\)\."),
    (np.zeros((5, 3)), [np.zeros((5, 3)), np.zeros((4, 2))], {},
     r"Expected `exams\[1\]` to have shape \(P, 3\), got \(4, 2\)\."),
    (np.zeros((5, 3)), np.zeros((5, 3)), {},
     r"Expected `exams` to be a sequence of \(P, 3\) point arrays, got one array of shape "
     r"\(5, 3\)\."),
    (np.zeros((5, 3)), [], {}, r"Expected `exams` to hold at least one"),
    (np.zeros((5, 3)), [np.zeros((5, 3))], {"tol_mm": 0.0}, r"Expected 0 < `tol_mm` ≤ `gate_mm`"),
    (np.zeros((5, 3)), [np.zeros((5, 3))], {"tol_mm": 2.0, "gate_mm": 1.0},
     r"got tol_mm=2\.0, gate_mm=1\.0"),
])
def test_bad_input(ref, exams, kwargs, match):
    with pytest.raises(ShapeError, match=match):
        group_rigid(ref, exams, **kwargs)


def test_result_is_read_only():
    x, _, exams, _ = _series(2)
    res = group_rigid(x, list(exams))
    with pytest.raises(ValueError, match="read-only"):
        res.group[0] = 5
