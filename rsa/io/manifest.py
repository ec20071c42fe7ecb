"""Study manifest (TOML, schema ``rsa-study/1``): reading and validation (DESIGN §4).

The schema is documented in ``examples/README.md``. Every problem is reported as an
:class:`~rsa.errors.InputError` naming the manifest file and the offending field, before any
analysis starts or anything is written.
"""

from __future__ import annotations

import datetime as _dt
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsa.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SCHEMA = "rsa-study/1"
REGIONS = {"spine": "0348T", "upper_extremity": "0349T", "lower_extremity": "0350T"}
EXAM_KINDS = ("reference", "follow-up", "double", "dynamic")
DEFAULT_THRESHOLDS = {"gate_mm": 0.5, "me_limit_mm": 0.35, "cn_limit": 150.0,
                      "cle_limit_mm": 0.5, "unstable_limit_mm": 0.35, "label_tol_mm": 0.3,
                      "label_gate_mm": 1.5,
                      "min_beads": 3, "model_min_exams": 2}


@dataclass(frozen=True)
class ImageSpec:
    """One image file of an exam and the cage views it holds (two for side-by-side files)."""

    file: Path
    views: tuple[str, ...]


@dataclass(frozen=True)
class ExamSpec:
    """One exam of a subject."""

    id: str
    date: _dt.date
    kind: str
    images: tuple[ImageSpec, ...]
    time: str = ""
    double_of: str | None = None
    labels: Path | None = None   # optional manual label override (CSV: bead_id,x,y,z)

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(i.file for i in self.images)


@dataclass(frozen=True, eq=False)
class SegmentSpec:
    """A rigid segment: bead ids and approximate reference-exam coordinates (mm)."""

    name: str
    role: str
    bead_ids: tuple[str, ...]
    xyz_mm: np.ndarray
    tolerance_mm: float


@dataclass(frozen=True, eq=False)
class MotionSpec:
    """Motion of `segment` relative to `relative_to` to report."""

    segment: str
    relative_to: str
    point: str | np.ndarray = "centroid"
    order: str = "xyz"
    points_mm: np.ndarray | None = None  # virtual points for MTPM (default: segment beads)

    @property
    def name(self) -> str:
        return f"{self.segment}/{self.relative_to}"


@dataclass(frozen=True)
class SubjectSpec:
    id: str
    segments: tuple[SegmentSpec, ...]
    exams: tuple[ExamSpec, ...]

    @property
    def reference(self) -> ExamSpec:
        return next(e for e in self.exams if e.kind == "reference")

    def segment(self, name: str) -> SegmentSpec:
        return next(s for s in self.segments if s.name == name)


@dataclass(frozen=True)
class StudySpec:
    """A validated study manifest."""

    path: Path
    id: str
    cage: str
    region: str
    thresholds: dict[str, float]
    motions: tuple[MotionSpec, ...]
    subjects: tuple[SubjectSpec, ...]
    description: str = ""
    synthetic: bool = False
    sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def cpt_code(self) -> str:
        return REGIONS[self.region]


