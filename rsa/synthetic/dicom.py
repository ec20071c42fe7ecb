"""DICOM output of simulated radiographs (Digital X-Ray Image, For Presentation).

Files are valid Part 10 files (preamble, file meta, Explicit VR Little Endian) of the SOP class
*Digital X-Ray Image Storage – For Presentation* (1.2.840.10008.5.1.4.1.1.1.1), modality ``DX``,
16 bits allocated, ``BitsStored`` as requested, unsigned. Pixel values are log-transformed
(``PixelIntensityRelationship = LOG``) with beads bright in MONOCHROME2. For MONOCHROME1 the stored
values are inverted, ``(2^bits − 1) − value``, so that a viewer displays the same picture
(Presentation LUT Shape ``INVERSE`` per the DX Image module).

Everything that could vary between runs is pinned when ``seed`` is given: UIDs are derived from the
seed (``pydicom.uid.generate_uid(entropy_srcs=...)``), dates default to 2020-01-01 12:00:00, so the
same arguments give byte-identical files. Patient identity is synthetic; nothing here reads real
data. Files are written atomically (temporary file in the target folder, then ``os.replace``).

References
----------
.. [1] DICOM PS3.3 2024, C.8.11 (DX Series, DX Image, DX Detector modules) and A.26 (Digital X-Ray
   Image IOD); PS3.10 (file format).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from rsa.errors import ShapeError
from rsa.io.atomic import atomic_write_bytes

_DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
_DEFAULT_DATETIME = _dt.datetime(2020, 1, 1, 12, 0, 0)


def write_dicom(path: str | Path, image: ArrayLike, *,
                pixel_spacing_mm: float | tuple[float, float],
                photometric: str = "MONOCHROME2", bits_stored: int = 14,
                patient_id: str = "PHANTOM-001", patient_name: str = "Phantom^Synthetic",
                study_uid: str | None = None, series_uid: str | None = None,
                acquisition_datetime: _dt.datetime | None = None, view_name: str = "A",
                study_description: str = "", seed: int | None = None,
                series_number: int = 1, instance_number: int = 1,
                image_comments: str | None = None) -> Path:
    """Write one radiograph as a DX For Presentation DICOM file.

    Parameters
    ----------
    path : str or Path
        Output file (parent folders are created).
    image : (rows, cols) array_like of unsigned integers
        Display values, beads bright (MONOCHROME2 sense), each in ``[0, 2^bits_stored − 1]``.
    pixel_spacing_mm : float or (row, col) pair
        Spacing **between rows, then between columns** (DICOM order; note that
        ``DetectorView.pixel_spacing_mm`` is (u, v) = (col, row)). Written to both
        ImagerPixelSpacing (at the detector) and PixelSpacing.
    photometric : {"MONOCHROME2", "MONOCHROME1"}
        MONOCHROME1 stores inverted values so the displayed picture is unchanged.
    bits_stored : int
        8–16; BitsAllocated is 16, HighBit ``bits_stored − 1``.
    patient_id, patient_name : str
        Synthetic identity (never real data).
    study_uid, series_uid : str, optional
        Give the same study UID to all files of one exam; derived from the seed otherwise.
    acquisition_datetime : datetime, optional
        Study/series/acquisition/content date and time; default 2020-01-01 12:00:00 when ``seed``
        is given, the current time otherwise.
    view_name : str
        Named in SeriesDescription and in ImageComments (``RSA-VIEW <name>``).
    study_description : str
    seed : int, optional
        Makes UIDs (and the default date) deterministic: same inputs → byte-identical file.
    series_number, instance_number : int
    image_comments : str, optional
        Replaces the default ImageComments.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ShapeError
        Image not 2-D, not integer, or values outside the stored bit range; bad spacing,
        photometric interpretation or bit depth.
    """
    img = _check_image(image, bits_stored)
    return _write(Path(path), img, pixel_spacing_mm=pixel_spacing_mm, photometric=photometric,
                  bits_stored=bits_stored, patient_id=patient_id, patient_name=patient_name,
                  study_uid=study_uid, series_uid=series_uid,
                  acquisition_datetime=acquisition_datetime, view_name=view_name,
                  study_description=study_description, seed=seed, series_number=series_number,
                  instance_number=instance_number,
                  image_comments=image_comments or f"RSA-VIEW {view_name}; synthetic phantom")


def write_dicom_side_by_side(path: str | Path, images: Sequence[ArrayLike], *,
                             view_names: tuple[str, str] = ("A", "B"),
                             pixel_spacing_mm: float | tuple[float, float],
                             bits_stored: int = 14, **kwargs) -> Path:
    """Write two views of equal size side by side in one file (uniplanar cassette style).

    The left half holds ``images[0]`` (view ``view_names[0]``), the right half ``images[1]``;
    ImageComments records the split as ``RSA-LAYOUT side-by-side A|B width=W`` with ``W`` the
    width of each half in columns (read back by :func:`rsa.io.images.split_views`).

    Parameters
    ----------
    path : str or Path
    images : sequence of two (rows, cols) arrays
        Same shape, unsigned integer display values.
    view_names : (str, str)
        Names of the left and right view (letters, digits, underscore).
    pixel_spacing_mm, bits_stored, **kwargs
        As for :func:`write_dicom` (``view_name`` and ``image_comments`` are set here).
    """
    if len(images) != 2:
        raise ShapeError(f"Expected `images` to hold 2 arrays, got {len(images)}.")
    a, b = (_check_image(im, bits_stored) for im in images)
    if a.shape != b.shape:
        raise ShapeError(f"Expected both images to have the same shape, got {a.shape} and "
                         f"{b.shape}.")
    names = tuple(str(n) for n in view_names)
    if len(names) != 2 or not all(n.replace("_", "").isalnum() for n in names):
        raise ShapeError(f"Expected `view_names` to be two alphanumeric names, got {view_names!r}.")
    for key in ("view_name", "image_comments"):
        if key in kwargs:
            raise ShapeError(f"`{key}` is set by write_dicom_side_by_side; do not pass it.")
    comments = f"RSA-LAYOUT side-by-side {names[0]}|{names[1]} width={a.shape[1]}"
    return _write(Path(path), np.hstack([a, b]), pixel_spacing_mm=pixel_spacing_mm,
                  bits_stored=bits_stored, view_name=f"{names[0]}|{names[1]}",
                  image_comments=comments, **kwargs)


def _check_image(image: ArrayLike, bits_stored: int) -> np.ndarray:
    if int(bits_stored) != bits_stored or not 8 <= bits_stored <= 16:
        raise ShapeError(f"Expected `bits_stored` to be an integer in 8..16, got {bits_stored!r}.")
    img = np.asarray(image)
    if img.ndim != 2 or img.size == 0:
        raise ShapeError(f"Expected `image` to have shape (rows, cols), got {img.shape}.")
    if img.dtype.kind not in "ui":
        raise ShapeError(f"Expected `image` to hold integers, got dtype {img.dtype}.")
    top = 2 ** int(bits_stored) - 1
    if img.min() < 0 or img.max() > top:
        raise ShapeError(f"Expected `image` values in [0, {top}] for bits_stored={bits_stored}, "
                         f"got [{img.min()}, {img.max()}].")
    return img.astype(np.uint16)


def _spacing(value) -> list[float]:
    try:
        sp = np.broadcast_to(np.asarray(value, dtype=float), (2,))
    except (TypeError, ValueError):
        raise ShapeError(f"Expected `pixel_spacing_mm` to be a positive number or a (row, col) "
                         f"pair, got {value!r}.") from None
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ShapeError(f"Expected `pixel_spacing_mm` to be positive, got {value!r}.")
    return [float(x) for x in sp]


def _uid(seed: int | None, *parts: str) -> str:
    from pydicom.uid import generate_uid

    if seed is None:
        return str(generate_uid())
    return str(generate_uid(entropy_srcs=["rsa-toolkit", str(int(seed)), *parts]))


def _write(path: Path, img: np.ndarray, *, pixel_spacing_mm, photometric: str = "MONOCHROME2",
           bits_stored: int = 14, patient_id: str = "PHANTOM-001",
           patient_name: str = "Phantom^Synthetic", study_uid: str | None = None,
           series_uid: str | None = None, acquisition_datetime: _dt.datetime | None = None,
           view_name: str = "A", study_description: str = "", seed: int | None = None,
           series_number: int = 1, instance_number: int = 1,
           image_comments: str = "") -> Path:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    if photometric not in ("MONOCHROME2", "MONOCHROME1"):
        raise ShapeError(f"Expected `photometric` to be 'MONOCHROME2' or 'MONOCHROME1', got "
                         f"{photometric!r}.")
    spacing = _spacing(pixel_spacing_mm)
    top = 2 ** int(bits_stored) - 1
    stored = (top - img).astype(np.uint16) if photometric == "MONOCHROME1" else img
    when = acquisition_datetime
    if when is None:
        when = _DEFAULT_DATETIME if seed is not None else _dt.datetime.now().replace(microsecond=0)
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    pixels = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    study = study_uid or _uid(seed, "study", patient_id, date + time)
    series = series_uid or _uid(seed, "series", study, view_name, str(series_number))
    instance = _uid(seed, "instance", series, view_name, str(instance_number),
                    hashlib.sha256(pixels).hexdigest())

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = _DX_FOR_PRESENTATION
    ds.SOPInstanceUID = instance
    for prefix in ("Study", "Series", "Acquisition", "Content"):
        setattr(ds, f"{prefix}Date", date)
        setattr(ds, f"{prefix}Time", time)
    ds.AcquisitionDateTime = date + time
    ds.AccessionNumber = ""
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "rsa-toolkit synthetic phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.SeriesDescription = f"RSA view {view_name}"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic phantom, no patient data"
    ds.BodyPartExamined = ""
    ds.ViewPosition = ""
    ds.ImagerPixelSpacing = spacing
    ds.PixelSpacing = spacing
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyID = "1"
    ds.SeriesNumber = int(series_number)
    ds.InstanceNumber = int(instance_number)
    ds.PatientOrientation = ""
    ds.ImageComments = image_comments
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(n) for n in img.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = int(bits_stored)
    ds.HighBit = int(bits_stored) - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    # −1: higher stored values = less X-ray intensity (MONOCHROME2, beads bright); +1 inverted.
    ds.PixelIntensityRelationshipSign = -1 if photometric == "MONOCHROME2" else 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    lo, hi = int(stored.min()), int(stored.max())
    ds.WindowCenter = (lo + hi) / 2
    ds.WindowWidth = max(hi - lo, 1)
    ds.PresentationLUTShape = "IDENTITY" if photometric == "MONOCHROME2" else "INVERSE"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = pixels
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return atomic_write_bytes(path, buf.getvalue())
