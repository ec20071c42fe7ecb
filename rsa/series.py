"""From 3D beads of a subject's exams to segment poses, relative motions and precision.

Orchestrates the numeric core for one subject's series (DESIGN §3.4–3.7); no numerics of its
own beyond book-keeping:

1. reference exam: beads assigned to segments by the approximate coordinates of the manifest
   (:func:`rsa.match.assign_by_proximity`) or a manual label file;
2. every exam: beads labelled against each segment's reference marker model
   (:func:`rsa.match.label_beads`), one observed bead per model bead;
3. per segment, batched over exams: unstable-bead screening (:func:`rsa.rigid.screen_unstable`),
   rigid fit (:func:`rsa.rigid.fit_rigid`; weighted by each bead's σ, or by its full 3D
   covariance when ``cov_mm2`` is given), ME and CN (:func:`rsa.rigid.condition_number`);
   beads the reference exam missed (hidden or overlapping in one view) are then placed in the
   marker model from the exams that see them (:func:`_complete_models`) and steps 2–3 repeat;
4. per motion, batched over exams: :func:`rsa.motion.relative_motion` (T_B⁻¹ T_S);
5. double exams: the motion between an exam and its double is pure error →
   :func:`rsa.motion.precision` (signed components) and :func:`rsa.motion.precision_upper`
   (MTPM and total translation, one-sided).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from rsa.errors import EstimationError
from rsa.io.beadfile import read_bead_file
from rsa.io.manifest import ExamSpec, MotionSpec, SegmentSpec, SubjectSpec
from rsa.match import assign_by_proximity, label_beads
from rsa.motion import Motion, precision, precision_upper, relative_motion
from rsa.rigid import Pose, condition_number, fit_rigid, pose_point_sigma, screen_unstable

COMPONENTS = ("tx", "ty", "tz", "rx", "ry", "rz")


@dataclass(frozen=True, eq=False)
class SegmentSeries:
    """One segment over a subject's exams (E exams, M beads), exams in series order."""

    name: str
    bead_ids: tuple[str, ...]
    reference_xyz_mm: np.ndarray          # (M, 3), NaN = bead not found in the reference exam
    definition_xyz_mm: np.ndarray         # (M, 3) approximate coordinates from the manifest
    observed_index: np.ndarray            # (E, M) index into each exam's 3D points, -1 missing
    xyz_mm: np.ndarray                    # (E, M, 3) labelled beads, NaN missing
    excluded: np.ndarray                  # (E, M) bool: unstable beads left out of the fit
    exclusion_reasons: tuple[tuple[str, ...], ...]
    pose: Pose | None                     # batched (E,), reference exam → exam; identity
                                          # placeholder where `valid` is False
    me_mm: np.ndarray                     # (E,)
    cn: np.ndarray                        # (E,) CN of the beads used in each fit
    n_used: np.ndarray                    # (E,)
    ambiguous: np.ndarray                 # (E,) bool labelling ambiguous
    fit_error: tuple[str, ...] = ()       # per exam: '' or why no pose could be fitted
    model_xyz_mm: np.ndarray | None = None    # (M, 3) marker model fitted: reference points,
                                              # or placed from other exams (`completed`)

    @property
    def completed(self) -> np.ndarray:
        """(M,) bool: beads placed in the marker model from other exams because the reference
        exam missed them or saw them only as an unlikely ray pair (:func:`_complete_models`)."""
        if self.model_xyz_mm is None:
            return np.zeros(len(self.bead_ids), dtype=bool)
        same = np.all(self.model_xyz_mm == self.reference_xyz_mm, axis=1)
        return np.isfinite(self.model_xyz_mm[:, 0]) & ~same

    @property
    def model_points_mm(self) -> np.ndarray:
        """(M, 3) every bead of the segment definition in the reference exam: measured where
        found, the manifest's approximate coordinates elsewhere. Its centroid is the default
        motion point and its beads the MTPM points, so both stay the same whichever beads an
        exam happens to see (the truth of the phantom uses the same definition)."""
        return np.where(np.isfinite(self.reference_xyz_mm), self.reference_xyz_mm,
                        self.definition_xyz_mm)

    @property
    def valid(self) -> np.ndarray:
        """(E,) bool: a pose was fitted in this exam."""
        return np.array([not e for e in self.fit_error], dtype=bool)


@dataclass(frozen=True, eq=False)
class SubjectSeries:
    """Everything measured for one subject."""

    subject: str
    exams: tuple[ExamSpec, ...]
    segments: dict[str, SegmentSeries]
    motions: dict[str, Motion]            # batched over exams
    double_pairs: tuple[tuple[int, int], ...]   # (partner index, double index)
    flags: dict[str, list[str]] = field(default_factory=dict)   # exam id → quality flags
    notes: dict[str, list[str]] = field(default_factory=dict)   # exam id → information only


