"""Exam → measurement → study results orchestration (DESIGN §1, §7). No numerics of its own.

Per exam (:func:`measure_exam`, independent, runs in worker processes): read both views →
detect beads (:func:`rsa.detect.detect_beads`) → identify cage markers and calibrate
(:func:`rsa.calibrate.calibrate_exam`) → patient beads → correspondence by crossing-line error
and triangulation, with beads overlapping in one view split on the other view's epipolar lines
(:func:`rsa.correspond.correspond`).

Per subject (:func:`rsa.series.analyse_subject`): labelling, fits, motions; per study: precision
from double exams and significance. Results go to the SQLite store, one transaction per exam,
then CSV/JSON exports (:mod:`rsa.io.store`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from rsa import __version__
from rsa.cage import Cage, load_cage
from rsa.calibrate import View, calibrate_exam, calibrate_view, exam_calibration
from rsa.correspond import correspond
from rsa.detect import Beads2D, DetectOptions, detect_beads
from rsa.detect_lines import LineSplit, split_on_lines
from rsa.errors import InputError, RsaError, RsaWarning
from rsa.io.images import Radiograph, read_radiograph, split_views
from rsa.io.manifest import ExamSpec, ImageSpec, StudySpec, load_manifest
from rsa.io.store import ResultStore
from rsa.series import COMPONENTS, analyse_subject, significance, study_precision


@dataclass(frozen=True, eq=False)
class ExamMeasurement:
    """3D patient beads of one exam with their provenance and calibration summary."""

    subject: str
    exam_id: str
    points_mm: np.ndarray        # (P, 3)
    cle_mm: np.ndarray           # (P,)
    uv_a: np.ndarray             # (P, 2) px in the first view
    uv_b: np.ndarray             # (P, 2) px in the second view
    ambiguous: np.ndarray        # (P,) correspondence ambiguous within the gate
    views: tuple[dict, ...]      # calibration summary per view
    sha256: tuple[str, ...]      # per image file
    inputs_key: str
    seconds: dict[str, float] = field(default_factory=dict)
    sigma_mm: np.ndarray | None = None   # (P,) 3D uncertainty from the 2D centre uncertainties
    likely: np.ndarray | None = None     # (P,) CLE consistent with the rays' uncertainty
    misfit: np.ndarray | None = None     # (P,) a detection misfits a bead (flagged occluded)
    sigma_px: np.ndarray | None = None   # (P, 2, 2) centre σ per view (a, b) and axis (u, v), px:
                                         # the weights of the point's triangulation
    cov_mm2: np.ndarray | None = None    # (P, 3, 3) first-order covariance of each point from
                                         # sigma_px (mm²; NaN where the triangulation gave none)

    def __post_init__(self) -> None:
        n = len(self.cle_mm)   # absent quality arrays: every point clean
        if self.likely is None:
            object.__setattr__(self, "likely", np.ones(n, bool))
        if self.misfit is None:
            object.__setattr__(self, "misfit", np.zeros(n, bool))

    @property
    def key(self) -> str:
        return f"{self.subject}/{self.exam_id}"

    @property
    def weak(self) -> np.ndarray:
        """(P,) points that are only candidates: the pair's CLE is beyond its uncertainty
        (:attr:`rsa.triangulate.RayMatch.likely`) or a detection misfits a bead model. Such a
        point is reported as a bead only when the labelling claims it (see :func:`bead_status`).
        """
        return ~self.likely | self.misfit


def bead_status(m: ExamMeasurement, labelled: np.ndarray) -> np.ndarray:
    """Status of each 3D point of an exam: "labelled" (claimed by a segment), "unassigned"
    (a clean bead pair no segment claims) or "rejected" (an unclaimed candidate, see
    :attr:`ExamMeasurement.weak`: not reported as a bead).

    ``labelled`` is a (P,) bool mask or an array of labelled point indices.
    """
    lab = np.zeros(len(m.cle_mm), bool)
    lab[np.asarray(labelled)] = True
    return np.where(lab, "labelled", np.where(m.weak, "rejected", "unassigned"))


def inputs_key(exam: ExamSpec, study: StudySpec, hashes: tuple[str, ...]) -> str:
    """Hash of what determines an exam's measurement: images, cage, thresholds, version."""
    h = hashlib.sha256()
    h.update(json.dumps([list(hashes), study.cage, study.thresholds, __version__,
                         [list(i.views) for i in exam.images]]).encode())
    return h.hexdigest()[:32]


