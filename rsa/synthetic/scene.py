"""Phantom scenes with ground truth: cage, per-exam views, bead segments and their poses.

A *study definition* (TOML, see ``examples/README.md``; the bundled ones are
``examples/phantom_implant.toml`` and ``examples/phantom_spine.toml``) describes the patient in a
*patient frame* (origin at the region of interest, axes parallel to the lab axes: x medial-lateral,
y proximal-distal, z anterior-posterior), the exams and the prescribed motions. :func:`build_scene`
turns it into a :class:`Scene`:

* the patient frame is placed at ``patient_centre_mm`` (per cage set-up) in the cage (lab) frame;
  the **reference-exam lab coordinates** of the beads define each segment;
* every exam has its own pair of views: the cage's nominal views perturbed as in a real exam (focus
  offset of a few cm, detector shift/rotation/tilt of a few mm/tenths of a degree), so an analysis
  must calibrate each exam and can never rely on the nominal geometry being exact;
* every exam has a pose ``T`` (4×4) per segment mapping reference-exam lab coordinates to that
  exam's lab coordinates: ``T_B = P_e`` for segments without prescribed motion (``P_e`` = patient
  placement, identity for the reference exam, a random few-mm/few-degree rigid motion about the
  patient centre otherwise) and ``T_S = T_B · M`` for a segment S with prescribed motion ``M``
  relative to segment B. Hence the true relative motion ``T_B⁻¹ T_S`` (DESIGN §3.6) equals the
  prescribed ``M`` exactly, and is the identity for double exams.

Everything is deterministic in ``seed``: beads from ``default_rng(seed)``, exam ``i`` geometry
from ``default_rng([seed, 1, i])``.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from rsa._validate import readonly
from rsa.cage import Cage, _data_dirs, load_cage
from rsa.errors import InputError
from rsa.synthetic.geometry import DetectorView, look_at_view
from rsa.synthetic.render import Capsule

try:  # Python ≥ 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

SETUPS = ("uniplanar", "biplanar")
VARIANTS = ("implant", "spine")
EXAM_KINDS = ("reference", "follow-up", "double", "dynamic")
ROLES = ("bone", "implant", "vertebra")


@dataclass(frozen=True, eq=False)
class Segment:
    """A rigid set of beads (and implant capsules) moving together.

    Attributes
    ----------
    name, role : str
        Segment name and role (``"bone"``, ``"implant"``, ``"vertebra"``).
    bead_ids : (K,) ndarray of str
    xyz_mm : (K, 3) ndarray
        Bead centres in reference-exam lab coordinates.
    diameter_mm : (K,) ndarray
    capsules : tuple of Capsule
        Radio-opaque implant parts in reference-exam lab coordinates.
    tolerance_mm : float
        Tolerance for matching the approximate coordinates written to the manifest.
    """

    name: str
    role: str
    bead_ids: np.ndarray
    xyz_mm: np.ndarray
    diameter_mm: np.ndarray
    capsules: tuple[Capsule, ...] = ()
    tolerance_mm: float = 1.5


@dataclass(frozen=True, eq=False)
class Exam:
    """One exam: two exact views and the pose (4×4) of every segment.

    ``migration`` maps a segment name to ``(relative_to, M)``: the prescribed motion of the segment
    relative to ``relative_to`` (4×4, reference-exam lab coordinates).
    """

    id: str
    kind: str
    day: int
    minute: int
    double_of: str | None
    series: str | None
    views: tuple[DetectorView, ...]
    poses: dict[str, np.ndarray]
    migration: dict[str, tuple[str, np.ndarray]]


@dataclass(frozen=True, eq=False)
class Scene:
    """A complete phantom study with ground truth (see the module docstring)."""

    study_id: str
    subject_id: str
    description: str
    region: str
    setup: str
    variant: str
    seed: int
    start_date: str
    cage: Cage
    cage_ref: str
    patient_centre_mm: np.ndarray
    segments: tuple[Segment, ...]
    exams: tuple[Exam, ...]
    motions: tuple[tuple[str, str], ...]
    thresholds: dict[str, float]

    def segment(self, name: str) -> Segment:
        """The segment called `name`."""
        for s in self.segments:
            if s.name == name:
                return s
        raise KeyError(name)

    def exam_beads(self, exam: Exam) -> dict[str, np.ndarray]:
        """Bead centres (K, 3) of every segment in `exam`'s lab frame."""
        return {s.name: transform(exam.poses[s.name], s.xyz_mm) for s in self.segments}

    def exam_capsules(self, exam: Exam) -> list[Capsule]:
        """Implant capsules of every segment moved to `exam`'s pose."""
        out = []
        for s in self.segments:
            T = exam.poses[s.name]
            for c in s.capsules:
                p = transform(T, np.stack([c.p0_mm, c.p1_mm]))
                out.append(Capsule(p0_mm=p[0], p1_mm=p[1], radius_mm=c.radius_mm,
                                   mu_per_mm=c.mu_per_mm))
        return out


