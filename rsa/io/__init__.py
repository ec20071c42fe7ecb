"""File edges of rsa: images (DICOM/PNG/TIFF), atomic writes, hashing (DESIGN §1, §4)."""

from rsa.io.atomic import atomic_write, atomic_write_bytes, atomic_write_text, file_sha256
from rsa.io.images import Radiograph, read_radiograph, split_views

__all__ = [
    "Radiograph",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "file_sha256",
    "read_radiograph",
    "split_views",
]
