"""Tests of rsa.report: reports of an analysed phantom study (HTML, PDF, CLI).

The phantom studies are small (1500 px detector at 0.286 mm, same field of view as the default)
and analysed once per module. The implant study runs through the real pipeline (bead detection
included, about 5 s); for the spine study bead detection is replaced by the exact projections of
the truth plus N(0, 0.05 px) noise (the lead's harness), because the real pipeline currently stops
on the coarse spine phantom with "Expected `rotation` and `translation` to be finite". Every
number in a report is compared with the results store it was built from.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import re
import warnings
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pypdf = pytest.importorskip("pypdf")
pytest.importorskip("reportlab")

import rsa.pipeline as pipeline  # noqa: E402
from rsa.errors import InputError  # noqa: E402
from rsa.report import CPT_CODES, build_report, cpt_for_region, load_results  # noqa: E402
from rsa.report.checklist import checklist  # noqa: E402
from rsa.report.tables import DECIMALS, fmt  # noqa: E402
from rsa.synthetic import write_study  # noqa: E402

# Planted identifiers: unusual strings that occur nowhere else by chance.
PHI_NAME = "Zyxwvutson^Quorraline"
PHI_ID = "QX-98765-ZZ"
PHI_BIRTH = "19470312"
PHI_NEEDLES = ("Zyxwvutson", "Quorraline", PHI_ID, PHI_BIRTH, "1947-03-12")
COMPS = ("tx", "ty", "tz", "rx", "ry", "rz", "total_translation", "mtpm")


def _truth_detection(study_dir: Path, mp: pytest.MonkeyPatch, sd_px: float = 0.05) -> None:
    """Replace bead detection by the truth projections (+ noise) of the phantom's images."""
    truth = json.loads((study_dir / "truth.json").read_text())
    table = {}
    for ex in truth["exams"]:
        for tv in ex["views"].values():
            c = tv["cage"]
            keep = np.array(c["in_view"]) & ~np.array(c["hidden"])
            pts = [np.array(c["uv_px"])[keep]]
            pts += [np.array(s["uv_px"])[~np.array(s["hidden"])] for s in tv["beads"].values()]
            table[(study_dir / tv["file"]).resolve()] = np.vstack(pts)
    rng = np.random.default_rng(0)
    current: dict[int, np.ndarray] = {}
    load = pipeline._load_views

    def fake_load(exam):
        views = load(exam)
        for r in views.values():
            current[id(r.image)] = table[Path(r.path).resolve()]
        return views

    def fake_detect(image, pixel_spacing_mm, options=None):
        uv = current[id(image)]
        return type("Beads", (), {"uv_px": uv + rng.normal(scale=sd_px, size=uv.shape),
                                  "sigma_px": np.full(uv.shape, sd_px),
                                  "occluded": np.zeros(len(uv), bool)})()

    mp.setattr(pipeline, "_load_views", fake_load)
    mp.setattr(pipeline, "detect_beads", fake_detect)


def _plant_phi(study_dir: Path) -> None:
    for f in study_dir.rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.PatientName = PHI_NAME
        ds.PatientID = PHI_ID
        ds.PatientBirthDate = PHI_BIRTH
        ds.save_as(f)


def _analysed(tmp: Path, variant: str, *, real_detection: bool) -> Path:
    study = tmp / "study"
    write_study(study, setup="uniplanar", variant=variant, seed=0, detector_px=1500,
                pixel_spacing_mm=0.286)
    _plant_phi(study)
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")   # quality flags of the phantom are reported, not raised
        if not real_detection:
            _truth_detection(study, mp)
        pipeline.analyse_study(study / "study.toml", tmp / "results", executor="serial",
                               resume=False)
    return tmp / "results"


