"""Documentation checklist of an RSA interpretation report, and what the manifest still lacks.

Items follow the documentation elements expected for an RSA interpretation (CPT 0348T–0350T
coding references: indication, region, views acquired, comparison exam, motion metrics, device
integrity, impression). ``indication`` and ``impression`` are optional manifest fields read from
the raw TOML (``[study]``, overridable per ``[[subjects]]``):

.. code-block:: toml

    [study]
    indication = "Routine RSA follow-up of an uncemented tibial component (RCT arm B)."
    impression = "..."   # the interpreting clinician's conclusion; rsa never writes it

    [[subjects]]
    id = "S01"
    surgery_date = "2025-12-20"   # for the guideline items: days from surgery to the exams

Status is ``documented``, ``partial`` or ``missing``.
"""

from __future__ import annotations

from rsa.errors import InputError
from rsa.report.cpt import cpt_for_region
from rsa.report.data import Results
from rsa.report.doc import Table


def _field(res: Results, subject: str | None, name: str) -> str:
    if subject is not None:
        val = res.subject_spec(subject).get(name)
        if isinstance(val, str) and val.strip():
            return val.strip()
    val = res.study_section.get(name)
    return val.strip() if isinstance(val, str) else ""


def checklist(res: Results, subject: str | None = None) -> list[tuple[str, str, str]]:
    """(item, status, detail) rows for a subject (or the whole study when `subject` is None)."""
    items = []
    ind = _field(res, subject, "indication")
    items.append(("Indication", "documented" if ind else "missing", ind or
                  "not in the manifest: add `indication = \"...\"` under [study] (or the "
                  "subject)"))
    region = res.run.get("region") or ""
    try:
        code, _, name = cpt_for_region(region)
        items.append(("Region and code", "documented", f"{name}, CPT {code}"))
    except InputError:  # an unknown region is reported, not raised, here
        items.append(("Region and code", "missing", f"unknown region {region!r}"))
    subjects = [subject] if subject else res.subjects()
    keys = {f"{s}/{e['exam_id']}" for s in subjects for e in res.exams(s)}
    per_exam: dict[str, int] = {}
    for v in res.tables["views"]:
        if v["exam_key"] in keys and v["method"]:
            per_exam[v["exam_key"]] = per_exam.get(v["exam_key"], 0) + 1
    two = sum(1 for k in keys if per_exam.get(k, 0) >= 2)
    items.append(("Views (two simultaneous, calibrated)",
                  "documented" if two == len(keys) and keys else "partial",
                  f"{two} of {len(keys)} exams with two calibrated views; cage "
                  f"{res.run.get('cage')}"))
    comp = []
    for s in subjects:
        ex = res.exams(s)
        ref = next((e for e in ex if e["kind"] == "reference"), None)
        fu = [e for e in ex if e["kind"] in ("follow-up", "dynamic")]
        if ref:
            comp.append(f"{s}: reference {ref['exam_id']} ({ref['date']}), {len(fu)} later "
                        "exam(s)")
    has_fu = any(e["kind"] in ("follow-up", "dynamic") for s in subjects for e in res.exams(s))
    items.append(("Comparison (reference) exam", "documented" if has_fu else "partial",
                  "; ".join(comp) or "no reference exam"))
    motions = res.motion_names()
    with_prec = [m for m in motions if res.precision(m)]
    items.append(("Motion metrics and precision",
                  "documented" if motions and len(with_prec) == len(motions) else "partial",
                  f"{len(motions)} motion(s) with translations, rotations, total translation, "
                  f"MTPM; precision from double exams for {len(with_prec)} of them"))
    items.append(("Device integrity (beads, fit quality)", "documented",
                  "beads used vs reference, excluded beads, ME/CN/CLE per exam (this report)"))
    imp = _field(res, subject, "impression")
    items.append(("Impression (interpreting clinician)", "documented" if imp else "missing",
                  imp or "not in the manifest: the clinician's conclusion, "
                  "`impression = \"...\"` under [study] (or the subject)"))
    return items