def _image_views(im: ImageSpec) -> dict[str, Radiograph]:
    """The views of one image file (the manifest names a side-by-side file's left to right)."""
    r = read_radiograph(im.file)
    if len(im.views) == 1:
        return {im.views[0]: r}
    return split_views(replace(r, layout=tuple(im.views)))


# rsa.io returns every image with beads bright (MONOCHROME1 inverted, PNG/TIFF per the caller's
# `invert`), so the polarity is known here and not guessed from the image.
_DETECT = DetectOptions(polarity="bright")


def _detect(r: Radiograph) -> Beads2D:
    return detect_beads(r.image, pixel_spacing_mm=r.pixel_spacing_mm, options=_DETECT)


def _read_and_detect(im: ImageSpec, view: str, cage: Cage) -> tuple[Beads2D, View | None, str]:
    """A view pool's job: read one view of an image file, detect its beads and calibrate the
    view (None where that fails: :func:`rsa.calibrate.calibrate_exam` then calibrates the exam
    again and says why); and the SHA-256 of the file it read."""
    r = _image_views(im)[view]
    beads = _detect(r)
    try:
        cal = calibrate_view(beads, cage, view=view, pixel_spacing_mm=r.pixel_spacing_mm,
                             image_shape=r.shape)
    except RsaError:        # said again, with the exam's name, by calibrate_exam
        cal = None
    return beads, cal, r.sha256


def _read_and_split(im: ImageSpec, view: str, sha256: str, beads: Beads2D, lines: dict,
                    pixel_spacing_mm) -> LineSplit:
    """A view pool's job: read one view (the file whose SHA-256 is ``sha256``) and split its
    overlapping beads on the other view's lines (:func:`rsa.correspond.correspond`'s
    ``split_elsewhere``)."""
    r = _image_views(im)[view]
    _same_file(r.path, r.sha256, sha256)
    return split_on_lines(r.image, beads, **lines, pixel_spacing_mm=pixel_spacing_mm,
                          options=_DETECT)


def _same_file(path: Path, got: str, expected: str) -> None:
    """A view pool's worker reads the file again: it must be the one this process read."""
    if got != expected:
        raise InputError(f"{path}: the file changed while the exam was being analysed (two "
                         f"reads differ); analyse the exam again once the file is complete.")


def _load_views(exam: ExamSpec) -> dict[str, Radiograph]:
    views: dict[str, Radiograph] = {}
    for im in exam.images:
        views.update(_image_views(im))
    names = list(views)
    a, b = views[names[0]], views[names[1]]
    if a.shape != b.shape or not np.allclose(a.pixel_spacing_mm, b.pixel_spacing_mm):
        raise InputError(f"exam {exam.id}: the two views differ in size or pixel spacing "
                         f"({a.path.name}: {a.shape} px at {a.pixel_spacing_mm} mm, "
                         f"{b.path.name}: {b.shape} px at {b.pixel_spacing_mm} mm); a stereo "
                         f"pair comes from one detector type — are the files mixed up?")
    return views


