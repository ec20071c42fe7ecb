"""Generate the shipped cage files ``uniplanar.json`` and ``biplanar.json`` (reproducible).

Run ``python calibration/make_cages.py`` from the repository root; the output is deterministic
(fixed seeds, coordinates rounded to 0.1 µm) and the committed JSON files are exactly what this
script writes. The geometry is documented in ``calibration/README.md``.

Markers are laid out in *strips* along the border of each plane, like clinical calibration cages,
leaving the centre of the image free for the patient. Along a strip the spacing is irregular
(10–20 mm) and markers are offset sideways by 0 or ±3 mm in an irregular sequence, so that a marker
can be identified from the spacing pattern of its neighbours and no plane has a mirror or rotation
symmetry. Control markers are placed so that, seen through the nominal views, they do not project
within 3 mm (detector) of a fiducial marker.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MIN_SEP_MM = 3.0  # minimum distance on the detector between a control and a fiducial image


def _strip(rng, start, stop, *, lateral_dir):
    """Points from `start` to `stop` (2-D in-plane coordinates) with irregular spacing/offsets."""
    start, stop = np.asarray(start, float), np.asarray(stop, float)
    length = np.linalg.norm(stop - start)
    along = (stop - start) / length
    s, pts = 0.0, []
    while s <= length:
        off = rng.choice([-3.0, 0.0, 0.0, 3.0])
        pts.append(start + s * along + off * np.asarray(lateral_dir, float))
        s += rng.uniform(10.0, 20.0)
    return np.array(pts)


def _border(rng, half_w, half_h, *, gaps):
    """Strips along the four sides of a half_w × half_h rectangle, with `gaps` (drop indices)."""
    sides = [
        _strip(rng, (-half_w + 10, -half_h), (half_w - 10, -half_h), lateral_dir=(0, 1)),
        _strip(rng, (half_w, -half_h + 15), (half_w, half_h - 15), lateral_dir=(1, 0)),
        _strip(rng, (half_w - 25, half_h), (-half_w + 5, half_h), lateral_dir=(0, 1)),
        _strip(rng, (-half_w, half_h - 30), (-half_w, -half_h + 20), lateral_dir=(1, 0)),
    ]
    pts = np.concatenate(sides)
    keep = np.ones(len(pts), bool)
    keep[np.asarray(gaps, int) % len(pts)] = False
    return pts[keep]


def _thin(pts, n, rng):
    """Keep `n` of the points (irregular removal gives a unique gap pattern)."""
    if len(pts) <= n:
        return pts
    idx = np.sort(rng.choice(len(pts), n, replace=False))
    return pts[idx]


def _project(focus, det_point, det_normal, xyz):
    """Central projection of `xyz` onto the plane through `det_point` with normal `det_normal`."""
    d = xyz - focus
    s = ((det_point - focus) @ det_normal) / (d @ det_normal)
    return focus + s[:, None] * d


def _reject_overlaps(ctrl, fid, views):
    """Drop control markers whose image falls within MIN_SEP_MM of a fiducial image in any view."""
    keep = np.ones(len(ctrl), bool)
    for f, c, n in views:
        pc = _project(f, c, n, ctrl)
        pf = _project(f, c, n, fid)
        dist = np.linalg.norm(pc[:, None, :] - pf[None, :, :], axis=-1).min(axis=1)
        keep &= dist > MIN_SEP_MM
    return ctrl[keep]


def _markers(pts, role, plane, prefix):
    return [{"id": f"{prefix}{i + 1:02d}", "role": role, "plane": plane,
             "xyz_mm": [round(float(v), 4) + 0.0 for v in p], "diameter_mm": 1.0}
            for i, p in enumerate(pts)]


def uniplanar() -> dict:
    """Uniplanar cage: box under the table, both tubes above, ±20° about the y axis."""
    rng = np.random.default_rng(16087)
    z_det, z_ctrl, volume = -25.0, 200.0, np.array([0.0, 0.0, 300.0])
    fid2 = _thin(_border(rng, 140.0, 190.0, gaps=[3, 17, 29]), 44, rng)
    ctrl2 = _thin(_border(rng, 120.0, 150.0, gaps=[5, 21]), 44, rng)
    fid = np.column_stack([fid2, np.zeros(len(fid2))])
    ctrl = np.column_stack([ctrl2, np.full(len(ctrl2), z_ctrl)])
    # Foci: 20° from the detector normal, aimed at the volume centre, 1425 mm above the detector.
    h = 1400.0
    dx = (h - volume[2]) * np.tan(np.radians(20.0))
    foci = {"A": np.array([-dx, 0.0, h]), "B": np.array([dx, 0.0, h])}
    normal = np.array([0.0, 0.0, -1.0])
    views = [(foci[v], np.array([0.0, 0.0, z_det]), normal) for v in "AB"]
    ctrl = _reject_overlaps(ctrl, fid, views)
    out_views = {}
    for v in "AB":
        pts = np.concatenate([_project(foci[v], views[0][1], normal, fid),
                              _project(foci[v], views[0][1], normal, ctrl)])
        centre = np.round((pts.min(axis=0) + pts.max(axis=0)) / 2)
        centre[2] = z_det
        out_views[v] = {"planes": ["A"], "focus_mm": [round(float(x), 2) for x in foci[v]],
                        "detector_centre_mm": [float(x) for x in centre],
                        "detector_normal": [0.0, 0.0, -1.0], "detector_up": [0.0, 1.0, 0.0]}
    return {
        "name": "uniplanar",
        "kind": "uniplanar",
        "description": (
            "Synthetic uniplanar calibration box under the table (rsa reference design). "
            "Fiducial plane z = 0 (25 mm above the detector plane z = -25), control plane "
            "z = +200; tubes above at ±20° from the detector normal about the y axis, "
            "1425 mm above the detector, aimed at the patient volume centre (0, 0, 300). "
            "x medial-lateral, y along the table (proximal-distal), z up towards the tubes "
            "(anterior-posterior for a supine patient)."),
        "markers": _markers(fid, "fiducial", "A", "F") + _markers(ctrl, "control", "A", "C"),
        "views": out_views,
    }


def biplanar() -> dict:
    """Biplanar cage: two views at ±45° about the y axis around the origin, 90° apart."""
    rng = np.random.default_rng(43)
    src_iso, iso_det, fid_gap, ctrl_gap = 1000.0, 500.0, 30.0, 200.0
    markers, views, geo = [], {}, []
    planes_pts = {}
    for v, sign in (("A", -1.0), ("B", 1.0)):
        a = np.array([sign * np.sin(np.radians(45.0)), 0.0, np.cos(np.radians(45.0))])
        e1 = np.cross([0.0, 1.0, 0.0], a)  # in-plane transverse axis
        e2 = np.array([0.0, 1.0, 0.0])
        fid2 = _thin(_border(rng, 120.0, 160.0, gaps=[2, 19]), 40, rng)
        ctrl2 = _thin(_border(rng, 95.0, 130.0, gaps=[7, 26]), 36, rng)
        c_fid = -(iso_det - fid_gap) * a
        c_ctrl = -(iso_det - fid_gap - ctrl_gap) * a
        fid = c_fid + fid2[:, :1] * e1 + fid2[:, 1:] * e2
        ctrl = c_ctrl + ctrl2[:, :1] * e1 + ctrl2[:, 1:] * e2
        focus = src_iso * a
        det_c = -iso_det * a
        ctrl = _reject_overlaps(ctrl, fid, [(focus, det_c, -a)])
        planes_pts[v] = (fid, ctrl)
        geo.append((focus, det_c, -a))
        views[v] = {"planes": [v], "focus_mm": [round(float(x), 2) + 0.0 for x in focus],
                    "detector_centre_mm": [round(float(x), 2) + 0.0 for x in det_c],
                    "detector_normal": [round(float(x), 6) + 0.0 for x in -a],
                    "detector_up": [0.0, 1.0, 0.0]}
    for v in "AB":
        fid, ctrl = planes_pts[v]
        markers += _markers(fid, "fiducial", v, f"{v}F") + _markers(ctrl, "control", v, f"{v}C")
    return {
        "name": "biplanar",
        "kind": "biplanar",
        "description": (
            "Synthetic biplanar cage (rsa reference design): two views 90° apart, tubes at "
            "±45° from vertical about the y axis, 1000 mm from the origin (the volume centre), "
            "detectors 500 mm beyond it. Per view a fiducial plane 30 mm in front of its "
            "detector and a control plane 200 mm nearer the tube, both perpendicular to the "
            "central ray. x medial-lateral, y proximal-distal, z anterior-posterior (up)."),
        "markers": markers,
        "views": views,
    }


def main() -> None:
    for cage in (uniplanar(), biplanar()):
        text = json.dumps(cage, indent=1)
        # One marker per line keeps the files readable and diffs small.
        text = _compact_markers(text)
        (HERE / f"{cage['name']}.json").write_text(text + "\n", encoding="utf-8")


def _compact_markers(text: str) -> str:
    data = json.loads(text)
    lines = ["{"]
    for key in ("name", "kind", "description"):
        lines.append(f' "{key}": {json.dumps(data[key], ensure_ascii=False)},')
    lines.append(' "markers": [')
    ms = [f"  {json.dumps(m)}" for m in data["markers"]]
    lines.append(",\n".join(ms))
    lines.append(" ],")
    lines.append(' "views": {')
    vs = [f'  "{k}": {json.dumps(v)}' for k, v in data["views"].items()]
    lines.append(",\n".join(vs))
    lines.append(" }")
    lines.append("}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