def checklist_table(res: Results, subject: str | None = None) -> Table:
    rows = tuple(checklist(res, subject))
    return Table(("item", "status", "detail"), rows,
                 key=f"checklist-{subject or 'study'}", status_columns=(1,),
                 widths=(2.2, 1.0, 6.0),
                 caption="Documentation checklist of the interpretation report; 'missing' "
                         "items must be added to the study manifest (or the signed report) by "
                         "the interpreting clinician.")


def _mean_sd(values: list[float]) -> str:
    if not values:
        return ""
    m = sum(values) / len(values)
    if len(values) < 2:
        return f"{m:.0f} (n = 1)"
    sd = (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"mean {m:.1f}, SD {sd:.1f} (n = {len(values)})"


def guideline_table(res: Results) -> Table:
    """Reporting items of the RSA guideline (Kaptein et al. 2024) that the results answer.

    References
    ----------
    .. [1] Kaptein BL, Pijls B, Koster L, et al. "Guideline for RSA and CT-RSA implant migration
           measurements: an update of standardizations and recommendations", Acta Orthopaedica
           2024 (updates Valstar et al., Acta Orthop 2005). Its least-reported items include days
           from surgery to the baseline and to the primary-endpoint exam (mean, SD) and the
           consistent- vs all-marker method.
    .. [2] ISO 16087:2013, Implants for surgery — Roentgen stereophotogrammetric analysis for
           the assessment of migration of orthopaedic implants.
    """
    import contextlib
    import datetime as _dt

    subs = res.subjects()
    surgery, endpoint, since_ref = [], [], []
    for s in subs:
        ex = res.exams(s)
        ref = next((e for e in ex if e["kind"] == "reference"), None)
        fu = [e for e in ex if e["kind"] == "follow-up"]
        if fu and fu[-1]["day"] is not None:
            since_ref.append(float(fu[-1]["day"]))
        sd = res.subject_spec(s).get("surgery_date")
        if ref and sd:
            with contextlib.suppress(ValueError, TypeError):
                op = _dt.date.fromisoformat(str(sd))
                surgery.append(float((_dt.date.fromisoformat(ref["date"]) - op).days))
                if fu:
                    endpoint.append(float((_dt.date.fromisoformat(fu[-1]["date"]) - op).days))
    th = res.thresholds
    n_double = {m: next((p["n"] for p in res.tables["precision"] if p["motion"] == m), 0)
                for m in res.motion_names()}
    orders = sorted({m["euler_order"] for m in res.tables["motions"] if m["euler_order"]})
    virtual = any(m.get("points_mm") for m in res.manifest.get("motions", []))
    missing = "missing: add `surgery_date = \"YYYY-MM-DD\"` to each [[subjects]] of the manifest"
    rows = (
        ("Subjects analysed", str(len(subs))),
        ("Days from surgery to the reference (baseline) exam", _mean_sd(surgery) or missing),
        ("Days from surgery to the primary endpoint (last follow-up)",
         _mean_sd(endpoint) or missing),
        ("Days from the reference exam to the last follow-up", _mean_sd(since_ref) or "—"),
        ("Marker method", "all-marker: each exam's fit uses every bead of the segment found "
                          "and not excluded in that exam (beads used per exam in the quality "
                          "table)"),
        ("Precision", "; ".join(f"{m}: {n} double exam pair(s)" for m, n in n_double.items())
         or "—"),
        ("Fit limits applied", f"ME ≤ {th.get('me_limit_mm', 0.35):g} mm, CN ≤ "
                               f"{th.get('cn_limit', 150):g}, CLE ≤ "
                               f"{th.get('cle_limit_mm', 0.5):g} mm, unstable-bead limit "
                               f"{th.get('unstable_limit_mm', 0.35):g} mm"),
        ("Axes and rotations", f"cage (lab) frame: x medial-lateral, y proximal-distal, "
                               f"z anterior-posterior; Euler order {', '.join(orders) or '—'}"),
        ("MTPM points", "virtual points from the manifest" if virtual else
         "the segment's beads"),
    )
    return Table(("item", "value"), rows, key="guideline", widths=(2.6, 7.0),
                 caption="Reporting items of the 2024 RSA guideline (Kaptein et al.) and "
                         "ISO 16087 answered by this analysis.")