def measure_exam(exam: ExamSpec, subject: str, study: StudySpec, cage: Cage | None = None,
                 *, view_threads: int = 1, view_pool: Executor | None = None
                 ) -> ExamMeasurement:
    """Detect, calibrate, match and triangulate one exam (see module docstring).

    ``view_pool`` (two worker processes) reads, detects and calibrates each view in a worker
    (with that view's pixel spacing and shape, which :func:`_load_views` requires to agree)
    while this process reads the views for the later stages (the images are not sent back: that
    would cost more than reading them): the shortest time for one exam. When both views have
    beads to split on epipolar lines, one view's splits are fitted in a worker (reading the view
    again) while this process fits the other's (``split_elsewhere`` of
    :func:`rsa.correspond.correspond`). The measurement is the same as without the pool
    (exactly so when the views' pixel spacings are equal, as in one detector's pair). Otherwise
    ``view_threads`` > 1 detects the two views in parallel threads (NumPy releases the GIL in
    its larger operations, but the fits' many small ones contend for it: about 20 % slower than
    two processes on the spine phantom). Process-pool workers that each measure whole exams keep
    one thread each. With a view pool, ``seconds["detect"]`` is the wait for the workers
    (detection and each view's calibration) after this process has read the views, and
    ``seconds["calibrate"]`` the check of the two calibrations against each other.
    """
    cage = cage or load_cage(_cage_ref(study))
    secs: dict[str, float] = {}
    image_of = {v: im for im in exam.images for v in im.views}
    jobs = {v: view_pool.submit(_read_and_detect, im, v, cage)
            for v, im in image_of.items()} if view_pool is not None else {}
    calibrated: dict[str, View | None] = {}
    try:
        t = time.perf_counter()
        views = _load_views(exam)
        secs["read"] = time.perf_counter() - t
        t = time.perf_counter()
        if jobs:
            beads = {}
            for v in views:
                beads[v], calibrated[v], sha = jobs[v].result()
                _same_file(views[v].path, sha, views[v].sha256)
        elif view_threads > 1 and len(views) > 1:
            with ThreadPoolExecutor(max_workers=min(view_threads, len(views))) as pool:
                beads = dict(zip(views, pool.map(_detect, views.values()), strict=True))
        else:
            beads = {v: _detect(r) for v, r in views.items()}
    finally:
        for job in jobs.values():   # e.g. a view that failed to read: the other is not wanted
            job.cancel()
    secs["detect"] = time.perf_counter() - t
    names = tuple(views)
    t = time.perf_counter()
    first = views[names[0]]
    try:
        if all(calibrated.get(v) is not None for v in names):   # by the view pool's workers
            cal = exam_calibration(calibrated[names[0]], calibrated[names[1]], cage, views=names)
        else:
            cal = calibrate_exam(beads[names[0]], beads[names[1]], cage, views=names,
                                 pixel_spacing_mm=first.pixel_spacing_mm, image_shape=first.shape)
    except RsaError as exc:
        raise type(exc)(f"exam {subject}/{exam.id}: {exc}") from None
    secs["calibrate"] = time.perf_counter() - t
    t = time.perf_counter()
    cviews = (cal.a, cal.b)
    elsewhere = None
    if view_pool is not None:
        def elsewhere(x: int, lines: dict) -> Future:
            v = names[x]
            return view_pool.submit(_read_and_split, image_of[v], v, views[v].sha256, beads[v],
                                    lines, first.pixel_spacing_mm)
    cor = correspond((views[names[0]].image, views[names[1]].image), (beads[names[0]],
                     beads[names[1]]), cal, pixel_spacing_mm=first.pixel_spacing_mm,
                     gate_mm=study.thresholds["gate_mm"], options=_DETECT,
                     split_elsewhere=elsewhere)
    m, sigma, misfit = cor.match, cor.sigma_mm, cor.misfit
    uv_a, uv_b = cor.uv_px
    secs["match"] = time.perf_counter() - t
    summary = tuple({"view": v.name, "method": v.method_label, "focus": v.focus_mm.tolist(),
                     "rms_px": float(v.rms_px),
                     "rms_mm": float(v.rms_mm),
                     "n_fiducials": int(v.identification.n_fiducials),
                     "n_controls": int(v.identification.n_controls),
                     "n_beads_2d": len(beads[n].uv_px),
                     "markers": [{"view": v.name, "marker_id": str(i), "role": str(r),
                                  "u": uv[0], "v": uv[1], "du_px": d[0], "dv_px": d[1],
                                  "residual_mm": mm}
                                 for i, r, uv, d, mm in zip(v.marker_ids, v.marker_roles,
                                                           v.marker_uv_px.tolist(),
                                                           v.residuals_px.tolist(),
                                                           v.residuals_mm.tolist(), strict=True)]}
                    for v, n in zip(cviews, names, strict=True))
    hashes = tuple(dict.fromkeys(r.sha256 for r in views.values()))
    return ExamMeasurement(subject, exam.id, m.points_mm, m.cle_mm, uv_a[m.pairs[:, 0]],
                           uv_b[m.pairs[:, 1]], m.ambiguous, summary, hashes,
                           inputs_key(exam, study, hashes), secs, sigma, m.likely, misfit,
                           cor.pair_sigma_px, cor.cov_mm2)


