"""Documentation checklist of an RSA interpretation report, and what the manifest still lacks.

Items follow the documentation elements expected for an RSA interpretation (CPT 0348T–0350T
coding references: indication, region, views acquired, comparison exam, motion metrics, device
integrity, impression). ``indication`` and ``impression`` are optional manifest fields read from
the raw TOML (``[study]``, overridable per ``[[subjects]]``):

.. code-block:: toml

    [study]
    indication = "Routine RSA follow-up of an uncemented tibial component (RCT arm B)."
    impression = "..."   # the interpreting clinician's conclusion; rsa never writes it

Status is ``documented``, ``partial`` or ``missing``.
"""

from __future__ import annotations

from rsa.errors import InputError
from rsa.report.cpt import cpt_for_region
from rsa.report.data import Results
from rsa.report.doc import Table


def _field(res: Results, subject: str | None, name: str) -> str:
    if subject is not None:
        val = res._subject_spec(subject).get(name)
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
