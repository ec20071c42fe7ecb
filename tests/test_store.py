"""Results store: per-exam transactions, replacement on re-run, resume keys, exports."""

import csv
import json
import sqlite3

import numpy as np
import pytest

from rsa.errors import InputError
from rsa.io.store import ResultStore


def _exam_rows(x):
    return {
        "exams": [{"subject": "S1", "exam_id": "E", "status": "ok", "inputs_key": "k1",
                   "files": ["a.dcm"], "software_version": "0"}],
        "beads": [{"segment": "bone", "bead_id": str(i), "x": x + i, "y": 0.0, "z": np.float64(1),
                   "cle_mm": float("nan")} for i in range(3)],
    }


def test_rerun_replaces_rows(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.write_exam("S1/E", _exam_rows(0.0))
        store.write_exam("S1/E", _exam_rows(10.0))
        beads = store.rows("beads")
        assert [b["x"] for b in beads] == [10.0, 11.0, 12.0]
        assert beads[0]["cle_mm"] is None  # NaN is stored as NULL
        assert store.done_exams() == {"S1/E": "k1"}
        assert json.loads(store.rows("exams")[0]["files"]) == ["a.dcm"]


def test_failed_transaction_leaves_previous_rows(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.write_exam("S1/E", _exam_rows(0.0))
        bad = _exam_rows(5.0)
        bad["beads"].append({"no_such_column": 1})
        with pytest.raises(ValueError, match="no_such_column"):
            store.write_exam("S1/E", bad)
        assert [b["x"] for b in store.rows("beads")] == [0.0, 1.0, 2.0]


def test_export_csv_json(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.write_exam("S1/E", _exam_rows(0.0))
        paths = store.export(tmp_path / "out")
    names = {p.name for p in paths}
    assert {"beads.csv", "exams.csv", "results.json"} <= names
    with open(tmp_path / "out" / "beads.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["bead_id"] for r in rows] == ["0", "1", "2"]
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["beads"][2]["x"] == 2.0


def test_schema_mismatch_is_clear(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema'")
    with pytest.raises(InputError, match="schema 99"):
        ResultStore(path)


def test_not_a_database(tmp_path):
    path = tmp_path / "r.sqlite"
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(InputError, match="not a usable rsa results database"):
        ResultStore(path)


def test_other_columns_are_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE beads (exam_key TEXT, x REAL)")
    with pytest.raises(InputError, match="table `beads` was written by another version"):
        ResultStore(path)
