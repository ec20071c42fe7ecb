"""Results store: embedded SQLite, one transaction per exam, CSV/JSON export (DESIGN §4).

Tables
------
``runs``       the latest run: start time, software version, manifest path and hash, study id,
               region and CPT code, cage, thresholds, duration.
``exams``      one row per analysed exam: subject, date, kind, input files and their SHA-256,
               status, software version, quality flags and notes (JSON lists).
``views``      calibration per exam and view: method, focus, reprojection RMS, markers used.
``markers``    identified cage markers per exam and view: id, role, detected u/v, reprojection
               residual (px) and object-space residual (mm).
``beads``      3D points per exam: segment, bead id, status ("labelled", "unassigned" bead,
               "rejected" candidate; "candidate" until the series is analysed), x/y/z (mm),
               CLE (mm), propagated 3D uncertainty (mm), whether the CLE is within the rays'
               uncertainty (``likely``) and whether a detection misfits a bead (``misfit``),
               2D positions and their σ per view, and the point's covariance from those σ
               (``cov_*_mm2``, the upper triangle; the segment fits' weights).
``fits``       per exam and segment: pose relative to the reference exam (R, t), ME, CN, beads
               used, excluded beads with reasons.
``motions``    per exam and motion (segment relative to reference segment): translations,
               rotations, total translation, MTPM, helical axis, significance flags.
``precision``  per subject and motion component: n, bias, SD, limits (from double exams).

Re-running an exam replaces its rows in one transaction, so an interrupted run leaves every exam
either complete or absent; ``done_exams`` lets a run resume where it stopped. Every row carries the
exam key, which links it to the input file hashes and the software version in ``exams``.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from rsa.errors import InputError
from rsa.io.atomic import atomic_write_text

SCHEMA_VERSION = 4

_TABLES: dict[str, Sequence[tuple[str, str]]] = {
    "exams": (("exam_key", "TEXT PRIMARY KEY"), ("subject", "TEXT"), ("exam_id", "TEXT"),
              ("date", "TEXT"), ("kind", "TEXT"), ("files", "TEXT"), ("sha256", "TEXT"),
              ("inputs_key", "TEXT"), ("status", "TEXT"), ("software_version", "TEXT"),
              ("flags", "TEXT"), ("notes", "TEXT"), ("seconds", "REAL")),
    "views": (("exam_key", "TEXT"), ("view", "TEXT"), ("method", "TEXT"), ("focus_x", "REAL"),
              ("focus_y", "REAL"), ("focus_z", "REAL"), ("rms_px", "REAL"), ("rms_mm", "REAL"),
              ("n_fiducials", "INTEGER"), ("n_controls", "INTEGER"), ("n_beads_2d", "INTEGER")),
    "markers": (("exam_key", "TEXT"), ("view", "TEXT"), ("marker_id", "TEXT"),
                ("role", "TEXT"), ("u", "REAL"), ("v", "REAL"), ("du_px", "REAL"),
                ("dv_px", "REAL"), ("residual_mm", "REAL")),
    "beads": (("exam_key", "TEXT"), ("segment", "TEXT"), ("bead_id", "TEXT"),
              ("status", "TEXT"), ("x", "REAL"), ("y", "REAL"), ("z", "REAL"),
              ("cle_mm", "REAL"), ("sigma_mm", "REAL"), ("likely", "INTEGER"),
              ("misfit", "INTEGER"), ("u_a", "REAL"), ("v_a", "REAL"),
              ("u_b", "REAL"), ("v_b", "REAL"), ("sigma_u_a_px", "REAL"),
              ("sigma_v_a_px", "REAL"), ("sigma_u_b_px", "REAL"), ("sigma_v_b_px", "REAL"),
              ("cov_xx_mm2", "REAL"), ("cov_xy_mm2", "REAL"), ("cov_xz_mm2", "REAL"),
              ("cov_yy_mm2", "REAL"), ("cov_yz_mm2", "REAL"), ("cov_zz_mm2", "REAL")),
    "fits": (("exam_key", "TEXT"), ("segment", "TEXT"), ("rotation", "TEXT"),
             ("translation", "TEXT"), ("me_mm", "REAL"), ("cn", "REAL"),
             ("n_beads", "INTEGER"), ("n_reference", "INTEGER"), ("excluded", "TEXT")),
    "motions": (("exam_key", "TEXT"), ("motion", "TEXT"), ("segment", "TEXT"),
                ("reference", "TEXT"), ("tx", "REAL"), ("ty", "REAL"), ("tz", "REAL"),
                ("rx", "REAL"), ("ry", "REAL"), ("rz", "REAL"), ("total_translation", "REAL"),
                ("mtpm", "REAL"), ("mtpm_point", "TEXT"), ("helical_angle", "REAL"),
                ("helical_slide", "REAL"), ("euler_order", "TEXT"), ("significant", "TEXT")),
    "precision": (("subject", "TEXT"), ("motion", "TEXT"), ("component", "TEXT"),
                  ("n", "INTEGER"), ("bias", "REAL"), ("sd", "REAL"), ("lower", "REAL"),
                  ("upper", "REAL"), ("repeatability", "REAL"), ("form", "TEXT")),
    "runs": (("started", "TEXT"), ("software_version", "TEXT"), ("manifest", "TEXT"),
             ("manifest_sha256", "TEXT"), ("study_id", "TEXT"), ("region", "TEXT"),
             ("cpt_code", "TEXT"), ("cage", "TEXT"), ("thresholds", "TEXT"),
             ("seconds", "REAL")),
}

#: Tables whose rows belong to one exam (replaced together).
EXAM_TABLES = ("exams", "views", "markers", "beads", "fits", "motions")


class ResultStore:
    """SQLite results database (``results.sqlite`` in the output folder).

    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._create()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise InputError(f"{self.path}: not a usable rsa results database ({exc}).") from None
        except InputError:
            self._db.close()
            raise

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def _create(self) -> None:
        with self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row and int(row[0]) != SCHEMA_VERSION:
                raise InputError(f"{self.path}: results schema {row[0]}, this rsa writes "
                                 f"{SCHEMA_VERSION}; use a new output folder.")
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)",
                             (str(SCHEMA_VERSION),))
            for name, cols in _TABLES.items():
                spec = ", ".join(f"{c} {t}" for c, t in cols)
                self._db.execute(f"CREATE TABLE IF NOT EXISTS {name} ({spec})")
                have = [r[1] for r in self._db.execute(f"PRAGMA table_info({name})")]
                if have != [c for c, _ in cols]:
                    raise InputError(f"{self.path}: table `{name}` was written by another "
                                     f"version of rsa (columns differ); use a new output "
                                     f"folder.")

    # -- writing --------------------------------------------------------------------------
    def write_exam(self, exam_key: str, rows: Mapping[str, Iterable[Mapping[str, Any]]]) -> None:
        """Replace every row of ``exam_key`` by ``rows`` (table → dicts) in one transaction."""
        unknown = set(rows) - set(EXAM_TABLES)
        if unknown:
            raise ValueError(f"Unknown exam tables {sorted(unknown)}")
        with self._db:
            for table in EXAM_TABLES:
                self._db.execute(f"DELETE FROM {table} WHERE exam_key = ?", (exam_key,))
            for table, items in rows.items():
                for item in items:
                    self._insert(table, {"exam_key": exam_key, **item})

    def replace_rows(self, table: str, rows: Iterable[Mapping[str, Any]], *,
                     where: Mapping[str, Any]) -> None:
        """Replace the rows of ``table`` matching ``where`` (column → value) in one transaction."""
        cond = " AND ".join(f"{k} = ?" for k in where) or "1"
        with self._db:
            self._db.execute(f"DELETE FROM {table} WHERE {cond}", tuple(where.values()))
            for item in rows:
                self._insert(table, item)

    def _insert(self, table: str, item: Mapping[str, Any]) -> None:
        cols = [c for c, _ in _TABLES[table]]
        extra = set(item) - set(cols)
        if extra:
            raise ValueError(f"Unknown columns {sorted(extra)} for table {table}")
        values = [_to_sql(item.get(c)) for c in cols]
        self._db.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(cols))})", values)

    # -- reading --------------------------------------------------------------------------
    def done_exams(self) -> dict[str, str]:
        """Exam keys that completed, mapped to the key of their inputs (for resuming)."""
        rows = self._db.execute("SELECT exam_key, inputs_key FROM exams WHERE status != 'failed'")
        return dict(rows.fetchall())

    def rows(self, table: str, **where: Any) -> list[dict[str, Any]]:
        """All rows of ``table`` (optionally filtered by equality) as dicts."""
        if table not in _TABLES:
            raise ValueError(f"Unknown table {table}")
        cond = " AND ".join(f"{k} = ?" for k in where)
        sql = f"SELECT * FROM {table}" + (f" WHERE {cond}" if cond else "")
        with closing(self._db.execute(sql, tuple(where.values()))) as cur:
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    # -- export ---------------------------------------------------------------------------
    def export(self, folder: str | Path) -> list[Path]:
        """Write every table as CSV and all of them as one ``results.json`` (atomically)."""
        folder = Path(folder)
        written = []
        everything = {}
        for table in _TABLES:
            rows = self.rows(table)
            everything[table] = rows
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=[c for c, _ in _TABLES[table]],
                                    lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            written.append(atomic_write_text(folder / f"{table}.csv", buf.getvalue()))
        text = json.dumps(everything, indent=1, allow_nan=False)
        written.append(atomic_write_text(folder / "results.json", text))
        return written


def _to_sql(value: Any) -> Any:
    """Store scalars as they are, containers as JSON text, NumPy scalars as Python ones."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    if hasattr(value, "tolist"):
        value = value.tolist()
        if not isinstance(value, (list, dict)):
            return value
    return json.dumps(value)
