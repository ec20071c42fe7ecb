"""Calibration cage definitions: fiducial and control markers, nominal view geometry (DESIGN §4).

A cage file is JSON (``calibration/<name>.json``, format in ``calibration/README.md``)::

    {"name": str, "kind": "uniplanar" | "biplanar", "description": str,
     "markers": [{"id": str, "role": "fiducial" | "control", "plane": str,
                  "xyz_mm": [x, y, z], "diameter_mm": 1.0}, ...],
     "views": {"A": {"planes": ["A"], "focus_mm": [...], "detector_centre_mm": [...],
                     "detector_normal": [...], "detector_up": [...]}, "B": {...}}}

The laboratory frame of an analysis is the cage frame. :func:`load_cage` validates a file once and
returns a frozen :class:`Cage`; every problem raises :class:`rsa.errors.InputError` naming the file
and the offending field.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsa._validate import readonly
from rsa.errors import InputError

ROLES = ("fiducial", "control")
KINDS = ("uniplanar", "biplanar")
MIN_FIDUCIALS = 4  # a plane homography needs ≥ 4 non-collinear points (Hartley & Zisserman §4.1)
MIN_CONTROLS = 2  # the focus is the intersection of ≥ 2 lines (DESIGN §3.1)
_VIEW_VECTORS = ("focus_mm", "detector_centre_mm", "detector_normal", "detector_up")


@dataclass(frozen=True, eq=False)
class CageView:
    """Nominal geometry of one view of a cage (for initialisation only).

    Attributes
    ----------
    name : str
        View name (``"A"``, ``"B"``).
    planes : tuple of str
        Marker planes this view images.
    focus_mm : (3,) ndarray
        Nominal X-ray focus; real exams differ by centimetres.
    detector_centre_mm : (3,) ndarray
        Nominal centre of the detector (image centre).
    detector_normal : (3,) ndarray
        Unit normal of the detector, pointing from the focus side towards the detector.
    detector_up : (3,) ndarray
        Unit lab direction that appears as "up" (decreasing row) in the image.
    """

    name: str
    planes: tuple[str, ...]
    focus_mm: np.ndarray
    detector_centre_mm: np.ndarray
    detector_normal: np.ndarray
    detector_up: np.ndarray


@dataclass(frozen=True, eq=False)
class Cage:
    """A calibration cage: markers (M of them) and nominal views.

    Attributes
    ----------
    name, kind : str
        Cage name and ``"uniplanar"`` or ``"biplanar"``.
    ids, roles, planes : (M,) ndarray of str
        Marker ids (unique), roles (``"fiducial"``/``"control"``) and plane names.
    xyz_mm : (M, 3) ndarray
        Marker centres in the cage (lab) frame.
    diameter_mm : (M,) ndarray
        Marker diameters.
    views : dict of str to CageView
        Nominal view geometry, keyed by view name.
    source : str
        File path or built-in name the cage was loaded from.
    description : str
        Free text from the file.
    """

    name: str
    kind: str
    ids: np.ndarray
    roles: np.ndarray
    planes: np.ndarray
    xyz_mm: np.ndarray
    diameter_mm: np.ndarray
    views: dict[str, CageView]
    source: str
    description: str = ""

    def marker_mask(self, *, view: str | None = None, role: str | None = None) -> np.ndarray:
        """Boolean mask (M,) of the markers imaged by `view` (all if None) with `role`."""
        mask = np.ones(len(self.ids), bool)
        if view is not None:
            if view not in self.views:
                raise InputError(f"Cage {self.name!r} has no view {view!r} "
                                 f"(views: {', '.join(self.views)}).")
            mask &= np.isin(self.planes, self.views[view].planes)
        if role is not None:
            if role not in ROLES:
                raise InputError(f"Expected `role` to be one of {ROLES}, got {role!r}.")
            mask &= self.roles == role
        return mask


def _cage_dirs() -> list[Path]:
    """Directories holding the shipped cage files (installed package data, then a checkout)."""
    return _data_dirs("rsa._cages", Path(__file__).resolve().parent.parent / "calibration")


def _data_dirs(package: str, fallback: Path) -> list[Path]:
    """Folders of the data-only (namespace) `package`, then `fallback` (a source checkout)."""
    dirs = []
    with contextlib.suppress(ImportError, ValueError):  # no package-data mapping
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            dirs += [Path(p) for p in spec.submodule_search_locations]
    dirs.append(fallback)
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def available_cages() -> list[str]:
    """Names of the cage files shipped with the package (e.g. ``["biplanar", "uniplanar"]``)."""
    names: set[str] = set()
    for d in _cage_dirs():
        names.update(p.stem for p in d.glob("*.json"))
    return sorted(names)


def _resolve(path_or_name: str | os.PathLike) -> Path:
    p = Path(path_or_name)
    if isinstance(path_or_name, os.PathLike) or p.suffix == ".json" or len(p.parts) > 1:
        if not p.is_file():
            raise InputError(f"Cage file {str(p)!r} does not exist.")
        return p
    for d in _cage_dirs():
        if (d / f"{p.name}.json").is_file():
            return d / f"{p.name}.json"
    if p.is_file():
        return p
    raise InputError(f"Unknown cage {str(path_or_name)!r}: not a file and not one of the "
                     f"shipped cages ({', '.join(available_cages()) or 'none found'}).")


class _Checker:
    """Field validation with messages naming the file and the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, msg: str) -> InputError:
        return InputError(f"Invalid cage file {self.source!r}: `{field}` {msg}")

    def get(self, obj: dict, key: str, field: str, kinds: type | tuple[type, ...]) -> Any:
        if key not in obj:
            raise self.fail(field, "is missing.")
        val = obj[key]
        if not isinstance(val, kinds) or isinstance(val, bool):
            names = kinds.__name__ if isinstance(kinds, type) else "/".join(k.__name__
                                                                             for k in kinds)
            raise self.fail(field, f"must be of type {names}, got {type(val).__name__}.")
        return val

    def vec3(self, obj: dict, key: str, field: str) -> np.ndarray:
        val = self.get(obj, key, field, list)
        if len(val) != 3:
            raise self.fail(field, f"must have 3 numbers, got {len(val)}.")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in val):
            raise self.fail(field, f"must hold numbers, got {val!r}.")
        if not all(math.isfinite(x) for x in val):
            raise self.fail(field, f"must be finite, got {val!r}.")
        return np.asarray(val, np.float64)


