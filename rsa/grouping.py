"""Segments found automatically: beads grouped by rigid-motion consistency (DESIGN §4, (3)).

The beads of one segment keep their mutual distances in every exam; beads of different
segments do not, once the segments have moved relative to each other. :func:`group_rigid`
partitions a reference exam's beads into such rigid groups using the other exams of the series:

1. *Per exam* — the largest rigidly consistent subset of the (not yet grouped) reference beads
   is found among the exam's (not yet claimed) points with the RANSAC labeller
   :func:`rsa.match.label_beads` (DESIGN §3.4); matched beads and points are removed from both
   sides and the search repeats until fewer than ``min_beads`` match.
2. *Across exams* — two beads belong to the same final group only if no exam put them apart:
   both matched there and no group's pose of that exam fits both (a bead near the axis of a
   relative rotation may fit two groups; it separates nothing). A bead not matched in an exam
   is a wildcard for that exam. A bead that fits more than one final group (it was not seen in
   the exams that tell those groups apart, or moved too little in them) is left ungrouped, and
   so is a bead never matched in any exam.
3. *Check* — each final group is fitted in every exam (:func:`rsa.rigid.fit_rigid`); a member
   not matched there is recovered if a free point lies within the tolerance of where the fit
   puts it, and is *displaced* — it moved relative to its group, e.g. a loose bead — and
   leaves the group if the nearest free point lies beyond the tolerance but within a gate.

Groups of fewer than ``min_beads`` beads are dissolved: their beads (loose beads, false points)
get group −1. Groups are numbered 0, 1, … by decreasing size, ties by their lowest bead index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import comb

import numpy as np
from numpy.typing import ArrayLike

from rsa._validate import as_points, readonly
from rsa.errors import EstimationError, ShapeError
from rsa.match import assign_by_proximity, label_beads
from rsa.rigid import fit_rigid

__all__ = ["GroupResult", "group_rigid"]

#: Default rigidity tolerance (mm): well above the 3D bead error (≈ 0.01 mm on the phantom,
#: occluded beads up to ≈ 0.07 mm) and below half the labelling default (``label_tol_mm`` 0.3),
#: so that beads near the axis of a small relative rotation are told apart (see group_rigid).
TOL_MM = 0.15
#: Default gate (mm) for displaced beads: the study default of ``label_gate_mm``.
GATE_MM = 1.5
#: Most reference-bead triangles that seed the labeller's hypotheses per search. The labeller
#: keeps its best-shaped triangles, which span several segments when the model holds several;
#: seeding with every triangle of up to 24 beads (2024) lets a segment's own triangles seed it.
MAX_TRIANGLES = 2024


@dataclass(frozen=True, eq=False)
class GroupResult:
    """Rigid groups of K reference beads found from E exams (see :func:`group_rigid`).

    Attributes
    ----------
    group : (K,) int ndarray
        Final group of each reference bead (0 = the largest), −1 for none: a bead that moved
        relative to its group (`displaced`) or fits more than one group (`ambiguous`), a bead
        of a group of fewer than ``min_beads``, a false point or a bead never matched.
    index : (E, K) int ndarray
        Index of each reference bead's point in each exam, −1 where not found: neither in a
        rigid group of that exam nor within ``tol_mm`` of where its final group's fit puts it.
    exam_group : (E, K) int ndarray
        The per-exam partition: rigid group of each bead in each exam (0 = found first, the
        largest), −1 where in none.
    displaced : (E, K) bool ndarray
        A member of a final group not matched in that exam, whose nearest free point to where
        the group's fit puts it lies beyond ``tol_mm`` but within ``gate_mm``: it moved
        relative to its group (e.g. a loose bead) and left the group.
    separated : (K, K) bool ndarray
        Some exam put the two beads apart (symmetric; False on the diagonal).
    ambiguous : (K,) bool ndarray
        Left ungrouped because it fits more than one group.
    """

    group: np.ndarray
    index: np.ndarray
    exam_group: np.ndarray
    displaced: np.ndarray
    separated: np.ndarray
    ambiguous: np.ndarray

    def __post_init__(self) -> None:
        for name in ("group", "index", "exam_group", "displaced", "separated", "ambiguous"):
            object.__setattr__(self, name, readonly(getattr(self, name)))

    @property
    def n_groups(self) -> int:
        return int(self.group.max(initial=-1)) + 1

    def members(self, g: int) -> np.ndarray:
        """Indices of the reference beads in group `g`."""
        return np.flatnonzero(self.group == g)


def group_rigid(reference_xyz: ArrayLike, exams: Sequence[ArrayLike], *,
                tol_mm: float = TOL_MM, gate_mm: float = GATE_MM,
                min_beads: int = 3) -> GroupResult:
    """Group reference beads that move rigidly together across a series of exams.

    Parameters
    ----------
    reference_xyz : (K, 3) array_like
        Bead positions of the reference exam (mm, cage frame). NaN rows (e.g. points the
        caller does not want grouped) take no part and get group −1.
    exams : sequence of (P_e, 3) array_like
        The 3D points of the other exams of the series (mm, each in its own cage frame), in
        any order, with any missing beads and spurious points. The reference exam itself
        separates nothing and need not be given.
    tol_mm : float
        Rigidity tolerance: the labeller's tolerance on inter-bead distances and its gate on a
        bead's distance from its predicted position (:func:`rsa.match.label_beads` with
        ``gate_mm=tol_mm``), and the distance within which a pose fits a bead. It must cover
        the error of a bead's position relative to its segment's fitted pose (a few times the
        3D bead error: ≈ 0.01 mm on the bundled phantom, up to ≈ 0.07 mm for beads next to
        metal) and stay below the relative motions that are to separate segments (see Notes).
        Default 0.15 mm.
    gate_mm : float
        A bead of a group that is not matched in an exam is *displaced* (and leaves its group)
        when the nearest unclaimed point to where the group's pose puts it lies beyond
        ``tol_mm`` but within ``gate_mm``; with no point within ``gate_mm`` it counts as not
        seen. Default 1.5 mm, the study default of ``label_gate_mm``.
    min_beads : int
        Fewest beads of a group (≥ 3), per exam and in the end.

    Returns
    -------
    GroupResult

    Raises
    ------
    ShapeError
        `reference_xyz` not (K, 3), an exam not (P, 3), no exams, or tolerances not
        0 < `tol_mm` ≤ `gate_mm`.

    Notes
    -----
    Algorithm (module docstring): per exam, repeated largest rigidly consistent subsets
    (:func:`rsa.match.label_beads`) partition the beads; two beads are *apart* in an exam when
    both were matched there and no group's pose of that exam fits both within ``tol_mm``
    (a bead near the axis of a relative rotation fits two groups and separates nothing). Two
    beads share a final group only if no exam put them apart; a bead not matched in an exam is
    a wildcard for it. Each final group is then checked in every exam against its own
    least-squares pose: members that were not matched there are recovered within ``tol_mm``,
    or found *displaced* (see `gate_mm`) and ungrouped.

    Limitations, inherent in grouping by motion:

    - Segments that never moved relative to each other by more than about ``tol_mm`` in any
      exam cannot be told apart and come out as one group: a well-fixed implant and its bone,
      or vertebrae of a fused level. Exams with large relative motion (e.g. flexion and
      extension of the spine: millimetres and degrees) separate segments; a double exam
      never does.
    - A bead that moves by less than about ``tol_mm`` relative to another segment in every
      exam (near the axis of every relative rotation, e.g. beads next to the disc of a spine
      level) fits both. It is left `ambiguous` when both segments form groups, but joins the
      other segment's group when its own segment has fewer than ``min_beads`` beads to form
      one. A larger ``tol_mm`` makes more such beads; a smaller one loses more beads to
      measurement error (put apart from their segment in some exam).
    - A loose bead is ungrouped only if some exam finds it between ``tol_mm`` and ``gate_mm``
      from where its group puts it; beyond ``gate_mm`` it counts as not seen. A spurious point
      within ``gate_mm`` of where a group puts a member not seen in that exam ungroups that
      member too.
    - Symmetric bead patterns can be labelled ambiguously by :func:`rsa.match.label_beads`;
      grouping does not resolve that.
    - The labeller seeds hypotheses with at most ``MAX_TRIANGLES`` (2024, every triangle of
      24 beads) of the best-shaped reference triangles; with many more beads, the triangles
      seeding a small segment may be left out in an exam's first searches.
    """
    ref = as_points(reference_xyz, "reference_xyz", min_ndim=2, spec="(K, 3)")
    if ref.ndim != 2:
        raise ShapeError(f"Expected `reference_xyz` to have shape (K, 3), got {ref.shape}.")
    if isinstance(exams, np.ndarray) and exams.ndim == 2:
        raise ShapeError("Expected `exams` to be a sequence of (P, 3) point arrays, got one "
                         f"array of shape {exams.shape}.")
    points = []
    for e, x in enumerate(exams):
        p = as_points(x, f"exams[{e}]", min_ndim=2, spec="(P, 3)")
        if p.ndim != 2:
            raise ShapeError(f"Expected `exams[{e}]` to have shape (P, 3), got {p.shape}.")
        points.append(p)
    if not points:
        raise ShapeError("Expected `exams` to hold at least one (P, 3) point array, got none.")
    if not 0 < tol_mm <= gate_mm:
        raise ShapeError(f"Expected 0 < `tol_mm` ≤ `gate_mm`, got tol_mm={tol_mm}, "
                         f"gate_mm={gate_mm}.")
    min_beads = max(int(min_beads), 3)
    parts = [_partition(ref, p, tol_mm, min_beads) for p in points]
    exam_group = np.stack([g for g, _, _ in parts])
    index = np.stack([i for _, i, _ in parts])
    matched = exam_group >= 0
    sep = _separated(matched, [f for *_, f in parts])
    member, ambiguous = _combine(sep, matched, min_beads)
    displaced = _verify(ref, points, member, index, tol_mm, gate_mm)
    member &= ~np.any(displaced, axis=0)
    return GroupResult(group=_number(member, min_beads), index=index, exam_group=exam_group,
                       displaced=displaced, separated=sep, ambiguous=ambiguous)


def _partition(ref: np.ndarray, obs: np.ndarray, tol: float, min_beads: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One exam: rigid groups of the reference beads by repeated largest consistent subsets.

    Returns ``group`` (K,) and ``index`` (K,) (see :class:`GroupResult`) and ``fits`` (K, G):
    the bead's point lies within ``tol`` of where group g's pose puts the bead (always for its
    own group; also for others near the axis of a relative rotation).
    """
    k = ref.shape[0]
    group = np.full(k, -1, dtype=np.intp)
    index = np.full(k, -1, dtype=np.intp)
    free_ref = np.all(np.isfinite(ref), axis=1)
    free_obs = np.all(np.isfinite(obs), axis=1)
    rotations, translations = [], []
    while free_ref.sum() >= min_beads and free_obs.sum() >= min_beads:
        mi, oi = np.flatnonzero(free_ref), np.flatnonzero(free_obs)
        try:
            lab = label_beads(ref[mi], obs[oi], tol_mm=tol, gate_mm=tol, min_beads=min_beads,
                              max_model_triangles=min(comb(mi.size, 3), MAX_TRIANGLES))
        except EstimationError:
            break
        hit = lab.observed_of_model >= 0
        group[mi[hit]] = len(rotations)
        index[mi[hit]] = oi[lab.observed_of_model[hit]]
        free_ref[mi[hit]] = False
        free_obs[index[mi[hit]]] = False
        rotations.append(lab.pose.rotation)
        translations.append(lab.pose.translation)
    matched = np.flatnonzero(group >= 0)
    fits = np.zeros((k, len(rotations)), dtype=bool)
    if matched.size:
        # where each group's pose puts each matched bead: (G, M, 3)
        moved = np.einsum("gij,mj->gmi", np.stack(rotations), ref[matched]) \
            + np.stack(translations)[:, None, :]
        fits[matched] = (np.linalg.norm(moved - obs[index[matched]], axis=-1) <= tol).T
        fits[matched, group[matched]] = True
    return group, index, fits


