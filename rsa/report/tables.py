"""Report tables: motions with precision and significance, quality with limits, calibration.

Numbers are formatted here, once, to their printed precision (:data:`DECIMALS`), so the HTML and
PDF show the same strings; a component beyond its double-exam precision limit carries a ``*``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rsa.report.data import COMPONENTS, LABELS, LENGTHS, UNITS, Results
from rsa.report.doc import Table

#: Printed decimals per quantity (mm and degrees to the micrometre / millidegree).
DECIMALS = {**dict.fromkeys((*COMPONENTS, *LENGTHS), 3), "me_mm": 3, "cn": 1, "cle_mm": 3,
            "rms_px": 3, "rms_mm": 4, "focus": 1, "precision": 3}
MISSING = "—"


def fmt(x: Any, nd: int) -> str:
    """`x` with `nd` decimals; '—' for None/NaN; never '-0.000'."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return MISSING
    s = f"{float(x):.{nd}f}"
    return s[1:] if s.startswith("-") and float(s) == 0.0 else s


def _day(d: int | None) -> str:
    return MISSING if d is None else str(d)


def exam_table(res: Results, subject: str) -> Table:
    """Exams of a subject: date, day, kind, pairing/series and status."""
    rows = []
    for e in res.exams(subject):
        link = ""
        if e["kind"] == "double":
            link = next((f"double of {x.get('double_of')}" for x in
                         res.subject_spec(subject).get("exams", [])
                         if x.get("id") == e["exam_id"]), "double")
        elif e["series"]:
            link = f"series {e['series']}"
        rows.append((e["exam_id"], e["date"] or MISSING, _day(e["day"]), e["kind"] or MISSING,
                     link, e["status"], str(len(e["flags"] or []))))
    return Table(("exam", "date", "day", "kind", "pairing / series", "status", "flags"),
                 tuple(rows), key=f"exams-{subject}",
                 caption="Exams in date order; day = days since the reference exam.")


def calibration_table(res: Results, subject: str) -> Table:
    """Calibration per exam and view: method, markers used, reprojection RMS, focus."""
    order = {e["exam_id"]: i for i, e in enumerate(res.exams(subject))}
    views = sorted(res.rows("views", subject), key=lambda v: (order.get(
        v["exam_key"].split("/", 1)[1], 0), v["view"]))
    rows = tuple((v["exam_key"].split("/", 1)[1], v["view"], v["method"] or MISSING,
                  f"{v['n_fiducials']} + {v['n_controls']}", str(v["n_beads_2d"]),
                  fmt(v["rms_px"], DECIMALS["rms_px"]), fmt(v["rms_mm"], DECIMALS["rms_mm"]),
                  ", ".join(fmt(v[f"focus_{a}"], DECIMALS["focus"]) for a in "xyz"))
                 for v in views)
    return Table(("exam", "view", "method", "fiducial + control markers", "2D beads",
                  "RMS (px)", "RMS (mm)", "focus x, y, z (mm)"), rows,
                 key=f"calibration-{subject}",
                 caption="Cage calibration per view: markers identified and used, reprojection "
                         "RMS of the markers, X-ray focus in the cage frame.")


def motion_table(res: Results, subject: str, motion: str) -> Table:
    """Motion of `motion` over the subject's series; '*' = beyond the precision limit."""
    comps = (*COMPONENTS, *LENGTHS)
    by_exam = {m["exam_key"].split("/", 1)[1]: m for m in res.rows("motions", subject)
               if m["motion"] == motion}
    rows = []
    for e in res.exams(subject):
        m = by_exam.get(e["exam_id"])
        if m is None:
            continue
        sig = m["significant"] or {}
        rows.append((e["exam_id"], _day(e["day"]), e["kind"],
                     *(fmt(m[c], DECIMALS[c]) + ("*" if sig.get(c) else "") for c in comps)))
    prec = res.precision(motion)
    if prec:
        rows.append(("95 % limits", "", "double exams",
                     *(f"{fmt(prec[c]['lower'], 3)} to {fmt(prec[c]['upper'], 3)}"
                       if c in prec else MISSING for c in COMPONENTS),
                     *(f"< {fmt(prec[c]['upper'], 3)}" if c in prec else MISSING
                       for c in LENGTHS)))
    cols = ("exam", "day", "kind", *(f"{LABELS[c]} ({UNITS[c]})" for c in comps))
    seg, ref = motion.split("/", 1)
    return Table(cols, tuple(rows), key=f"motion-{subject}-{motion}",
                 caption=f"Motion of {seg} relative to {ref} (cage axes: x medial-lateral, "
                         "y proximal-distal, z anterior-posterior; rotations in degrees, "
                         "Euler order as configured). TT = total translation of the segment "
                         "centroid; MTPM = maximum total point motion. * = beyond the 95 % "
                         "precision limit of the double exams.",
                 widths=(1.6, 0.7, 1.3, *([1.1] * 8)))


