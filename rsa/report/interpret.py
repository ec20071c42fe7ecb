"""Interpretation aids in plain language (not diagnoses): stability, fusion criterion, integrity.

A follow-up motion is *beyond the precision limit* when it lies outside the 95 % limits from the
double exams (DESIGN §3.7; ISO 16087). For spine studies the RSA fusion criterion is motion
within the precision limit (DESIGN §3.7). Device-integrity notes list bead loss and exclusions
per segment and the trend of the rigid-body fit error (ME) over the series, since a rising ME or
lost beads can indicate marker loosening, bead migration or implant deformation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rsa.report.data import COMPONENTS, LABELS, UNITS, Results
from rsa.report.tables import DECIMALS, fmt, quality_rows


def _when(day: int | None) -> str:
    if day is None:
        return "at an undated exam"
    if day >= 330:
        return f"at {day / 365.25:.1f} y (day {day})"
    if day >= 28:
        return f"at {day / 30.44:.0f} months (day {day})"
    return f"at day {day}"


def _last_followup(exams: list[dict[str, Any]]) -> dict[str, Any] | None:
    fu = [e for e in exams if e["kind"] == "follow-up"]
    return fu[-1] if fu else None


def stability_summary(res: Results, subject: str, motion: str) -> list[str]:
    """Sentences on the motion at the last follow-up against the precision limits."""
    seg, ref = motion.split("/", 1)
    exams = res.exams(subject)
    by_exam = {m["exam_key"].split("/", 1)[1]: m for m in res.rows("motions", subject)
               if m["motion"] == motion}
    last = _last_followup(exams)
    if last is None or last["exam_id"] not in by_exam:
        return [f"{seg} relative to {ref}: no follow-up exam measured yet."]
    m = by_exam[last["exam_id"]]
    prec = res.precision(motion)
    head = f"{seg} relative to {ref}, {_when(last['day'])} ({last['exam_id']})"
    mt = fmt(m["mtpm"], DECIMALS["mtpm"])
    tt = fmt(m["total_translation"], DECIMALS["total_translation"])
    if not prec:
        return [f"{head}: MTPM {mt} mm, total translation {tt} mm. No precision limits "
                f"({res.precision_note(motion)}), so whether this exceeds measurement error "
                "cannot be judged."]
    out = []
    for key, name in (("mtpm", "MTPM"), ("total_translation", "total translation")):
        lim = prec.get(key, {}).get("upper")
        val = m[key]
        if val is None or lim is None:
            continue
        rel = "beyond" if val > lim else "within"
        out.append(f"{name} {fmt(val, 3)} mm, {rel} the {fmt(lim, 3)} mm precision limit")
    text = f"{head}: " + "; ".join(out) + "."
    beyond = []
    for c in COMPONENTS:
        p, v = prec.get(c), m[c]
        if p and v is not None and not p["lower"] <= v <= p["upper"]:
            unit = UNITS[c] if UNITS[c] == "°" else f" {UNITS[c]}"
            beyond.append(f"{LABELS[c]} {fmt(v, 3)}{unit} (limits {fmt(p['lower'], 3)} "
                          f"to {fmt(p['upper'], 3)})")
    text += (" Components beyond their limits: " + ", ".join(beyond) + "." if beyond else
             " No single component is beyond its limit.")
    sentences = [text]
    if res.run.get("region") == "spine":
        sentences.append(_fusion(res, subject, motion, exams, by_exam))
        dyn = _dynamic_range(exams, by_exam)
        if dyn:
            sentences.append(f"{seg}–{ref} {dyn}")
    return sentences


def _fusion(res, subject, motion, exams, by_exam) -> str:
    out = []
    for e in exams:
        m = by_exam.get(e["exam_id"])
        if e["kind"] not in ("follow-up", "dynamic") or m is None or not m["significant"]:
            continue
        sig = [LABELS[c] for c in (*COMPONENTS, "total_translation", "mtpm")
               if m["significant"].get(c)]
        if sig:
            out.append(f"{e['exam_id']} ({', '.join(sig)})")
    seg, ref = motion.split("/", 1)
    if out:
        return (f"RSA fusion criterion (intervertebral motion within the precision limit) for "
                f"{seg}–{ref}: not met at " + "; ".join(out) + ".")
    return (f"RSA fusion criterion (intervertebral motion within the precision limit) for "
            f"{seg}–{ref}: met at every follow-up and dynamic exam.")


def _dynamic_range(exams, by_exam) -> str:
    series: dict[str, list] = {}
    for e in exams:
        if e["kind"] == "dynamic" and e["exam_id"] in by_exam:
            series.setdefault(e["series"] or "dynamic", []).append(
                (e["exam_id"], by_exam[e["exam_id"]]))
    parts = []
    for name, frames in series.items():
        for c in ("rx", "ry", "rz"):
            vals = [(f[1][c], f[0]) for f in frames if f[1][c] is not None]
            if len(vals) < 2:
                continue
            lo, hi = min(vals), max(vals)
            if c == "rx" or hi[0] - lo[0] >= 1.0:
                parts.append(f"{LABELS[c]} from {fmt(lo[0], 2)}° ({lo[1]}) to {fmt(hi[0], 2)}° "
                             f"({hi[1]}), range {fmt(hi[0] - lo[0], 2)}°")
        if parts:
            return f"{name} series: " + "; ".join(parts) + "."
    return ""


def integrity_notes(res: Results, subject: str) -> list[str]:
    """Bead loss, exclusions and the ME trend per segment over the series."""
    th = res.thresholds
    q = quality_rows(res, subject)
    notes = []
    for seg in res.segments(subject):
        rows = [r for r in q if r["segment"] == seg]
        if not rows:
            continue
        n_ref = rows[0]["n_reference"]
        n_man = len(res.segments(subject)[seg].get("bead_ids") or
                    res.segments(subject)[seg].get("xyz_mm") or [])
        found = (f"{n_ref} of the {n_man} manifest beads found in the reference exam"
                 if n_man and n_man != n_ref else f"all {n_ref} beads found in the reference exam")
        low = [f"{r['exam']} ({r['n_beads']})" for r in rows if r["n_beads"] < n_ref]
        if low:
            notes.append(f"{seg}: {found}; fewer used in {', '.join(low)} — bead loss, "
                         "overlap or exclusion (see quality table).")
        else:
            notes.append(f"{seg}: {found}; all of them used in every exam.")
        excl = [f"{r['exam']}: {'; '.join(r['excluded'])}" for r in rows if r["excluded"]]
        if excl:
            notes.append(f"{seg}: beads excluded as unstable or unusable — " + " | ".join(excl))
        fu = [(r["day"], r["me_mm"]) for r in rows if r["kind"] != "reference"
              and r["me_mm"] is not None and r["day"] is not None]
        if fu:
            d, me = np.array(fu, float).T
            msg = (f"{seg}: ME {fmt(me.min(), 3)}–{fmt(me.max(), 3)} mm over {len(me)} exams "
                   f"(limit {th.get('me_limit_mm', 0.35):g} mm)")
            if np.ptp(d) >= 28 and len(me) >= 3:
                slope = np.polyfit(d / 365.25, me, 1)[0]
                s = fmt(slope, 3)
                msg += f", trend {s if s.startswith('-') else '+' + s} mm/year"
            high = [r["exam"] for r in rows if r["me_mm"] is not None and not r["me_ok"]]
            msg += f"; above the limit in {', '.join(high)}." if high else "."
            notes.append(msg)
    for e in res.exams(subject):
        if e["flags"]:
            notes.append(f"quality flags, {e['exam_id']}: " + "; ".join(e["flags"]))
        if e["notes"]:
            notes.append(f"notes, {e['exam_id']}: " + "; ".join(e["notes"]))
    return notes