@pytest.fixture(scope="module")
def implant(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report_implant")
    results = _analysed(tmp, "implant", real_detection=True)
    plain = build_report(results, tmp / "plain")
    phi = build_report(results, tmp / "phi", include_phi=True)
    return {"tmp": tmp, "results": results, "plain": plain, "phi": phi,
            "res": load_results(results)}


@pytest.fixture(scope="module")
def spine(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report_spine")
    results = _analysed(tmp, "spine", real_detection=False)
    return {"results": results, "res": load_results(results),
            "files": build_report(results, tmp / "out", overlays="none")}


# -- helpers ----------------------------------------------------------------------------------
class _Tables(HTMLParser):
    """Tables by id → rows of cell texts; figures by id → PNG bytes."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.figures: dict[str, bytes] = {}
        self._table = self._cell = None
        self._figure = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id", ""), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "figure":
            self._figure = a.get("id")
        elif tag == "img" and self._figure:
            src = a["src"]
            assert src.startswith("data:image/png;base64,")
            self.figures[self._figure] = base64.b64decode(src.split(",", 1)[1])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(path: Path) -> _Tables:
    p = _Tables()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _one(files, suffix: str, stem_part: str) -> Path:
    (f,) = [f for f in files if f.suffix == suffix and stem_part in f.stem]
    return f


def _pdf_pages(path: Path) -> list[str]:
    return [p.extract_text() for p in pypdf.PdfReader(path).pages]


def _close(cell: str, value, nd: int) -> bool:
    """Printed cell equals the stored value to the printed precision."""
    cell = cell.rstrip("*")
    if value is None:
        return cell == "—"
    return abs(float(cell) - value) <= 0.5 * 10.0 ** -nd + 1e-12


def _motion_rows(res, subject="S01"):
    order = [e["exam_id"] for e in res.exams(subject)]
    rows = {m["exam_key"].split("/")[1]: m for m in res.tables["motions"]}
    return [(x, rows[x]) for x in order if x in rows]


# -- content equals the store -----------------------------------------------------------------
def test_html_motion_table_equals_store(implant):
    res = implant["res"]
    html = _parse(_one(implant["plain"], ".html", "S01"))
    rows = html.tables["motion-S01-implant/tibia"]
    assert rows[0][:3] == ["exam", "day", "kind"]
    body = {r[0]: r for r in rows[1:]}
    stored = _motion_rows(res)
    assert len(stored) == 6   # REF, 3 doubles, 2 follow-ups
    for exam, m in stored:
        cells = body[exam][3:11]
        for c, cell in zip(COMPS, cells, strict=True):
            assert _close(cell, m[c], DECIMALS[c]), (exam, c, cell, m[c])
            assert cell.endswith("*") == bool((m["significant"] or {}).get(c)), (exam, c)
    prec = res.precision("implant/tibia")
    lim = body["95 % limits"]
    assert lim[3] == f"{fmt(prec['tx']['lower'], 3)} to {fmt(prec['tx']['upper'], 3)}"
    assert lim[10] == f"< {fmt(prec['mtpm']['upper'], 3)}"


def test_html_quality_table_equals_store(implant):
    res = implant["res"]
    rows = _parse(_one(implant["plain"], ".html", "S01")).tables["quality-S01"]
    fits = {(f["exam_key"].split("/")[1], f["segment"]): f for f in res.tables["fits"]}
    beads = res.tables["beads"]
    assert len(rows) - 1 == len(fits)
    for r in rows[1:]:
        f = fits[(r[0], r[1])]
        assert _close(r[2], f["me_mm"], 3)
        assert _close(r[3], f["cn"], 1)
        cle = max(b["cle_mm"] for b in beads if b["exam_key"] == f["exam_key"]
                  and b["segment"] == f["segment"])
        assert _close(r[4], cle, 3)
        assert r[5] == f"{f['n_beads']} / {f['n_reference']}"
        ok = f["me_mm"] <= 0.35 and f["cn"] <= 150 and cle <= 0.5 and f["n_beads"] >= 3
        assert (r[7] == "pass") if ok else r[7].startswith("FAIL")


def test_pdf_text_holds_the_same_numbers(implant):
    res = implant["res"]
    text = "\n".join(_pdf_pages(_one(implant["plain"], ".pdf", "S01")))
    tokens = text.split()
    for exam, m in _motion_rows(res):
        kind = next(e["kind"] for e in res.exams("S01") if e["exam_id"] == exam)
        i = next(k for k in range(len(tokens) - 2)
                 if tokens[k] == exam and tokens[k + 2] == kind)
        cells = tokens[i + 3:i + 11]
        for c, cell in zip(COMPS, cells, strict=True):
            assert _close(cell, m[c], DECIMALS[c]), (exam, c, cell, m[c])
    for p in res.tables["precision"]:
        if p["sd"] is not None:   # bias and SD printed with 4 decimals in the precision table
            assert fmt(p["sd"], 4) in tokens, p["component"]


def test_pdf_pages_and_sections(implant):
    pdf = _one(implant["plain"], ".pdf", "S01")
    pages = _pdf_pages(pdf)
    n = len(pages)
    assert n >= 6
    for i, t in enumerate(pages, start=1):
        assert f"page {i} of {n}" in t
    sections = ["Summary", "Interpretation aids", "Device integrity", "Documentation checklist",
                "Motion: implant relative to tibia", "Precision", "Quality", "Calibration",
                "Exams", "Radiographs and bead configuration", "Traceability"]
    first = {}
    for s in sections:
        hits = [i for i, t in enumerate(pages) if s in t.splitlines()]
        assert hits, f"section {s!r} missing"
        first[s] = max(hits) if s in ("Calibration", "Exams") else hits[0]
    assert [first[s] for s in sections] == sorted(first[s] for s in sections)
    study = _pdf_pages(_one(implant["plain"], ".pdf", "study"))
    assert "RSA report — PHANTOM-TKA, study summary" in study[0]


def test_header_cpt_and_interpretation(implant):
    text = "\n".join(_pdf_pages(_one(implant["plain"], ".pdf", "S01")))
    assert "0350T" in text
    assert "lower extremity" in text
    assert "no billing advice" in text
    res = implant["res"]
    m = dict(_motion_rows(res))["Y01"]
    lim = res.precision("implant/tibia")["mtpm"]["upper"]
    rel = "beyond" if m["mtpm"] > lim else "within"
    assert f"MTPM {fmt(m['mtpm'], 3)} mm, {rel} the {fmt(lim, 3)} mm precision limit" in \
        " ".join(text.split())
    assert res.run["software_version"] in text
    assert res.run["manifest_sha256"] in text


def test_figures_for_every_motion_and_segment(implant, spine):
    html = _parse(_one(implant["plain"], ".html", "S01"))
    figs = html.figures
    assert {"fig-migration-0", "fig-overlay-REF", "fig-overlay-Y01", "fig-beads3d"} <= set(figs)
    for png in figs.values():
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert len(png) > 10_000
    sp = _parse(_one(spine["files"], ".html", "S01"))
    assert {"fig-migration-0", "fig-levels", "fig-beads3d"} <= set(sp.figures)
    assert not any(k.startswith("fig-overlay") for k in sp.figures)   # overlays="none"


def test_self_contained_html(implant):
    for f in implant["plain"]:
        if f.suffix == ".html":
            text = f.read_text(encoding="utf-8")
            assert not re.search(r"(src|href)\s*=\s*\"(https?:|file:|/)", text)
            assert "<script" not in text
            assert "<link" not in text


# -- patient identifiers ----------------------------------------------------------------------
def _searchable(path: Path) -> list[bytes]:
    """Every representation of a file in which an identifier could hide."""
    data = path.read_bytes()
    out = [data]
    if path.suffix == ".pdf":
        for m in re.finditer(rb"stream\r?\n(.*?)endstream", data, re.S):
            with contextlib.suppress(zlib.error):
                out.append(zlib.decompress(m.group(1)))
        out.append("\n".join(_pdf_pages(path)).encode())
        out.append(json.dumps(dict(pypdf.PdfReader(path).metadata or {})).encode())
    if path.suffix == ".html":
        for m in re.finditer(rb"base64,([A-Za-z0-9+/=]+)", data):
            out.extend(_png_texts(base64.b64decode(m.group(1))))
    if path.suffix == ".png":
        out.extend(_png_texts(data))
    return out


def _png_texts(png: bytes) -> list[bytes]:
    """Raw and decompressed text chunks of a PNG."""
    out, i = [png], 8
    while i + 8 <= len(png):
        n = int.from_bytes(png[i:i + 4], "big")
        kind, body = png[i + 4:i + 8], png[i + 8:i + 8 + n]
        if kind in (b"zTXt", b"iTXt"):
            for k in range(len(body)):
                try:
                    out.append(zlib.decompress(body[k:]))
                    break
                except zlib.error:
                    continue
        i += 12 + n
    return out


def _leaks(paths) -> list[tuple[str, str]]:
    found = []
    for p in paths:
        for blob in _searchable(p):
            low = blob.lower()
            found += [(p.name, n) for n in PHI_NEEDLES if n.lower().encode() in low]
    return found


def test_no_identifiers_in_any_output_unless_asked(implant):
    outputs = [p for p in (implant["tmp"] / "plain").rglob("*") if p.is_file()]
    outputs += [p for p in implant["results"].rglob("*") if p.is_file()]
    assert len(outputs) >= 4 + 10
    assert _leaks(outputs) == []
    # the planted identifiers really are in the inputs ...
    dcm = next((implant["tmp"] / "study").rglob("*.dcm"))
    assert PHI_ID.encode() in dcm.read_bytes()
    # ... and the same search finds them in the reports made with include_phi
    phi = [p for p in implant["phi"] if "S01" in p.name]
    assert all("-phi" in p.name for p in phi)
    for p in phi:
        leaks = {n for _, n in _leaks([p])}
        assert {"Zyxwvutson", "Quorraline", PHI_ID, "1947-03-12"} <= leaks, p.name
    assert _leaks([p for p in implant["phi"] if "study" in p.name]) == []


# -- spine, checklist, errors -----------------------------------------------------------------
def test_spine_report(spine):
    text = " ".join("\n".join(_pdf_pages(_one(spine["files"], ".pdf", "S01"))).split())
    assert "CPT 0348T" in text
    assert "RSA fusion criterion (intervertebral motion within the precision limit) for L4–L5" \
        in text
    assert "flexion-extension series: rx from" in text
    assert "Intervertebral motion per level" in text


def test_checklist_reads_optional_manifest_fields(implant):
    res = implant["res"]
    before = {k: s for k, s, _ in checklist(res, "S01")}
    assert before["Indication"] == "missing"
    assert before["Impression (interpreting clinician)"] == "missing"
    assert before["Region and code"] == "documented"
    manifest = {**res.manifest, "study": {**res.manifest["study"],
                                          "indication": "Routine 1-year RSA follow-up."}}
    manifest["subjects"] = [{**manifest["subjects"][0], "impression": "Stable."}]
    after = {k: (s, d) for k, s, d in checklist(dataclasses.replace(res, manifest=manifest),
                                                "S01")}
    assert after["Indication"] == ("documented", "Routine 1-year RSA follow-up.")
    assert after["Impression (interpreting clinician)"] == ("documented", "Stable.")


def test_cpt_codes():
    assert cpt_for_region("spine")[0] == "0348T"
    assert cpt_for_region("upper_extremity")[0] == "0349T"
    assert cpt_for_region("lower_extremity")[0] == "0350T"
    assert len(CPT_CODES) == 3
    with pytest.raises(InputError, match="Expected `region` to be one of"):
        cpt_for_region("knee")


def test_fmt_never_negative_zero():
    assert fmt(-0.0004, 3) == "0.000"
    assert fmt(-0.0006, 3) == "-0.001"
    assert fmt(None, 3) == fmt(float("nan"), 3) == "—"


def test_bad_inputs(implant, tmp_path):
    with pytest.raises(InputError, match=r"no results\.sqlite here"):
        build_report(tmp_path / "none", tmp_path / "out")
    with pytest.raises(InputError, match="Expected `formats` from"):
        build_report(implant["results"], tmp_path / "out", formats=("docx",))
    with pytest.raises(InputError, match="Expected `subject` to be one of"):
        build_report(implant["results"], tmp_path / "out", subject="S99")
    with pytest.raises(InputError, match="Expected `overlays`"):
        build_report(implant["results"], tmp_path / "out", overlays="some")
    assert not (tmp_path / "out").exists()
    files = build_report(implant["results"], tmp_path / "out", formats="html", overlays="none",
                         subject="S01")
    assert [f.name for f in files] == ["PHANTOM-TKA_S01.html"]


def test_cli_report(implant, tmp_path):
    from typer.testing import CliRunner

    from rsa.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["report", str(implant["results"]), "--out", str(tmp_path / "o"),
                            "--format", "html", "--subject", "S01", "--overlays", "none"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["PHANTOM-TKA_S01.html"]
    r = runner.invoke(app, ["report", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2
    assert len(r.output.strip().splitlines()) == 1
    assert "rsa: error:" in r.output


def test_report_without_manifest_or_precision(implant, tmp_path):
    """The manifest moved away and no double exams: the report still builds and says so."""
    import shutil
    import sqlite3

    db = tmp_path / "results" / "results.sqlite"
    db.parent.mkdir()
    shutil.copy(implant["results"] / "results.sqlite", db)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE runs SET manifest = ?", (str(tmp_path / "moved.toml"),))
        con.execute("DELETE FROM precision")
        con.execute("INSERT INTO precision (subject, motion, component, n, form) VALUES "
                    "('*', 'implant/tibia', '*', 1, 'not computed: fewer than 2 double exams')")
    files = build_report(db.parent, tmp_path / "out", formats=("html",))
    text = " ".join(_one(files, ".html", "S01").read_text(encoding="utf-8").split())
    assert "the study manifest is no longer at the path recorded by the analysis" in text
    assert "radiographs of REF not available" in text
    assert "No precision limits (not computed: fewer than 2 double exams)" in text
    rows = _parse(_one(files, ".html", "S01")).tables["motion-S01-implant/tibia"]
    assert all(r[0] != "95 % limits" for r in rows)


def test_guideline_items_use_surgery_date(implant):
    from rsa.report.checklist import guideline_table

    res = implant["res"]
    items = dict(guideline_table(res).rows)
    assert items["Days from surgery to the reference (baseline) exam"].startswith("missing")
    assert items["Days from the reference exam to the last follow-up"] == "365 (n = 1)"
    manifest = {**res.manifest}
    manifest["subjects"] = [{**manifest["subjects"][0], "surgery_date": "2025-12-22"}]
    items = dict(guideline_table(dataclasses.replace(res, manifest=manifest)).rows)
    # reference exam 2026-01-05 is 14 days after surgery, the 1-year follow-up 379 days
    assert items["Days from surgery to the reference (baseline) exam"] == "14 (n = 1)"
    assert items["Days from surgery to the primary endpoint (last follow-up)"] == "379 (n = 1)"
    assert items["Marker method"].startswith("all-marker")


def test_overlay_views_from_a_side_by_side_file(tmp_path):
    """A single cassette image holding both views is split like the pipeline splits it."""
    import sys

    from rsa.report.data import Results
    from rsa.report.figures import _images

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    study = write_study(tmp_path / "s", variant="implant", seed=0, detector_px=600,
                        pixel_spacing_mm=0.7, side_by_side=True)
    manifest = tomllib.loads((study / "study.toml").read_text(encoding="utf-8"))
    res = Results(tmp_path, {"manifest": str(study / "study.toml")},
                  {t: [] for t in ("exams", "views", "markers", "beads", "fits", "motions",
                                   "precision")}, manifest)
    views = _images(res, "S01", "REF")
    assert list(views) == ["A", "B"]
    assert views["A"].shape == views["B"].shape == (600, 600)


def test_unfinished_store_is_refused(tmp_path):
    from rsa.io.store import ResultStore

    with ResultStore(tmp_path / "results.sqlite"):
        pass
    with pytest.raises(InputError, match="the analysis has not finished"):
        load_results(tmp_path)