def _parse(data: Any, source: str) -> Cage:
    ck = _Checker(source)
    if not isinstance(data, dict):
        raise ck.fail("(top level)", f"must be a JSON object, got {type(data).__name__}.")
    name = ck.get(data, "name", "name", str)
    kind = ck.get(data, "kind", "kind", str)
    if kind not in KINDS:
        raise ck.fail("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}.")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ck.fail("description", "must be a string.")
    markers = ck.get(data, "markers", "markers", list)
    if not markers:
        raise ck.fail("markers", "is empty.")
    ids, roles, planes, xyz, diam = [], [], [], [], []
    seen: dict[str, int] = {}
    for i, m in enumerate(markers):
        f = f"markers[{i}]"
        if not isinstance(m, dict):
            raise ck.fail(f, "must be an object.")
        mid = ck.get(m, "id", f + ".id", str)
        if not mid:
            raise ck.fail(f + ".id", "is empty.")
        if mid in seen:
            raise ck.fail(f + ".id", f"duplicates id {mid!r} of markers[{seen[mid]}].")
        seen[mid] = i
        role = ck.get(m, "role", f + ".role", str)
        if role not in ROLES:
            raise ck.fail(f + ".role", f"must be one of {', '.join(ROLES)}, got {role!r}.")
        ids.append(mid)
        roles.append(role)
        planes.append(ck.get(m, "plane", f + ".plane", str))
        xyz.append(ck.vec3(m, "xyz_mm", f + ".xyz_mm"))
        d = m.get("diameter_mm", 1.0)
        if (not isinstance(d, (int, float)) or isinstance(d, bool) or not math.isfinite(d)
                or d <= 0):
            raise ck.fail(f + ".diameter_mm", f"must be a positive finite number, got {d!r}.")
        diam.append(float(d))
    roles_a, planes_a = np.array(roles), np.array(planes)
    views_raw = ck.get(data, "views", "views", dict)
    if not views_raw:
        raise ck.fail("views", "is empty.")
    views = {}
    for vname, v in views_raw.items():
        f = f"views.{vname}"
        if not isinstance(v, dict):
            raise ck.fail(f, "must be an object.")
        vplanes = ck.get(v, "planes", f + ".planes", list)
        if not vplanes or not all(isinstance(p, str) for p in vplanes):
            raise ck.fail(f + ".planes",
                          f"must be a non-empty list of plane names, got {vplanes!r}.")
        for p in vplanes:
            if p not in planes_a:
                raise ck.fail(f + ".planes", f"refers to unknown plane {p!r} (marker planes: "
                              f"{', '.join(sorted(set(planes)))}).")
        vec = {k: ck.vec3(v, k, f"{f}.{k}") for k in _VIEW_VECTORS}
        for k in ("detector_normal", "detector_up"):
            n = np.linalg.norm(vec[k])
            if n < 1e-12:
                raise ck.fail(f"{f}.{k}", "must not be the zero vector.")
            vec[k] = vec[k] / n
        if abs(vec["detector_normal"] @ vec["detector_up"]) > 1 - 1e-6:
            raise ck.fail(f"{f}.detector_up", "must not be parallel to `detector_normal`.")
        in_view = np.isin(planes_a, vplanes)
        n_fid = int(np.sum(in_view & (roles_a == "fiducial")))
        n_ctl = int(np.sum(in_view & (roles_a == "control")))
        if n_fid < MIN_FIDUCIALS:
            raise ck.fail(f + ".planes", f"give {n_fid} fiducial markers; at least "
                          f"{MIN_FIDUCIALS} are needed.")
        if n_ctl < MIN_CONTROLS:
            raise ck.fail(f + ".planes", f"give {n_ctl} control markers; at least "
                          f"{MIN_CONTROLS} are needed.")
        views[vname] = CageView(name=vname, planes=tuple(vplanes),
                                **{k: readonly(x) for k, x in vec.items()})
    return Cage(name=name, kind=kind, ids=readonly(np.array(ids)), roles=readonly(roles_a),
                planes=readonly(planes_a), xyz_mm=readonly(np.array(xyz).reshape(-1, 3)),
                diameter_mm=readonly(np.array(diam)), views=views, source=source,
                description=description)


def load_cage(path_or_name: str | os.PathLike) -> Cage:
    """Load and validate a cage definition.

    Parameters
    ----------
    path_or_name : str or path-like
        A path to a cage JSON file, or the name of a shipped cage (``"uniplanar"``,
        ``"biplanar"``; see :func:`available_cages`).

    Returns
    -------
    cage : Cage
        Frozen, validated cage.

    Raises
    ------
    InputError
        Unknown name, unreadable file, malformed JSON (with line and column) or an invalid
        field (the message names the file and the field).
    """
    path = _resolve(path_or_name)
    shipped = path.parent in _cage_dirs() and not isinstance(path_or_name, os.PathLike) \
        and Path(path_or_name).suffix != ".json"
    source = path.stem if shipped else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read cage file {str(path)!r}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"Invalid cage file {str(path)!r}: malformed JSON at line {exc.lineno}, "
                         f"column {exc.colno}: {exc.msg}.") from None
    return _parse(data, source)
