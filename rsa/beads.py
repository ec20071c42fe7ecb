"""Bead listing of a reference exam, for defining segments by bead ids (``rsa beads``).

DESIGN §4, segment definition (1): the user runs the pipeline's measurement on the reference
exam, gets its 3D beads with ids (``P01``, ``P02``, … in the order of the cage-frame y, then x
coordinate), looks at the overlay figure, and lists the ids of each segment in the manifest
(``definition = "beads"``, ``bead_file``, ``beads = [...]``). Only the exams are needed in the
manifest at this point: it is read with ``segments_required=False``.

The listing keeps every triangulated point and says which are only candidates
(:attr:`rsa.pipeline.ExamMeasurement.weak`: a crossing-line error beyond the rays'
uncertainty, or a detection misfitting a bead — e.g. an implant tip): the user decides.

DESIGN §4, segment definition (3), ``auto``: :func:`group_listing` measures the subject's other
exams and groups the listed beads by rigid-motion consistency (:func:`rsa.grouping.group_rigid`);
the bead file then has a ``group`` column (``G1``, ``G2``, … by decreasing size) and a manifest
segment may name a group (``group = "G1"``) instead of listing ids. Candidate points neither
seed nor join groups.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from itertools import repeat
from pathlib import Path

import numpy as np

from rsa.errors import InputError
from rsa.grouping import TOL_MM, GroupResult, group_rigid
from rsa.io.beadfile import write_bead_file
from rsa.io.manifest import ExamSpec, StudySpec, SubjectSpec
from rsa.pipeline import ExamMeasurement, measure_exam


@dataclass(frozen=True, eq=False)
class BeadListing:
    """The 3D points of one exam with ids, in listing order."""

    subject: str
    exam: ExamSpec
    ids: tuple[str, ...]
    measurement: ExamMeasurement
    order: np.ndarray   # (P,) index into the measurement's points of each listed id
    group: np.ndarray | None = None   # (P,) rigid group (0 = G1), -1 none; None: not grouped

    @property
    def group_names(self) -> tuple[str, ...] | None:
        """(P,) ``G1``, ``G2``, … or ``""`` (in no group); None when not grouped."""
        if self.group is None:
            return None
        return tuple(f"G{g + 1}" if g >= 0 else "" for g in self.group)

    @property
    def xyz_mm(self) -> np.ndarray:
        return self.measurement.points_mm[self.order]

    @property
    def candidate(self) -> np.ndarray:
        """(P,) listed point is only a candidate (see module docstring)."""
        return self.measurement.weak[self.order]


def list_beads(study: StudySpec, subject: str | None = None, exam: str | None = None
               ) -> BeadListing:
    """Measure one exam (default: the reference exam of the first or named subject) and give
    its 3D points ids ``P01``… ordered by cage-frame y, then x."""
    subj = _subject(study, subject)
    ex = subj.reference if exam is None else next((e for e in subj.exams if e.id == exam), None)
    if ex is None:
        raise InputError(f"{study.path}: subject {subj.id} has no exam {exam!r} (exams: "
                         f"{', '.join(e.id for e in subj.exams)})")
    with ProcessPoolExecutor(max_workers=2) as pool:   # its two views in two processes
        m = measure_exam(ex, subj.id, study, view_pool=pool)
    p = m.points_mm
    order = np.lexsort((p[:, 0], p[:, 1])) if len(p) else np.zeros(0, int)
    width = max(2, len(str(len(p))))
    ids = tuple(f"P{k + 1:0{width}d}" for k in range(len(p)))
    return BeadListing(subj.id, ex, ids, m, order)


def group_listing(study: StudySpec, listing: BeadListing, *, tol_mm: float | None = None
                  ) -> tuple[BeadListing, GroupResult]:
    """Group the listed beads by rigid-motion consistency across the subject's series.

    Measures every other exam of the subject (:func:`rsa.pipeline.measure_exam`) and runs
    :func:`rsa.grouping.group_rigid` on the listed points. Candidate points of the listing
    (:attr:`BeadListing.candidate`) neither seed nor join groups; every point of the other
    exams is offered (the labeller finds beads among spurious points).

    Parameters
    ----------
    study : StudySpec
    listing : BeadListing
        From :func:`list_beads`.
    tol_mm : float, optional
        Rigidity tolerance (mm), default :data:`rsa.grouping.TOL_MM` (0.15 mm). The gate for
        displaced beads is the study's ``label_gate_mm``, the fewest beads of a group its
        ``min_beads``.

    Returns
    -------
    listing : BeadListing
        The listing with :attr:`BeadListing.group` set.
    result : GroupResult
        For the listed points in listing order, exams in the subject's order without the
        listed exam.

    Raises
    ------
    InputError
        The subject has no other exam.
    """
    subj = _subject(study, listing.subject)
    others = [e for e in subj.exams if e.id != listing.exam.id]
    if not others:
        raise InputError(f"{study.path}: subject {subj.id} has no exam besides "
                         f"{listing.exam.id}; grouping beads by their motion needs a series.")
    with ProcessPoolExecutor(max_workers=2) as pool:   # two exams at a time
        points = [m.points_mm for m in pool.map(measure_exam, others, repeat(subj.id),
                                                repeat(study))]
    th = study.thresholds
    tol = TOL_MM if tol_mm is None else float(tol_mm)
    reference = np.where(listing.candidate[:, None], np.nan, listing.xyz_mm)
    result = group_rigid(reference, points, tol_mm=tol, gate_mm=max(th["label_gate_mm"], tol),
                         min_beads=int(th["min_beads"]))
    return replace(listing, group=result.group), result


def write_listing(listing: BeadListing, csv_path: str | Path,
                  figure_path: str | Path | None = None) -> list[Path]:
    """Write the bead file (atomically) and optionally the overlay figure (PNG).

    A grouped listing (:func:`group_listing`) adds the ``group`` column after ``quality``.
    """
    m, o = listing.measurement, listing.order
    groups = {} if listing.group_names is None else {"group": listing.group_names}
    out = [write_bead_file(csv_path, listing.ids, listing.xyz_mm, {
        "quality": np.where(listing.candidate, "candidate", "bead"), **groups,
        "cle_mm": m.cle_mm[o], "sigma_mm": (m.sigma_mm if m.sigma_mm is not None
                                           else np.full(len(m.cle_mm), np.nan))[o],
        "likely": m.likely[o], "misfit": m.misfit[o],
        "u_a": m.uv_a[o, 0], "v_a": m.uv_a[o, 1], "u_b": m.uv_b[o, 0], "v_b": m.uv_b[o, 1]})]
    if figure_path is not None:
        out.append(_figure(listing, Path(figure_path)))
    return out


def _figure(listing: BeadListing, path: Path) -> Path:
    """Both views with the cage markers and every listed point labelled with its id."""
    from rsa.io.atomic import atomic_write
    from rsa.pipeline import _load_views
    from rsa.report.plots import overlay_figure

    m, o = listing.measurement, listing.order
    quality = np.where(listing.candidate, "candidate", "bead")
    colors = {"bead": "#2ecc71", "candidate": "#e67e22"}
    if listing.group_names is not None:   # colour by group
        quality = np.where(listing.group >= 0, listing.group_names,
                           np.where(listing.candidate, "candidate", "ungrouped"))
        colors.update({f"G{g + 1}": _PALETTE[g % len(_PALETTE)]
                       for g in range(listing.group.max(initial=-1) + 1)}, ungrouped="#bdc3c7")
    images = _load_views(listing.exam)
    panels = []
    for k, (summary, uv) in enumerate(zip(m.views, (m.uv_a[o], m.uv_b[o]), strict=True)):
        name = summary["view"]
        mk = [(x["u"], x["v"], x["du_px"], x["dv_px"]) for x in summary.get("markers", [])]
        panels.append({"view": name, "image": images[name].image if name in images
                       else list(images.values())[k].image,
                       "markers": np.array(mk, float).reshape(-1, 4),
                       "beads": [(u, v, i, q) for (u, v), i, q in zip(uv, listing.ids, quality,
                                                                     strict=True)]})
    grouped = "" if listing.group is None else ", G1, G2, … = rigid groups"
    png = overlay_figure(panels, colors,
                         title=f"{listing.subject} {listing.exam.id}: 3D beads by id "
                               "(candidate = CLE beyond its uncertainty or misfit detection"
                               f"{grouped})")
    with atomic_write(path, "wb") as fh:
        fh.write(png)
    return path


_PALETTE = ("#2ecc71", "#3498db", "#e74c3c", "#9b59b6", "#f1c40f", "#1abc9c")


def _subject(study: StudySpec, subject: str | None) -> SubjectSpec:
    if subject is None:
        return study.subjects[0]
    for s in study.subjects:
        if s.id == subject:
            return s
    raise InputError(f"{study.path}: no subject {subject!r} (subjects: "
                     f"{', '.join(s.id for s in study.subjects)})")
