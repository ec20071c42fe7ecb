"""Patient identifiers for a report made with ``include_phi=True`` — read at report time only.

The name, ID and birth date come from the DICOM headers of the subject's images when the report
is built; they are never stored, logged or printed by rsa, and reports built without
``include_phi`` contain none of them (nor file paths, which often carry names).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

_TAGS = {"name": "PatientName", "id": "PatientID", "birth_date": "PatientBirthDate"}


def read_identifiers(files: Iterable[str | Path]) -> dict[str, str]:
    """Patient name, ID and birth date from the first readable DICOM header among `files`.

    Returns
    -------
    dict
        Keys ``name``, ``id``, ``birth_date`` (empty strings when absent), plus ``source`` =
        ``"DICOM header"`` or ``"not available"`` when no file could be read.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=list(_TAGS.values()))
        except (OSError, InvalidDicomError, ValueError):
            continue
        out = {k: str(ds.get(tag, "") or "") for k, tag in _TAGS.items()}
        out["source"] = "DICOM header"
        return out
    return {"name": "", "id": "", "birth_date": "", "source": "not available"}
