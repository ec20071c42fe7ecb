"""Composition of the subject and study reports, and :func:`build_report`."""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Sequence
from pathlib import Path

from rsa import __version__
from rsa.errors import InputError
from rsa.io.atomic import atomic_write_bytes, atomic_write_text
from rsa.report import figures
from rsa.report.checklist import checklist_table, guideline_table
from rsa.report.cpt import cpt_for_region
from rsa.report.data import COMPONENTS, LENGTHS, Results, load_results
from rsa.report.doc import Bullets, Document, Figure, Heading, Para, Table
from rsa.report.interpret import integrity_notes, stability_summary
from rsa.report.plots import segment_colors
from rsa.report.tables import (
    DECIMALS,
    calibration_table,
    exam_table,
    fmt,
    hash_table,
    motion_table,
    precision_table,
    quality_rows,
    quality_table,
)

FORMATS = ("html", "pdf")
_AID = ("Interpretation aids computed from the measurements, not diagnoses: the interpreting "
        "clinician judges them with the images and the clinical picture.")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


def _header(res: Results, subject: str | None, phi: dict[str, str] | None) -> Table:
    code, desc, region = cpt_for_region(res.run["region"])
    rows = [("Study", res.study_id)]
    if res.study_section.get("description"):
        rows.append(("Description", str(res.study_section["description"])))
    if subject is not None:
        rows.append(("Subject (pseudonym)", subject))
        if phi is not None:
            bd = phi["birth_date"]
            if re.fullmatch(r"\d{8}", bd):
                bd = f"{bd[:4]}-{bd[4:6]}-{bd[6:]}"
            rows += [("Patient name", phi["name"].replace("^", " ").strip() or "—"),
                     ("Patient ID", phi["id"] or "—"), ("Birth date", bd or "—"),
                     ("Identifiers from", f"{phi['source']} (read when this report was made)")]
        exams = res.exams(subject)
        rows.append(("Exams", "; ".join(f"{e['exam_id']} {e['date']} ({e['kind']})"
                                        for e in exams)))
        views = res.rows("views", subject)
        rms = [v["rms_px"] for v in views if v["rms_px"] is not None]
        methods = sorted({v["method"] for v in views if v["method"]})
        if rms:
            rows.append(("Calibration", f"{', '.join(methods)}; marker reprojection RMS "
                         f"{fmt(min(rms), 3)}–{fmt(max(rms), 3)} px over {len(views)} views"))
    else:
        subs = res.subjects()
        rows.append(("Subjects", f"{len(subs)} ({', '.join(subs)})"))
        rows.append(("Exams", str(len(res.tables["exams"]))))
    rows += [("Region", region), ("CPT code", f"{code} — {desc} (code named for the region "
                                               "only; no billing advice)"),
             ("Cage", str(res.run.get("cage"))),
             ("Software", f"analysis rsa {res.run.get('software_version')} "
                          f"(run {res.run.get('started')}); report rsa {__version__}"),
             ("Manifest", f"{Path(res.run.get('manifest') or '').name}, SHA-256 "
                          f"{res.run.get('manifest_sha256')}")]
    return Table(("item", "value"), tuple(rows), key="header", widths=(1.6, 8.0))


def _title(res: Results, subject: str | None) -> tuple[str, str]:
    code = res.run.get("cpt_code") or ""
    kind = f"subject {subject}" if subject else "study summary"
    title = f"RSA report — {res.study_id}, {kind}"
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return title, f"Radiostereometric analysis, CPT {code}; generated {now}"


def _banners(res: Results, phi: bool) -> list[Para]:
    out = []
    if phi:
        out.append(Para("Contains patient identifiers (protected health information): share "
                        "only with those entitled to see them.", "banner"))
    if res.study_section.get("synthetic"):
        out.append(Para("Synthetic phantom study: no patient data.", "note"))
    if res.manifest_note:
        out.append(Para(f"Note: {res.manifest_note}.", "warn"))
    return out


