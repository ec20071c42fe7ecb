"""Image reading and atomic writes (rsa.io): header handling, polarity, errors."""

from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from rsa.errors import InputError
from rsa.io import atomic_write, atomic_write_text, file_sha256, read_radiograph, split_views


def _dicom(path: Path, pixels: np.ndarray, *, photometric="MONOCHROME2", bits=14,
           imager_spacing=(0.15, 0.1), pixel_spacing=None, comments=None, pixel_data=True,
           rescale=None):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName = "Secret^Person"
    ds.AcquisitionDate = "20260102"
    if pixel_data:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 16
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    if imager_spacing is not None:
        ds.ImagerPixelSpacing = list(imager_spacing)
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if comments:
        ds.ImageComments = comments
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def pixels(rng):
    return rng.integers(0, 2**14, size=(40, 60)).astype(np.uint16)


def test_dicom_monochrome2_and_spacing_order(tmp_path, pixels):
    # DICOM spacing is (row, column); rsa stores (u = column, v = row).
    r = read_radiograph(_dicom(tmp_path / "a.dcm", pixels, imager_spacing=(0.15, 0.1)))
    np.testing.assert_array_equal(r.image, pixels.astype(float))
    np.testing.assert_allclose(r.pixel_spacing_mm, [0.1, 0.15])
    assert r.spacing_source == "ImagerPixelSpacing"
    assert r.photometric == "MONOCHROME2"
    assert r.bits_stored == 14
    assert r.sha256 == file_sha256(tmp_path / "a.dcm")
    assert not r.image.flags.writeable
    assert "Secret" not in repr(r.__dict__)


def test_dicom_monochrome1_is_inverted(tmp_path, pixels):
    inverted = (2**14 - 1) - pixels
    r = read_radiograph(_dicom(tmp_path / "m1.dcm", inverted, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(r.image, pixels.astype(float))


def test_dicom_rescale_after_the_inversion(tmp_path, pixels):
    """MONOCHROME1 stored values are inverted within the stored bits, then the rescale (slope,
    intercept) applies: the same as rescaling first and inverting across the rescaled range."""
    inverted = (2**14 - 1) - pixels
    r = read_radiograph(_dicom(tmp_path / "r.dcm", inverted, photometric="MONOCHROME1",
                               rescale=(2.5, -100.0)))
    np.testing.assert_array_equal(r.image, pixels.astype(float) * 2.5 - 100.0)


def test_pixel_spacing_fallback(tmp_path, pixels):
    r = read_radiograph(_dicom(tmp_path / "p.dcm", pixels, imager_spacing=None,
                               pixel_spacing=(0.2, 0.12)))
    np.testing.assert_allclose(r.pixel_spacing_mm, [0.12, 0.2])
    assert r.spacing_source == "PixelSpacing"


def test_missing_spacing(tmp_path, pixels):
    path = _dicom(tmp_path / "n.dcm", pixels, imager_spacing=None)
    with pytest.raises(InputError, match=r"n\.dcm.*neither `ImagerPixelSpacing`"):
        read_radiograph(path)
    r = read_radiograph(path, pixel_spacing_mm=0.125)
    np.testing.assert_allclose(r.pixel_spacing_mm, [0.125, 0.125])


def test_non_image_dicom(tmp_path, pixels):
    path = _dicom(tmp_path / "x.dcm", pixels, pixel_data=False)
    with pytest.raises(InputError, match=r"x\.dcm: DICOM file has no `PixelData`"):
        read_radiograph(path)


def test_truncated_dicom(tmp_path, pixels):
    path = _dicom(tmp_path / "t.dcm", pixels)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"t\.dcm"):
        read_radiograph(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_radiograph(tmp_path / "nope.dcm")


def test_side_by_side_split(tmp_path, pixels):
    path = _dicom(tmp_path / "s.dcm", pixels, comments="RSA-LAYOUT side-by-side A|B width=30")
    views = split_views(read_radiograph(path))
    assert set(views) == {"A", "B"}
    np.testing.assert_array_equal(views["B"].image, pixels[:, 30:].astype(float))


def test_png_needs_spacing_and_inverts(tmp_path, pixels):
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), pixels)
    with pytest.raises(InputError, match="pass `pixel_spacing_mm`"):
        read_radiograph(path)
    r = read_radiograph(path, pixel_spacing_mm=(0.1, 0.1), invert=True)
    np.testing.assert_array_equal(r.image, (2.0**16 - 1) - pixels)
    with pytest.raises(InputError, match="positive"):
        read_radiograph(path, pixel_spacing_mm=-1)


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    target = atomic_write_text(tmp_path / "out.txt", "old")

    def crash():
        with atomic_write(target, "w", encoding="utf-8") as fh:
            fh.write("half")
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        crash()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_uses_normal_file_mode(tmp_path):
    import os

    umask = os.umask(0)
    os.umask(umask)
    target = atomic_write_text(tmp_path / "m.txt", "x")
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
