"""Bead listing of a reference exam, for defining segments by bead ids (``rsa beads``).

DESIGN §4, segment definition (1): the user runs the pipeline's measurement on the reference
exam, gets its 3D beads with ids (``P01``, ``P02``, … in the order of the cage-frame y, then x
coordinate), looks at the overlay figure, and lists the ids of each segment in the manifest
(``definition = "beads"``, ``bead_file``, ``beads = [...]``). Only the exams are needed in the
manifest at this point: it is read with ``segments_required=False``.

The listing keeps every triangulated point and says which are only candidates
(:attr:`rsa.pipeline.ExamMeasurement.weak`: a crossing-line error beyond the rays'
uncertainty, or a detection misfitting a bead — e.g. an implant tip): the user decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsa.errors import InputError
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
    m = measure_exam(ex, subj.id, study, view_threads=2)
    p = m.points_mm
    order = np.lexsort((p[:, 0], p[:, 1])) if len(p) else np.zeros(0, int)
    width = max(2, len(str(len(p))))
    ids = tuple(f"P{k + 1:0{width}d}" for k in range(len(p)))
    return BeadListing(subj.id, ex, ids, m, order)


def write_listing(listing: BeadListing, csv_path: str | Path,
                  figure_path: str | Path | None = None) -> list[Path]:
    """Write the bead file (atomically) and optionally the overlay figure (PNG)."""
    m, o = listing.measurement, listing.order
    out = [write_bead_file(csv_path, listing.ids, listing.xyz_mm, {
        "quality": np.where(listing.candidate, "candidate", "bead"),
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
    png = overlay_figure(panels, {"bead": "#2ecc71", "candidate": "#e67e22"},
                         title=f"{listing.subject} {listing.exam.id}: 3D beads by id "
                               "(candidate = CLE beyond its uncertainty or misfit detection)")
    with atomic_write(path, "wb") as fh:
        fh.write(png)
    return path


def _subject(study: StudySpec, subject: str | None) -> SubjectSpec:
    if subject is None:
        return study.subjects[0]
    for s in study.subjects:
        if s.id == subject:
            return s
    raise InputError(f"{study.path}: no subject {subject!r} (subjects: "
                     f"{', '.join(s.id for s in study.subjects)})")