class _Ctx:
    """Error helper: prefixes messages with the manifest path and field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, where: str, msg: str) -> InputError:
        return InputError(f"{self.path}: `{where}`: {msg}")

    def get(self, d: dict, key: str, where: str, kind: type | tuple[type, ...],
            default: Any = ...) -> Any:
        if key not in d:
            if default is ...:
                raise self.error(f"{where}.{key}" if where else key, "missing")
            return default
        val = d[key]
        if not isinstance(val, kind) or (kind in (int, float) and isinstance(val, bool)):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(
                k.__name__ for k in kind)
            raise self.error(f"{where}.{key}" if where else key,
                             f"expected {names}, got {type(val).__name__} {val!r}")
        return val


def load_manifest(path: str | Path, *, check_files: bool = True,
                  segments_required: bool = True) -> StudySpec:
    """Read and validate a study manifest.

    Parameters
    ----------
    path : str or Path
        The TOML manifest. Image paths inside it are relative to its folder.
    check_files : bool
        Check that every image (and label override) file exists.
    segments_required : bool
        False accepts subjects without segments and a study without motions: the manifest of
        a bead listing (``rsa beads``), written before the segments are known.

    Raises
    ------
    InputError
        Unreadable TOML, wrong schema, missing/ill-typed fields, unknown region or exam kind,
        unknown segment in a motion, duplicate segment/exam ids, no or several reference exams,
        a follow-up dated before the reference, a double exam without a valid partner, missing
        image files.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: manifest file not found.")
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid TOML ({exc}).") from None
    import hashlib

    c = _Ctx(path)
    schema = c.get(data, "schema", "", str, SCHEMA)
    if schema != SCHEMA:
        raise c.error("schema", f"expected {SCHEMA!r}, got {schema!r}")
    study = c.get(data, "study", "", dict)
    sid = c.get(study, "id", "study", str)
    cage = c.get(study, "cage", "study", str)
    region = c.get(study, "region", "study", str)
    if region not in REGIONS:
        raise c.error("study.region", f"expected one of {sorted(REGIONS)}, got {region!r}")
    for key in ("description", "indication", "impression"):
        c.get(study, key, "study", str, "")  # optional documentation fields: type-checked
    thresholds = dict(DEFAULT_THRESHOLDS)
    for key, val in c.get(data, "thresholds", "", dict, {}).items():
        if key not in DEFAULT_THRESHOLDS:
            raise c.error(f"thresholds.{key}",
                          f"unknown threshold (known: {', '.join(DEFAULT_THRESHOLDS)})")
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not val > 0:
            raise c.error(f"thresholds.{key}", f"expected a positive number, got {val!r}")
        thresholds[key] = float(val)
    thresholds["min_beads"] = max(3, int(thresholds["min_beads"]))

    subjects_raw = c.get(data, "subjects", "", list)
    if not subjects_raw:
        raise c.error("subjects", "at least one subject is required")
    subjects = []
    seen_subjects: set[str] = set()
    for i, s in enumerate(subjects_raw):
        subj = _subject(c, s, f"subjects[{i}]", path.parent, check_files, segments_required)
        if subj.id in seen_subjects:
            raise c.error(f"subjects[{i}].id", f"duplicate subject id {subj.id!r}")
        seen_subjects.add(subj.id)
        subjects.append(subj)

    seg_names = set.intersection(*({g.name for g in s.segments} for s in subjects))
    motions = []
    for i, m in enumerate(c.get(data, "motions", "", list, [])):
        where = f"motions[{i}]"
        seg = c.get(m, "segment", where, str)
        ref = c.get(m, "relative_to", where, str)
        for key, name in (("segment", seg), ("relative_to", ref)):
            if name not in seg_names:
                raise c.error(f"{where}.{key}", f"unknown segment {name!r} (segments of every "
                              f"subject: {', '.join(sorted(seg_names)) or 'none'})")
        if seg == ref:
            raise c.error(where, "a segment cannot move relative to itself")
        frame = c.get(m, "frame", where, str, "lab")
        if frame != "lab":
            raise c.error(f"{where}.frame", f"only 'lab' (cage axes) is supported, got {frame!r}")
        point = c.get(m, "point", where, (str, list), "centroid")
        if isinstance(point, list):
            point = _xyz(c, point, f"{where}.point", single=True)
        elif point != "centroid":
            raise c.error(f"{where}.point", f"expected 'centroid' or [x, y, z], got {point!r}")
        order = c.get(m, "euler_order", where, str, "xyz")
        if len(order) != 3 or set(order) - set("xyz") or order[0] == order[1] \
                or order[1] == order[2]:
            raise c.error(f"{where}.euler_order", f"expected an order like 'xyz', got {order!r}")
        pts = m.get("points_mm")
        motions.append(MotionSpec(seg, ref, point, order,
                                  None if pts is None else _xyz(c, pts, f"{where}.points_mm")))
    if not motions and segments_required:
        raise c.error("motions", "at least one motion (segment relative_to segment) is required")
    return StudySpec(path=path, id=sid, cage=cage, region=region, thresholds=thresholds,
                     motions=tuple(motions), subjects=tuple(subjects),
                     description=c.get(study, "description", "study", str, ""),
                     synthetic=bool(study.get("synthetic", False)),
                     sha256=hashlib.sha256(raw).hexdigest())


