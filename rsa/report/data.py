"""Loading a results folder (``rsa analyze`` output) for reporting.

Everything the report shows comes from the results store (:mod:`rsa.io.store`) and, for what
the store does not hold (segment roles, exam series, optional documentation fields such as the
indication), from the study manifest it names. Patient identifiers are never read here; see
:mod:`rsa.report.phi`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsa.errors import InputError
from rsa.io.store import ResultStore

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: Motion components in table order, with their unit.
COMPONENTS = ("tx", "ty", "tz", "rx", "ry", "rz")
LENGTHS = ("total_translation", "mtpm")
UNITS = {"tx": "mm", "ty": "mm", "tz": "mm", "rx": "°", "ry": "°", "rz": "°",
         "total_translation": "mm", "mtpm": "mm"}
LABELS = {"tx": "tx", "ty": "ty", "tz": "tz", "rx": "rx", "ry": "ry", "rz": "rz",
          "total_translation": "TT", "mtpm": "MTPM"}

_JSON_COLUMNS = {"exams": ("files", "sha256", "flags", "notes"),
                 "fits": ("rotation", "translation", "excluded"),
                 "motions": ("significant",), "runs": ("thresholds",)}


@dataclass(frozen=True, eq=False)
class Results:
    """The rows of one results store, JSON columns decoded, plus the raw manifest.

    Attributes
    ----------
    folder : Path
        The results folder.
    run : dict
        The ``runs`` row (study id, region, CPT code, cage, thresholds, version, hashes).
    tables : dict[str, list[dict]]
        ``exams, views, markers, beads, fits, motions, precision`` rows.
    manifest : dict
        The raw manifest TOML (``{}`` when it cannot be read any more).
    manifest_note : str
        Why the manifest could not be used, or that it changed since the analysis ('' if fine).
    """

    folder: Path
    run: dict[str, Any]
    tables: dict[str, list[dict[str, Any]]]
    manifest: dict[str, Any] = field(default_factory=dict)
    manifest_note: str = ""
    _index: dict[str, dict[str, list[dict[str, Any]]]] = field(init=False, repr=False)
    _exams: dict[str, list[dict[str, Any]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Rows grouped by subject once (reports of large cohorts stay linear in the rows).
        index: dict[str, dict[str, list]] = {}
        for table, rows in self.tables.items():
            groups: dict[str, list] = {}
            for r in rows:
                subj = r["subject"] if table == "exams" else \
                    str(r.get("exam_key") or "").split("/", 1)[0]
                groups.setdefault(subj, []).append(r)
            index[table] = groups
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_exams", {})

    # -- convenience ------------------------------------------------------------------------
    @property
    def study_id(self) -> str:
        return str(self.run.get("study_id") or "study")

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self.run.get("thresholds") or {})

    @property
    def study_section(self) -> dict[str, Any]:
        return dict(self.manifest.get("study") or {})

    def subjects(self) -> list[str]:
        """Subject pseudonyms in manifest (else first-seen) order."""
        seen = dict.fromkeys(e["subject"] for e in self.tables["exams"])
        order = [s.get("id") for s in self.manifest.get("subjects", []) if s.get("id") in seen]
        return order + [s for s in seen if s not in order]

    def exams(self, subject: str) -> list[dict[str, Any]]:
        """Exams of `subject` sorted by date then manifest order; adds ``day`` and ``series``."""
        if subject not in self._exams:
            self._exams[subject] = self._sorted_exams(subject)
        return [dict(e) for e in self._exams[subject]]

    def _sorted_exams(self, subject: str) -> list[dict[str, Any]]:
        spec = {e.get("id"): (i, e) for i, e in enumerate(self.subject_spec(subject)
                                                          .get("exams", []))}
        rows = [dict(e) for e in self._index["exams"].get(subject, [])]
        for r in rows:
            i, e = spec.get(r["exam_id"], (len(spec), {}))
            r["order"] = i
            r["series"] = e.get("series", "")
            r["time"] = str(e.get("time", ""))
        rows.sort(key=lambda r: (r["date"] or "", r["order"]))
        ref = next((r for r in rows if r["kind"] == "reference"), rows[0] if rows else None)
        for r in rows:
            r["day"] = _days(ref["date"], r["date"]) if ref else None
        return rows

    def segments(self, subject: str) -> dict[str, dict[str, Any]]:
        """Segment name → manifest entry (role, bead ids) for `subject` (fits order)."""
        spec = {g.get("name"): g for g in self.subject_spec(subject).get("segments", [])}
        names = dict.fromkeys(f["segment"] for f in self._index["fits"].get(subject, []))
        return {n: dict(spec.get(n, {})) for n in names}

    def rows(self, table: str, subject: str | None = None, **where: Any) -> list[dict]:
        """Rows of `table` (optionally of one subject's exams, filtered by equality)."""
        out = self.tables[table] if subject is None else self._index[table].get(subject, [])
        return [r for r in out if all(r.get(k) == v for k, v in where.items())]

    def motion_names(self) -> list[str]:
        names = [f"{m.get('segment')}/{m.get('relative_to')}"
                 for m in self.manifest.get("motions", [])]
        stored = dict.fromkeys(m["motion"] for m in self.tables["motions"])
        return [n for n in names if n in stored] + [n for n in stored if n not in names]

    def precision(self, motion: str) -> dict[str, dict[str, Any]]:
        """Component → pooled precision row of `motion` (empty when not computed)."""
        return {p["component"]: p for p in self.tables["precision"]
                if p["motion"] == motion and p["component"] in (*COMPONENTS, *LENGTHS)
                and p["upper"] is not None}

    def precision_note(self, motion: str) -> str:
        rows = [p for p in self.tables["precision"] if p["motion"] == motion]
        if not rows:
            return "no precision rows in the results"
        return next((p["form"] for p in rows if p["component"] == "*"), "")

    def subject_spec(self, subject: str) -> dict[str, Any]:
        """The subject's raw manifest entry (``{}`` when unknown or no manifest)."""
        return next((s for s in self.manifest.get("subjects", []) if s.get("id") == subject),
                    {})


def _days(ref: str | None, date: str | None) -> int | None:
    try:
        return (_dt.date.fromisoformat(date) - _dt.date.fromisoformat(ref)).days
    except (TypeError, ValueError):
        return None


def load_results(folder: str | Path) -> Results:
    """Read a results folder written by :func:`rsa.pipeline.analyse_study`.

    Parameters
    ----------
    folder : str or Path
        The ``--out`` folder of ``rsa analyze`` (or its ``results.sqlite``).

    Raises
    ------
    InputError
        No ``results.sqlite`` there, not an rsa results database, or no completed run in it.
    """
    folder = Path(folder)
    db = folder if folder.suffix == ".sqlite" else folder / "results.sqlite"
    if not db.is_file():
        raise InputError(f"{folder}: no results.sqlite here; run `rsa analyze STUDY.toml "
                         f"--out {folder}` first.")
    with ResultStore(db) as store:
        tables = {t: store.rows(t) for t in ("runs", "exams", "views", "markers", "beads",
                                               "fits", "motions", "precision")}
    if not tables["runs"]:
        raise InputError(f"{db}: the analysis has not finished (no run recorded); re-run "
                         f"`rsa analyze`.")
    for table, cols in _JSON_COLUMNS.items():
        for row in tables[table]:
            for c in cols:
                if isinstance(row.get(c), str):
                    try:
                        row[c] = json.loads(row[c])
                    except json.JSONDecodeError:
                        raise InputError(f"{db}: table {table}, column {c}: not JSON.") from None
    run = tables.pop("runs")[-1]
    manifest, note = _read_manifest(run)
    return Results(db.parent, run, tables, manifest, note)


def _read_manifest(run: dict[str, Any]) -> tuple[dict[str, Any], str]:
    path = Path(run.get("manifest") or "")
    if not path.is_file():
        return {}, "the study manifest is no longer at the path recorded by the analysis"
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}, "the study manifest can no longer be read"
    note = ""
    if hashlib.sha256(raw).hexdigest() != run.get("manifest_sha256"):
        note = "the study manifest changed after the analysis (documentation fields shown are " \
               "from the current file)"
    return data, note
