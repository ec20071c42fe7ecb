"""Labelling 3D beads against a reference marker model (DESIGN §3.4).

The beads of one segment form a rigid configuration: their mutual distances do not change between
exams. A follow-up exam's beads are labelled by finding the rigid motion that carries the most
reference beads onto observed beads:

1. *Hypotheses* — well-shaped triangles of the model are matched to observed triangles with the
   same side lengths (within ``tol_mm``), found with a k-d tree on the sorted side lengths
   (geometric hashing on triples).
2. *Verification* — every hypothesis (all six vertex orders) gives a rigid pose by one batched
   Söderkvist–Wedin fit; the pose maps the whole model onto the observed beads, and the number of
   model beads landing within ``gate_mm`` of an observed bead is its support (RANSAC-style).
3. *Refinement* — the best pose is refitted on its inliers and the final one-to-one assignment is
   the optimal (Hungarian) assignment of transformed model beads to observed beads under the gate.

A second hypothesis with equal support but a different labelling (symmetric bead patterns) marks
the result ``ambiguous``; the caller must then use a manual label file.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations, permutations

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from rsa._validate import as_points, readonly
from rsa.errors import EstimationError
from rsa.rigid import RigidFit, fit_rigid

_PERMS = np.array(list(permutations(range(3))))  # (6, 3)


@dataclass(frozen=True, eq=False)
class Labelling:
    """Correspondence between a marker model (M beads) and observed beads (N beads).

    Attributes
    ----------
    observed_of_model : (M,) int ndarray
        Index of the observed bead matched to each model bead, -1 where the bead was not found.
    model_of_observed : (N,) int ndarray
        Inverse map, -1 for observed beads not in this model.
    distance_mm : (M,) ndarray
        Distance between the fitted model bead and its observed bead (NaN where unmatched).
    pose : RigidFit
        Model → observed rigid fit on the matched beads.
    n_matched : int
    ambiguous : bool
        Another labelling had the same support (symmetric configuration).
    """

    observed_of_model: np.ndarray
    model_of_observed: np.ndarray
    distance_mm: np.ndarray
    pose: RigidFit
    n_matched: int
    ambiguous: bool

    def __post_init__(self) -> None:
        for name in ("observed_of_model", "model_of_observed", "distance_mm"):
            object.__setattr__(self, name, readonly(getattr(self, name)))


def assign_by_proximity(model_xyz: ArrayLike, observed_xyz: ArrayLike, *,
                        tol_mm: float) -> np.ndarray:
    """Optimal one-to-one assignment of model beads to observed beads within ``tol_mm``.

    For segment definitions given as approximate coordinates in the exam's own frame (DESIGN §4,
    method 2). Returns ``observed_of_model`` (M,) with -1 where no observed bead lies within
    ``tol_mm``. NaN model or observed beads are never assigned.
    """
    model = as_points(model_xyz, "model_xyz", min_ndim=2, spec="(M, 3)")
    obs = as_points(observed_xyz, "observed_xyz", min_ndim=2, spec="(N, 3)")
    out = np.full(model.shape[0], -1, dtype=np.intp)
    if model.shape[0] == 0 or obs.shape[0] == 0:
        return out
    dist = np.linalg.norm(model[:, None, :] - obs[None, :, :], axis=-1)
    dist = np.where(np.isfinite(dist), dist, np.inf)
    big = 1e6
    rows, cols = linear_sum_assignment(np.where(dist <= tol_mm, dist, big))
    ok = dist[rows, cols] <= tol_mm
    out[rows[ok]] = cols[ok]
    return out


def label_beads(model_xyz: ArrayLike, observed_xyz: ArrayLike, *, tol_mm: float = 0.3,
                gate_mm: float | None = None, min_beads: int = 3,
                max_model_triangles: int = 24) -> Labelling:
    """Label observed 3D beads with the ids of a rigid marker model.

    Parameters
    ----------
    model_xyz : (M, 3) array_like
        Reference bead positions of one segment (mm); NaN rows are ignored.
    observed_xyz : (N, 3) array_like
        Beads of the exam to label (all segments mixed, in any order; NaN rows ignored).
    tol_mm : float
        Tolerance on inter-bead distances for hypotheses (triangle side lengths). It must cover
        the measurement noise of a distance (≈ 2–3 × √2 × the 3D bead error) plus any bead
        instability; 0.3 mm suits clinical RSA.
    gate_mm : float, optional
        Distance within which a transformed model bead counts as found; default ``tol_mm``.
    min_beads : int
        Fewest matched beads accepted (≥ 3).
    max_model_triangles : int
        How many of the model's best-shaped triangles seed hypotheses.

    Returns
    -------
    Labelling

    Raises
    ------
    EstimationError
        Fewer than ``min_beads`` model beads could be matched consistently.
    """
    model = as_points(model_xyz, "model_xyz", min_ndim=2, spec="(M, 3)")
    obs = as_points(observed_xyz, "observed_xyz", min_ndim=2, spec="(N, 3)")
    if model.ndim != 2 or obs.ndim != 2:
        raise EstimationError("label_beads takes one model (M, 3) and one bead set (N, 3).")
    gate = tol_mm if gate_mm is None else gate_mm
    min_beads = max(int(min_beads), 3)
    m_ok = np.flatnonzero(np.all(np.isfinite(model), axis=1))
    o_ok = np.flatnonzero(np.all(np.isfinite(obs), axis=1))
    if m_ok.size < min_beads or o_ok.size < min_beads:
        raise EstimationError(f"Labelling needs ≥ {min_beads} beads: model has {m_ok.size}, "
                              f"exam has {o_ok.size}.")

    m_tri = _model_triangles(model[m_ok], tol_mm, max_model_triangles)
    if m_tri.size == 0:
        raise EstimationError("The marker model has no well-shaped triangle (beads collinear or "
                              "closer than the tolerance).")
    o_tri = _observed_triangles(obs[o_ok], model[m_ok], tol_mm)
    if o_tri.size == 0:
        raise EstimationError("No observed bead triple matches the model's distances within "
                              f"{tol_mm} mm.")

    # Candidate triangle pairs by sorted side lengths (geometric hashing).
    m_sides = _sorted_sides(model[m_ok], m_tri)
    o_sides = _sorted_sides(obs[o_ok], o_tri)
    tree = cKDTree(o_sides)
    hits = tree.query_ball_point(m_sides, r=np.sqrt(3.0) * tol_mm, p=np.inf)
    lengths = np.fromiter((len(h) for h in hits), dtype=np.intp, count=len(hits))
    if lengths.sum() == 0:
        raise EstimationError(f"No observed bead triple matches the model within {tol_mm} mm.")
    mi = np.repeat(np.arange(len(hits)), lengths)
    oi = np.concatenate([np.asarray(h, dtype=np.intp) for h in hits if h])

    # All six vertex orders of each observed triangle: (H, 3) index triples.
    src = np.repeat(m_tri[mi], 6, axis=0)
    dst = o_tri[oi][:, _PERMS].reshape(-1, 3)
    x = model[m_ok][src]
    y = obs[o_ok][dst]
    # Keep only orders whose individual side lengths agree (cheap pre-verification).
    sx = np.linalg.norm(x - np.roll(x, 1, axis=1), axis=-1)
    sy = np.linalg.norm(y - np.roll(y, 1, axis=1), axis=-1)
    keep = np.all(np.abs(sx - sy) <= tol_mm, axis=1)
    if not keep.any():
        raise EstimationError(f"No observed bead triple matches the model within {tol_mm} mm.")
    fits = fit_rigid(x[keep], y[keep])

    # Verify: transform the whole model with every pose and count beads found within the gate.
    moved = fits.apply(model[m_ok][None, :, :])  # (H, M', 3)
    obs_tree = cKDTree(obs[o_ok])
    d, _ = obs_tree.query(moved.reshape(-1, 3), distance_upper_bound=gate)
    d = d.reshape(moved.shape[:2])
    found = np.isfinite(d)
    support = found.sum(axis=1)
    cost = np.where(found, d, gate).sum(axis=1)
    order = np.lexsort((cost, -support))
    best = order[0]
    if support[best] < min_beads:
        raise EstimationError(f"Only {support[best]} model beads could be matched consistently "
                              f"(need ≥ {min_beads}).")

    obs_of_model, pose = _refine(model[m_ok], obs[o_ok], fits.rotation[best],
                                 fits.translation[best], gate)
    n = int(np.sum(obs_of_model >= 0))
    if n < min_beads:
        raise EstimationError(f"Only {n} model beads matched after refinement "
                              f"(need ≥ {min_beads}).")
    ambiguous = _is_ambiguous(model[m_ok], obs[o_ok], fits, order, support, obs_of_model, gate)

    full = np.full(model.shape[0], -1, dtype=np.intp)
    hit = obs_of_model >= 0
    full[m_ok[hit]] = o_ok[obs_of_model[hit]]
    inverse = np.full(obs.shape[0], -1, dtype=np.intp)
    inverse[full[full >= 0]] = np.flatnonzero(full >= 0)
    dist = np.full(model.shape[0], np.nan)
    dist[full >= 0] = np.linalg.norm(pose.apply(model[full >= 0]) - obs[full[full >= 0]], axis=-1)
    return Labelling(observed_of_model=full, model_of_observed=inverse, distance_mm=dist,
                     pose=pose, n_matched=n, ambiguous=bool(ambiguous))


def _refine(model: np.ndarray, obs: np.ndarray, R: np.ndarray, t: np.ndarray,
            gate: float) -> tuple[np.ndarray, RigidFit]:
    """Two rounds of (Hungarian assignment under the gate → refit on the matched beads)."""
    pose = None
    for _ in range(2):
        moved = model @ R.T + t
        obs_of_model = assign_by_proximity(moved, obs, tol_mm=gate)
        hit = obs_of_model >= 0
        if hit.sum() < 3:
            break
        pose = fit_rigid(model[hit], obs[obs_of_model[hit]])
        R, t = pose.rotation, pose.translation
    if pose is None:
        pose = fit_rigid(model[:3], model[:3])  # identity placeholder; caller raises on count
        obs_of_model = np.full(model.shape[0], -1, dtype=np.intp)
    return obs_of_model, pose


def _is_ambiguous(model, obs, fits, order, support, obs_of_model, gate) -> bool:
    """True when a hypothesis with the best support gives a different labelling."""
    top = order[support[order] == support[order[0]]]
    if top.size < 2:
        return False
    moved = fits.apply(model[None, :, :])[top]  # (T, M, 3)
    d = np.linalg.norm(moved[:, :, None, :] - obs[None, None, :, :], axis=-1)
    nearest = np.where(d.min(axis=2) <= gate, d.argmin(axis=2), -1)  # (T, M)
    return bool(np.any(np.any(nearest != obs_of_model[None, :], axis=1)
                       & (np.sum(nearest >= 0, axis=1) >= np.sum(obs_of_model >= 0))))


def _triangles(n: int) -> np.ndarray:
    """All index triples i < j < k of n beads, (C(n, 3), 3)."""
    return np.array(list(combinations(range(n), 3)), dtype=np.intp).reshape(-1, 3)


def _sorted_sides(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    p = points[tri]
    sides = np.linalg.norm(p - np.roll(p, 1, axis=1), axis=-1)
    return np.sort(sides, axis=1)


def _triangle_quality(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Smallest triangle height (mm): small heights make the pose from a triple unstable."""
    p = points[tri]
    sides = np.linalg.norm(p - np.roll(p, 1, axis=1), axis=-1)
    area2 = np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=-1)
    return area2 / np.maximum(sides.max(axis=1), 1e-12)