#: 3D uncertainty (mm) that neither a bead's propagated 2D uncertainty nor its CLE sees
#: (calibration, model error), added in quadrature to the labelling and screening σ.
_FLOOR_MM = 0.005


def _cle_sq(m: ExamMeasurement) -> np.ndarray:
    """Per-bead CLE² (mm²); a point without a CLE counts as 1 mm off."""
    return np.nan_to_num(m.cle_mm, nan=1.0) ** 2


def _iso_variance(m: ExamMeasurement) -> np.ndarray:
    """Per-bead isotropic 3D variance (mm²) besides the propagated 2D uncertainty: the
    crossing-line error (the observed inconsistency of the bead's two rays, ISO 16087) and the
    floor."""
    return _FLOOR_MM ** 2 + _cle_sq(m)


def _bead_sigma(m: ExamMeasurement) -> np.ndarray:
    """Per-bead 3D uncertainty (mm) for the labelling and screening weights: the propagated 2D
    centre uncertainty (isotropic, its largest direction), the CLE and the floor in
    quadrature."""
    prop = np.zeros(len(m.cle_mm)) if m.sigma_mm is None else np.nan_to_num(m.sigma_mm, nan=1.0)
    return np.sqrt(prop ** 2 + _iso_variance(m))


def _unlikely_variance(m: ExamMeasurement) -> np.ndarray:
    """Per-bead isotropic 3D variance (mm²) that the segment fits add to a point's covariance:
    the CLE² of a point whose two rays cross beyond their uncertainty (not ``likely``: its
    covariance is not to be trusted), 0 for every other point."""
    return np.where(np.asarray(m.likely, bool), 0.0, _cle_sq(m))


def _bead_cov(m: ExamMeasurement) -> np.ndarray:
    """Per-bead 3D covariance (P, 3, 3) mm² for the segment fits: the first-order covariance of
    the point from its two centres' σ (anisotropic: a bead seen poorly in one view is uncertain
    mainly along the other view's ray), plus :func:`_unlikely_variance` isotropically. NaN
    where the point has no covariance: :func:`rsa.series.analyse_subject` then weights it by
    :func:`_bead_sigma` isotropically.

    Nothing else is added. The centres' σ already hold the detector's model error
    (``DetectOptions.model_error_px``) and misfit; the CLE of a likely pair is one draw of the
    same centre noise that the covariance describes; a calibration error is shared by the beads
    of a view, not independent per bead. Adding (CLE² + floor²) I to every bead, as earlier
    versions did, made the weights of the well-measured beads nearly equal and isotropic and
    discarded the anisotropy: on the spine studies of ``benchmarks/bench_precision.py --variant
    spine --seeds 6 --noise-draws 6`` the double-exam SDs were 7–16 % larger in every
    component."""
    cov = (np.full((len(m.cle_mm), 3, 3), np.nan) if m.cov_mm2 is None
           else np.asarray(m.cov_mm2, float))
    return cov + _unlikely_variance(m)[:, None, None] * np.eye(3)