def _xyz(c: _Ctx, value: Any, where: str, *, single: bool = False) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise c.error(where, "expected numbers (mm)") from None
    shape_ok = arr.shape == (3,) if single else (arr.ndim == 2 and arr.shape[1] == 3)
    if not shape_ok:
        raise c.error(where, f"expected {'[x, y, z]' if single else '[[x, y, z], ...]'}, got "
                      f"shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise c.error(where, "coordinates must be finite")
    return arr


def _beads_from_file(c: _Ctx, g: dict, w: str, root: Path) -> tuple[list[str], np.ndarray]:
    """Segment definitions (1) and (3): bead ids of a bead file written by ``rsa beads`` (or by
    hand) for the subject's reference exam — listed in ``beads``, or all beads of one rigid
    ``group`` of ``rsa beads --group``; the file gives their reference coordinates."""
    from rsa.io.beadfile import read_bead_file, read_bead_groups

    if ("beads" in g) == ("group" in g):
        raise c.error(w, "expected exactly one of `beads` (a list of bead ids) and `group` (a "
                      "group of `rsa beads --group`, e.g. \"G1\"), got "
                      f"{'both' if 'beads' in g else 'neither'}")
    group = c.get(g, "group", w, str) if "group" in g else None
    if group is None:
        ids = c.get(g, "beads", w, list)
        if not ids or not all(isinstance(x, str) for x in ids):
            raise c.error(f"{w}.beads", "expected a list of bead ids (strings) from the bead "
                          "file")
    path = root / c.get(g, "bead_file", w, str)
    if not path.is_file():
        raise c.error(f"{w}.bead_file", f"bead file not found: {path}")
    try:
        table = read_bead_file(path)
    except InputError as exc:
        raise c.error(f"{w}.bead_file", str(exc)) from None
    if group is not None:
        try:
            groups = read_bead_groups(path)
        except InputError as exc:
            raise c.error(f"{w}.group", str(exc)) from None
        ids = [b for b, x in groups.items() if x == group]
        if not ids:
            known = sorted(set(groups.values()) - {""}, key=lambda x: (len(x), x))
            raise c.error(f"{w}.group", f"no bead of group {group!r} in {path.name} (groups: "
                          f"{', '.join(known) or 'none'})")
    unknown = [b for b in ids if b not in table]
    if unknown:
        raise c.error(f"{w}.beads", f"not in {path.name}: {', '.join(unknown)}")
    return ids, np.array([table[b] for b in ids])


def _subject(c: _Ctx, s: dict, where: str, root: Path, check_files: bool,
             segments_required: bool = True) -> SubjectSpec:
    sid = c.get(s, "id", where, str)
    for key in ("indication", "impression"):
        c.get(s, key, where, str, "")
    surgery = s.get("surgery_date")
    if surgery is not None and not isinstance(surgery, _dt.date):
        try:
            _dt.date.fromisoformat(str(surgery))
        except ValueError:
            raise c.error(f"{where}.surgery_date", f"expected YYYY-MM-DD, got {surgery!r}"
                          ) from None
    segments = []
    if segments_required and "segments" not in s:
        raise c.error(f"{where}.segments", "missing (to define segments by bead ids, list the "
                      "reference exam's beads first: `rsa beads STUDY.toml --out beads.csv`)")
    for j, g in enumerate(c.get(s, "segments", where, list, [])):
        w = f"{where}.segments[{j}]"
        name = c.get(g, "name", w, str)
        definition = c.get(g, "definition", w, str, "coordinates")
        if definition == "coordinates":
            xyz = _xyz(c, c.get(g, "xyz_mm", w, list), f"{w}.xyz_mm")
            ids = c.get(g, "bead_ids", w, list,
                        [f"{name}{k + 1:02d}" for k in range(len(xyz))])
            if len(ids) != len(xyz) or not all(isinstance(x, str) for x in ids):
                raise c.error(f"{w}.bead_ids",
                              f"expected {len(xyz)} strings (one per xyz_mm row)")
            tol_default = 1.0
        elif definition == "beads":
            ids, xyz = _beads_from_file(c, g, w, root)
            tol_default = 0.5
        else:
            hint = (" (automatic segments: `rsa beads STUDY.toml --out FILE --group`, then "
                    "definition = 'beads' with group = 'G1', ...)" if definition == "auto" else "")
            raise c.error(f"{w}.definition", f"expected 'coordinates' or 'beads', got "
                          f"{definition!r}{hint}")
        if len(set(ids)) != len(ids):
            raise c.error(f"{w}.bead_ids", "duplicate bead id")
        if len(xyz) < 3:
            raise c.error(f"{w}.xyz_mm", f"a segment needs ≥ 3 beads, got {len(xyz)}")
        tol = c.get(g, "tolerance_mm", w, (int, float), tol_default)
        if tol <= 0:
            raise c.error(f"{w}.tolerance_mm", f"expected > 0, got {tol}")
        segments.append(SegmentSpec(name, c.get(g, "role", w, str, "bone"), tuple(ids), xyz,
                                    float(tol)))
    names = [g.name for g in segments]
    if len(set(names)) != len(names):
        raise c.error(f"{where}.segments", "duplicate segment name")
    all_ids = [b for g in segments for b in g.bead_ids]
    if len(set(all_ids)) != len(all_ids):
        raise c.error(f"{where}.segments", "a bead id is used by two segments")

    exams = []
    for j, e in enumerate(c.get(s, "exams", where, list)):
        w = f"{where}.exams[{j}]"
        eid = c.get(e, "id", w, str)
        kind = c.get(e, "kind", w, str)
        if kind not in EXAM_KINDS:
            raise c.error(f"{w}.kind", f"expected one of {EXAM_KINDS}, got {kind!r}")
        date = e.get("date")
        if isinstance(date, str):
            try:
                date = _dt.date.fromisoformat(date)
            except ValueError:
                raise c.error(f"{w}.date", f"expected YYYY-MM-DD, got {date!r}") from None
        if isinstance(date, _dt.datetime):
            date = date.date()
        if not isinstance(date, _dt.date):
            raise c.error(f"{w}.date", "missing or not a date")
        images = []
        for k, im in enumerate(c.get(e, "images", w, list)):
            wi = f"{w}.images[{k}]"
            f = root / c.get(im, "file", wi, str)
            views = c.get(im, "views", wi, list)
            if not views or not all(isinstance(v, str) for v in views):
                raise c.error(f"{wi}.views", "expected a list of view names")
            if check_files and not f.is_file():
                raise c.error(f"{wi}.file", f"image file not found: {f}")
            images.append(ImageSpec(f, tuple(views)))
        views = [v for im in images for v in im.views]
        if len(views) != 2 or len(set(views)) != 2:
            raise c.error(f"{w}.images", f"expected two distinct views in all, got {views}")
        labels = e.get("labels")
        if labels is not None:
            labels = root / str(labels)
            if check_files and not labels.is_file():
                raise c.error(f"{w}.labels", f"label file not found: {labels}")
        exams.append(ExamSpec(eid, date, kind, tuple(images), str(e.get("time", "")),
                              e.get("double_of"), labels))
    ids = [e.id for e in exams]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise c.error(f"{where}.exams", f"duplicate exam id {sorted(dup)[0]!r}")
    refs = [e for e in exams if e.kind == "reference"]
    if len(refs) != 1:
        raise c.error(f"{where}.exams", f"expected exactly one reference exam, got {len(refs)}")
    for j, e in enumerate(exams):
        if e.kind == "follow-up" and e.date < refs[0].date:
            raise c.error(f"{where}.exams[{j}].date", f"follow-up {e.id!r} ({e.date}) is dated "
                          f"before the reference exam {refs[0].id!r} ({refs[0].date})")
        if e.kind == "double" and (e.double_of not in ids or e.double_of == e.id):
            raise c.error(f"{where}.exams[{j}].double_of",
                          f"expected the id of another exam, got {e.double_of!r}")
    return SubjectSpec(sid, tuple(segments), tuple(exams))