# -- small rigid-transform helpers (plain numpy; rsa.motion is the analysis-side API) -----------
def transform(T: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Apply a 4×4 rigid transform to points (..., 3)."""
    return xyz @ T[:3, :3].T + T[:3, 3]


def rigid(rotvec_or_R: np.ndarray, t: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
    """4×4 transform ``x → R (x − c) + c + t`` (rotation about `centre`, then translation)."""
    R = np.asarray(rotvec_or_R, float)
    if R.shape == (3,):
        R = Rotation.from_rotvec(R).as_matrix()
    c = np.zeros(3) if centre is None else np.asarray(centre, float)
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = c + np.asarray(t, float) - R @ c
    return T


# -- definition files -------------------------------------------------------------------------
def _examples_dirs() -> list[Path]:
    return _data_dirs("rsa._examples", Path(__file__).resolve().parents[2] / "examples")


def load_definition(variant_or_path: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """Read a study definition: a bundled variant (``"implant"``, ``"spine"``) or a TOML path.

    Returns the parsed dict and its source (file path).
    """
    p = Path(variant_or_path)
    if p.suffix != ".toml":
        if str(variant_or_path) not in VARIANTS:
            raise InputError(f"Unknown phantom variant {str(variant_or_path)!r}; expected one of "
                             f"{', '.join(VARIANTS)} or a .toml study definition.")
        for d in _examples_dirs():
            if (d / f"phantom_{variant_or_path}.toml").is_file():
                p = d / f"phantom_{variant_or_path}.toml"
                break
        else:  # pragma: no cover - broken installation
            raise InputError(f"Bundled study definition phantom_{variant_or_path}.toml not found.")
    try:
        with open(p, "rb") as fh:
            return tomllib.load(fh), str(p)
    except OSError as exc:
        raise InputError(f"Cannot read study definition {str(p)!r}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"Invalid study definition {str(p)!r}: {exc}") from None


def _req(d: dict, key: str, src: str, where: str) -> Any:
    if key not in d:
        raise InputError(f"Invalid study definition {src!r}: `{where}{key}` is missing.")
    return d[key]


def _sample_beads(rng: np.random.Generator, volumes: list[dict], keep_out: list[Capsule],
                  avoid: list[np.ndarray], min_spacing: float, src: str,
                  name: str) -> np.ndarray:
    """Beads uniformly in ellipsoids, ≥ `min_spacing` apart (also from the `avoid` beads of
    other segments), ≥ 2 mm outside implant capsules, redrawn until the configuration is well
    spread (σ3/σ1 ≥ 0.25 of the centred beads)."""
    for _ in range(200):
        pts: list[np.ndarray] = []
        for vol in volumes:
            c = np.asarray(vol["centre_mm"], float)
            ax = np.asarray(vol["semi_axes_mm"], float)
            n, tries = int(vol["n"]), 0
            got: list[np.ndarray] = []
            while len(got) < n and tries < 20000:
                tries += 1
                q = rng.uniform(-1, 1, 3)
                if q @ q > 1:
                    continue
                x = c + q * ax
                if any(np.linalg.norm(x - y) < min_spacing for y in avoid + pts + got):
                    continue
                if any(_capsule_distance(cap, x) < cap.radius_mm + 2.0 for cap in keep_out):
                    continue
                got.append(x)
            if len(got) < n:
                raise InputError(f"Invalid study definition {src!r}: cannot place {n} beads "
                                 f"{min_spacing} mm apart in a volume of segment {name!r}.")
            pts += got
        arr = np.array(pts)
        s = np.linalg.svd(arr - arr.mean(axis=0), compute_uv=False)
        if s[2] >= 0.25 * s[0]:
            return arr
    raise InputError(f"Invalid study definition {src!r}: segment {name!r} volumes are too "
                     "flat for a well-conditioned bead configuration.")


def _capsule_distance(cap: Capsule, x: np.ndarray) -> float:
    a, b = np.asarray(cap.p0_mm), np.asarray(cap.p1_mm)
    ab = b - a
    t = np.clip((x - a) @ ab / max(ab @ ab, 1e-12), 0.0, 1.0)
    return float(np.linalg.norm(a + t * ab - x))


def _segments(defn: dict, src: str, centre: np.ndarray, rng: np.random.Generator):
    segs_raw = _req(defn, "segments", src, "")
    caps_all, caps_by = [], {}
    for i, sd in enumerate(segs_raw):
        _req(sd, "name", src, f"segments[{i}].")
        caps = tuple(Capsule(p0_mm=np.add(c["p0_mm"], centre), p1_mm=np.add(c["p1_mm"], centre),
                             radius_mm=float(c["radius_mm"]), mu_per_mm=float(c["mu_per_mm"]))
                     for c in sd.get("capsules", []))
        caps_by[sd["name"]] = caps
        caps_all += caps
    avoid = [np.asarray(x, float) + centre for sd in segs_raw for x in sd.get("bead_xyz_mm", [])]
    out = []
    for i, sd in enumerate(segs_raw):
        name = _req(sd, "name", src, f"segments[{i}].")
        role = _req(sd, "role", src, f"segments[{i}].")
        if role not in ROLES:
            raise InputError(f"Invalid study definition {src!r}: `segments[{i}].role` must be "
                             f"one of {', '.join(ROLES)}, got {role!r}.")
        if "bead_xyz_mm" in sd:
            xyz = np.asarray(sd["bead_xyz_mm"], float) + centre
        else:
            vols = [dict(v, centre_mm=np.add(v["centre_mm"], centre))
                    for v in _req(sd, "volumes", src, f"segments[{i}].")]
            xyz = _sample_beads(rng, vols, caps_all, avoid, float(sd.get("min_spacing_mm", 8.0)),
                                src, name)
            avoid += list(xyz)
        prefix = sd.get("id_prefix", name[:3].upper())
        ids = np.array([f"{prefix}{k + 1:02d}" for k in range(len(xyz))])
        diam = np.full(len(xyz), float(sd.get("diameter_mm", 1.0)))
        out.append(Segment(name=name, role=role, bead_ids=readonly(ids), xyz_mm=readonly(xyz),
                           diameter_mm=readonly(diam), capsules=caps_by[name],
                           tolerance_mm=float(sd.get("tolerance_mm", 1.5))))
    return tuple(out)


def _perturbed_views(cage: Cage, rng: np.random.Generator, det: dict,
                     spacing: float, shape: tuple[int, int]) -> tuple[DetectorView, ...]:
    """The cage's nominal views with exam-specific focus and detector placement errors."""
    views = []
    for name in sorted(cage.views):
        cv = cage.views[name]
        focus = cv.focus_mm + np.clip(rng.normal(0, det["focus_sd_mm"], 3),
                                      -2.5 * det["focus_sd_mm"], 2.5 * det["focus_sd_mm"])
        n, up = cv.detector_normal, cv.detector_up
        e1 = np.cross(up, n)
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(n, e1)
        tilt = np.radians(det["tilt_sd_deg"]) * rng.normal(0, 1, 2)
        spin = np.radians(det["rotation_sd_deg"]) * rng.normal()
        R = Rotation.from_rotvec(tilt[0] * e1 + tilt[1] * e2 + spin * n).as_matrix()
        shift = det["shift_sd_mm"] * rng.normal(0, 1, 2)
        centre = (cv.detector_centre_mm + shift[0] * e1 + shift[1] * e2
                  + det["distance_sd_mm"] * rng.normal() * n)
        views.append(look_at_view(focus_mm=focus, detector_centre_mm=centre, up=R @ up,
                                  detector_normal=R @ n, pixel_spacing_mm=spacing, shape=shape,
                                  name=name))
    return tuple(views)


def _migration(md: dict, centre: np.ndarray, segs: dict[str, Segment], src: str, eid: str):
    seg = _req(md, "segment", src, f"exams[{eid}].motion.")
    base = _req(md, "relative_to", src, f"exams[{eid}].motion.")
    for s in (seg, base):
        if s not in segs:
            raise InputError(f"Invalid study definition {src!r}: exam {eid!r} moves unknown "
                             f"segment {s!r}.")
    about = md.get("about", "centroid")
    c = segs[seg].xyz_mm.mean(axis=0) if about == "centroid" else np.add(about, centre)
    R = Rotation.from_euler("xyz", md.get("rotation_deg", [0, 0, 0]), degrees=True).as_matrix()
    return seg, base, rigid(R, md.get("translation_mm", [0, 0, 0]), c)


def build_scene(definition: str | os.PathLike | dict = "implant", *, setup: str = "uniplanar",
                seed: int = 0, pixel_spacing_mm: float | None = None,
                detector_px: int | None = None) -> Scene:
    """Build the phantom scene of a study definition.

    Parameters
    ----------
    definition : {"implant", "spine"}, path or dict
        Bundled variant, a study definition TOML file, or its parsed content.
    setup : {"uniplanar", "biplanar"} or path
        Shipped cage name (or a cage file; then the definition needs ``patient_centre_mm.custom``).
    seed : int
        Seed of all randomness (bead placement, exam geometry, rendering noise).
    pixel_spacing_mm, detector_px : optional
        Override the definition's detector (square pixels, square detector); the field of view is
        ``pixel_spacing_mm × detector_px``, keep it ≥ 420 mm so every cage marker is imaged.

    Returns
    -------
    Scene
    """
    if isinstance(definition, dict):
        defn, src = definition, "<dict>"
    else:
        defn, src = load_definition(definition)
    try:
        return _build(defn, src, setup=setup, seed=seed, pixel_spacing_mm=pixel_spacing_mm,
                      detector_px=detector_px, name=str(definition))
    except InputError:
        raise
    except KeyError as exc:  # a malformed nested entry (the common ones are checked by _req)
        raise InputError(f"Invalid study definition {src!r}: missing key {exc}.") from None
    except (TypeError, ValueError, IndexError) as exc:
        raise InputError(f"Invalid study definition {src!r}: {exc}") from None


def _build(defn: dict, src: str, *, setup: str, seed: int, pixel_spacing_mm: float | None,
           detector_px: int | None, name: str) -> Scene:
    st = _req(defn, "study", src, "")
    _dt.date.fromisoformat(st.get("start_date", "2026-01-05"))
    setup_key = setup if setup in SETUPS else "custom"
    cage = load_cage(setup)
    centres = _req(st, "patient_centre_mm", src, "study.")
    centre = np.asarray(_req(centres, setup_key, src, "study.patient_centre_mm."), float)
    rng = np.random.default_rng(seed)
    segments = _segments(defn, src, centre, rng)
    segs = {s.name: s for s in segments}
    det_d = dict(_req(defn, "detector", src, ""))
    spacing = float(pixel_spacing_mm or det_d["pixel_spacing_mm"])
    n_px = int(detector_px or det_d["detector_px"])
    place = _req(defn, "placement", src, "")
    exams, ids = [], set()
    for i, ed in enumerate(_req(defn, "exams", src, "")):
        eid = _req(ed, "id", src, f"exams[{i}].")
        kind = _req(ed, "kind", src, f"exams[{i}].")
        if kind not in EXAM_KINDS:
            raise InputError(f"Invalid study definition {src!r}: `exams[{i}].kind` must be one "
                             f"of {', '.join(EXAM_KINDS)}, got {kind!r}.")
        if eid in ids:
            raise InputError(f"Invalid study definition {src!r}: duplicate exam id {eid!r}.")
        if kind == "double" and ed.get("double_of") not in ids:
            raise InputError(f"Invalid study definition {src!r}: double exam {eid!r} needs "
                             "`double_of` naming an earlier exam.")
        ids.add(eid)
        erng = np.random.default_rng([seed, 1, i])
        views = _perturbed_views(cage, erng, det_d, spacing, (n_px, n_px))
        if kind == "reference":
            P = np.eye(4)
        else:
            rv = np.radians(float(place["rotation_sd_deg"])) * erng.normal(0, 1, 3)
            t = float(place["translation_sd_mm"]) * erng.normal(0, 1, 3)
            R = (Rotation.from_euler("xyz", ed.get("placement_rotation_deg", [0, 0, 0]),
                                     degrees=True) * Rotation.from_rotvec(rv)).as_matrix()
            P = rigid(R, t, centre)
        migration = {}
        for md in ed.get("motion", []):
            seg, base, M = _migration(md, centre, segs, src, eid)
            migration[seg] = (base, M)
        poses: dict[str, np.ndarray] = {}
        pending = [s.name for s in segments]
        while pending:  # resolve chains (L3 relative to L4 relative to L5)
            progressed = False
            for name in list(pending):
                base = migration.get(name, (None, None))[0]
                if base is None:
                    poses[name] = P
                elif base in poses:
                    poses[name] = poses[base] @ migration[name][1]
                else:
                    continue
                pending.remove(name)
                progressed = True
            if not progressed:
                raise InputError(f"Invalid study definition {src!r}: circular motions in exam "
                                 f"{eid!r}.")
        exams.append(Exam(id=eid, kind=kind, day=int(ed.get("day", 0)),
                          minute=int(ed.get("minute", 0)), double_of=ed.get("double_of"),
                          series=ed.get("series"), views=views,
                          poses={k: readonly(v) for k, v in poses.items()},
                          migration=migration))
    if sum(e.kind == "reference" for e in exams) != 1:
        raise InputError(f"Invalid study definition {src!r}: expected exactly one reference exam.")
    motions = tuple((m["segment"], m["relative_to"]) for m in defn.get("motions", []))
    return Scene(study_id=st["id"], subject_id=st.get("subject", "S01"),
                 description=st.get("description", ""), region=st.get("region", ""),
                 setup=setup, variant=st.get("variant", name), seed=int(seed),
                 start_date=st.get("start_date", "2026-01-05"), cage=cage,
                 cage_ref=cage.source, patient_centre_mm=readonly(centre), segments=segments,
                 exams=tuple(exams), motions=motions,
                 thresholds={k: float(v) for k, v in defn.get("thresholds", {}).items()})