def _cage_ref(study: StudySpec) -> str | Path:
    """A cage given as a relative path is relative to the manifest; otherwise a shipped name."""
    candidate = study.root / study.cage
    return candidate if candidate.suffix == ".json" or candidate.is_file() else study.cage


@dataclass(frozen=True, eq=False)
class StudyResult:
    study: StudySpec
    measurements: dict[str, ExamMeasurement]
    series: tuple
    precision: dict
    flags: dict[str, list[str]]
    out_dir: Path
    seconds: float


def analyse_study(manifest: str | Path | StudySpec, out_dir: str | Path, *,
                  executor: Executor | str | None = "process", max_workers: int | None = None,
                  resume: bool = True,
                  progress: Callable[[str, int, int], None] | None = None) -> StudyResult:
    """Analyse every exam of a study and write the results store and exports to `out_dir`.

    Parameters
    ----------
    manifest : path or StudySpec
    out_dir : path
        Receives ``results.sqlite`` and the CSV/JSON exports.
    executor : Executor, "process", "views", "serial" or None
        Where exams are measured: a local process pool by default (``max_workers`` exams at
        once; a single exam to measure runs as "views"), any ``concurrent.futures.Executor``
        (e.g. ``dask.distributed.Client(addr).get_executor()``), one exam after another with
        each exam's two views read and detected in two worker processes ("views": the
        shortest time per exam; ``max_workers`` = 1 keeps one), or in this process with the
        two views in two threads ("serial"/None).
    resume : bool
        Reuse stored measurements of exams whose inputs (file hashes, cage, thresholds, version)
        are unchanged, so an interrupted run continues where it stopped.
    progress : callable(stage, done, total), optional
    """
    if not (isinstance(executor, Executor) or executor in ("process", "views", "serial", None)):
        raise InputError(f"analyse_study: executor {executor!r} is not an Executor, "
                         f"'process', 'views', 'serial' or None")
    t0 = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    study = manifest if isinstance(manifest, StudySpec) else load_manifest(manifest)
    cage = load_cage(_cage_ref(study))
    out_dir = Path(out_dir)
    store = ResultStore(out_dir / "results.sqlite")
    try:
        measurements = _measure_all(study, cage, store, executor, max_workers, resume, progress)
        series = tuple(analyse_subject(
            s, [measurements[f"{s.id}/{e.id}"].points_mm for e in s.exams], study.motions,
            study.thresholds,
            sigma_mm=[_bead_sigma(measurements[f"{s.id}/{e.id}"]) for e in s.exams],
            likely=[measurements[f"{s.id}/{e.id}"].likely for e in s.exams],
            cov_mm2=[_bead_cov(measurements[f"{s.id}/{e.id}"]) for e in s.exams])
            for s in study.subjects)
        prec = {m.name: study_precision(series, m) for m in study.motions}
        flags = _write_results(store, study, measurements, series, prec)
        store.replace_rows("precision", _precision_rows(series, prec), where={})
        store.replace_rows("runs", [{
            "started": started, "software_version": __version__,
            "manifest": str(study.path.resolve()), "manifest_sha256": study.sha256,
            "study_id": study.id, "region": study.region, "cpt_code": study.cpt_code,
            "cage": study.cage, "thresholds": study.thresholds,
            "seconds": time.perf_counter() - t0}], where={})
        store.export(out_dir)
    finally:
        store.close()
    for key, items in flags.items():
        for f in items:
            warnings.warn(f"{key}: {f}", RsaWarning, stacklevel=2)
    return StudyResult(study, measurements, series, prec, flags, out_dir,
                       time.perf_counter() - t0)


