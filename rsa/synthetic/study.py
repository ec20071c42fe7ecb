"""Write a complete phantom study: DICOM radiographs, study manifest (TOML) and ``truth.json``.

Layout of the study directory written by :func:`write_study`::

    OUT/study.toml                  manifest (schema: examples/README.md, "Study manifest")
    OUT/truth.json                  ground truth (schema: examples/README.md, "Ground truth")
    OUT/<subject>/<exam>_<view>.dcm one DX DICOM per view (or <exam>.dcm, both views side by side)

Every file is written atomically (temporary file + ``os.replace``) and is a deterministic
function of the arguments: the same seed gives byte-identical files.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from rsa import __version__
from rsa.errors import InputError
from rsa.io.atomic import atomic_write_text
from rsa.synthetic.dicom import write_dicom, write_dicom_side_by_side
from rsa.synthetic.render import RenderOptions, render_view
from rsa.synthetic.scene import SETUPS, Exam, Scene, build_scene

TRUTH_FORMAT = "rsa-phantom-truth/1"
MANIFEST_SCHEMA = "rsa-study/1"
#: Seed-derived noise added to the manifest's approximate bead coordinates (SD per axis, mm),
#: as from a marker insertion plan; matching uses the segment's ``tolerance_mm``.
APPROX_SD_MM = 0.2


# -- truth ------------------------------------------------------------------------------------
def relative_motion(T_rel: np.ndarray, points_mm: np.ndarray) -> dict[str, Any]:
    """Motion summary of a 4×4 rigid transform acting on reference points (K, 3).

    Translation of the points' centroid, Euler angles (scipy ``"xyz"``: extrinsic rotations about
    the lab x, then y, then z axis; for angles below a few degrees the order matters < 1e-3°),
    finite helical axis (angle, unit axis, translation along the axis — invariant of the point),
    and MTPM = max over the points of ‖R p + t − p‖ (DESIGN §3.6).
    """
    R, t = T_rel[:3, :3], T_rel[:3, 3]
    c = points_mm.mean(axis=0)
    tc = R @ c + t - c
    rot = Rotation.from_matrix(R)
    rv = rot.as_rotvec()
    angle = float(np.linalg.norm(rv))
    axis = rv / angle if angle > 1e-15 else np.zeros(3)
    disp = np.linalg.norm(points_mm @ R.T + t - points_mm, axis=1)
    return {"matrix": _round(T_rel, 12), "point": "centroid", "centroid_mm": _round(c, 9),
            "translation_mm": _round(tc, 9), "total_translation_mm": _f(np.linalg.norm(tc)),
            "rotation_deg": _round(rot.as_euler("xyz", degrees=True), 9),
            "rotation_order": "xyz extrinsic (lab axes)",
            "helical_angle_deg": _f(math.degrees(angle)), "helical_axis": _round(axis, 12),
            "helical_translation_mm": _f(t @ axis), "mtpm_mm": _f(disp.max())}


def _round(a: Any, nd: int) -> Any:
    return np.round(np.asarray(a, float), nd).tolist()


def _f(x: float, nd: int = 9) -> float:
    return round(float(x), nd)


def _view_truth(view, file: str, columns: tuple[int, int] | None) -> dict[str, Any]:
    return {"file": file, "columns": list(columns) if columns else None,
            "focus_mm": _round(view.focus_mm, 9), "origin_mm": _round(view.origin_mm, 9),
            "u_axis": _round(view.u_axis, 12), "v_axis": _round(view.v_axis, 12),
            "normal": _round(view.normal, 12),
            "pixel_spacing_mm": _round(view.pixel_spacing_mm, 12), "shape": list(view.shape),
            "projection_matrix": _round(view.projection_matrix(), 12)}


def image_overlaps(view, centres_mm: np.ndarray, radii_mm: np.ndarray, *,
                   margin_px: float = 2.0) -> np.ndarray:
    """(N,) bool: the image of sphere i comes within `margin_px` of another sphere's image.

    Projected radius = r·M / pixel spacing (M = geometric magnification of the centre); such
    beads are rendered correctly but their detected centres are biased by the neighbour.
    """
    uv = view.project(centres_mm)
    pr = radii_mm * view.magnification(centres_mm) / float(np.mean(view.pixel_spacing_mm))
    d = np.linalg.norm(uv[:, None] - uv[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return np.any(d < pr[:, None] + pr[None] + margin_px, axis=1)


def _exam_truth(scene: Scene, exam: Exam, rendered: dict, files: dict, centres: np.ndarray,
                radii: np.ndarray) -> dict[str, Any]:
    beads = scene.exam_beads(exam)
    rel = {}
    for seg, base in scene.motions:
        T = np.linalg.inv(exam.poses[base]) @ exam.poses[seg]
        rel[f"{seg}/{base}"] = dict(segment=seg, relative_to=base,
                                    **relative_motion(T, scene.segment(seg).xyz_mm))
    out: dict[str, Any] = {
        "id": exam.id, "kind": exam.kind, "date": _date(scene, exam).isoformat(),
        "day": exam.day, "double_of": exam.double_of, "series": exam.series,
        "segments": {s.name: {"pose": _round(exam.poses[s.name], 12),
                              "xyz_mm": _round(beads[s.name], 9)} for s in scene.segments},
        "relative_motion": rel, "views": {}}
    if exam.double_of:
        pair = next(e for e in scene.exams if e.id == exam.double_of)
        out["motion_vs_double_of"] = {}
        for seg, base in scene.motions:
            Ta = np.linalg.inv(pair.poses[base]) @ pair.poses[seg]
            Tb = np.linalg.inv(exam.poses[base]) @ exam.poses[seg]
            m = relative_motion(np.linalg.inv(Ta) @ Tb, transform_pts(Ta, scene.segment(seg)))
            out["motion_vs_double_of"][f"{seg}/{base}"] = m
    m_cage = len(scene.cage.ids)
    for view in exam.views:
        r = rendered[view.name]
        vt = _view_truth(view, *files[view.name])
        in_view = scene.cage.marker_mask(view=view.name)
        ov = image_overlaps(view, centres, radii)
        vt["cage"] = {"uv_px": _round(r.uv_px[:m_cage], 9), "in_view": in_view.tolist(),
                      "hidden": r.hidden[:m_cage].tolist(),
                      "clipped": r.clipped[:m_cage].tolist(), "overlap": ov[:m_cage].tolist()}
        vt["beads"], k = {}, m_cage
        for s in scene.segments:
            n = len(s.xyz_mm)
            vt["beads"][s.name] = {"uv_px": _round(r.uv_px[k:k + n], 9),
                                   "hidden": r.hidden[k:k + n].tolist(),
                                   "clipped": r.clipped[k:k + n].tolist(),
                                   "overlap": ov[k:k + n].tolist()}
            k += n
        out["views"][view.name] = vt
    return out


def transform_pts(T: np.ndarray, seg) -> np.ndarray:
    """Reference beads of `seg` moved by `T` (used for motions relative to a paired exam)."""
    return seg.xyz_mm @ T[:3, :3].T + T[:3, 3]


def _date(scene: Scene, exam: Exam) -> _dt.datetime:
    d0 = _dt.date.fromisoformat(scene.start_date)
    return _dt.datetime.combine(d0 + _dt.timedelta(days=exam.day), _dt.time(9, 0)) \
        + _dt.timedelta(minutes=exam.minute)


# -- TOML (tiny writer for the manifest's simple structure) -------------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            raise ValueError("non-finite float in manifest")
        return repr(float(v))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON string escapes are valid TOML
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_table(header: str, d: dict[str, Any], multiline: tuple[str, ...] = ()) -> list[str]:
    lines = [header]
    for k, v in d.items():
        if v is None:
            continue
        if k in multiline and isinstance(v, list) and v:
            lines.append(f"{k} = [")
            lines += [f"    {_toml_value(x)}," for x in v]
            lines.append("]")
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    return [*lines, ""]


def manifest_text(scene: Scene, files: dict[str, list[dict]], cage_ref: str) -> str:
    """The study manifest (TOML) of `scene`; `files` maps exam id to its image entries."""
    rng = np.random.default_rng([scene.seed, 3])
    out = ["# rsa study manifest, written by rsa.synthetic.write_study "
           f"(rsa {__version__}). Schema: examples/README.md.",
           f'schema = "{MANIFEST_SCHEMA}"', ""]
    out += _toml_table("[study]", {"id": scene.study_id, "description": scene.description,
                                   "cage": cage_ref, "region": scene.region,
                                   "synthetic": True})
    out += _toml_table("[thresholds]", scene.thresholds)
    for seg, base in scene.motions:
        out += _toml_table("[[motions]]", {"segment": seg, "relative_to": base, "frame": "lab",
                                           "point": "centroid"})
    out += _toml_table("[[subjects]]", {"id": scene.subject_id})
    for s in scene.segments:
        approx = np.round(s.xyz_mm + rng.normal(0, APPROX_SD_MM, s.xyz_mm.shape), 1) + 0.0
        out += _toml_table("[[subjects.segments]]", {
            "name": s.name, "role": s.role, "definition": "coordinates",
            "tolerance_mm": s.tolerance_mm, "bead_ids": s.bead_ids.tolist(),
            "xyz_mm": approx.tolist()}, multiline=("xyz_mm",))
    for e in scene.exams:
        out += _toml_table("[[subjects.exams]]", {
            "id": e.id, "date": _date(scene, e).date().isoformat(),
            "time": _date(scene, e).strftime("%H:%M"), "kind": e.kind,
            "double_of": e.double_of, "series": e.series,
            "layout": "side_by_side" if len(files[e.id]) == 1 else "per_view",
            "images": files[e.id]}, multiline=("images",))
    return "\n".join(out).rstrip() + "\n"


# -- study ------------------------------------------------------------------------------------
def exam_spheres(scene: Scene, exam: Exam) -> tuple[np.ndarray, np.ndarray]:
    """Centres and radii (mm) of every sphere of an exam, as rendered: the cage's markers, then
    each segment's beads in the scene's order."""
    beads = scene.exam_beads(exam)
    centres = np.concatenate([scene.cage.xyz_mm, *beads.values()])
    radii = np.concatenate([scene.cage.diameter_mm,
                            *(s.diameter_mm for s in scene.segments)]) / 2
    return centres, radii


def render_exam_view(scene: Scene, exam_index: int, view_index: int, *, seed: int,
                     options: RenderOptions | None = None, noise_draw: int = 0):
    """View ``view_index`` of exam ``exam_index`` as :func:`write_study` renders it for ``seed``
    and ``noise_draw``: its render options (unless ``options`` are given) and its noise stream.
    Returns the :class:`rsa.synthetic.render.RenderedView`."""
    exam = scene.exams[exam_index]
    centres, radii = exam_spheres(scene, exam)
    return render_view(exam.views[view_index], centres, radii,
                       capsules=scene.exam_capsules(exam),
                       options=options or RenderOptions(background_seed=int(seed)),
                       rng=np.random.default_rng(_noise_key(seed, exam_index, view_index,
                                                            noise_draw)))


def _check_noise_draw(noise_draw) -> None:
    if (isinstance(noise_draw, bool) or not isinstance(noise_draw, (int, np.integer))
            or noise_draw < 0):
        raise InputError(f"Expected `noise_draw` to be a non-negative integer, got "
                         f"{noise_draw!r}.")


def _noise_key(seed: int, exam_index: int, view_index: int, noise_draw: int) -> list[int]:
    """Seed sequence of a view's image noise; draw 0 is the stream of every earlier version."""
    _check_noise_draw(noise_draw)
    key = [int(seed), 2, exam_index, view_index]
    return key + [int(noise_draw)] if noise_draw else key


