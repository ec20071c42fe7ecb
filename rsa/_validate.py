"""Boundary validation helpers shared by the numeric core (STYLE: validate once, clear messages)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from rsa.errors import ShapeError


def as_points(value: ArrayLike, name: str, *, last: int = 3, min_ndim: int = 1,
              spec: str | None = None) -> np.ndarray:
    """Return `value` as a float64 array whose last axis has length `last`.

    Raises ShapeError with the message ``Expected `name` to have shape spec, got shape.``
    """
    spec = spec or (f"(..., N, {last})" if min_ndim >= 2 else f"(..., {last})")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"Expected `{name}` to be a numeric array {spec}: {exc}") from None
    if arr.ndim < min_ndim or arr.shape[-1] != last:
        raise ShapeError(f"Expected `{name}` to have shape {spec}, got {arr.shape}.")
    return arr


def check_finite(arr: np.ndarray, name: str) -> None:
    """Raise ShapeError if `arr` holds NaN or inf."""
    if not np.all(np.isfinite(arr)):
        raise ShapeError(f"Expected `{name}` to be finite, found NaN or inf.")


def check_positive_int(value, name: str) -> None:
    """Raise ShapeError unless `value` is a positive integer (an int or an integral float)."""
    try:
        bad = isinstance(value, (bool, str)) or int(value) != value or value < 1
    except (TypeError, ValueError, OverflowError):      # None, NaN, inf, other objects
        bad = True
    if bad:
        raise ShapeError(f"Expected `{name}` to be a positive integer, got {value!r}.")


def readonly(arr: np.ndarray) -> np.ndarray:
    """Return `arr` flagged read-only (for frozen result objects)."""
    arr = np.asarray(arr)
    arr.flags.writeable = False
    return arr