def _measure_all(study, cage, store, executor, max_workers, resume, progress):
    exams = [(s.id, e) for s in study.subjects for e in s.exams]
    done = store.done_exams() if resume else {}
    out: dict[str, ExamMeasurement] = {}
    todo = []
    for subj, e in exams:
        key = f"{subj}/{e.id}"
        if key in done:
            hashes = tuple(dict.fromkeys(_sha(f) for f in e.files))
            if done[key] == inputs_key(e, study, hashes):
                out[key] = _measurement_from_store(store, subj, e.id, hashes, done[key])
                continue
        todo.append((subj, e))
    total = len(exams)
    if progress:
        progress("measure", len(out), total)
    if executor == "process" and len(todo) <= 1:
        executor = "views"   # one exam: its two views in two processes is the fastest
    own = None
    if executor == "process":
        executor = own = ProcessPoolExecutor(max_workers=max_workers or 2)
    elif executor == "views" and todo:
        own = ProcessPoolExecutor(max_workers=min(max_workers or 2, 2))
    try:
        if isinstance(executor, Executor):
            futures = [executor.submit(measure_exam, e, subj, study, cage) for subj, e in todo]
            results = (f.result() for f in futures)
        elif executor == "views":
            results = (measure_exam(e, subj, study, cage, view_pool=own) for subj, e in todo)
        else:
            results = (measure_exam(e, subj, study, cage, view_threads=2) for subj, e in todo)
        for m in results:
            out[m.key] = m
            # Store the raw measurement at once: a killed run resumes from here.
            store.write_exam(m.key, _measurement_rows(m, status="measured"))
            if progress:
                progress("measure", len(out), total)
    finally:
        if own is not None:
            own.shutdown(cancel_futures=True)
    return out


def _sha(path: Path) -> str:
    from rsa.io.atomic import file_sha256

    return file_sha256(path)


#: The beads table's covariance columns: the upper triangle of each point's 3×3 covariance.
_UPPER = np.triu_indices(3)
_COV_COLUMNS = tuple(f"cov_{'xyz'[i]}{'xyz'[j]}_mm2" for i, j in zip(*_UPPER, strict=True))


def _symmetric(upper: np.ndarray) -> np.ndarray:
    """(P, 3, 3) symmetric matrices from their upper triangles (P, 6) in ``_UPPER`` order."""
    out = np.empty((len(upper), 3, 3))
    out[:, _UPPER[0], _UPPER[1]] = upper
    out[:, _UPPER[1], _UPPER[0]] = upper
    return out


def _measurement_rows(m: ExamMeasurement, *, status: str, exam: ExamSpec | None = None,
                      labels: dict[int, tuple[str, str]] | None = None,
                      flags: list[str] | None = None, notes: list[str] | None = None) -> dict:
    labels = labels or {}
    sig = m.sigma_mm if m.sigma_mm is not None else np.full(len(m.cle_mm), np.nan)
    spx = (m.sigma_px if m.sigma_px is not None else np.full((len(m.cle_mm), 2, 2), np.nan)
           ).reshape(-1, 4)
    cov = (m.cov_mm2 if m.cov_mm2 is not None else np.full((len(m.cle_mm), 3, 3), np.nan)
           )[:, _UPPER[0], _UPPER[1]]
    point_status = (np.full(len(m.cle_mm), "candidate") if status == "measured"
                    else bead_status(m, np.fromiter(labels, int, len(labels))))
    beads = [{"segment": labels.get(i, ("", ""))[0], "bead_id": labels.get(i, ("", ""))[1],
              "status": str(st), "x": p[0], "y": p[1], "z": p[2], "cle_mm": c,
              "sigma_mm": sg, "likely": int(lk), "misfit": int(mf), "u_a": ua[0],
              "v_a": ua[1], "u_b": ub[0], "v_b": ub[1], "sigma_u_a_px": sp[0],
              "sigma_v_a_px": sp[1], "sigma_u_b_px": sp[2], "sigma_v_b_px": sp[3],
              **dict(zip(_COV_COLUMNS, cv, strict=True))}
             for i, (p, c, sg, lk, mf, st, ua, ub, sp, cv) in enumerate(zip(
                 m.points_mm, m.cle_mm, sig, m.likely, m.misfit, point_status, m.uv_a, m.uv_b,
                 spx, cov, strict=True))]
    views = [{"view": v["view"], "method": v["method"], "focus_x": v["focus"][0],
              "focus_y": v["focus"][1], "focus_z": v["focus"][2], "rms_px": v["rms_px"],
              "rms_mm": v["rms_mm"], "n_fiducials": v["n_fiducials"],
              "n_controls": v["n_controls"], "n_beads_2d": v["n_beads_2d"]} for v in m.views]
    markers = [mk for v in m.views for mk in v.get("markers", [])]
    exam_row = {"subject": m.subject, "exam_id": m.exam_id, "sha256": list(m.sha256),
                "inputs_key": m.inputs_key, "status": status, "software_version": __version__,
                "flags": flags or [], "notes": notes or [],
                "seconds": float(sum(m.seconds.values()))}
    if exam is not None:
        exam_row.update(date=exam.date.isoformat(), kind=exam.kind,
                        files=[str(f) for f in exam.files])
    return {"exams": [exam_row], "views": views, "beads": beads, "markers": markers}