def subject_document(res: Results, subject: str, *, phi: dict[str, str] | None = None,
                     overlays: str = "key") -> Document:
    """The report of one subject (see :func:`build_report`)."""
    title, sub = _title(res, subject)
    motions = res.motion_names()
    colors = segment_colors(list(res.segments(subject)))
    b: list = [*_banners(res, phi is not None), Heading("Summary"), _header(res, subject, phi)]
    b += [Heading("Interpretation aids", 2), Para(_AID, "note"),
          Bullets(tuple(s for m in motions for s in stability_summary(res, subject, m))),
          Heading("Device integrity", 2), Bullets(tuple(integrity_notes(res, subject))),
          Heading("Documentation checklist", 2), checklist_table(res, subject)]
    for k, m in enumerate(motions):
        seg, ref = m.split("/", 1)
        b += [Heading(f"Motion: {seg} relative to {ref}", new_page=True),
              motion_table(res, subject, m)]
        png = figures.migration_png(res, [subject], m)
        if png:
            b.append(Figure(png, f"Migration of {seg} relative to {ref} per axis, total "
                            "translation (TT) and MTPM over time; grey band = 95 % precision "
                            "limits from double exams; hollow = double exams; × = beyond the "
                            "limit.", key=f"fig-migration-{k}", width=0.8))
    if res.run.get("region") == "spine":
        png = figures.level_png(res, subject)
        if png:
            b += [Heading("Intervertebral motion per level", new_page=True),
                  Figure(png, "Rotations and translations of each level in every exam, "
                         "including dynamic (flexion-extension) frames; grey bars = 95 % "
                         "precision limits.", key="fig-levels")]
    b += [Heading("Precision", 2), precision_table(res, motions),
          Heading("Quality", new_page=True), quality_table(res, subject),
          Heading("Calibration", 2), calibration_table(res, subject),
          Heading("Exams", 2), exam_table(res, subject)]
    b += [Heading("Radiographs and bead configuration", new_page=True)]
    exams = res.exams(subject)
    chosen = [] if overlays == "none" else exams if overlays == "all" else \
        list({e["exam_id"]: e for e in (exams[:1] + [e for e in exams
                                                      if e["kind"] == "follow-up"][-1:])}.values())
    for e in chosen:
        png, why = figures.overlay_png(res, subject, e["exam_id"], colors)
        if png:
            b.append(Figure(png, f"Exam {e['exam_id']}: left, each whole view downsampled with "
                            "identified cage markers and their calibration residual vectors "
                            "(detected − reprojected, magnified); right, the patient beads with "
                            "their labels, coloured by segment.",
                            key=f"fig-overlay-{e['exam_id']}"))
        else:
            b.append(Para(why, "warn"))
    png = figures.beads3d_png(res, subject, colors)
    if png:
        b.append(Figure(png, "Bead configuration of each segment in the reference exam "
                        "(cage frame, mm).", key="fig-beads3d", width=1.0))
    b += [Heading("Traceability"),
          Para(f"Results folder: {res.folder.name} (every table also exported there as CSV "
               "and results.json).", "note"),
          hash_table(res, subject, include_paths=phi is not None)]
    footer = (f"{res.study_id} · subject {subject} · rsa {__version__} · "
              "interpretation aid, not a diagnosis")
    return Document(title, sub, tuple(b), footer)


def _last_rows(res: Results, motion: str) -> Table:
    comps = (*COMPONENTS, *LENGTHS)
    rows = []
    for s in res.subjects():
        fu = [e for e in res.exams(s) if e["kind"] == "follow-up"]
        mo = {m["exam_key"]: m for m in res.rows("motions", s) if m["motion"] == motion}
        if not fu or f"{s}/{fu[-1]['exam_id']}" not in mo:
            continue
        m = mo[f"{s}/{fu[-1]['exam_id']}"]
        sig = m["significant"] or {}
        rows.append((s, fu[-1]["exam_id"], str(fu[-1]["day"]),
                     *(fmt(m[c], DECIMALS[c]) + ("*" if sig.get(c) else "") for c in comps)))
    return Table(("subject", "exam", "day", "tx (mm)", "ty (mm)", "tz (mm)", "rx (°)",
                  "ry (°)", "rz (°)", "TT (mm)", "MTPM (mm)"),
                 tuple(rows), key=f"last-{motion}",
                 caption="Each subject's last follow-up; * = beyond the 95 % precision limit.")


