"""Plain tables of a study result for the console, JSON output and truth comparison.

Rows are plain dicts of Python scalars (JSON-ready); rendering lives in :mod:`rsa.cli`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rsa.pipeline import StudyResult
from rsa.series import COMPONENTS

LENGTHS = ("total_translation", "mtpm")


def _num(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def motion_rows(result: StudyResult) -> list[dict]:
    """One row per subject, exam and motion: components, lengths, significance, flags."""
    rows = []
    for s in result.series:
        for i, exam in enumerate(s.exams):
            for name, mo in s.motions.items():
                prec = result.precision.get(name)
                row = {"subject": s.subject, "exam": exam.id, "date": exam.date.isoformat(),
                       "kind": exam.kind, "motion": name}
                vals = [*mo.translation_mm[i], *mo.rotation_deg[i], mo.total_translation_mm[i],
                        np.nan if mo.mtpm_mm is None else mo.mtpm_mm[i]]
                row.update({k: _num(v) for k, v in zip((*COMPONENTS, *LENGTHS), vals,
                                                       strict=True)})
                if prec is not None and prec.signed is not None:
                    comp = np.asarray(vals[:6])
                    out = (comp < prec.signed.lower) | (comp > prec.signed.upper)
                    out_l = np.asarray(vals[6:]) > prec.upper.upper_t
                    row["significant"] = [k for k, o in zip((*COMPONENTS, *LENGTHS),
                                                            [*out, *out_l], strict=True) if o]
                else:
                    row["significant"] = None
                row["flags"] = len(s.flags.get(exam.id, []))
                rows.append(row)
    return rows


def precision_rows(result: StudyResult) -> list[dict]:
    """Precision limits per motion component (empty components when < 2 double exams)."""
    rows = []
    for name, p in result.precision.items():
        if p.signed is None:
            rows.append({"motion": name, "n": p.n, "component": None,
                         "note": "fewer than 2 double exams: no precision limits"})
            continue
        for k, comp in enumerate(COMPONENTS):
            rows.append({"motion": name, "n": p.n, "component": comp,
                         "bias": _num(p.signed.bias[k]), "sd": _num(p.signed.sd[k]),
                         "limit": _num(p.signed.limit[k])})
        for k, comp in enumerate(LENGTHS):
            rows.append({"motion": name, "n": p.n, "component": comp,
                         "bias": _num(p.upper.mean[k]), "sd": _num(p.upper.sd[k]),
                         "limit": _num(p.upper.upper_t[k])})
    return rows


def truth_rows(result: StudyResult, truth_path: str | Path) -> list[dict]:
    """Measured vs true motion for a phantom study (``truth.json`` of rsa.synthetic)."""
    with open(truth_path, encoding="utf-8") as fh:
        truth = json.load(fh)
    by_id = {e["id"]: e for e in truth["exams"]}
    rows = []
    for r in motion_rows(result):
        t = by_id.get(r["exam"], {}).get("relative_motion", {}).get(r["motion"])
        if t is None:
            continue
        true = [*t["translation_mm"], *t["rotation_deg"], t["total_translation_mm"], t["mtpm_mm"]]
        row = {"subject": r["subject"], "exam": r["exam"], "motion": r["motion"]}
        for k, tv in zip((*COMPONENTS, *LENGTHS), true, strict=True):
            row[k] = r[k]
            row[f"{k}_true"] = float(tv)
            row[f"{k}_error"] = None if r[k] is None else r[k] - float(tv)
        rows.append(row)
    return rows
