"""Precision statistics from RSA double examinations (DESIGN §3.7).

Public names are re-exported by :mod:`rsa.motion` (``rsa.motion.precision``,
``rsa.motion.precision_upper``); this private module only keeps ``motion.py`` short.

References
----------
.. [1] ISO 16087:2013, Implants for surgery — Roentgen stereophotogrammetric analysis for the
   assessment of migration of orthopaedic implants.
.. [2] E. R. Valstar et al., "Guidelines for standardization of radiostereometry (RSA) of
   implants", Acta Orthop. 76(4):563–572, 2005.
.. [3] B. L. Kaptein et al., "Guideline for RSA and CT-RSA implant migration measurements: an
   update of standardizations and recommendations", Acta Orthop. 95, 2024.
.. [4] J. M. Bland, D. G. Altman, "Measurement error", BMJ 313:744, 1996.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from rsa._validate import readonly
from rsa.errors import EstimationError, ShapeError

__all__ = ["Precision", "UpperPrecision", "precision", "precision_upper"]


def _freeze(obj, names) -> None:
    for name in names:
        object.__setattr__(obj, name, readonly(np.asarray(getattr(obj, name))))




@dataclass(frozen=True, eq=False)
class Precision:
    """Precision of signed motion components from double exams (see :func:`precision`).

    All attributes have shape (K,) (one per component; scalar shape for 1-D input).

    Attributes
    ----------
    n : ndarray of int
        Number of finite differences used.
    bias : ndarray
        Mean difference (systematic error).
    sd : ndarray
        Sample SD of the differences (ddof = 1).
    t_quantile : ndarray
        t(1 − α/2, n − 1).
    limit : ndarray
        Half-width t(1 − α/2, n − 1) · SD — the RSA "precision" (e.g. ±0.1 mm).
    lower, upper : ndarray
        bias ∓ limit: the interval mean ± t · SD.
    prediction_limit : ndarray
        t · SD · √(1 + 1/n): half-width of the strict prediction interval for one new double
        exam (accounts for the uncertainty of the mean).
    within_subject_sd : ndarray
        s_w = SD / √2 (each difference is exam 2 − exam 1 of the same unchanged geometry).
    repeatability_coefficient : ndarray
        z(1 − α/2) · √2 · s_w = z · SD (Bland & Altman [4]_; 1.96 · SD at 95 %).
    confidence : float
    """

    n: np.ndarray
    bias: np.ndarray
    sd: np.ndarray
    t_quantile: np.ndarray
    limit: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    prediction_limit: np.ndarray
    within_subject_sd: np.ndarray
    repeatability_coefficient: np.ndarray
    confidence: float

    def __post_init__(self) -> None:
        _freeze(self, ("n", "bias", "sd", "t_quantile", "limit", "lower", "upper",
                       "prediction_limit", "within_subject_sd", "repeatability_coefficient"))


@dataclass(frozen=True, eq=False)
class UpperPrecision:
    """One-sided precision of non-negative lengths (MTPM, total translation).

    Attributes (shape (K,), or scalar for 1-D input)
    ----------
    n : ndarray of int
    mean, sd : ndarray
        Mean and sample SD (ddof = 1) of the double-exam values.
    t_quantile : ndarray
        One-sided t(confidence, n − 1).
    upper_t : ndarray
        mean + t(confidence, n − 1) · SD (parametric upper limit).
    percentile : ndarray
        Empirical `confidence` quantile (NumPy linear interpolation, "type 7").
    confidence : float
    """

    n: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    t_quantile: np.ndarray
    upper_t: np.ndarray
    percentile: np.ndarray
    confidence: float

    def __post_init__(self) -> None:
        _freeze(self, ("n", "mean", "sd", "t_quantile", "upper_t", "percentile"))


def _columns(values: ArrayLike, name: str, confidence: float):
    if not (isinstance(confidence, (float, int)) and 0.5 < confidence < 1):
        raise ShapeError(f"Expected `confidence` in (0.5, 1), got {confidence!r}.")
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"Expected `{name}` to be a numeric array (n,) or (n, K): {exc}") from None
    if v.ndim not in (1, 2):
        raise ShapeError(f"Expected `{name}` to have shape (n,) or (n, K), got {v.shape}.")
    if np.any(np.isinf(v)):
        raise ShapeError(f"Expected `{name}` to be finite or NaN (missing), found inf.")
    v2 = v[:, None] if v.ndim == 1 else v
    ok = ~np.isnan(v2)
    n = ok.sum(axis=0)
    if np.any(n < 2):
        k = int(np.flatnonzero(n < 2)[0])
        where = f"component {k}: " if v.ndim == 2 else ""
        raise EstimationError(f"{where}{int(n[k])} finite values in `{name}`, need ≥ 2.")
    vz = np.where(ok, v2, 0.0)
    mean = vz.sum(axis=0) / n
    sd = np.sqrt((np.where(ok, v2 - mean, 0.0) ** 2).sum(axis=0) / (n - 1))
    squeeze = (lambda a: a[0]) if v.ndim == 1 else (lambda a: a)
    return v2, ok, n, mean, sd, squeeze


def precision(differences: ArrayLike, *, confidence: float = 0.95) -> Precision:
    """Bias, SD and 95 % limits of signed motion components from double examinations.

    In a double examination the segment does not move, so the measured motion between the two
    exams is pure measurement error d (DESIGN §3.7). Per component (x, y, z translations and
    rotations): bias = mean(d), SD = sample SD(d), and the limit
    **bias ± t(1 − α/2, n − 1) · SD** (α = 1 − confidence), the form used for RSA precision in
    the guidelines [2]_ [3]_ (ISO 16087 [1]_ reports precision from double exams likewise).

    Alternatives, labelled in the result: the strict prediction interval for one new double exam
    (factor √(1 + 1/n)), and the repeatability coefficient 1.96 · √2 · s_w [4]_. Because each d
    is the difference of two exams of the same unchanged geometry, Var(d) = 2 s_w², so
    s_w = SD(d)/√2 and the repeatability coefficient equals 1.96 · SD(d) — the same quantity as
    the t-form with the normal quantile instead of t and without the bias.

    Parameters
    ----------
    differences : (n,) or (n, K) array_like
        Motion between the two exams of each double exam (rows = patients/pairs, columns =
        components). NaN marks a missing value; it is excluded per component.
    confidence : float, default 0.95

    Returns
    -------
    Precision

    Raises
    ------
    EstimationError
        Fewer than 2 finite values in a component.
    """
    _, _, n, mean, sd, sq = _columns(differences, "differences", confidence)
    alpha = 1.0 - confidence
    tq = stats.t.ppf(1.0 - alpha / 2.0, n - 1)
    z = stats.norm.ppf(1.0 - alpha / 2.0)
    lim = tq * sd
    return Precision(sq(n), sq(mean), sq(sd), sq(tq), sq(lim), sq(mean - lim), sq(mean + lim),
                     sq(lim * np.sqrt(1.0 + 1.0 / n)), sq(sd / np.sqrt(2.0)), sq(z * sd),
                     float(confidence))


def precision_upper(values: ArrayLike, *, confidence: float = 0.95) -> UpperPrecision:
    """One-sided upper precision limit for lengths (MTPM, total translation) from double exams.

    Lengths are never negative, so measurement noise alone makes them positive and mean ± SD is
    meaningless (DESIGN §3.7). Two labelled upper limits: the parametric
    **mean + t(confidence, n − 1) · SD** and the empirical `confidence` quantile. A follow-up
    value above the limit exceeds what double-exam noise produces in `confidence` of cases.

    Parameters
    ----------
    values : (n,) or (n, K) array_like
        Non-negative double-exam lengths, mm; NaN = missing (excluded per column).
    confidence : float, default 0.95

    Returns
    -------
    UpperPrecision
    """
    v2, ok, n, mean, sd, sq = _columns(values, "values", confidence)
    if np.any(v2[ok] < 0):
        raise ShapeError("Expected `values` to be non-negative lengths (MTPM, total translation).")
    tq = stats.t.ppf(confidence, n - 1)
    pct = np.nanpercentile(v2, 100.0 * confidence, axis=0)
    return UpperPrecision(sq(n), sq(mean), sq(sd), sq(tq), sq(mean + tq * sd), sq(pct),
                          float(confidence))
