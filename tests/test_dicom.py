"""Tests of the DICOM writer (rsa.synthetic.dicom): validity, round trip, determinism, layout."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pydicom
import pytest

from rsa.errors import ShapeError
from rsa.synthetic.dicom import write_dicom, write_dicom_side_by_side


@pytest.fixture
def image(rng):
    img = rng.integers(0, 2**14, (40, 56)).astype(np.uint16)
    img[0, 0], img[-1, -1] = 0, 2**14 - 1  # the full stored range
    return img


def test_round_trip_monochrome2(tmp_path, image):
    path = write_dicom(tmp_path / "sub" / "a.dcm", image, pixel_spacing_mm=(0.1, 0.125), seed=1)
    assert path.parent.name == "sub"
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(ds.pixel_array, image)
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"  # DX For Presentation
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.Modality == "DX"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 14, 13, 0)
    assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (40, 56, 1)
    assert [float(x) for x in ds.ImagerPixelSpacing] == [0.1, 0.125]
    assert [float(x) for x in ds.PixelSpacing] == [0.1, 0.125]
    assert ds.PatientID == "PHANTOM-001"
    assert "RSA-VIEW A" in ds.ImageComments
    assert ds.AcquisitionDate == "20200101"


def test_monochrome1_is_stored_inverted(tmp_path, image):
    path = write_dicom(tmp_path / "m1.dcm", image, pixel_spacing_mm=0.1,
                       photometric="MONOCHROME1", bits_stored=14, seed=2)
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert ds.PresentationLUTShape == "INVERSE"
    # A viewer shows max − value for MONOCHROME1: the same picture as the MONOCHROME2 input.
    np.testing.assert_array_equal(2**14 - 1 - ds.pixel_array.astype(int), image)


def test_reader_round_trip_via_rsa_io(tmp_path, image):
    from rsa.io.images import read_radiograph

    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        path = write_dicom(tmp_path / f"{photometric}.dcm", image, pixel_spacing_mm=(0.1, 0.12),
                           photometric=photometric, seed=3)
        r = read_radiograph(path)
        np.testing.assert_array_equal(r.image, image)
        # rsa.io returns (u, v) = (col, row) spacing.
        np.testing.assert_array_equal(r.pixel_spacing_mm, [0.12, 0.1])


def test_same_seed_gives_identical_bytes(tmp_path, image):
    kw = {"pixel_spacing_mm": 0.1, "seed": 42, "view_name": "B"}
    a = write_dicom(tmp_path / "a.dcm", image, **kw).read_bytes()
    b = write_dicom(tmp_path / "b.dcm", image, **kw).read_bytes()
    assert a == b
    c = write_dicom(tmp_path / "c.dcm", image, **{**kw, "seed": 43}).read_bytes()
    assert a != c
    # A different image under the same seed gets a different SOP instance UID.
    d = write_dicom(tmp_path / "d.dcm", image[::-1], **kw)
    assert pydicom.dcmread(d).SOPInstanceUID != pydicom.dcmread(tmp_path / "a.dcm").SOPInstanceUID


def test_explicit_uids_and_datetime(tmp_path, image):
    when = dt.datetime(2024, 5, 6, 7, 8, 9)
    path = write_dicom(tmp_path / "x.dcm", image, pixel_spacing_mm=0.1, study_uid="1.2.3.4",
                       series_uid="1.2.3.4.5", acquisition_datetime=when)
    ds = pydicom.dcmread(path)
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == ("1.2.3.4", "1.2.3.4.5")
    assert (ds.StudyDate, ds.StudyTime, ds.AcquisitionDateTime) == ("20240506", "070809",
                                                                    "20240506070809")


def test_side_by_side_layout(tmp_path, image):
    from rsa.io.images import read_radiograph, split_views

    other = image[::-1].copy()
    path = write_dicom_side_by_side(tmp_path / "ab.dcm", [image, other], pixel_spacing_mm=0.1,
                                    seed=5)
    ds = pydicom.dcmread(path)
    assert ds.ImageComments == "RSA-LAYOUT side-by-side A|B width=56"
    np.testing.assert_array_equal(ds.pixel_array[:, :56], image)
    np.testing.assert_array_equal(ds.pixel_array[:, 56:], other)
    views = split_views(read_radiograph(path))
    np.testing.assert_array_equal(views["B"].image, other)


def test_atomic_write_leaves_no_temporary_files(tmp_path, image):
    write_dicom(tmp_path / "a.dcm", image, pixel_spacing_mm=0.1, seed=1)
    write_dicom(tmp_path / "a.dcm", image, pixel_spacing_mm=0.1, seed=2)  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dcm"]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"image": np.zeros((2, 3, 4), np.uint16)}, r"shape \(rows, cols\)"),
    ({"image": np.zeros((4, 4))}, "integers"),
    ({"image": np.full((4, 4), 2**14, np.uint16)}, r"values in \[0, 16383\]"),
    ({"bits_stored": 17}, "bits_stored"),
    ({"photometric": "RGB"}, "photometric"),
    ({"pixel_spacing_mm": (0.1, -0.1)}, "positive"),
    ({"pixel_spacing_mm": (0.1, 0.1, 0.1)}, "pixel_spacing_mm"),
])
def test_invalid_arguments_raise(tmp_path, kwargs, match):
    args = {"image": np.zeros((4, 4), np.uint16), "pixel_spacing_mm": 0.1, **kwargs}
    with pytest.raises(ShapeError, match=match):
        write_dicom(tmp_path / "bad.dcm", args.pop("image"), **args)
    assert not (tmp_path / "bad.dcm").exists()


def test_side_by_side_invalid(tmp_path, image):
    with pytest.raises(ShapeError, match="2 arrays"):
        write_dicom_side_by_side(tmp_path / "x.dcm", [image], pixel_spacing_mm=0.1)
    with pytest.raises(ShapeError, match="same shape"):
        write_dicom_side_by_side(tmp_path / "x.dcm", [image, image[:, :10]], pixel_spacing_mm=0.1)
    with pytest.raises(ShapeError, match="view_names"):
        write_dicom_side_by_side(tmp_path / "x.dcm", [image, image], pixel_spacing_mm=0.1,
                                 view_names=("A|", "B"))