def study_document(res: Results) -> Document:
    """The study summary report over all subjects."""
    title, sub = _title(res, None)
    motions = res.motion_names()
    subs = res.subjects()
    b: list = [*_banners(res, False), Heading("Summary"), _header(res, None, None),
               Heading("Interpretation aids", 2), Para(_AID, "note"),
               Bullets(tuple(f"{sj}: {s}" for sj in subs for m in motions
                             for s in stability_summary(res, sj, m))),
               Heading("Documentation checklist", 2), checklist_table(res, None),
               Heading("Guideline reporting items", 2), guideline_table(res),
               Heading("Precision", 2), precision_table(res, motions)]
    for k, m in enumerate(motions):
        seg, ref = m.split("/", 1)
        b += [Heading(f"Motion: {seg} relative to {ref}", new_page=True), _last_rows(res, m)]
        png = figures.migration_png(res, subs, m)
        if png:
            b.append(Figure(png, f"Migration of {seg} relative to {ref}, all subjects; grey "
                            "band = 95 % precision limits.", key=f"fig-migration-{k}"))
    qrows = []
    for s in subs:
        q = quality_rows(res, s)
        me = [r["me_mm"] for r in q if r["me_mm"] is not None]
        cn = [r["cn"] for r in q if r["cn"] is not None]
        qrows.append((s, str(len(q)), str(sum(not r["ok"] for r in q)),
                      fmt(max(me), 3) if me else "—", fmt(max(cn), 1) if cn else "—"))
    b += [Heading("Quality", new_page=True),
          Table(("subject", "fits", "failing", "max ME (mm)", "max CN"), tuple(qrows),
                key="quality-study", caption="Fits per subject (exam × segment) and how "
                "many fail a limit; details in each subject's report.")]
    footer = f"{res.study_id} · study summary · rsa {__version__} · interpretation aid"
    return Document(title, sub, tuple(b), footer)


def build_report(results_dir: str | Path, out_dir: str | Path, *,
                 formats: Sequence[str] = FORMATS, include_phi: bool = False,
                 subject: str | None = None, overlays: str = "key") -> list[Path]:
    """Write interpretation-ready reports (HTML and/or PDF) of an analysed study.

    One report per subject and one for the study (only the subject's when `subject` is given).
    Files: ``<study>_<subject>.html|pdf`` and ``<study>_study.html|pdf`` (``-phi`` before the
    extension when patient identifiers are included), written atomically.

    Parameters
    ----------
    results_dir : path
        Output folder of ``rsa analyze`` (holds ``results.sqlite``).
    out_dir : path
        Folder for the reports (created).
    formats : sequence of {"html", "pdf"}, or a comma-separated string
    include_phi : bool
        Show patient name, ID and birth date, read now from the subject's DICOM headers (and
        input file paths). Off by default: reports then hold only the subject pseudonym.
    subject : str, optional
        Report only this subject.
    overlays : {"key", "all", "none"}
        Radiograph overlays of the reference and last follow-up exam (default), every exam,
        or none.

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    InputError
        Unknown format, subject or overlay choice; no results in `results_dir`.
    """
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    fmts = tuple(dict.fromkeys(formats))
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise InputError(f"Expected `formats` from {FORMATS}, got {list(formats)}.")
    if overlays not in ("key", "all", "none"):
        raise InputError(f"Expected `overlays` to be 'key', 'all' or 'none', got {overlays!r}.")
    res = load_results(results_dir)
    subjects = res.subjects()
    if subject is not None and subject not in subjects:
        raise InputError(f"Expected `subject` to be one of {subjects}, got {subject!r}.")
    out_dir = Path(out_dir)
    suffix = "-phi" if include_phi else ""
    docs = []
    for s in [subject] if subject else subjects:
        phi = None
        if include_phi:
            from rsa.report.phi import read_identifiers

            phi = read_identifiers(f for e in res.exams(s) for f in (e["files"] or []))
        docs.append((f"{_safe(res.study_id)}_{_safe(s)}{suffix}",
                     subject_document(res, s, phi=phi, overlays=overlays)))
    if subject is None:
        docs.append((f"{_safe(res.study_id)}_study", study_document(res)))
    written = []
    for stem, doc in docs:
        if "html" in fmts:
            from rsa.report.html import render_html

            written.append(atomic_write_text(out_dir / f"{stem}.html", render_html(doc)))
        if "pdf" in fmts:
            from rsa.report.pdf import render_pdf

            written.append(atomic_write_bytes(out_dir / f"{stem}.pdf", render_pdf(doc)))
    return written
