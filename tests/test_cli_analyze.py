"""`rsa analyze` on hostile inputs: one-line errors, exit code 2, nothing half-written."""

import shutil

import pydicom
import pytest
from typer.testing import CliRunner

from rsa.cli import app
from rsa.errors import InputError
from rsa.pipeline import analyse_study
from rsa.synthetic import write_study

SMALL = {"detector_px": 600, "pixel_spacing_mm": 0.715}  # fast to render; never analysed here


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_study(tmp_path_factory.mktemp("s") / "study", setup="uniplanar", seed=1,
                       variant="implant", **SMALL)


@pytest.fixture
def copy(study, tmp_path):
    dst = tmp_path / "study"
    shutil.copytree(study, dst)
    return dst


def _run(manifest, out):
    return CliRunner().invoke(app, ["analyze", str(manifest), "--out", str(out), "--serial"])


def _assert_clean_error(result, out, match):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("rsa: error: ")
    assert match in lines[0]
    assert "Traceback" not in result.output
    # nothing written half: no exports; a store, if any, holds no partial exam
    assert not (out / "results.json").exists()


def _edit_manifest(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(("old", "new", "match"), [
    ('relative_to = "tibia"', 'relative_to = "femur"', "unknown segment 'femur'"),
    ('id = "M03"', 'id = "REF"', "duplicate exam id 'REF'"),
    ('date = "2026-04-06"', 'date = "2025-04-06"', "is dated before the reference exam"),
    ('file = "S01/M03_A.dcm"', 'file = "S01/nope.dcm"', "image file not found"),
])
def test_bad_manifest(copy, tmp_path, old, new, match):
    _edit_manifest(copy / "study.toml", old, new)
    out = tmp_path / "out"
    _assert_clean_error(_run(copy / "study.toml", out), out, match)


def _dicom_edit(path, fn):
    ds = pydicom.dcmread(path)
    fn(ds)
    ds.save_as(path)


def test_truncated_dicom(copy, tmp_path):
    f = copy / "S01" / "REF_A.dcm"
    f.write_bytes(f.read_bytes()[:5000])
    out = tmp_path / "out"
    _assert_clean_error(_run(copy / "study.toml", out), out, "REF_A.dcm")


def test_non_image_dicom(copy, tmp_path):
    _dicom_edit(copy / "S01" / "REF_B.dcm", lambda ds: delattr(ds, "PixelData"))
    out = tmp_path / "out"
    _assert_clean_error(_run(copy / "study.toml", out), out, "has no `PixelData`")


def test_missing_pixel_spacing(copy, tmp_path):
    def strip(ds):
        del ds.PixelSpacing
        del ds.ImagerPixelSpacing

    _dicom_edit(copy / "S01" / "REF_A.dcm", strip)
    out = tmp_path / "out"
    _assert_clean_error(_run(copy / "study.toml", out), out, "neither `ImagerPixelSpacing`")


def test_images_of_different_size(copy, tmp_path):
    def crop(ds):
        arr = ds.pixel_array[:-10]
        ds.Rows = arr.shape[0]
        ds.PixelData = arr.tobytes()

    _dicom_edit(copy / "S01" / "REF_A.dcm", crop)
    out = tmp_path / "out"
    _assert_clean_error(_run(copy / "study.toml", out), out, "differ in size or pixel spacing")


def test_missing_manifest(tmp_path):
    out = tmp_path / "out"
    _assert_clean_error(_run(tmp_path / "none.toml", out), out, "manifest file not found")


@pytest.mark.parametrize(("edit", "match"), [
    (lambda f: f.write_bytes(f.read_bytes()[:5000]), "REF_A.dcm"),
    (lambda f: _dicom_edit(f, lambda ds: delattr(ds, "PixelData")), "has no `PixelData`"),
])
def test_bad_view_in_a_view_pool(copy, tmp_path, edit, match):
    """The views read and detected in worker processes: the same clear error, from there or
    from this process's own read."""
    edit(copy / "S01" / "REF_A.dcm")
    with pytest.raises(InputError, match=match):
        analyse_study(copy / "study.toml", tmp_path / "out", executor="views")
    assert not (tmp_path / "out" / "results.json").exists()


def test_unknown_executor(tmp_path):
    """Refused before anything is read or written."""
    with pytest.raises(InputError, match="executor 'threads' is not an Executor"):
        analyse_study(tmp_path / "study.toml", tmp_path / "out", executor="threads")
    assert not (tmp_path / "out").exists()