def _measurement_from_store(store, subject, exam_id, hashes, key) -> ExamMeasurement:
    beads = store.rows("beads", exam_key=f"{subject}/{exam_id}")
    views = store.rows("views", exam_key=f"{subject}/{exam_id}")
    markers = store.rows("markers", exam_key=f"{subject}/{exam_id}")
    for mk in markers:
        del mk["exam_key"]

    def col(*names):
        return np.array([[np.nan if b[n] is None else b[n] for n in names] for b in beads],
                        dtype=float).reshape(len(beads), len(names))

    summary = tuple({"view": v["view"], "method": v["method"],
                     "focus": [v["focus_x"], v["focus_y"], v["focus_z"]],
                     "rms_px": v["rms_px"], "rms_mm": v["rms_mm"],
                     "n_fiducials": v["n_fiducials"], "n_controls": v["n_controls"],
                     "n_beads_2d": v["n_beads_2d"],
                     "markers": [mk for mk in markers if mk["view"] == v["view"]]}
                    for v in views)
    return ExamMeasurement(subject, exam_id, col("x", "y", "z"), col("cle_mm")[:, 0],
                           col("u_a", "v_a"), col("u_b", "v_b"), np.zeros(len(beads), bool),
                           summary, hashes, key, {"resumed": 0.0}, col("sigma_mm")[:, 0],
                           col("likely")[:, 0] == 1, col("misfit")[:, 0] == 1,
                           col("sigma_u_a_px", "sigma_v_a_px", "sigma_u_b_px",
                               "sigma_v_b_px").reshape(-1, 2, 2), _symmetric(col(*_COV_COLUMNS)))


def _write_results(store, study, measurements, series, prec) -> dict[str, list[str]]:
    all_flags: dict[str, list[str]] = {}
    cle_limit = study.thresholds["cle_limit_mm"]
    sig = {name: {s.subject: significance(s.motions[name], p) for s in series
                  if name in s.motions} for name, p in prec.items()}
    for s in series:
        for e_i, exam in enumerate(s.exams):
            m = measurements[f"{s.subject}/{exam.id}"]
            flags = list(s.flags.get(exam.id, []))
            labels: dict[int, tuple[str, str]] = {}
            fits = []
            for seg in s.segments.values():
                for j, o in enumerate(seg.observed_index[e_i]):
                    if o >= 0:
                        labels[int(o)] = (seg.name, seg.bead_ids[j])
                fits.append(_fit_row(seg, e_i))
            high = [f"{labels[i][1]} {c:.3f} mm" for i, c in enumerate(m.cle_mm)
                    if i in labels and c > cle_limit]
            if high:
                flags.append(f"CLE above {cle_limit} mm: {', '.join(high)}")
            motions = []
            for spec in study.motions:
                mo = s.motions.get(spec.name)
                if mo is None:
                    continue
                sg = sig[spec.name].get(s.subject)
                motions.append(_motion_row(spec, mo, e_i, None if sg is None else sg[e_i],
                                           study.region))
            notes = list(s.notes.get(exam.id, []))
            rejected = bead_status(m, np.fromiter(labels, int, len(labels))) == "rejected"
            if rejected.any():
                lk = int(np.sum(rejected & ~m.likely))
                notes.append(f"{int(rejected.sum())} candidate point(s) claimed by no segment "
                             f"and not reported as beads ({lk} with a crossing-line error "
                             "beyond the rays' uncertainty, the others with a detection that "
                             "misfits a bead)")
            rows = _measurement_rows(m, status="flagged" if flags else "ok", exam=exam,
                                     labels=labels, flags=flags, notes=notes)
            rows["fits"] = fits
            rows["motions"] = motions
            store.write_exam(m.key, rows)
            all_flags[m.key] = flags
    return all_flags