def _separated(matched: np.ndarray, fits: list[np.ndarray]) -> np.ndarray:
    """(K, K) bool: in some exam both beads were matched and no group fits both."""
    k = matched.shape[1]
    sep = np.zeros((k, k), dtype=bool)
    for m, f in zip(matched, fits, strict=True):
        share = f.astype(np.intp) @ f.T.astype(np.intp) > 0
        sep |= m[:, None] & m[None, :] & ~share
    return sep


def _combine(sep: np.ndarray, matched: np.ndarray, min_beads: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Final groups as a (groups, K) membership mask, and the (K,) ambiguous beads.

    Beads matched in some exam join, most-matched first (ties: lowest index), the first group
    (in order of creation) none of whose members is apart from them, or start a new one. A
    bead that could also join another group is ambiguous and leaves its group.
    """
    k = sep.shape[0]
    n_matched = matched.sum(axis=0)
    member = np.zeros((0, k), dtype=bool)
    order = np.lexsort((np.arange(k), -n_matched))
    for b in order[n_matched[order] > 0]:
        fits = np.flatnonzero(~np.any(member & sep[b], axis=1))
        if fits.size:
            member[fits[0], b] = True
        else:
            member = np.vstack([member, np.arange(k) == b])
    # (groups, K): bead could join the group, other than its own (sep[b, b] is False)
    could = ~np.any(member[None, :, :] & sep[:, None, :], axis=2).T & ~member
    ambiguous = (n_matched > 0) & np.any(could, axis=0)
    member[:, ambiguous] = False
    return member, ambiguous


def _verify(ref: np.ndarray, points: list[np.ndarray], member: np.ndarray, index: np.ndarray,
            tol: float, gate: float) -> np.ndarray:
    """Check every group in every exam against its own pose; returns displaced (E, K).

    Per exam, the group's pose is the least-squares fit (:func:`rsa.rigid.fit_rigid`) of its
    members matched there; a member not matched is recovered (``index`` updated in place)
    when an unclaimed point lies within ``tol`` of where the pose puts it, and is displaced
    when the nearest lies between ``tol`` and ``gate``.
    """
    displaced = np.zeros(index.shape, dtype=bool)
    for e, obs in enumerate(points):
        free = np.all(np.isfinite(obs), axis=1)
        free[index[e][index[e] >= 0]] = False
        for m in member[member.any(axis=1)]:
            beads = np.flatnonzero(m)
            got = beads[index[e, beads] >= 0]
            lost = beads[index[e, beads] < 0]
            if got.size < 3 or lost.size == 0 or not free.any():
                continue
            try:
                pose = fit_rigid(ref[got], obs[index[e, got]])
            except EstimationError:   # collinear matched members: nothing to check against
                continue
            cand = np.flatnonzero(free)
            near = assign_by_proximity(pose.apply(ref[lost]), obs[cand], tol_mm=gate)
            found = near >= 0
            dist = np.linalg.norm(pose.apply(ref[lost[found]]) - obs[cand[near[found]]], axis=-1)
            keep = lost[found][dist <= tol]
            index[e, keep] = cand[near[found][dist <= tol]]
            free[index[e, keep]] = False
            displaced[e, lost[found][dist > tol]] = True
    return displaced


def _number(member: np.ndarray, min_beads: int) -> np.ndarray:
    """(K,) group of each bead: groups of ≥ ``min_beads`` numbered by decreasing size, ties by
    lowest bead index; −1 for the rest."""
    k = member.shape[1]
    sizes = member.sum(axis=1)
    first = np.where(sizes > 0, np.argmax(member, axis=1), k)
    keep = np.flatnonzero(sizes >= min_beads)
    keep = keep[np.lexsort((first[keep], -sizes[keep]))]
    group = np.full(k, -1, dtype=np.intp)
    for new, old in enumerate(keep):
        group[member[old]] = new
    return group