def write_study(path: str | os.PathLike, *, setup: str = "uniplanar", seed: int = 0,
                variant: str | os.PathLike = "implant", side_by_side: bool = False,
                photometric: str = "MONOCHROME2", pixel_spacing_mm: float | None = None,
                detector_px: int | None = None, render_options: RenderOptions | None = None,
                noise_draw: int = 0,
                progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Simulate a phantom study and write it to the directory `path`.

    Parameters
    ----------
    path : str or path-like
        Output directory (created; existing files of the same names are replaced).
    setup : {"uniplanar", "biplanar"}
        Shipped cage and view arrangement.
    seed : int
        Seed of everything (beads, exam geometry, patient placement, noise, UIDs).
    variant : {"implant", "spine"} or path
        Bundled study definition (``examples/phantom_<variant>.toml``) or a definition file.
    side_by_side : bool
        One DICOM per exam with both views side by side (left A, right B; uniplanar cassette
        style) instead of one file per view.
    photometric : {"MONOCHROME2", "MONOCHROME1"}
    pixel_spacing_mm, detector_px : optional
        Override the definition's detector (e.g. a coarse detector for fast tests).
    render_options : RenderOptions, optional
        Defaults to ``RenderOptions(background_seed=seed)``.
    noise_draw : int, optional
        Which realisation of the image noise (default 0, the seed's own): the same subject,
        exams, anatomy and geometry with independent noise, e.g. for the spread of a result
        over noise alone. Recorded in ``truth.json``.
    progress : callable(done, total, description), optional
        Called after every rendered view and file.

    Returns
    -------
    Path
        The study directory.

    Raises
    ------
    InputError
        Unknown setup/variant, invalid definition or cage file.
    """
    if setup not in SETUPS and not Path(setup).suffix == ".json":
        raise InputError(f"Unknown setup {setup!r}; expected one of {', '.join(SETUPS)}.")
    _check_noise_draw(noise_draw)               # before anything is written
    out = Path(path)
    scene = build_scene(variant, setup=setup, seed=int(seed), pixel_spacing_mm=pixel_spacing_mm,
                        detector_px=detector_px)
    options = render_options or RenderOptions(background_seed=int(seed))
    cage = scene.cage
    total = len(scene.exams) * (len(cage.views) + 1) + 2
    done = 0

    def tick(msg: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, msg)

    from pydicom.uid import generate_uid

    files: dict[str, list[dict]] = {}
    exams_truth = []
    for i, exam in enumerate(scene.exams):
        centres, radii = exam_spheres(scene, exam)
        rendered = {}
        for j, view in enumerate(exam.views):
            rendered[view.name] = render_exam_view(scene, i, j, seed=seed, options=options,
                                                   noise_draw=noise_draw)
            tick(f"{exam.id}: rendered view {view.name}")
        when = _date(scene, exam)
        # another noise draw is another image: its own UIDs (draw 0 keeps the earlier ones)
        draw = [f"noise-draw-{noise_draw}"] if noise_draw else []
        study_uid = str(generate_uid(entropy_srcs=["rsa-phantom", str(seed), scene.study_id,
                                                   scene.subject_id, exam.id, *draw]))
        common = {"photometric": photometric, "bits_stored": options.bit_depth,
                  "patient_id": f"PHANTOM-{scene.subject_id}", "study_uid": study_uid,
                  "acquisition_datetime": when, "seed": int(seed),
                  "study_description": f"{scene.study_id} {exam.id} (synthetic RSA phantom)"}
        sub = Path(scene.subject_id)
        names = [v.name for v in exam.views]
        spacing = tuple(exam.views[0].pixel_spacing_mm[::-1])  # (row, col)
        view_files = {}
        if side_by_side:
            if len(names) != 2:
                raise InputError("side_by_side needs exactly two views.")
            rel = (sub / f"{exam.id}.dcm").as_posix()
            write_dicom_side_by_side(out / rel, [rendered[n].image for n in names],
                                     view_names=(names[0], names[1]), pixel_spacing_mm=spacing,
                                     **common)
            w = exam.views[0].shape[1]
            files[exam.id] = [{"file": rel, "views": names}]
            view_files = {n: (rel, (k * w, (k + 1) * w)) for k, n in enumerate(names)}
        else:
            files[exam.id] = []
            for k, n in enumerate(names):
                rel = (sub / f"{exam.id}_{n}.dcm").as_posix()
                write_dicom(out / rel, rendered[n].image, pixel_spacing_mm=spacing,
                            view_name=n, series_number=k + 1, **common)
                files[exam.id].append({"file": rel, "views": [n]})
                view_files[n] = (rel, None)
        tick(f"{exam.id}: DICOM written")
        exams_truth.append(_exam_truth(scene, exam, rendered, view_files, centres, radii))
    cage_ref = cage.source if setup in SETUPS else os.path.relpath(cage.source, out)
    atomic_write_text(out / "study.toml", manifest_text(scene, files, Path(cage_ref).as_posix()))
    tick("manifest written")
    truth = {
        "format": TRUTH_FORMAT, "software": f"rsa {__version__}", "seed": int(seed),
        "noise_draw": int(noise_draw),
        "study_id": scene.study_id, "subject_id": scene.subject_id, "setup": setup,
        "variant": scene.variant, "region": scene.region,
        "cage": {"name": cage.name, "source": cage_ref, "ids": cage.ids.tolist(),
                 "xyz_mm": _round(cage.xyz_mm, 9), "diameter_mm": cage.diameter_mm.tolist()},
        "patient_centre_mm": _round(scene.patient_centre_mm, 9),
        "render_options": {k: getattr(options, k) for k in options.__dataclass_fields__},
        "photometric": photometric,
        "approximate_coordinates_sd_mm": APPROX_SD_MM,
        "segments": {s.name: {"role": s.role, "bead_ids": s.bead_ids.tolist(),
                              "diameter_mm": s.diameter_mm.tolist(),
                              "reference_xyz_mm": _round(s.xyz_mm, 9),
                              "capsules": [{"p0_mm": _round(c.p0_mm, 9),
                                            "p1_mm": _round(c.p1_mm, 9),
                                            "radius_mm": c.radius_mm, "mu_per_mm": c.mu_per_mm}
                                           for c in s.capsules]} for s in scene.segments},
        "motions": [{"segment": a, "relative_to": b} for a, b in scene.motions],
        "exams": exams_truth,
    }
    atomic_write_text(out / "truth.json", json.dumps(truth, indent=1) + "\n")
    tick("truth written")
    return out