def _override(segment: SegmentSpec, labels: Mapping[str, np.ndarray], points: np.ndarray
              ) -> np.ndarray | None:
    """observed_of_model from a manual label file, or None when it names no bead of `segment`."""
    approx = np.array([labels.get(b, [np.nan] * 3) for b in segment.bead_ids], dtype=float)
    if not np.isfinite(approx).any():
        return None
    return assign_by_proximity(approx, points, tol_mm=segment.tolerance_mm)


def _drop_unlikely(seg: SegmentSpec, idx: np.ndarray, dist: np.ndarray, likely: np.ndarray,
                   tol_mm: float, notes: list[str]) -> None:
    """Unlabel (in place) beads whose point is an unlikely ray pair beyond ``tol_mm``."""
    got = np.flatnonzero(idx >= 0)
    drop = got[~np.asarray(likely, bool)[idx[got]] & (dist[got] > tol_mm)]
    for m in drop:
        notes.append(f"{seg.name}: {seg.bead_ids[m]} not labelled: the nearest point "
                     f"({dist[m]:.2f} mm from its expected position) pairs two rays whose "
                     "crossing-line error is beyond their uncertainty")
    idx[drop] = -1
    dist[drop] = np.inf


def _resolve_conflicts(claims: dict[str, np.ndarray], dists: dict[str, np.ndarray]) -> None:
    """An observed bead claimed by two segments stays with the one that fits it better."""
    owner: dict[int, tuple[str, int, float]] = {}
    for name, idx in claims.items():
        for m, o in enumerate(idx):
            if o < 0:
                continue
            d = dists[name][m]
            prev = owner.get(int(o))
            if prev is None or d < prev[2]:
                if prev is not None:
                    claims[prev[0]][prev[1]] = -1
                owner[int(o)] = (name, m, d)
            else:
                idx[m] = -1