def _model_triangles(model: np.ndarray, tol: float, limit: int) -> np.ndarray:
    tri = _triangles(model.shape[0])
    if tri.size == 0:
        return tri
    quality = _triangle_quality(model, tri)
    sides = _sorted_sides(model, tri)
    # Distinct side lengths make the vertex order unambiguous; heights make the pose stable.
    ok = (quality > 4 * tol) & (sides[:, 0] > 4 * tol)
    tri, quality = tri[ok], quality[ok]
    return tri[np.argsort(-quality)[:limit]]


def _observed_triangles(obs: np.ndarray, model: np.ndarray, tol: float) -> np.ndarray:
    """Observed triples whose three sides are all plausible model distances."""
    dm = np.linalg.norm(model[:, None] - model[None], axis=-1)
    dmax = dm.max() + tol
    do = np.linalg.norm(obs[:, None] - obs[None], axis=-1)
    near = (do <= dmax) & (do > 0)
    i, j = np.nonzero(np.triu(near, 1))
    # Extend each admissible pair (i < j) by every k > j admissible to both.
    k_ok = near[i] & near[j]
    k_ok &= np.arange(obs.shape[0])[None, :] > j[:, None]
    pi, kk = np.nonzero(k_ok)
    return np.column_stack([i[pi], j[pi], kk]).astype(np.intp)
