"""Exception and warning types of rsa (DESIGN §4).

Every error the package raises on bad input or degenerate geometry is an :class:`RsaError`, so
callers (and the CLI) can catch one type and report a one-line message.
"""

from __future__ import annotations


class RsaError(Exception):
    """Base class of all errors raised by rsa."""


class ShapeError(RsaError, ValueError):
    """An array argument has the wrong shape, dtype or contains invalid values."""


class InputError(RsaError):
    """A file, header, manifest or cage definition is invalid (names the file and field)."""


class CalibrationError(RsaError):
    """A view could not be calibrated (markers not found, wrong cage, inconsistent views)."""


class EstimationError(RsaError):
    """An estimate is undefined for degenerate geometry (too few or collinear beads, ...)."""


class RsaWarning(UserWarning):
    """Quality flag (ME, CN, CLE above limit, bead lost, ...) that does not stop the analysis."""
