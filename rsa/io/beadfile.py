"""Bead files: CSV with one row per 3D bead, header ``bead_id,x,y,z`` (+ optional columns).

Three uses share the format:

* ``rsa beads`` writes the 3D beads of a reference exam with ids (``P01``, ``P02``, …) and their
  quality, so that the user can assign ids to segments (DESIGN §4, segment definition (1));
* a manifest segment with ``definition = "beads"`` reads its beads' reference coordinates from
  such a file by id;
* a manual label override of an exam (``labels = "file.csv"`` in the manifest) gives
  approximate positions of named beads in that exam.

``rsa beads --group`` adds a ``group`` column (``G1``, ``G2``, …, empty for none: DESIGN §4,
segment definition (3)), read by :func:`read_bead_groups`; a manifest segment may then name a
group instead of listing bead ids. Coordinates are in the cage (lab) frame, mm. Other extra
columns are ignored on reading.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rsa.errors import InputError
from rsa.io.atomic import atomic_write_text


def read_bead_file(path: str | Path) -> dict[str, np.ndarray]:
    """Bead id → (3,) coordinates (mm) from a bead file; InputError naming file and line."""
    path = Path(path)
    return _parse(path, _rows(path)[1])


def read_bead_groups(path: str | Path) -> dict[str, str]:
    """Bead id → rigid group (``G1``, ``G2``, …; ``""`` for none) from the ``group`` column of
    a bead file written by ``rsa beads --group`` (DESIGN §4, segment definition (3)).

    Raises
    ------
    InputError
        The file has no ``group`` column, or is not a valid bead file (see
        :func:`read_bead_file`).
    """
    path = Path(path)
    header, rows = _rows(path)
    if "group" not in header:
        raise InputError(f"{path}: no `group` column (columns: {', '.join(header)}); expected a "
                         "bead file written by `rsa beads ... --group`.")
    ids = _parse(path, rows)
    return {b: (row["group"] or "").strip() for b, row in zip(ids, rows, strict=True)}


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    """Header and rows of a bead file's CSV."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except OSError as exc:
        raise InputError(f"{path}: cannot read bead file ({exc}).") from None
    return header, rows


def _parse(path: Path, rows: list[dict]) -> dict[str, np.ndarray]:
    """Validated bead id → (3,) coordinates, in file order (one entry per row)."""
    out: dict[str, np.ndarray] = {}
    for k, row in enumerate(rows, start=2):
        try:
            bead_id = row["bead_id"].strip()
            xyz = np.array([float(row[c]) for c in "xyz"])
        except (KeyError, ValueError, AttributeError, TypeError):
            raise InputError(f"{path}: line {k}: expected columns bead_id,x,y,z with numbers."
                             ) from None
        if not bead_id or not np.all(np.isfinite(xyz)):
            raise InputError(f"{path}: line {k}: expected a bead id and finite x, y, z.")
        if bead_id in out:
            raise InputError(f"{path}: line {k}: bead id {bead_id!r} appears twice.")
        out[bead_id] = xyz
    return out


def write_bead_file(path: str | Path, ids: Sequence[str], xyz_mm: np.ndarray,
                    columns: Mapping[str, Sequence] | None = None) -> Path:
    """Write a bead file atomically: ``bead_id,x,y,z`` and the extra ``columns`` (in order)."""
    columns = dict(columns or {})
    xyz = np.asarray(xyz_mm, float).reshape(-1, 3)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["bead_id", "x", "y", "z", *columns])
    for i, (b, p) in enumerate(zip(ids, xyz, strict=True)):
        extra = [_cell(v[i]) for v in columns.values()]
        w.writerow([b, *(f"{c:.4f}" for c in p), *extra])
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def _cell(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "" if not np.isfinite(v) else f"{float(v):.4f}"
    return str(v)
