"""From stored results to the report's figures (data preparation for :mod:`rsa.report.plots`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from rsa.errors import RsaError
from rsa.report import plots
from rsa.report.data import COMPONENTS, LENGTHS, Results


def limits(res: Results, motion: str) -> dict[str, tuple[float, float]]:
    """Component → (lower, upper) precision limits; lengths get (0, upper)."""
    out = {}
    for c, p in res.precision(motion).items():
        out[c] = (p["lower"], p["upper"]) if c in COMPONENTS else (0.0, p["upper"])
    return out


def _curve(res: Results, subject: str, motion: str) -> dict[str, Any] | None:
    by_exam = {m["exam_key"].split("/", 1)[1]: m for m in res.rows("motions", subject)
               if m["motion"] == motion}
    exams = [e for e in res.exams(subject) if e["kind"] != "dynamic"
             and e["exam_id"] in by_exam and e["day"] is not None]
    if not exams:
        return None
    comps = (*COMPONENTS, *LENGTHS)
    vals = {c: np.array([np.nan if by_exam[e["exam_id"]][c] is None
                         else by_exam[e["exam_id"]][c] for e in exams]) for c in comps}
    sig = {c: np.array([bool((by_exam[e["exam_id"]]["significant"] or {}).get(c))
                        for e in exams]) for c in comps}
    return {"label": subject, "day": [e["day"] for e in exams],
            "double": [e["kind"] == "double" for e in exams], "values": vals,
            "significant": sig}


def migration_png(res: Results, subjects: list[str], motion: str) -> bytes | None:
    """Migration curves of `motion` for the given subjects (None when nothing to plot)."""
    curves = [c for s in subjects if (c := _curve(res, s, motion)) is not None]
    if not curves:
        return None
    seg, ref = motion.split("/", 1)
    return plots.migration_figure(curves, limits(res, motion),
                                  title=f"{seg} relative to {ref}: migration over time")


def level_png(res: Results, subject: str) -> bytes | None:
    """Spine: intervertebral motion per level (motion) and exam."""
    levels = []
    for motion in res.motion_names():
        by_exam = {m["exam_key"].split("/", 1)[1]: m for m in res.rows("motions", subject)
                   if m["motion"] == motion}
        exams = [e["exam_id"] for e in res.exams(subject) if e["exam_id"] in by_exam]
        if not exams:
            continue
        seg, ref = motion.split("/", 1)
        levels.append({"label": f"{seg}–{ref}", "exams": exams,
                       "values": {c: [np.nan if by_exam[x][c] is None else by_exam[x][c]
                                      for x in exams] for c in COMPONENTS},
                       "limits": limits(res, motion)})
    if not levels:
        return None
    return plots.level_motion_figure(levels, title=f"Subject {subject}: intervertebral motion "
                                                   "per level and exam")


def _images(res: Results, subject: str, exam_id: str) -> dict[str, np.ndarray]:
    """View name → image of an exam, in the pipeline's view order (manifest image order)."""
    from rsa.io.images import read_radiograph, split_views

    spec = next((e for e in res.subject_spec(subject).get("exams", [])
                 if e.get("id") == exam_id), None)
    if spec is None:
        raise FileNotFoundError("exam not in the manifest")
    root = Path(res.run["manifest"]).parent
    views: dict[str, np.ndarray] = {}
    for im in spec.get("images", []):
        r = read_radiograph(root / im["file"])
        names = tuple(im["views"])
        if len(names) == 1:
            views[names[0]] = r.image
        else:
            parts = split_views(dataclasses.replace(r, layout=names))
            views.update({k: v.image for k, v in parts.items()})
    return views


def overlay_png(res: Results, subject: str, exam_id: str,
                colors: dict[str, tuple]) -> tuple[bytes | None, str]:
    """Overlay figure of one exam, or (None, why not)."""
    try:
        images = _images(res, subject, exam_id)
    except (OSError, RsaError, KeyError) as exc:
        return None, f"radiographs of {exam_id} not available ({type(exc).__name__})"
    key = f"{subject}/{exam_id}"
    beads = res.rows("beads", subject, exam_key=key)
    markers = res.rows("markers", subject, exam_key=key)
    panels = []
    for i, (view, img) in enumerate(images.items()):
        uc, vc = ("u_a", "v_a") if i == 0 else ("u_b", "v_b")
        lab = [(b[uc], b[vc], b["bead_id"], b["segment"]) for b in beads
               if b["segment"] and b[uc] is not None]
        # unassigned beads; rejected candidate points are not beads
        un = [(b[uc], b[vc]) for b in beads if not b["segment"] and b[uc] is not None
              and b.get("status") != "rejected"]
        mk = [(m["u"], m["v"], m["du_px"], m["dv_px"]) for m in markers if m["view"] == view]
        panels.append({"view": view, "image": img, "beads": lab, "unlabelled": un,
                       "markers": np.array(mk, float).reshape(-1, 4)})
    return plots.overlay_figure(panels, colors, title=f"Subject {subject}, exam {exam_id}: "
                                "identified beads and cage calibration residuals"), ""


def beads3d_png(res: Results, subject: str, colors: dict[str, tuple]) -> bytes | None:
    """3D bead configuration of the segments in the reference exam."""
    ref = next((e for e in res.exams(subject) if e["kind"] == "reference"), None)
    if ref is None:
        return None
    beads = res.rows("beads", subject, exam_key=f"{subject}/{ref['exam_id']}")
    segs = {}
    for seg in res.segments(subject):
        rows = [b for b in beads if b["segment"] == seg]
        segs[seg] = ([b["bead_id"] for b in rows],
                     np.array([[b["x"], b["y"], b["z"]] for b in rows], float).reshape(-1, 3))
    return plots.beads3d_figure(segs, colors, title=f"Subject {subject}: segment beads in the "
                                f"reference exam {ref['exam_id']} (cage frame)")
