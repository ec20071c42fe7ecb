"""write_study: DICOM files, manifest and truth.json of a small fast phantom study."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from rsa.cli import app
from rsa.errors import InputError
from rsa.synthetic.study import APPROX_SD_MM, write_study

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the `tomli` backport
    import tomli as tomllib

# A coarse detector (600 px × 0.715 mm = 429 mm, the same field of view as the default
# 3000 px × 0.143 mm) keeps each study to about a second.
SMALL = {"detector_px": 600, "pixel_spacing_mm": 0.715}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    calls = []
    write_study(out, setup="uniplanar", seed=11, variant="implant",
                progress=lambda d, t, m: calls.append((d, t, m)), **SMALL)
    return out, calls


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_files_and_progress(study):
    out, calls = study
    names = set(_files(out))
    assert {"study.toml", "truth.json"} <= names
    assert sum(n.endswith(".dcm") for n in names) == 12  # 6 exams × 2 views
    assert [c[0] for c in calls] == list(range(1, calls[0][1] + 1))
    assert calls[-1][2] == "truth written"


def test_dicom_headers(study):
    out, _ = study
    manifest = tomllib.loads((out / "study.toml").read_text(encoding="utf-8"))
    study_uids = set()
    for exam in manifest["subjects"][0]["exams"]:
        uids = set()
        for img in exam["images"]:
            ds = pydicom.dcmread(out / img["file"])
            assert ds.Modality == "DX"
            assert ds.PhotometricInterpretation == "MONOCHROME2"
            assert [float(x) for x in ds.PixelSpacing] == [0.715, 0.715]
            assert [float(x) for x in ds.ImagerPixelSpacing] == [0.715, 0.715]
            assert ds.pixel_array.shape == (600, 600)
            assert ds.PatientIdentityRemoved == "YES"
            assert ds.StudyDate == exam["date"].replace("-", "")
            uids.add(ds.StudyInstanceUID)
        assert len(uids) == 1  # both views of one exam share a study UID
        study_uids |= uids
    assert len(study_uids) == 6


def test_manifest_schema(study):
    out, _ = study
    m = tomllib.loads((out / "study.toml").read_text(encoding="utf-8"))
    truth = json.loads((out / "truth.json").read_text(encoding="utf-8"))
    assert m["schema"] == "rsa-study/1"
    assert m["study"]["cage"] == "uniplanar"
    assert m["study"]["region"] == "lower_extremity"
    assert m["thresholds"] == {"gate_mm": 0.5, "me_limit_mm": 0.35, "cn_limit": 150.0}
    assert m["motions"] == [{"segment": "implant", "relative_to": "tibia", "frame": "lab",
                             "point": "centroid"}]
    (subject,) = m["subjects"]
    assert [e["id"] for e in subject["exams"]] == [e["id"] for e in truth["exams"]]
    assert [e["kind"] for e in subject["exams"]] == ["reference", "double", "follow-up",
                                                     "double", "follow-up", "double"]
    assert subject["exams"][1]["double_of"] == "REF"
    for seg in subject["segments"]:
        t = truth["segments"][seg["name"]]
        assert seg["definition"] == "coordinates"
        assert seg["bead_ids"] == t["bead_ids"]
        err = np.abs(np.array(seg["xyz_mm"]) - np.array(t["reference_xyz_mm"]))
        # noise N(0, APPROX_SD_MM) rounded to 0.1 mm: < 5 SD + 0.05 everywhere, well inside tol.
        assert err.max() < 5 * APPROX_SD_MM + 0.05
        assert err.max() < seg["tolerance_mm"]
        assert err.max() > 0  # approximate, not the truth
    for exam in subject["exams"]:
        assert exam["layout"] == "per_view"
        assert [i["views"] for i in exam["images"]] == [["A"], ["B"]]
        for img in exam["images"]:
            assert (out / img["file"]).is_file()


def test_truth_consistency(study):
    """uv of every bead and cage marker = projection of its truth xyz with the truth view
    geometry (3×4 matrix); the follow-up motions and double exam are as prescribed."""
    out, _ = study
    truth = json.loads((out / "truth.json").read_text(encoding="utf-8"))
    cage_xyz = np.array(truth["cage"]["xyz_mm"])

    def project(P, xyz):
        h = np.c_[xyz, np.ones(len(xyz))] @ np.array(P).T
        return h[:, :2] / h[:, 2:]

    for exam in truth["exams"]:
        for v in exam["views"].values():
            P = v["projection_matrix"]
            # 1e-6 px: the JSON keeps 12 decimals of P and 9 of coordinates
            np.testing.assert_allclose(project(P, cage_xyz), v["cage"]["uv_px"], atol=1e-6)
            for name, b in v["beads"].items():
                xyz = np.array(exam["segments"][name]["xyz_mm"])
                np.testing.assert_allclose(project(P, xyz), b["uv_px"], atol=1e-6)
                assert len(b["hidden"]) == len(b["clipped"]) == len(b["overlap"]) == len(xyz)
            assert np.all(np.array(v["cage"]["in_view"]))  # uniplanar: every marker in view
            focus = np.array(v["focus_mm"])
            # focus = null space of P
            # (truth.json rounds the focus to 1e-9 mm; |P| entries ≲ 10 → ≲ 3 · 10 · 1e-9)
            np.testing.assert_allclose(np.array(P) @ np.r_[focus, 1.0], 0, atol=5e-8)
        pose = np.array(exam["segments"]["tibia"]["pose"])
        ref = np.array(truth["segments"]["tibia"]["reference_xyz_mm"])
        np.testing.assert_allclose(ref @ pose[:3, :3].T + pose[:3, 3],
                                   exam["segments"]["tibia"]["xyz_mm"], atol=1e-8)
    by_id = {e["id"]: e for e in truth["exams"]}
    rel = by_id["M03"]["relative_motion"]["implant/tibia"]
    np.testing.assert_allclose(rel["translation_mm"], [0, -0.3, 0], atol=1e-8)
    rel = by_id["Y01"]["relative_motion"]["implant/tibia"]
    np.testing.assert_allclose(rel["rotation_deg"], [0.4, 0, 0], atol=1e-8)
    dbl = by_id["REF-DOUBLE"]
    assert dbl["relative_motion"]["implant/tibia"]["mtpm_mm"] == pytest.approx(0, abs=1e-8)
    assert dbl["motion_vs_double_of"]["implant/tibia"]["mtpm_mm"] == pytest.approx(0, abs=1e-8)
    dbl = by_id["Y01-DOUBLE"]  # a follow-up's double repeats its partner's true migration
    assert dbl["motion_vs_double_of"]["implant/tibia"]["mtpm_mm"] == pytest.approx(0, abs=1e-8)
    np.testing.assert_allclose(dbl["relative_motion"]["implant/tibia"]["rotation_deg"],
                               [0.4, 0, 0], atol=1e-8)
    # some beads are hidden behind the metal stem/tray in some views
    hidden = [h for e in truth["exams"] for v in e["views"].values()
              for b in v["beads"].values() for h in b["hidden"]]
    assert 0 < sum(hidden) < len(hidden) / 2


def test_same_seed_identical_bytes(study, tmp_path):
    out, _ = study
    again = write_study(tmp_path / "again", setup="uniplanar", seed=11, variant="implant",
                        **SMALL)
    assert _files(out) == _files(again)
    other = write_study(tmp_path / "other", setup="uniplanar", seed=12, variant="implant",
                        **SMALL)
    a, b = _files(out), _files(other)
    assert a.keys() == b.keys()
    assert a["truth.json"] != b["truth.json"]
    assert a["S01/REF_A.dcm"] != b["S01/REF_A.dcm"]


def test_noise_draw_changes_only_the_noise(study, tmp_path):
    """Another noise draw: same subject, geometry and anatomy, independent image noise."""
    out, _ = study
    other = write_study(tmp_path / "draw", setup="uniplanar", seed=11, variant="implant",
                        noise_draw=1, **SMALL)
    t0 = json.loads((out / "truth.json").read_text(encoding="utf-8"))
    t1 = json.loads((other / "truth.json").read_text(encoding="utf-8"))
    assert (t0["noise_draw"], t1["noise_draw"]) == (0, 1)
    assert {**t0, "noise_draw": 1} == t1          # every true position and motion alike
    da, db = pydicom.dcmread(out / "S01/REF_A.dcm"), pydicom.dcmread(other / "S01/REF_A.dcm")
    for tag in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert getattr(da, tag) != getattr(db, tag)      # another image, another identity
    a, b = da.pixel_array.astype(float), db.pixel_array.astype(float)
    d = a - b
    assert np.any(d != 0)
    # independent draws: the difference of two noisy images of the same scene has no
    # structure left (no bead, no edge): its pixels are as uncorrelated with the image as noise
    assert abs(np.corrcoef(d.ravel(), (a + b).ravel())[0, 1]) < 0.1
    # and draw 0 is the stream of every earlier study
    assert _files(write_study(tmp_path / "zero", setup="uniplanar", seed=11, variant="implant",
                              noise_draw=0, **SMALL)) == _files(out)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_noise_draw_must_be_a_non_negative_integer(tmp_path, bad):
    with pytest.raises(InputError, match="noise_draw"):
        write_study(tmp_path / "bad", seed=11, noise_draw=bad, **SMALL)
    assert not (tmp_path / "bad").exists()


def test_biplanar_spine_side_by_side(tmp_path):
    out = write_study(tmp_path, setup="biplanar", variant="spine", seed=2, side_by_side=True,
                      photometric="MONOCHROME1", **SMALL)
    m = tomllib.loads((out / "study.toml").read_text(encoding="utf-8"))
    truth = json.loads((out / "truth.json").read_text(encoding="utf-8"))
    assert m["study"]["cage"] == "biplanar"
    assert m["study"]["region"] == "spine"
    assert m["motions"][0]["segment"] == "L4"
    exams = m["subjects"][0]["exams"]
    assert sum(e["kind"] == "dynamic" for e in exams) == 3
    for e in exams:
        assert e["layout"] == "side_by_side"
        (img,) = e["images"]
        assert img["views"] == ["A", "B"]
        ds = pydicom.dcmread(out / img["file"])
        assert ds.pixel_array.shape == (600, 1200)
        assert ds.PhotometricInterpretation == "MONOCHROME1"
    v = truth["exams"][0]["views"]
    assert v["A"]["columns"] == [0, 600]
    assert v["B"]["columns"] == [600, 1200]
    # biplanar: view A images plane A only
    in_view = np.array(v["A"]["cage"]["in_view"])
    assert 0 < in_view.sum() < len(in_view)


def test_bad_setup(tmp_path):
    with pytest.raises(InputError, match="Unknown setup 'triplanar'"):
        write_study(tmp_path, setup="triplanar")
    assert not any(tmp_path.iterdir())


def test_cli_phantom(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["phantom", str(tmp_path / "x"), "--setup", "triplanar"])
    assert res.exit_code == 2
    assert "Unknown setup 'triplanar'" in res.output
    # a tiny custom definition (coarse detector) through the CLI
    src = (Path(__file__).resolve().parents[1] / "examples" / "phantom_implant.toml")
    text = src.read_text(encoding="utf-8").replace("detector_px = 3000", "detector_px = 300")
    text = text.replace("pixel_spacing_mm = 0.143", "pixel_spacing_mm = 1.43")
    defn = tmp_path / "tiny.toml"
    defn.write_text(text, encoding="utf-8")
    res = runner.invoke(app, ["phantom", str(tmp_path / "y"), "--variant", str(defn),
                              "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "y" / "study.toml").is_file()
    assert pydicom.dcmread(tmp_path / "y" / "S01" / "REF_A.dcm").Rows == 300
    # another noise draw of the same study; a negative one is bad input (exit 2, one line)
    res = runner.invoke(app, ["phantom", str(tmp_path / "z"), "--variant", str(defn),
                              "--seed", "3", "--noise-draw", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "z" / "truth.json").read_text())["noise_draw"] == 2
    res = runner.invoke(app, ["phantom", str(tmp_path / "w"), "--noise-draw", "-1"])
    assert res.exit_code == 2
    assert "noise_draw" in res.output
    assert "Traceback" not in res.output


def test_image_overlaps():
    """1-mm spheres: images of radius r·M/spacing ≈ 4.5 px; two 1 mm apart (≈ 9 px) overlap
    within the 2-px margin, a third 7 mm away does not."""
    from rsa.synthetic.geometry import look_at_view
    from rsa.synthetic.study import image_overlaps

    view = look_at_view(focus_mm=[0, 0, 1400], detector_centre_mm=[0, 0, -25], up=[0, 1, 0],
                        pixel_spacing_mm=0.143, shape=(200, 200))
    centres = np.array([[0.0, 0, 300], [1.0, 0, 300], [8.0, 0, 300]])
    m = view.magnification(centres)[0]
    r_img = 0.5 * m / 0.143
    assert 2 * r_img + 2 > 1.0 * m / 0.143  # the first two are within the margin
    assert 2 * r_img + 2 < 7.0 * m / 0.143  # the third is far from both
    np.testing.assert_array_equal(image_overlaps(view, centres, np.full(3, 0.5)),
                                  [True, True, False])
