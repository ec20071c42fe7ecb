"""Cage files: shipped geometry and validation errors (rsa.cage)."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from rsa.cage import available_cages, load_cage
from rsa.errors import InputError
from rsa.synthetic.geometry import look_at_view


def test_cages_are_package_data():
    """The cage files are reachable as the data package ``rsa._cages`` (installed wheels)."""
    spec = importlib.util.find_spec("rsa._cages")
    assert spec is not None
    locations = [Path(p) for p in spec.submodule_search_locations]
    assert any((p / "uniplanar.json").is_file() for p in locations)


def test_shipped_cages_load():
    assert {"uniplanar", "biplanar"} <= set(available_cages())
    uni = load_cage("uniplanar")
    assert uni.kind == "uniplanar"
    assert uni.source == "uniplanar"
    assert set(uni.views) == {"A", "B"}
    assert uni.views["A"].planes == uni.views["B"].planes == ("A",)
    bi = load_cage("biplanar")
    assert bi.views["A"].planes == ("A",)
    assert bi.views["B"].planes == ("B",)
    for cage in (uni, bi):
        assert cage.xyz_mm.shape == (len(cage.ids), 3)
        assert not cage.xyz_mm.flags.writeable
        assert len(set(cage.ids.tolist())) == len(cage.ids)
        for v in cage.views:
            n_fid = cage.marker_mask(view=v, role="fiducial").sum()
            n_ctl = cage.marker_mask(view=v, role="control").sum()
            assert 30 <= n_fid <= 50
            assert 30 <= n_ctl <= 50


@pytest.mark.parametrize("name", ["uniplanar", "biplanar"])
def test_shipped_geometry(name):
    """Per view: fiducials coplanar and ≈ parallel to the detector, controls nearer the tube,
    every marker of the view on a 3000 × 3000 px, 0.143 mm detector with a margin, and the
    control images well apart from the fiducial images."""
    cage = load_cage(name)
    for v, cv in cage.views.items():
        fid = cage.xyz_mm[cage.marker_mask(view=v, role="fiducial")]
        ctl = cage.xyz_mm[cage.marker_mask(view=v, role="control")]
        n = cv.detector_normal
        h_fid = (cv.detector_centre_mm - fid) @ n
        h_ctl = (cv.detector_centre_mm - ctl) @ n
        assert np.ptp(h_fid) < 1e-3  # one plane ∥ detector (coordinates rounded to 0.1 µm)
        assert 10 < h_fid.mean() < 50
        assert 150 < h_ctl.mean() - h_fid.mean() < 250
        fd = (cv.detector_centre_mm - cv.focus_mm) @ n
        assert 1400 < fd < 1600
        view = look_at_view(focus_mm=cv.focus_mm, detector_centre_mm=cv.detector_centre_mm,
                            up=cv.detector_up, detector_normal=n, pixel_spacing_mm=0.143,
                            shape=(3000, 3000))
        uv = view.project(np.concatenate([fid, ctl]))
        assert np.all(uv > 50)
        assert np.all(uv < 2950)
        uvf, uvc = view.project(fid), view.project(ctl)
        sep = np.linalg.norm(uvc[:, None] - uvf[None], axis=-1).min()
        assert sep * 0.143 > 3.0  # mm on the detector; the generator enforces 3 mm
    if name == "uniplanar":
        tilt = [np.degrees(np.arccos(abs(cv.focus_mm - np.array([0, 0, 300.0]))[2]
                                     / np.linalg.norm(cv.focus_mm - np.array([0, 0, 300.0]))))
                for cv in cage.views.values()]
        np.testing.assert_allclose(tilt, 20.0, atol=0.01)


def test_pattern_has_no_symmetry():
    """No mirror/rotation of the fiducial plane maps the pattern onto itself (within 2 mm)."""
    cage = load_cage("uniplanar")
    p = cage.xyz_mm[cage.marker_mask(role="fiducial"), :2]
    for T in (np.diag([-1, 1]), np.diag([1, -1]), -np.eye(2)):
        q = p @ T.T
        d = np.linalg.norm(q[:, None] - p[None], axis=-1).min(axis=1)
        assert np.mean(d < 2.0) < 0.5


def test_marker_mask_errors():
    cage = load_cage("uniplanar")
    with pytest.raises(InputError, match="no view 'C'"):
        cage.marker_mask(view="C")
    with pytest.raises(InputError, match="Expected `role`"):
        cage.marker_mask(role="other")


@pytest.fixture
def good():
    ids = [f"F{i}" for i in range(4)] + ["C0", "C1"]
    xyz = [[0, 0, 0], [30, 0, 0], [0, 40, 0], [35, 45, 0], [5, 5, 200], [25, 30, 200]]
    return {"name": "t", "kind": "uniplanar", "description": "",
            "markers": [{"id": i, "role": "fiducial" if i[0] == "F" else "control",
                         "plane": "A", "xyz_mm": x} for i, x in zip(ids, xyz, strict=True)],
            "views": {v: {"planes": ["A"], "focus_mm": [s * 400, 0, 1400],
                          "detector_centre_mm": [0, 0, -25], "detector_normal": [0, 0, -1],
                          "detector_up": [0, 1, 0]} for v, s in (("A", -1), ("B", 1))}}


def _write(tmp_path, data, text=None):
    p = tmp_path / "cage.json"
    p.write_text(text if text is not None else json.dumps(data), encoding="utf-8")
    return p


def test_load_from_path(tmp_path, good):
    cage = load_cage(_write(tmp_path, good))
    assert cage.source.endswith("cage.json")
    np.testing.assert_array_equal(cage.diameter_mm, 1.0)
    assert cage.marker_mask(view="A", role="control").sum() == 2
    # str path works too
    assert load_cage(str(tmp_path / "cage.json")).name == "t"


def _bad(good, edit):
    d = copy.deepcopy(good)
    edit(d)
    return d


BAD = [
    (lambda d: d["markers"][1].pop("role"), r"markers\[1\]\.role` is missing"),
    (lambda d: d["markers"][1].update(role="reference"), r"markers\[1\]\.role` must be one of"),
    (lambda d: d["markers"][2].update(id="F0"), r"markers\[2\]\.id` duplicates id 'F0'"),
    (lambda d: d["markers"][0].update(xyz_mm=[0, float("nan"), 0]),
     r"markers\[0\]\.xyz_mm` must be finite"),
    (lambda d: d["markers"][0].update(xyz_mm=[0, 1]), r"markers\[0\]\.xyz_mm` must have 3"),
    (lambda d: d["markers"][0].update(xyz_mm=[0, "a", 1]), r"markers\[0\]\.xyz_mm` must hold"),
    (lambda d: d["markers"][0].update(diameter_mm=-1), r"diameter_mm` must be a positive"),
    (lambda d: d.update(kind="triplanar"), r"`kind` must be one of uniplanar, biplanar"),
    (lambda d: d.pop("name"), r"`name` is missing"),
    (lambda d: d.update(markers=d["markers"][1:]),
     r"`views\.A\.planes` give 3 fiducial markers; at least 4"),
    (lambda d: d.update(markers=d["markers"][:5]),
     r"`views\.A\.planes` give 1 control markers; at least 2"),
    (lambda d: d["views"]["B"].update(planes=["Z"]), r"`views\.B\.planes` refers to unknown plane"),
    (lambda d: d["views"]["A"].pop("focus_mm"), r"`views\.A\.focus_mm` is missing"),
    (lambda d: d["views"]["A"].update(detector_up=[0, 0, 2]),
     r"`views\.A\.detector_up` must not be parallel"),
    (lambda d: d["views"]["A"].update(detector_normal=[0, 0, 0]),
     r"`views\.A\.detector_normal` must not be the zero"),
    (lambda d: d.update(views={}), r"`views` is empty"),
    (lambda d: d.update(markers="x"), r"`markers` must be of type list"),
]


@pytest.mark.parametrize(("edit", "match"), BAD)
def test_bad_cage_files(tmp_path, good, edit, match):
    p = _write(tmp_path, _bad(good, edit))
    with pytest.raises(InputError, match=match) as info:
        load_cage(p)
    assert "cage.json" in str(info.value)  # the file is named


def test_malformed_json_line_number(tmp_path, good):
    text = json.dumps(good, indent=1).replace('"kind": "uniplanar",', '"kind": "uniplanar"', 1)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if '"description"' in s)
    p = _write(tmp_path, None, text=text)
    with pytest.raises(InputError, match=rf"cage\.json.*malformed JSON at line {line}"):
        load_cage(p)


def test_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"Unknown cage 'nope'.*uniplanar"):
        load_cage("nope")
    with pytest.raises(InputError, match="does not exist"):
        load_cage(tmp_path / "missing.json")