def precision_table(res: Results, motions: Sequence[str]) -> Table:
    """Precision from double exams per motion and component (bias, SD, limits)."""
    rows = []
    for motion in motions:
        prec = res.precision(motion)
        if not prec:
            rows.append((motion, MISSING, "all", MISSING, MISSING, MISSING, MISSING,
                         res.precision_note(motion)))
            continue
        for c in (*COMPONENTS, *LENGTHS):
            p = prec.get(c)
            if p is None:
                continue
            nd = DECIMALS["precision"] + 1
            lim = (f"{fmt(p['lower'], nd)} to {fmt(p['upper'], nd)}" if c in COMPONENTS
                   else f"< {fmt(p['upper'], nd)}")
            rows.append((motion, str(p["n"]), f"{LABELS[c]} ({UNITS[c]})", fmt(p["bias"], nd),
                         fmt(p["sd"], nd), lim, fmt(p["repeatability"], nd),
                         p["form"] or ""))
    return Table(("motion", "n", "component", "bias (mean)", "SD", "95 % limits",
                  "repeatability", "form"), tuple(rows), key="precision",
                 caption="Precision from double examinations (ISO 16087): the motion between "
                         "an exam and its double is pure measurement error. Signed components: "
                         "mean ± t(0.975, n−1)·SD; total translation and MTPM are lengths, so "
                         "their limit is one-sided.",
                 widths=(1.4, 0.5, 1.3, 1.0, 1.0, 1.7, 1.0, 2.6))


def quality_rows(res: Results, subject: str) -> list[dict[str, Any]]:
    """Per exam and segment: ME, CN, max CLE, beads used/reference, exclusions, pass/fail."""
    th = res.thresholds
    me_lim, cn_lim = th.get("me_limit_mm", 0.35), th.get("cn_limit", 150.0)
    cle_lim = th.get("cle_limit_mm", 0.5)
    fits = {(f["exam_key"], f["segment"]): f for f in res.rows("fits", subject)}
    cle_by: dict[tuple[str, str], list[float]] = {}
    for bd in res.rows("beads", subject):
        if bd["cle_mm"] is not None:
            cle_by.setdefault((bd["exam_key"], bd["segment"]), []).append(bd["cle_mm"])
    out = []
    for e in res.exams(subject):
        key = f"{subject}/{e['exam_id']}"
        for seg in res.segments(subject):
            f = fits.get((key, seg))
            if f is None:
                continue
            cles = cle_by.get((key, seg), [])
            cle = max(cles) if cles else None
            me_ok = f["me_mm"] is not None and f["me_mm"] <= me_lim
            cn_ok = f["cn"] is not None and f["cn"] <= cn_lim
            cle_ok = cle is not None and cle <= cle_lim
            out.append({"exam": e["exam_id"], "kind": e["kind"], "day": e["day"],
                        "segment": seg, "me_mm": f["me_mm"], "cn": f["cn"], "cle_mm": cle,
                        "n_beads": f["n_beads"], "n_reference": f["n_reference"],
                        "excluded": list(f["excluded"] or []), "me_ok": me_ok,
                        "cn_ok": cn_ok, "cle_ok": cle_ok,
                        "ok": me_ok and cn_ok and cle_ok and f["n_beads"] >= 3})
    return out


def _result(q: dict[str, Any]) -> str:
    why = [n for n, ok in (("ME", q["me_ok"]), ("CN", q["cn_ok"]), ("CLE", q["cle_ok"]),
                           ("beads", q["n_beads"] >= 3)) if not ok]
    return "pass" if not why else f"FAIL ({', '.join(why)})"


def quality_table(res: Results, subject: str) -> Table:
    """Quality per exam and segment with the study's limits and pass/fail."""
    th = res.thresholds
    rows = []
    for q in quality_rows(res, subject):
        rows.append((q["exam"], q["segment"], fmt(q["me_mm"], DECIMALS["me_mm"]),
                     fmt(q["cn"], DECIMALS["cn"]), fmt(q["cle_mm"], DECIMALS["cle_mm"]),
                     f"{q['n_beads']} / {q['n_reference']}",
                     "; ".join(q["excluded"]) or "none", _result(q)))
    return Table(("exam", "segment", "ME (mm)", "CN", "max CLE (mm)", "beads used / ref",
                  "excluded beads (reason)", "result"), tuple(rows),
                 key=f"quality-{subject}", status_columns=(7,),
                 widths=(1.3, 1.0, 0.9, 0.8, 1.0, 1.0, 3.4, 0.9),
                 caption=f"Quality per exam and segment. Limits of this study: ME ≤ "
                         f"{th.get('me_limit_mm', 0.35):g} mm (mean error of rigid-body "
                         f"fitting; guideline default 0.35 mm), CN ≤ {th.get('cn_limit', 150):g} "
                         f"(condition number of the marker configuration; rsa's CN formula is "
                         f"documented in rsa.rigid.condition_number — compare with limits of "
                         f"other software with care), CLE ≤ {th.get('cle_limit_mm', 0.5):g} mm "
                         f"(crossing-line error of each bead), at least 3 beads. The reference "
                         f"exam is fitted to itself (ME 0).")


def hash_table(res: Results, subject: str, *, include_paths: bool) -> Table:
    """Input files per exam by SHA-256 (file paths only with `include_paths`)."""
    rows = []
    for e in res.exams(subject):
        files = e["files"] or []
        for i, h in enumerate(e["sha256"] or []):
            name = str(files[i]) if include_paths and i < len(files) else f"image {i + 1}"
            rows.append((e["exam_id"], name, h))
    return Table(("exam", "file", "SHA-256"), tuple(rows), key=f"hashes-{subject}",
                 widths=(1.2, 1.6 if not include_paths else 4.0, 5.0),
                 caption="Input radiographs by SHA-256 of their bytes (file paths are shown "
                         "only in reports that include patient identifiers, since paths often "
                         "carry names).")