def analyse_subject(subject: SubjectSpec, points: Sequence[np.ndarray],
                    motions: Sequence[MotionSpec], thresholds: Mapping[str, float], *,
                    sigma_mm: Sequence[np.ndarray] | None = None,
                    likely: Sequence[np.ndarray] | None = None,
                    cov_mm2: Sequence[np.ndarray] | None = None) -> SubjectSeries:
    """Label, fit and compute motions for one subject.

    Parameters
    ----------
    subject : SubjectSpec
    points : sequence of (P_e, 3) arrays
        Triangulated patient beads of each exam of ``subject.exams`` (same order).
    motions : sequence of MotionSpec
    thresholds : mapping
        ``label_tol_mm``, ``label_gate_mm``, ``unstable_limit_mm``, ``min_beads``,
        ``me_limit_mm``, ``cn_limit``.
    sigma_mm : sequence of (P_e,) arrays, optional
        3D uncertainty of every point (fit weights).
    likely : sequence of (P_e,) bool arrays, optional
        Whether each point's crossing-line error is within its rays' uncertainty
        (:attr:`rsa.triangulate.RayMatch.likely`). A point that is not (e.g. a bead's ray
        paired with a spurious detection) is labelled only within ``label_tol_mm`` of its
        model position, not up to ``label_gate_mm``: its position says little about the bead.
    cov_mm2 : sequence of (P_e, 3, 3) arrays, optional
        3D error covariance of every point (mm²). The segment fits then weight each bead's
        residual by the inverse of its full covariance (the model bead's, rotated, plus the
        exam's: :func:`rsa.rigid.fit_rigid` ``covariance``) instead of ``1/σ²``: a bead seen
        well in one view and poorly in the other is uncertain mainly along one direction and
        still fixes the other two. ``sigma_mm`` keeps weighting the labelling, the screening
        of displaced beads and the placing of model beads. A point whose covariance is not
        finite is weighted by ``sigma_mm`` (or 1 mm) isotropically.
    """
    exams = subject.exams
    ref_i = next(i for i, e in enumerate(exams) if e.kind == "reference")
    labels = [read_bead_file(e.labels) if e.labels else {} for e in exams]
    notes: dict[str, list[str]] = {e.id: [] for e in exams}

    # 1. Reference exam: segment beads from the manifest's approximate coordinates.
    ref_pts = points[ref_i]
    claims, dists = {}, {}
    for seg in subject.segments:
        idx = _override(seg, labels[ref_i], ref_pts)
        if idx is None:
            idx = assign_by_proximity(seg.xyz_mm, ref_pts, tol_mm=seg.tolerance_mm)
        claims[seg.name] = idx
        safe = np.where(idx >= 0, idx, 0)
        dists[seg.name] = np.where(idx >= 0, np.linalg.norm(ref_pts[safe] - seg.xyz_mm, axis=1),
                                   np.inf)
    _resolve_conflicts(claims, dists)
    ref_models = {}
    for seg in subject.segments:
        idx = claims[seg.name]
        model = np.where((idx >= 0)[:, None], ref_pts[np.where(idx >= 0, idx, 0)], np.nan)
        missing = [b for b, i in zip(seg.bead_ids, idx, strict=True) if i < 0]
        if missing:
            notes[exams[ref_i].id].append(
                f"{seg.name}: {len(missing)} bead(s) not found near their manifest coordinates "
                f"in the reference exam ({', '.join(missing)})")
        ref_models[seg.name] = model

    # 2.–3. Label every exam against the reference models; fit each segment, batched over
    # exams. Then beads the reference exam missed, or saw only as an unlikely ray pair, are
    # placed in the models from the exams that see them (when any do), and 2.–3. run once more.
    # (the first pass leaves the unlikely reference points out of the models: they would bias
    # the poses from which their beads are placed)
    weak = {}
    for seg in subject.segments:
        idx = claims[seg.name]
        weak[seg.name] = np.zeros(len(idx), bool) if likely is None else \
            (idx >= 0) & ~np.asarray(likely[ref_i], bool)[np.maximum(idx, 0)]
    first = {k: np.where(weak[k][:, None], np.nan, m) for k, m in ref_models.items()}
    no_sigma = {seg.name: np.full(len(seg.bead_ids), np.nan) for seg in subject.segments}
    segments, flags, notes2 = _label_and_fit(subject, points, thresholds, sigma_mm, likely,
                                             labels, ref_i, claims, first, no_sigma, cov_mm2)
    models, model_sigma, placed = _complete_models(subject, segments, points, sigma_mm, likely,
                                                   thresholds, ref_i, weak)
    if placed or any(w.any() for w in weak.values()):
        segments, flags, notes2 = _label_and_fit(subject, points, thresholds, sigma_mm, likely,
                                                 labels, ref_i, claims, models, model_sigma,
                                                 cov_mm2)
        notes[exams[ref_i].id].extend(placed)
    for k, v in notes2.items():
        notes[k].extend(v)

    # 4. Motions, batched over exams.
    motion_out = {}
    for m in motions:
        S, B = segments[m.segment], segments[m.relative_to]
        if S.pose is None or B.pose is None:
            continue
        pts = m.points_mm if m.points_mm is not None else S.model_points_mm
        point = S.model_points_mm.mean(axis=0) if isinstance(m.point, str) else m.point
        motion = relative_motion(B.pose, S.pose, point=point, order=m.order, points=pts)
        motion_out[m.name] = _mask_motion(motion, S.valid & B.valid)
    index = {e.id: i for i, e in enumerate(exams)}
    pairs = tuple((index[e.double_of], i) for i, e in enumerate(exams) if e.kind == "double")
    return SubjectSeries(subject.id, exams, segments, motion_out, pairs, flags, notes)


def _label_and_fit(subject: SubjectSpec, points, thresholds, sigma_mm, likely, labels, ref_i,
                   ref_claims: dict[str, np.ndarray], models: dict[str, np.ndarray],
                   model_sigma: dict[str, np.ndarray], cov_mm2=None):
    """Steps 2–3 of :func:`analyse_subject` for given marker models: every exam but the
    reference (whose beads are ``ref_claims``) labelled against them, then each segment
    fitted (batched over exams). Returns the segments and the exams' flags and notes."""
    exams = subject.exams
    flags: dict[str, list[str]] = {e.id: [] for e in exams}
    notes: dict[str, list[str]] = {e.id: [] for e in exams}
    min_beads = int(thresholds["min_beads"])
    E = len(exams)
    observed = {s.name: np.full((E, len(s.bead_ids)), -1, dtype=np.intp) for s in subject.segments}
    ambiguous = {s.name: np.zeros(E, dtype=bool) for s in subject.segments}
    for e in range(E):
        claims, dists = {}, {}
        for seg in subject.segments:
            model = models[seg.name]
            if e == ref_i:
                claims[seg.name] = ref_claims[seg.name].copy()
                dists[seg.name] = np.zeros(len(model))
                continue
            idx = _override(seg, labels[e], points[e])
            if idx is not None:
                claims[seg.name], dists[seg.name] = idx, np.zeros(len(idx))
                continue
            try:
                # Hypotheses need consistent distances (tol); the final assignment accepts
                # beads up to the larger gate so that a loosened bead is labelled and then
                # judged by the unstable-bead screening instead of silently going missing.
                lab = label_beads(model, points[e], tol_mm=thresholds["label_tol_mm"],
                                  gate_mm=thresholds["label_gate_mm"], min_beads=min_beads)
            except EstimationError as exc:
                flags[exams[e].id].append(f"{seg.name}: beads could not be labelled ({exc})")
                claims[seg.name] = np.full(len(model), -1, dtype=np.intp)
                dists[seg.name] = np.full(len(model), np.inf)
                continue
            ambiguous[seg.name][e] = lab.ambiguous
            if lab.ambiguous:
                flags[exams[e].id].append(f"{seg.name}: labelling ambiguous (symmetric bead "
                                          "pattern); give a manual label file")
            claims[seg.name] = lab.observed_of_model.copy()
            dists[seg.name] = np.nan_to_num(lab.distance_mm, nan=np.inf)
            if likely is not None:
                _drop_unlikely(seg, claims[seg.name], dists[seg.name], likely[e],
                               thresholds["label_tol_mm"], notes[exams[e].id])
        _resolve_conflicts(claims, dists)
        for name, idx in claims.items():
            observed[name][e] = idx
    segments = {seg.name: _fit_segment(seg, models[seg.name], observed[seg.name], points,
                                       ambiguous[seg.name], thresholds, exams, flags,
                                       sigma_mm, ref_i, model_sigma[seg.name], cov_mm2)
                for seg in subject.segments}
    return segments, flags, notes