def _fit_row(seg, e: int) -> dict:
    fitted = seg.pose is not None and not seg.fit_error[e]
    R = seg.pose.rotation[e] if fitted else None
    t = seg.pose.translation[e] if fitted else None
    return {"segment": seg.name, "rotation": None if R is None else R.tolist(),
            "translation": None if t is None else t.tolist(), "me_mm": seg.me_mm[e],
            "cn": seg.cn[e] if np.isfinite(seg.cn[e]) else None,
            "n_beads": int(seg.n_used[e]),
            "n_reference": int(np.isfinite(seg.reference_xyz_mm[:, 0]).sum()),
            "excluded": list(seg.exclusion_reasons[e]) + ([seg.fit_error[e]]
                                                          if seg.fit_error[e] else [])}


def _motion_row(spec, mo, e: int, sig, region: str) -> dict:
    tr, rot = mo.translation_mm[e], mo.rotation_deg[e]
    significant = None
    if sig is not None:
        significant = dict(zip([*COMPONENTS, "total_translation", "mtpm"],
                               (bool(x) for x in sig), strict=True))
        if region == "spine":
            significant["within_precision"] = not any(sig)
    return {"motion": spec.name, "segment": spec.segment, "reference": spec.relative_to,
            "tx": tr[0], "ty": tr[1], "tz": tr[2], "rx": rot[0], "ry": rot[1], "rz": rot[2],
            "total_translation": mo.total_translation_mm[e],
            "mtpm": None if mo.mtpm_mm is None else mo.mtpm_mm[e],
            "mtpm_point": None if mo.mtpm_index is None else int(mo.mtpm_index[e]),
            "helical_angle": mo.helical.angle_deg[e],
            "helical_slide": mo.helical.slide_mm[e], "euler_order": spec.order,
            "significant": significant}


def _precision_rows(series, prec) -> list[dict]:
    rows = []
    for name, p in prec.items():
        if p.signed is None:
            rows.append({"subject": "*", "motion": name, "component": "*", "n": p.n,
                         "form": "not computed: fewer than 2 double exams"})
            continue
        for k, comp in enumerate(COMPONENTS):
            rows.append({"subject": "*", "motion": name, "component": comp, "n": p.n,
                         "bias": p.signed.bias[k], "sd": p.signed.sd[k],
                         "lower": p.signed.lower[k], "upper": p.signed.upper[k],
                         "repeatability": p.signed.repeatability_coefficient[k],
                         "form": "mean ± t(0.975, n−1)·SD; repeatability 1.96·SD"})
        for k, comp in enumerate(("total_translation", "mtpm")):
            rows.append({"subject": "*", "motion": name, "component": comp, "n": p.n,
                         "bias": p.upper.mean[k], "sd": p.upper.sd[k], "lower": 0.0,
                         "upper": p.upper.upper_t[k],
                         "form": "one-sided: mean + t(0.95, n−1)·SD"})
    return rows