def _complete_models(subject: SubjectSpec, segments: dict[str, SegmentSeries], points,
                     sigma_mm, likely, thresholds, ref_i, weak: dict[str, np.ndarray]
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    """Place beads the reference exam missed, or saw only as an unlikely ray pair, into their
    segment's marker model from the exams that see them.

    A bead hidden or overlapping in one view of the reference exam is otherwise lost for the
    whole series, and the segment is fitted on fewer beads in every exam; a reference point
    that pairs two rays beyond their uncertainty (e.g. one ray of a bead overlapping another in
    one view) puts a wrong bead position into the model of every exam. Such a bead's position
    in the reference frame is found from the other exams: in each, the bead's own labelled
    point if it is a likely pair, otherwise the one unclaimed likely point within the
    segment's tolerance of where the fitted pose (``y = R x + t``) puts the manifest's
    approximate coordinates, is mapped back (``x = Rᵀ(y − t)``). The bead is placed when at
    least ``thresholds["model_min_exams"]`` exams agree within ``label_tol_mm`` (a spurious
    point does not follow the segment from exam to exam), at their weighted mean (weights
    1/σ², σ of each: its point's and that of the exam's fitted pose at the bead,
    :func:`rsa.rigid.pose_point_sigma`); its uncertainty is that of the mean or their scatter,
    whichever is larger, and the fit weights use it in place of the reference exam's σ.
    Otherwise an unlikely reference point stays in the model (with its own large σ). The
    ``segments`` are fitted without the unlikely reference points (``weak``). The motion point
    and MTPM points stay those of the reference exam and manifest
    (:attr:`SegmentSeries.model_points_mm`), so reported motion keeps its definition.

    Returns the models, their σ (NaN for beads taken from the reference exam) and notes.
    """
    need = max(1, round(thresholds.get("model_min_exams", 2)))
    tol_same = thresholds["label_tol_mm"]
    E = len(subject.exams)
    good = [np.ones(len(p), bool) if likely is None else np.asarray(lk, bool)
            for p, lk in zip(points, likely if likely is not None else points, strict=True)]
    claimed = [np.zeros(len(p), dtype=bool) for p in points]
    for S in segments.values():
        for e in range(E):
            idx = S.observed_index[e]
            claimed[e][idx[idx >= 0]] = True
    models, model_sigma, placed = {}, {}, []
    for seg in subject.segments:
        S = segments[seg.name]
        model = S.reference_xyz_mm.copy()
        msig = np.full(len(model), np.nan)
        models[seg.name], model_sigma[seg.name] = model, msig
        bad = weak[seg.name]
        approx = np.where(np.isfinite(seg.xyz_mm), seg.xyz_mm, model)
        todo = np.flatnonzero((~np.isfinite(model[:, 0]) | bad) & np.isfinite(approx[:, 0]))
        if todo.size == 0 or S.pose is None:
            continue
        xs = np.full((E, todo.size, 3), np.nan)
        ss = np.full((E, todo.size), np.nan)
        for e in np.flatnonzero(S.valid & ~S.ambiguous):
            if e == ref_i:
                continue
            R, t = S.pose.rotation[e], S.pose.translation[e]
            own = S.observed_index[e, todo]
            j = np.where((own >= 0) & ~S.excluded[e, todo], own, -1)
            j = np.where(j >= 0, np.where(good[e][np.maximum(j, 0)], j, -1), -1)
            free = np.flatnonzero(~claimed[e] & good[e])
            if free.size:
                pred = approx[todo] @ R.T + t
                d = np.linalg.norm(pred[:, None] - points[e][None, free], axis=-1)   # (m, F)
                near = d <= seg.tolerance_mm
                one = near.sum(axis=1) == 1          # exactly one candidate: unambiguous
                k_free = free[np.argmin(np.where(near, d, np.inf), axis=1)]
                take = (j < 0) & one
                # a point wanted by two beads goes to the one it is nearer to
                dmin = d.min(axis=1)
                for q in np.flatnonzero(take):
                    rival = take & (k_free == k_free[q]) & (dmin < dmin[q])
                    take[q] = not rival.any()
                j = np.where(take, k_free, j)
            got = j >= 0
            if not got.any():
                continue
            pose_sig = pose_point_sigma(*_fit_variances(S, e, ref_i, sigma_mm), approx[todo])
            xs[e, got] = (points[e][j[got]] - t) @ R                     # Rᵀ(y − t)
            s_pt = 0.0 if sigma_mm is None else sigma_mm[e][j[got]]
            ss[e, got] = np.hypot(s_pt, pose_sig[got])
        for k, m in enumerate(todo):
            ok = np.isfinite(xs[:, k, 0])
            if ok.sum() < need:
                continue
            med = np.median(xs[ok, k], axis=0)
            ok &= np.linalg.norm(np.nan_to_num(xs[:, k] - med), axis=1) <= tol_same
            n = int(ok.sum())
            if n < need:
                continue
            w = 1.0 / np.maximum(ss[ok, k], 1e-4) ** 2
            model[m] = (w[:, None] * xs[ok, k]).sum(axis=0) / w.sum()
            scatter = np.sqrt(np.sum((xs[ok, k] - model[m]) ** 2) / max(3 * (n - 1), 1) / n)
            msig[m] = max(float(np.sqrt(1.0 / w.sum())), scatter)
            why = ("seen in the reference exam only as an unlikely ray pair" if bad[m]
                   else "not found in the reference exam")
            placed.append(f"{seg.name}: {seg.bead_ids[m]} {why}; placed in the marker model "
                          f"from {n} other exam(s) (± {1000 * msig[m]:.0f} µm)")
    return models, model_sigma, placed

def _fit_variances(S: SegmentSeries, e: int, ref_i: int, sigma_mm
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Model beads (U, 3) used in segment ``S``'s fit in exam ``e`` and their error variances
    (the model's plus the exam's σ², as the fit weights them; the fit's ME for every bead when
    no σ is given)."""
    obs = S.observed_index[e]
    used = (obs >= 0) & ~S.excluded[e] & np.isfinite(S.reference_xyz_mm[:, 0])
    if sigma_mm is None:
        return S.reference_xyz_mm[used], np.full(int(used.sum()), max(float(S.me_mm[e]), 1e-3) ** 2)
    var = sigma_mm[e][obs[used]] ** 2 + sigma_mm[ref_i][S.observed_index[ref_i][used]] ** 2
    return S.reference_xyz_mm[used], var

def _fit_segment(seg: SegmentSpec, model: np.ndarray, observed: np.ndarray, points, ambiguous,
                 thresholds, exams, flags, sigma_mm=None, ref_i=0, model_sigma=None,
                 cov_mm2=None) -> SegmentSeries:
    """Screen and fit one segment in every exam against its marker model ``model`` (M, 3);
    ``model_sigma`` (M,) is the σ of model beads placed from other exams (NaN: measured in the
    reference exam, whose σ and covariance are then the reference exam's own)."""
    E, M = observed.shape
    placed = np.zeros(M, bool) if model_sigma is None else np.isfinite(model_sigma)
    ok_ref = observed[ref_i] >= 0
    reference = np.full((M, 3), np.nan)     # the reference exam's own points
    reference[ok_ref] = points[ref_i][observed[ref_i, ok_ref]]
    xyz = np.full((E, M, 3), np.nan)
    sig = np.zeros((E, M))
    for e in range(E):
        ok = observed[e] >= 0
        xyz[e, ok] = points[e][observed[e, ok]]
        if sigma_mm is not None:
            sig[e, ok] = sigma_mm[e][observed[e, ok]]
    # Bead weights 1 / (σ_model² + σ_exam²): both ends of a bead's displacement are measured
    # (σ_model: the reference exam's σ, or that of a model bead placed from other exams).
    sig_model = np.where(placed, np.nan_to_num(model_sigma), sig[ref_i])
    bead_w = 1.0 / np.maximum(sig_model[None, :] ** 2 + sig ** 2, 1e-12) \
        if sigma_mm is not None else np.ones((E, M))
    xyz[:, ~np.isfinite(model[:, 0])] = np.nan
    lost = ok_ref[None, :] & ~np.isfinite(xyz[..., 0])
    # a reference point replaced in the model (an unlikely ray pair) takes no part in the
    # reference exam's own fit
    xyz[ref_i, placed & ok_ref] = np.nan
    n_valid = np.isfinite(xyz[..., 0]).sum(axis=1)
    min_beads = int(thresholds["min_beads"])
    for e in range(E):
        if lost[e].any():
            gone = [b for b, x in zip(seg.bead_ids, lost[e], strict=True) if x]
            flags[exams[e].id].append(f"{seg.name}: bead(s) lost since reference: "
                                      f"{', '.join(gone)}")
    fittable = n_valid >= 3
    errors = ["" if ok else f"{n} beads found, need ≥ 3" for ok, n in zip(fittable, n_valid,
                                                                          strict=True)]
    excluded = np.zeros((E, M), dtype=bool)
    reasons: list[tuple[str, ...]] = [() for _ in range(E)]
    me = np.full(E, np.nan)
    cn = np.full(E, np.inf)
    n_used = np.zeros(E, dtype=int)
    pose = None
    # Beads labelled beyond the distance tolerance (within the wider label gate) moved relative
    # to their segment: excluded before screening, with the distance as the reason.
    displaced, dist = _displaced(model, xyz, thresholds["label_tol_mm"],
                                 bead_w if sigma_mm is not None else None)
    for e, j in zip(*np.nonzero(displaced), strict=True):
        reasons[e] = (*reasons[e], f"{seg.bead_ids[j]}: {dist[e, j]:.2f} mm from the position "
                      f"given by the segment's other beads (> tolerance "
                      f"{thresholds['label_tol_mm']:.2f} mm)")
    still = (np.isfinite(xyz[..., 0]) & ~displaced).sum(axis=1) >= 3
    for e in np.flatnonzero(fittable & ~still):
        errors[e] = "fewer than 3 beads left after excluding displaced beads"
    fittable &= still
    if fittable.any():
        x = np.broadcast_to(model, (int(fittable.sum()), M, 3))
        y = np.where(displaced[fittable][..., None], np.nan, xyz[fittable])
        try:
            screen = screen_unstable(x, y, limit_mm=thresholds["unstable_limit_mm"],
                                     min_beads=max(min_beads, 3))
            excl = screen.exclude
            change = screen.per_bead_change_mm
            limit = thresholds["unstable_limit_mm"]
            for k, j in zip(*np.nonzero(excl), strict=True):
                e = int(np.flatnonzero(fittable)[k])
                reasons[e] = (*reasons[e], f"{seg.bead_ids[j]}: mean inter-bead distance change "
                              f"{change[k, j]:.2f} mm > limit {limit:.2f} mm")
        except EstimationError as exc:
            excl = np.zeros(y.shape[:2], dtype=bool)
            for e in np.flatnonzero(fittable):
                errors[e] = str(exc)
            fittable[:] = False
        if fittable.any():
            excl = excl | displaced[fittable]
            excluded[fittable] = excl
            w = np.where(excl, 0.0, bead_w[fittable])
            w = np.where(np.isfinite(w), w, 0.0)
            cov = None
            if cov_mm2 is not None:
                cov_model, cov_exam = _bead_covariances(observed, cov_mm2, sig, sig_model, placed,
                                                        ref_i)
                cov = (cov_model, cov_exam[fittable])
                w = (w > 0).astype(float)
            try:
                fit = fit_rigid(x, y, weights=w, covariance=cov)
            except EstimationError as exc:
                errors = [str(exc) if f else m for f, m in zip(fittable, errors, strict=True)]
                fit = None
            if fit is not None:
                R = np.tile(np.eye(3), (E, 1, 1))  # identity placeholders where not fitted
                t = np.zeros((E, 3))
                R[fittable], t[fittable] = fit.rotation, fit.translation
                me[fittable] = fit.mean_error_mm
                n_used[fittable] = fit.n_used
                used = np.isfinite(y[..., 0]) & ~excl
                cn[fittable] = condition_number(np.where(used[..., None], x, np.nan))
                pose = Pose(R, t)
    limit_me, limit_cn = thresholds["me_limit_mm"], thresholds["cn_limit"]
    for e in range(E):
        if errors[e]:
            flags[exams[e].id].append(f"{seg.name}: no fit ({errors[e]})")
            continue
        if me[e] > limit_me:
            flags[exams[e].id].append(f"{seg.name}: ME {me[e]:.3f} mm > limit {limit_me} mm")
        if cn[e] > limit_cn:
            flags[exams[e].id].append(f"{seg.name}: CN {cn[e]:.0f} > limit {limit_cn:.0f}")
        if n_used[e] < min_beads:
            flags[exams[e].id].append(f"{seg.name}: {n_used[e]} beads used < {min_beads}")
        for r in reasons[e]:
            flags[exams[e].id].append(f"{seg.name}: unstable bead excluded: {r}")
    return SegmentSeries(seg.name, seg.bead_ids, reference, seg.xyz_mm, observed, xyz, excluded,
                         tuple(reasons), pose, me, cn, n_used, ambiguous, tuple(errors),
                         model_xyz_mm=model.copy())


def _bead_covariances(observed: np.ndarray, cov_mm2, sig: np.ndarray, sig_model: np.ndarray,
                      placed: np.ndarray, ref_i: int) -> tuple[np.ndarray, np.ndarray]:
    """The (M, 3, 3) covariances of a segment's model beads and the (E, M, 3, 3) ones of its
    observed beads (:func:`_fit_segment`): each point's own, σ² I where that is not finite
    (σ: ``sig``, 1 mm without one); a model bead placed from other exams has σ_model² I."""
    E, M = observed.shape
    eye = np.eye(3)
    cov = np.zeros((E, M, 3, 3))
    for e in range(E):
        ok = observed[e] >= 0
        c = np.asarray(cov_mm2[e], float)[observed[e, ok]]
        fallback = np.where(sig[e, ok] > 0, sig[e, ok], 1.0) ** 2
        good = np.all(np.isfinite(c), axis=(1, 2))
        cov[e, ok] = np.where(good[:, None, None], c, fallback[:, None, None] * eye)
    model = np.where(placed[:, None, None], np.nan_to_num(sig_model)[:, None, None] ** 2 * eye,
                     cov[ref_i])
    return model, cov


def _mask_motion(motion: Motion, valid: np.ndarray) -> Motion:
    """Set every reported quantity of exams without a valid pose to NaN (index −1)."""
    if valid.all():
        return motion

    def nan(a):
        a = np.array(a, dtype=float)
        a[~valid] = np.nan
        return a

    h = motion.helical
    helical = replace(h, angle_deg=nan(h.angle_deg), axis=nan(h.axis),
                      point_mm=nan(h.point_mm), slide_mm=nan(h.slide_mm))
    idx = None if motion.mtpm_index is None else np.where(valid, motion.mtpm_index, -1)
    return replace(motion, translation_mm=nan(motion.translation_mm),
                   total_translation_mm=nan(motion.total_translation_mm),
                   rotation_deg=nan(motion.rotation_deg), helical=helical,
                   mtpm_mm=None if motion.mtpm_mm is None else nan(motion.mtpm_mm),
                   mtpm_index=idx)


# χ²(3 dof) exceeded with probability 0.001: a bead's offset from its predicted place
_DISPLACED_CHI2 = 16.27


def _displaced(model: np.ndarray, xyz: np.ndarray, tol: float,
               bead_w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Beads farther than `tol` from where the segment's other beads place them.

    Leave-one-out, batched over exams and beads: each bead's position is predicted by the rigid
    fit of the remaining beads; the worst bead beyond `tol` is excluded and the test repeats
    (at most M − 4 rounds; needs ≥ 4 beads so that 3 remain for the prediction). With
    ``bead_w`` (E, M), the inverse per-axis error variances of the beads' displacements, the
    fits are weighted by them and a bead's offset counts only when it is also significant:
    beyond χ²₃ at p = 0.001 in units of its own variance plus that of the prediction
    (:func:`rsa.rigid.pose_point_sigma`). Otherwise one poorly measured bead (e.g. a bead
    fitted next to a screw head with σ 0.37 mm) tilts the unweighted prediction of a
    well-measured one beyond `tol` and gets it excluded. The worst bead is still the one with
    the largest offset, not the largest normalised one: a loose bead among the predicting beads
    shifts the others' predictions, and those can be tighter than its own. Returns the (E, M)
    exclusion mask and the leave-one-out distances (mm) at exclusion time.
    """
    E, M = xyz.shape[:2]
    keep = np.isfinite(xyz[..., 0]) & np.isfinite(model[None, :, 0])
    out = np.zeros((E, M), dtype=bool)
    dist_at = np.zeros((E, M))
    others = ~np.eye(M, dtype=bool)
    mod0 = np.where(np.isfinite(model), model, 0.0)
    weighted = bead_w is not None
    bw = np.where(np.isfinite(bead_w), bead_w, 0.0) if weighted else np.ones((E, M))
    for _ in range(max(M - 4, 0)):
        active = keep.sum(axis=1) >= 4
        if not active.any():
            break
        loo = keep[active][:, None, :] & others[None]                 # (E', M, M)
        w = np.where(loo, bw[active][:, None, :], 0.0)
        y = np.where(keep[active][..., None], xyz[active], 0.0)
        try:
            fit = fit_rigid(mod0[None, None], np.broadcast_to(y[:, None], (len(y), M, M, 3)),
                            weights=w)
        except EstimationError:  # a degenerate leave-one-out subset: no screening here
            break
        pred = np.einsum("emij,mj->emi", fit.rotation, mod0) + fit.translation
        d = np.where(keep[active], np.linalg.norm(pred - xyz[active], axis=-1), 0.0)
        hit = d > tol
        if weighted:
            var = np.where(loo, 1.0 / np.maximum(w, 1e-300), np.nan)
            x = np.where(loo[..., None], mod0, np.nan)
            s_pred = pose_point_sigma(x, var, mod0[:, None, :])[..., 0]      # (E', M)
            hit &= d ** 2 > _DISPLACED_CHI2 * (s_pred ** 2 + 1.0 / np.maximum(bw[active], 1e-300))
        worst = np.where(hit, d, -np.inf).argmax(axis=1)
        hit = hit[np.arange(len(worst)), worst]
        if not hit.any():
            break
        rows = np.flatnonzero(active)[hit]
        out[rows, worst[hit]] = True
        dist_at[rows, worst[hit]] = d[hit, worst[hit]]
        keep[rows, worst[hit]] = False
    return out, dist_at


def components(motion: Motion) -> np.ndarray:
    """(E, 6) signed components tx, ty, tz (mm), rx, ry, rz (deg) of a batched motion."""
    return np.concatenate([motion.translation_mm, motion.rotation_deg], axis=-1)


@dataclass(frozen=True, eq=False)
class PrecisionResult:
    """Precision of one motion from double exams, pooled over the study."""

    motion: str
    n: int
    differences: np.ndarray     # (n, 6) double − partner components
    lengths: np.ndarray         # (n, 2) total translation and MTPM of double relative to partner
    signed: object | None       # rsa.motion Precision over the 6 components (n ≥ 2)
    upper: object | None        # rsa.motion UpperPrecision over the 2 lengths (n ≥ 2)


def double_exam_differences(series: SubjectSeries, spec: MotionSpec
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Motion of each double exam relative to its partner: (n, 6) components, (n, 2) lengths."""
    motion = series.motions.get(spec.name)
    if motion is None or not series.double_pairs:
        return np.empty((0, 6)), np.empty((0, 2))
    p, d = (np.array(i) for i in zip(*series.double_pairs, strict=True))
    ok = np.isfinite(motion.translation_mm[p, 0]) & np.isfinite(motion.translation_mm[d, 0])
    p, d = p[ok], d[ok]
    if p.size == 0:
        return np.empty((0, 6)), np.empty((0, 2))
    rel = motion.pose
    Mp = Pose(rel.rotation[p], rel.translation[p])
    Md = Pose(rel.rotation[d], rel.translation[d])
    pts = spec.points_mm if spec.points_mm is not None else \
        series.segments[spec.segment].model_points_mm
    delta = relative_motion(Mp, Md, point=motion.point_mm[d], order=spec.order, points=pts)
    return components(delta), np.column_stack([delta.total_translation_mm, delta.mtpm_mm])


def study_precision(all_series: Sequence[SubjectSeries], spec: MotionSpec, *,
                    confidence: float = 0.95) -> PrecisionResult:
    """Pool double-exam differences of every subject for one motion (needs ≥ 2 for limits)."""
    parts = [double_exam_differences(s, spec) for s in all_series]
    diff = np.concatenate([p[0] for p in parts]) if parts else np.empty((0, 6))
    lengths = np.concatenate([p[1] for p in parts]) if parts else np.empty((0, 2))
    finite = np.all(np.isfinite(diff), axis=1)
    diff, lengths = diff[finite], lengths[finite]
    if len(diff) < 2:
        return PrecisionResult(spec.name, len(diff), diff, lengths, None, None)
    return PrecisionResult(spec.name, len(diff), diff, lengths,
                           precision(diff, confidence=confidence),
                           precision_upper(lengths, confidence=confidence))


def significance(motion: Motion, prec: PrecisionResult) -> np.ndarray | None:
    """(E, 8) bool: components outside [lower, upper]; total translation and MTPM above the
    one-sided upper limit. None when the study has < 2 double exams."""
    if prec.signed is None:
        return None
    comp = components(motion)
    outside = (comp < prec.signed.lower) | (comp > prec.signed.upper)
    lengths = np.column_stack([motion.total_translation_mm, motion.mtpm_mm])
    return np.concatenate([outside, lengths > prec.upper.upper_t], axis=1)
