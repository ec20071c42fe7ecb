"""Bead detection and sub-pixel localisation in one radiograph (DESIGN §1, issue 5).

Pipeline (no Python loops over pixels or beads; loops only over 2–3 filter scales):

1. **Candidates.** Scale-normalised Laplacian-of-Gaussian (LoG) at the bead scales expected from
   the bead diameters, the magnification range and the pixel spacing (a disc of radius R answers
   best at σ = R/√2 [1]_), computed with OpenCV. The LoG removes constant and linear background.
   Local maxima by grey dilation with a disc (non-maximum suppression) above ``threshold`` times
   a robust noise level (MAD of the filtered image).
2. **Shape tests.** The Hessian of the smoothed image at each peak: a round blob has two equal
   negative eigenvalues, an implant edge or wire one near zero [2]_; candidates with eigenvalue
   ratio below ``min_roundness`` are dropped.
3. **Refinement** (:mod:`rsa.detect_refine`): batched Levenberg–Marquardt fit of a blurred,
   Beer–Lambert-attenuated projected-sphere model (centre, radius, ellipticity, blur, optical
   depth, amplitude, background plane) in a window around every candidate; neighbours' fitted
   models are subtracted from each other's windows (deblending) so that touching beads are
   separated; a second pass is weighted by a pooled Poisson + electronic variance model.
   Fits that fail the model tests (radius, ellipticity, SNR, centre drift) are rejected.
4. **Quality flags** per bead: touching, near an implant edge / strong gradient, occluded
   (model misfit), clipped at the border.

References
----------
.. [1] Lindeberg T. Feature detection with automatic scale selection. Int J Comput Vis
       1998;30:79–116.
.. [2] Frangi AF et al. Multiscale vessel enhancement filtering. MICCAI 1998, LNCS 1496:130–137
       (Hessian eigenvalue ratios separate blobs from lines and edges).
.. [3] Parthasarathy R. Rapid, accurate particle tracking by calculation of radial symmetry
       centers. Nat Methods 2012;9:724–726 (why model fits, not centroids, are needed at SNR≈10).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from itertools import pairwise

import cv2
import numpy as np
from numpy.typing import ArrayLike

from rsa._validate import readonly
from rsa.detect_refine import (
    IA,
    IBU,
    IBV,
    IE1,
    IE2,
    ILC,
    ILK,
    ILS,
    IR,
    IU,
    IV,
    LINEAR,
    NPAR,
    FitResult,
    FitSetup,
    background,
    fit,
    make_setup,
    model_and_jacobian,
    noise_correlation,
    transmission_variance,
)
from rsa.errors import InputError

__all__ = ["Beads2D", "DetectOptions", "detect_beads"]

#: Pixels where the bead model blocks more than 90 % of the beam are left out of the fits: the
#: core is flat (no position information), and at clinical dose it holds a few quanta whose log
#: display is clipped and skewed, so it would only add model error.
_T_CORE = 0.0
_TILT = 1.0
_DEBUG = False
_SIGN = 0.0


@dataclass(frozen=True)
class DetectOptions:
    """Options of :func:`detect_beads` (defaults suit clinical RSA radiographs).

    Parameters
    ----------
    magnification : (float, float)
        Range of geometric magnification of the beads (focus–detector / focus–bead distance).
        Clinical RSA set-ups give 1.1–1.5; default (1.05, 1.6). With the bead diameters and the
        pixel spacing this sets the expected bead radius ``d/2 · M / spacing`` in px.
    polarity : {"auto", "bright", "dark"}
        Whether beads are brighter (MONOCHROME2 sense, what :mod:`rsa.io` returns) or darker
        than their surroundings. ``"auto"`` runs the candidate stage for both polarities and
        keeps the one with more round, strong candidates; pass the polarity when it is known.
    display : {"auto", "log", "linear"}
        Whether pixel values are logarithmic (DR "for presentation" images) or linear in the
        detected quanta. ``"auto"`` decides from the image noise: quantum noise grows with
        attenuation in a log display and falls with it in a linear one.
    optical_depth : float
        Attenuation ``μ·d`` through the centre of a bead (held fixed in the fit). Tantalum at
        50–60 keV effective energy has μ ≈ 6–10 /mm (NIST XCOM), so 0.8–1.0 mm beads give 5–9;
        a wrong value changes only the modelled rim shape symmetrically (efficiency, not bias).
    read_noise_fraction : float
        Read-out noise variance relative to the quantum-noise variance of the background; it
        sets how little the nearly opaque bead centre counts in the fit (default 0.02).
    threshold : float
        Candidate threshold in robust noise units (MAD × 1.4826) of the LoG-filtered image.
    min_snr : float
        Minimum fitted bead contrast / pixel noise for an accepted bead.
    min_roundness : float
        Minimum ratio of the Hessian eigenvalues (small/large) at a candidate; 1 for a round
        blob, ≈ 0 for edges and wires.
    max_ellipticity : float
        Largest ellipticity of a normal bead shadow (oblique projection gives ≤ 0.15); more
        elongated fits are rejected, or kept and flagged ``occluded`` when the candidate
        itself looked round (a bead against an implant edge).
    max_chi2 : float
        Reduced χ² (weighted pass) above which a bead is flagged ``occluded`` (model misfit).
    edge_ratio : float
        A bead is flagged ``near_edge`` when the fitted background change across its diameter
        exceeds this fraction of its contrast.
    edge_anisotropy : float
        A bead is also flagged ``near_edge`` when the residual variance in the ring around it
        differs by more than this factor between its most and least noisy of 8 directions
        (an implant edge or bone cortex in the window; noise alone stays below ≈ 2.5).
    touch_gap : float
        Two beads are flagged ``touching`` when the gap between their rims is below
        ``touch_gap`` × radius plus their blur widths (their blurred shadows overlap).
    n_scales : int
        Number of LoG scales between the smallest and largest expected bead.
    subsample : int
        Sub-samples per pixel of the sharp sphere profile in the model fit.
    iterations : int
        Levenberg–Marquardt iterations of the first pass (later, warm-started passes use half;
        each stops earlier once converged).
    weighted : bool
        Refit with a pooled Poisson + electronic variance model (closer to the Cramér–Rao bound
        and better calibrated ``sigma_px``).
    deblend : int
        Rounds of subtracting neighbours' models from each bead's window.
    max_beads : int
        At most this many beads (highest score) are returned.
    model_error_px : float
        Model error added in quadrature to ``sigma_px``: anatomy structure under a bead (not
        seen by the local quadratic background) and the detector blur acting on the product of
        anatomy and bead shift noise-free centres by ≈ 0.01 px RMS in simulated radiographs
        with limb anatomy (tests/test_detect.py scenes rendered without noise).
    """

    magnification: tuple[float, float] = (1.05, 1.6)
    polarity: str = "auto"
    display: str = "auto"
    optical_depth: float = 5.0
    read_noise_fraction: float = 0.02
    threshold: float = 8.0
    min_snr: float = 4.0
    min_roundness: float = 0.2
    max_ellipticity: float = 0.3
    max_chi2: float = 3.0
    edge_ratio: float = 0.3
    edge_anisotropy: float = 4.0
    touch_gap: float = 0.5
    n_scales: int = 2
    subsample: int = 2
    iterations: int = 12
    weighted: bool = True
    deblend: int = 10
    max_beads: int = 5000
    model_error_px: float = 0.01

    def __post_init__(self) -> None:
        m = tuple(float(x) for x in self.magnification)
        if len(m) != 2 or not (0 < m[0] <= m[1] < 10):
            raise InputError(f"Expected `magnification` (lo, hi) with 0 < lo <= hi, got {m}.")
        object.__setattr__(self, "magnification", m)
        if self.polarity not in ("auto", "bright", "dark"):
            raise InputError(
                f"Expected `polarity` to be 'auto', 'bright' or 'dark', got {self.polarity!r}.")
        if self.display not in ("auto", "log", "linear"):
            raise InputError(
                f"Expected `display` to be 'auto', 'log' or 'linear', got {self.display!r}.")
        if self.n_scales < 1 or self.subsample < 1 or self.iterations < 1 or self.max_beads < 1:
            raise InputError("Expected positive `n_scales`, `subsample`, `iterations`, "
                             "`max_beads`.")


@dataclass(frozen=True, eq=False)
class Beads2D:
    """Beads found in one radiograph (all arrays read-only, one row per bead).

    Attributes
    ----------
    uv_px : (N, 2) ndarray
        Sub-pixel centre (u = column, v = row; origin at the centre of the top-left pixel).
    radius_px : (N,) ndarray
        Fitted shadow radius (geometric mean of the ellipse semi-axes).
    contrast : (N,) ndarray
        Peak bead contrast above the local background, in image units (before blur).
    snr : (N,) ndarray
        ``contrast`` / pixel noise standard deviation at the bead.
    sigma_px : (N, 2) ndarray
        Estimated standard uncertainty of the centre along u and v (from the fit covariance
        scaled by the bead's reduced χ²).
    score : (N,) ndarray
        Detection confidence in [0, 1] (SNR, roundness and fit quality combined).
    touching, near_edge, occluded, clipped : (N,) bool ndarray
        Quality flags (see :func:`detect_beads`).
    polarity : str
        Polarity used ("bright" or "dark").
    """

    uv_px: np.ndarray
    radius_px: np.ndarray
    contrast: np.ndarray
    snr: np.ndarray
    sigma_px: np.ndarray
    score: np.ndarray
    touching: np.ndarray
    near_edge: np.ndarray
    occluded: np.ndarray
    clipped: np.ndarray
    polarity: str = "bright"
    flags: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        for name in ("uv_px", "radius_px", "contrast", "snr", "sigma_px", "score", "touching",
                     "near_edge", "occluded", "clipped"):
            object.__setattr__(self, name, readonly(np.asarray(getattr(self, name))))
        flags = self.touching | self.near_edge | self.occluded | self.clipped
        object.__setattr__(self, "flags", readonly(flags))

    def __len__(self) -> int:
        return len(self.uv_px)


# ------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------
def _validate(image: ArrayLike, pixel_spacing_mm: ArrayLike, bead_diameters_mm: ArrayLike
              ) -> tuple[np.ndarray, float, np.ndarray, float]:
    try:
        img = np.asarray(image)
    except Exception as exc:  # pragma: no cover - exotic array-likes
        raise InputError(f"Expected `image` to be a 2-D numeric array: {exc}") from None
    if img.dtype.kind not in "uif":
        raise InputError(f"Expected `image` to have an integer or float dtype, got {img.dtype}.")
    if img.ndim != 2:
        raise InputError(f"Expected `image` to have shape (rows, cols), got {img.shape}.")
    if min(img.shape) < 8:
        raise InputError(f"Expected `image` of at least 8×8 pixels, got {img.shape} (empty?).")
    work = img.astype(np.float32)
    if not np.isfinite(work).all():
        raise InputError("Expected `image` to be finite, found NaN or inf.")
    lo, hi = float(work.min()), float(work.max())
    if hi - lo <= 0:
        raise InputError(f"Expected `image` to vary, got a constant image (value {lo}).")
    sp = np.asarray(pixel_spacing_mm, dtype=float).ravel()
    if sp.size not in (1, 2) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError("Expected `pixel_spacing_mm` to be one or two positive numbers (u, v), "
                         f"got {pixel_spacing_mm!r}.")
    spacing = float(np.sqrt(np.prod(sp))) if sp.size == 2 else float(sp[0])
    d = np.asarray(bead_diameters_mm, dtype=float).ravel()
    if d.size == 0 or not np.all(np.isfinite(d)) or np.any(d <= 0):
        raise InputError(f"Expected positive `bead_diameters_mm`, got {bead_diameters_mm!r}.")
    # normalise the range so filters work in float32 with O(1) values
    work -= np.float32(lo)
    work *= np.float32(1.0 / (hi - lo))
    return work, spacing, d, hi - lo


# ------------------------------------------------------------------------------------------
# candidates
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Candidates:
    uv: np.ndarray          # (M, 2) int pixel positions
    radius: np.ndarray      # (M,) scale-implied radius px
    strength: np.ndarray    # (M,) response / noise
    roundness: np.ndarray   # (M,)


def _log_stack(work: np.ndarray, radii: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Smoothed images and scale-normalised −LoG responses (bright-blob positive)."""
    blurred, resp = [], []
    for r in radii:
        s = float(r / np.sqrt(2.0))
        g = cv2.GaussianBlur(work, (0, 0), s, borderType=cv2.BORDER_REPLICATE)
        lap = cv2.Laplacian(g, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REPLICATE)
        blurred.append(g)
        resp.append(lap * np.float32(-s * s))
    return blurred, resp


def _noise_curve(work: np.ndarray, level: np.ndarray, bins: int = 24
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Pixel noise relative to its median as a function of the local image level.

    Quantum noise makes the noise of a radiograph depend on the signal level (in any display);
    the robust spread (median absolute 4-neighbour Laplacian) of a sub-sample of pixels, binned
    by the smoothed level, gives that dependence. Structure (edges, beads) touches few pixels of a
    bin and does not move its median.
    """
    c = work[1:-1:3, 1:-1:3]
    n4 = (work[:-2:3, 1:-1:3] + work[2::3, 1:-1:3] + work[1:-1:3, :-2:3] + work[1:-1:3, 2::3])
    hp = np.abs(4.0 * c - n4[: c.shape[0], : c.shape[1]]).ravel()
    lv = level[1:-1:3, 1:-1:3][: c.shape[0], : c.shape[1]].ravel()
    step = max(1, lv.size // 200_000)
    hp, lv = hp[::step], lv[::step]
    order = np.argsort(lv, kind="stable")
    edges = np.linspace(0, lv.size, bins + 1).astype(int)
    knots = np.array([lv[order[a:b]].mean() for a, b in pairwise(edges)])
    sig = np.array([np.median(hp[order[a:b]]) for a, b in pairwise(edges)])
    keep = np.concatenate([[True], np.diff(knots) > 0])
    knots, sig = knots[keep], np.maximum(sig[keep], 1e-12)
    return knots, sig / np.median(sig)


def _ring_noise(lap: np.ndarray, vv: np.ndarray, uu: np.ndarray, radius: float
                ) -> np.ndarray:
    """Median |Laplacian| on two circles (radius, 1.5·radius) around each point (local noise).

    32 samples: a bead or edge covering a few of them does not move the median.
    """
    H, W = lap.shape
    ang = np.linspace(0.0, 2.0 * np.pi, 16, endpoint=False)
    rad = np.concatenate([np.full(16, radius), np.full(16, 1.5 * radius)])
    ang = np.concatenate([ang, ang + np.pi / 16])
    rv = np.clip(np.rint(vv[:, None] + rad * np.sin(ang)), 0, H - 1).astype(np.intp)
    ru = np.clip(np.rint(uu[:, None] + rad * np.cos(ang)), 0, W - 1).astype(np.intp)
    return np.median(np.abs(lap[rv, ru]), axis=1) if len(vv) else np.zeros(0)


def _candidates(blurred: list[np.ndarray], resp: list[np.ndarray], radii: np.ndarray,
                sign: float, opts: DetectOptions, noise_curve: tuple[np.ndarray, np.ndarray],
                lap: np.ndarray, lap_med: float, ring: float) -> _Candidates:
    """Local maxima of ``sign`` × response over all scales that pass the roundness test."""
    best = resp[0] * np.float32(sign)
    which = np.zeros(best.shape, np.uint8)
    for i in range(1, len(resp)):
        cand = resp[i] * np.float32(sign)
        better = cand > best
        which[better] = i
        np.maximum(best, cand, out=best)
    sub = best[::3, ::3]
    med = float(np.median(sub))
    noise = 1.4826 * float(np.median(np.abs(sub - med))) + 1e-12
    rad = max(1, int(np.floor(radii[0])))
    ker = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rad + 1, 2 * rad + 1))
    dil = cv2.dilate(best, ker)
    _, rel = noise_curve
    # pre-threshold (the local noise below can lower it at most twofold, e.g. in air)
    thr = med + opts.threshold * noise * max(float(rel.min()), 0.5)
    peak = (best >= dil) & (best > thr)
    vv, uu = np.nonzero(peak)
    H, W = best.shape
    # the noise is not stationary (quantum noise; implants): normalise each peak by the noise
    # in an annulus around it, the median |4-neighbour Laplacian| there relative to the image's
    local = _ring_noise(lap, vv, uu, ring) / lap_med
    keep0 = (best[vv, uu] - med) >= opts.threshold * noise * local
    vv, uu, local = vv[keep0], uu[keep0], local[keep0]
    strength = (best[vv, uu] - med) / (noise * np.maximum(local, 1e-6))
    k = which[vv, uu].astype(np.intp)
    # Hessian of the smoothed image at the scale that answered, by central differences
    vm, vp = np.maximum(vv - 1, 0), np.minimum(vv + 1, H - 1)
    um, up = np.maximum(uu - 1, 0), np.minimum(uu + 1, W - 1)
    rows = {-1: vm, 0: vv, 1: vp}
    cols = {-1: um, 0: uu, 1: up}
    def g(dv: int, du: int) -> np.ndarray:
        out = np.empty(len(vv))
        for i, b in enumerate(blurred):
            m = k == i
            out[m] = b[rows[dv][m], cols[du][m]]
        return out

    c = g(0, 0)
    hxx = g(0, 1) + g(0, -1) - 2 * c
    hyy = g(1, 0) + g(-1, 0) - 2 * c
    hxy = 0.25 * (g(1, 1) + g(-1, -1) - g(1, -1) - g(-1, 1))
    tr = 0.5 * (hxx + hyy)
    disc = np.sqrt(0.25 * (hxx - hyy) ** 2 + hxy ** 2)
    l1, l2 = sign * (tr - disc), sign * (tr + disc)    # for sign=+1 bright blob: both < 0
    big = np.minimum(l1, l2)
    small = np.maximum(l1, l2)
    roundness = np.where(big < 0, np.clip(small / np.minimum(big, -1e-30), -1, 1), -1.0)
    keep = (roundness >= opts.min_roundness) & (strength >= opts.threshold)
    order = np.argsort(-strength[keep])
    return _Candidates(uv=np.stack([uu, vv], 1)[keep][order], radius=radii[k][keep][order],
                       strength=strength[keep][order], roundness=roundness[keep][order])


# ------------------------------------------------------------------------------------------
# refinement helpers
# ------------------------------------------------------------------------------------------
def _windows(work: np.ndarray, centre: np.ndarray, half: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Windows (N, W, W) around integer centres; out-of-image pixels get weight 0."""
    H, Wd = work.shape
    off = np.arange(-half, half + 1)
    pu = centre[:, 0, None] + off
    pv = centre[:, 1, None] + off
    inu = (pu >= 0) & (pu < Wd)
    inv = (pv >= 0) & (pv < H)
    data = work[np.clip(pv, 0, H - 1)[:, :, None], np.clip(pu, 0, Wd - 1)[:, None, :]]
    wts = (inv[:, :, None] & inu[:, None, :]).astype(float)
    return data.astype(float), wts, pu.astype(float), pv.astype(float)


def _neighbour_models(p: np.ndarray, pu: np.ndarray, pv: np.ndarray, setup: FitSetup,
                      pairs: np.ndarray) -> np.ndarray:
    """Sum of bead models of neighbours j (no background) on the windows of beads i."""
    out = np.zeros((len(p), pu.shape[1], pv.shape[1]))
    if len(pairs) == 0:
        return out
    i, j = pairs[:, 0], pairs[:, 1]
    q = p[j].copy()
    q[:, LINEAR] = 0.0
    q[:, IA] = p[j, IA]
    m, _ = model_and_jacobian(q, pu[i], pv[i], pu[i, 0], pv[i, 0], setup, jac=False)
    np.add.at(out, i, m)
    return out


def _close_pairs(uv: np.ndarray, dist: float) -> np.ndarray:
    """Ordered index pairs (i, j), i ≠ j, closer than ``dist`` (grid hashing, no O(N²) loop)."""
    n = len(uv)
    if n < 2:
        return np.zeros((0, 2), int)
    cell = np.floor(uv / dist).astype(np.int64)
    key = cell[:, 0] * 1_000_003 + cell[:, 1]
    order = np.argsort(key)
    pairs = []
    for du in (-1, 0, 1):
        for dv in (-1, 0, 1):
            k2 = (cell[:, 0] + du) * 1_000_003 + cell[:, 1] + dv
            lo = np.searchsorted(key[order], k2, "left")
            hi = np.searchsorted(key[order], k2, "right")
            cnt = hi - lo
            if cnt.sum() == 0:
                continue
            ii = np.repeat(np.arange(n), cnt)
            starts = np.repeat(lo - np.cumsum(cnt) + cnt, cnt) + np.arange(cnt.sum())
            jj = order[starts]
            pairs.append(np.stack([ii, jj], 1))
    pr = np.concatenate(pairs)
    pr = pr[pr[:, 0] != pr[:, 1]]
    d = np.linalg.norm(uv[pr[:, 0]] - uv[pr[:, 1]], axis=1)
    return pr[d < dist]


def _contrast(model: np.ndarray, p: np.ndarray, pu: np.ndarray, pv: np.ndarray) -> np.ndarray:
    """Peak of the fitted bead model above its background plane, (N,)."""
    du = (pu - pu[:, pu.shape[1] // 2, None])[:, None, :]
    dv = (pv - pv[:, pv.shape[1] // 2, None])[:, :, None]
    bg = background(p, du, dv)
    return (model - bg).reshape(len(p), -1).max(1)


def _init_radius(data: np.ndarray, wts: np.ndarray, crad: np.ndarray, r_lo: float,
                 r_hi: float) -> np.ndarray:
    """Radius from the area above half the peak contrast in each window (start value)."""
    n = len(data)
    border = np.concatenate([data[:, 0], data[:, -1], data[:, :, 0], data[:, :, -1]], axis=1)
    bg = np.median(border, axis=1)
    c = data.shape[1] // 2
    peak = data[:, c - 1:c + 2, c - 1:c + 2].reshape(n, -1).max(1)
    half = bg + 0.5 * (peak - bg)
    area = ((data > half[:, None, None]) & (wts > 0)).reshape(n, -1).sum(1)
    r = np.sqrt(area / np.pi)
    return np.where(peak > bg, np.clip(r, 0.7 * r_lo, 1.2 * r_hi), crad)


def _radius(p: np.ndarray) -> np.ndarray:
    """Geometric-mean radius of the fitted ellipse."""
    e2 = p[:, IE1] ** 2 + p[:, IE2] ** 2
    return p[:, IR] / np.sqrt(np.sqrt(np.clip(1.0 - e2, 1e-6, None)))


# ------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------
def detect_beads(image: ArrayLike, *, pixel_spacing_mm: ArrayLike,
                 bead_diameters_mm: ArrayLike = (0.8, 1.0),
                 options: DetectOptions | None = None) -> Beads2D:
    """Find tantalum beads in a radiograph and locate their centres to sub-pixel accuracy.

    Parameters
    ----------
    image : (rows, cols) array_like
        Radiograph, any integer (8–16 bit) or float dtype. Beads bright (MONOCHROME2 sense, as
        returned by :mod:`rsa.io`) unless ``options.polarity`` says otherwise.
    pixel_spacing_mm : float or (2,) array_like
        Detector pixel spacing (u, v) in mm; anisotropic spacing uses the geometric mean.
    bead_diameters_mm : sequence of float
        Diameters of the beads that may be present (default 0.8 and 1.0 mm).
    options : DetectOptions, optional
        Detection options; ``DetectOptions()`` when omitted.

    Returns
    -------
    Beads2D
        One row per bead, sorted by decreasing ``score``. Flags: ``touching`` (another bead's
        edge within ``touch_gap`` radii; its model has been subtracted before the fit),
        ``near_edge`` (strong background gradient across the bead: implant or bone edge),
        ``occluded`` (model misfit, e.g. partly behind an implant), ``clipped`` (the bead disc
        crosses the image border).

    Raises
    ------
    InputError
        Empty, constant, non-finite, 3-D or non-numeric (bool, complex, object) images, bad
        spacing or diameters.

    Notes
    -----
    The expected radius range is ``min(d)/2 · M_lo / s`` to ``max(d)/2 · M_hi / s`` px. The
    centre uncertainty ``sigma_px`` is the Gauss–Newton covariance of the weighted fit scaled by
    the bead's reduced χ²; in simulation its ratio to the actual error is ≈ 1
    (tests/test_detect.py).
    """
    opts = options if options is not None else DetectOptions()
    if not isinstance(opts, DetectOptions):
        raise InputError(f"Expected `options` to be a DetectOptions, got {type(opts).__name__}.")
    work, spacing, diam, scale = _validate(image, pixel_spacing_mm, bead_diameters_mm)
    r_lo = float(diam.min() / 2 * opts.magnification[0] / spacing)
    r_hi = float(diam.max() / 2 * opts.magnification[1] / spacing)
    if r_lo < 1.0:
        raise InputError(f"Beads would be smaller than 1 px in radius ({r_lo:.2f} px): check "
                         "`pixel_spacing_mm` and `bead_diameters_mm`.")
    # candidate stage at half resolution when the beads are large enough (4× fewer pixels)
    f = 2 if r_lo >= 2.8 else 1
    small = cv2.resize(work, (work.shape[1] // f, work.shape[0] // f),
                       interpolation=cv2.INTER_AREA) if f > 1 else work
    radii = np.geomspace(r_lo, r_hi, opts.n_scales) if opts.n_scales > 1 else \
        np.array([np.sqrt(r_lo * r_hi)])
    blurred, resp = _log_stack(small, radii / f)
    nc = _noise_curve(small, blurred[0])
    ring = 1.3 * r_hi / f
    lap = cv2.Laplacian(small, cv2.CV_32F, ksize=1)
    lap_med = float(np.median(np.abs(lap[::3, ::3]))) + 1e-30
    if opts.polarity == "auto":
        cb = _candidates(blurred, resp, radii / f, 1.0, opts, nc, lap, lap_med, ring)
        cd = _candidates(blurred, resp, radii / f, -1.0, opts, nc, lap, lap_med, ring)
        # more strong round blobs wins; strength caps keep a few huge edges from deciding
        sb = np.minimum(cb.strength, 50.0).sum()
        sd = np.minimum(cd.strength, 50.0).sum()
        polarity, cand = ("bright", cb) if sb >= sd else ("dark", cd)
    else:
        polarity = opts.polarity
        cand = _candidates(blurred, resp, radii / f, 1.0 if polarity == "bright" else -1.0, opts,
                           nc, lap, lap_med, ring)
    del blurred, resp, small, lap
    # display: quantum noise grows with attenuation in a log display and falls with it in a
    # linear one (beads-bright sense), so the sign of the noise-vs-level slope tells them apart
    slope = np.polyfit(nc[0], np.log(nc[1]), 1)[0] if len(nc[0]) > 2 else 1.0
    if polarity == "dark":
        slope = -slope
    log_display = {"auto": slope > 0, "log": True, "linear": False}[opts.display]
    cand_uv = cand.uv[: 4 * opts.max_beads] * f + (f - 1) // 2   # ± f/2 px
    if polarity == "dark":
        work = np.float32(1.0) - work
    return _refine(work, cand_uv, cand.radius[: len(cand_uv)] * f,
                   cand.roundness[: len(cand_uv)], r_lo, r_hi, diam, polarity, log_display,
                   opts, scale, float(f))


def _empty(polarity: str) -> Beads2D:
    z = np.zeros(0)
    b = np.zeros(0, bool)
    return Beads2D(uv_px=np.zeros((0, 2)), radius_px=z, contrast=z, snr=z,
                   sigma_px=np.zeros((0, 2)), score=z, touching=b, near_edge=b, occluded=b,
                   clipped=b, polarity=polarity)


def _blocked(p: np.ndarray, pu: np.ndarray, pv: np.ndarray, setup: FitSetup) -> np.ndarray:
    """Blurred blocked fraction B (N, W, W) of each bead model (no display, no background)."""
    q = p.copy()
    q[:, LINEAR] = 0.0
    q[:, IA] = 1.0
    q[:, ILC] = 0.0
    return model_and_jacobian(q, pu, pv, pu[:, 0], pv[:, 0], setup, jac=False)[0]


def _taper(p: np.ndarray, pu: np.ndarray, pv: np.ndarray, width: float = 3.0) -> np.ndarray:
    """Variance inflation of background pixels beyond the blurred rim, (N, W, W).

    Those pixels only fix the local background; far ones would let anatomy structure leak into
    the fit. Symmetric about the current centre, so it cannot bias it.
    """
    du = pu[:, None, :] - p[:, IU, None, None]
    dv = pv[:, :, None] - p[:, IV, None, None]
    edge = (_radius(p) + 2.5 * np.exp(p[:, ILS]))[:, None, None]
    beyond = np.clip(np.hypot(du, dv) - edge, 0.0, None)
    return np.exp(np.minimum(0.5 * (beyond / width) ** 2, 60.0))


def _rel_variance(p: np.ndarray, pu: np.ndarray, pv: np.ndarray, setup: FitSetup,
                  eps: float) -> np.ndarray:
    """Pixel variance relative to the background's, from the bead's blocked fraction B.

    Quantum noise: a pixel behind the bead receives (1 − B) of the background quanta, so its
    variance is ∝ (1 − B) in a linear display (c = 0) and ∝ 1/(1 − B) in a log display (c = 1);
    read-out noise adds a floor ``eps`` (relative to the background's quantum variance). The
    general form ``(1 − B)^(−2c) · ((1 − B) + eps)`` covers both (times the taper).
    """
    c = np.tanh(p[:, ILC])[:, None, None]
    t = np.clip(1.0 - _blocked(p, pu, pv, setup), 1e-6, 1.0)
    var = t ** (-2.0 * c) * (t + eps) / (1.0 + eps) * _taper(p, pu, pv)
    return np.where(t < _T_CORE, np.inf, var)


def _refine(work: np.ndarray, cuv: np.ndarray, crad: np.ndarray, cround: np.ndarray,
            r_lo: float, r_hi: float, diam: np.ndarray, polarity: str, log_display: bool,
            opts: DetectOptions, scale: float, cstep: float = 1.0) -> Beads2D:
    """Model fits, tests and flags for the candidates ``cuv`` (M, 2) of a normalised image."""
    if len(cuv) == 0:
        return _empty(polarity)
    setup = make_setup(r_lo, r_hi, sub=opts.subsample)
    data0, inside, pu, pv = _windows(work, cuv, setup.half)
    n = len(cuv)
    eps = opts.read_noise_fraction
    fx = (ILC, ILK)
    p0 = np.zeros((n, NPAR))
    p0[:, IU], p0[:, IV] = cuv[:, 0], cuv[:, 1]
    p0[:, IR] = _init_radius(data0, inside, crad, r_lo, r_hi)
    p0[:, ILS] = np.log(1.0)
    p0[:, ILK] = np.log(opts.optical_depth)

    def irls(p: np.ndarray, data: np.ndarray, ins: np.ndarray, pu_: np.ndarray,
             pv_: np.ndarray, rounds: int, iterations: int, **kw: object) -> FitResult:
        r = None
        for _ in range(rounds):
            w = ins / _rel_variance(p, pu_, pv_, setup, eps)
            r = fit(p, data, w, pu_, pv_, setup, iterations=iterations, fixed=fx, **kw)
            p = r.params
            kw["init_linear"] = False
        return r

    # The display is linear (c = 0) or logarithmic (c = 1) in the detected quanta: a property
    # of the image (decided above from its noise), held fixed — free per bead it trades off
    # against amplitude and radius and stalls the fits. The blur–radius trade-off has local
    # minima: start the strongest candidates at both ends of the radius range, keep the better
    # fit of each, and start all beads from their blur and radius scale.
    p0[:, ILC] = np.arctanh(np.tanh(setup.t_lim)) if log_display else 0.0
    top = np.arange(min(n, 16))
    fits = []
    for r0 in (r_lo, r_hi):
        q = p0[top].copy()
        q[:, IR] = r0
        fits.append(irls(q, data0[top], inside[top], pu[top], pv[top], 1, opts.iterations))
    k = np.argmin(np.stack([f.chi2_red for f in fits]), axis=0)
    params = np.stack([f.params for f in fits])[k, np.arange(len(top))]
    p0[:, ILS] = np.median(params[:, ILS])
    p0[:, IR] = np.clip(p0[:, IR] * np.median(params[:, IR] / p0[top, IR]), 0.6 * r_lo, r_hi)
    # the beads of one image differ in size only by their diameters and the spread of
    # magnification (≤ 1.25× either way in RSA set-ups): bound the radius around the typical
    # one so that no fit can collapse onto the noisy core of a bead
    r_typ = float(np.median(params[:, IR]))
    d_ratio = float(np.sqrt(diam.max() / diam.min()))
    setup = dataclasses.replace(setup, r_min=r_typ / (1.25 * d_ratio),
                                r_max=r_typ * 1.25 * d_ratio)
    p0[top] = params
    # first pass with the centres held near the candidates and each window cut at the
    # mid-line to any close candidate (Voronoi): a bead and its touching neighbour must not
    # merge into one elongated fit before deblending separates them
    own = inside.copy()
    cp = _close_pairs(cuv.astype(float), 2.5 * r_hi)
    if len(cp):
        i, j = cp[:, 0], cp[:, 1]
        di = (pu[i][:, None, :] - cuv[i, 0, None, None]) ** 2 \
            + (pv[i][:, :, None] - cuv[i, 1, None, None]) ** 2
        dj = (pu[i][:, None, :] - cuv[j, 0, None, None]) ** 2 \
            + (pv[i][:, :, None] - cuv[j, 1, None, None]) ** 2
        np.multiply.at(own, i, (di <= dj).astype(float))
    res = irls(p0, data0, own, pu, pv, 1, opts.iterations,
               box=(cuv.astype(float), max(1.0 + cstep, 0.25 * r_lo)))
    p, model, resid, chi2r = res.params, res.model.copy(), res.resid.copy(), res.chi2_red.copy()
    # second start for fits far from the typical shape (local minima of the radius–blur–
    # amplitude trade-off): restart from the typical radius and blur, keep the better fit
    ok = (p[:, IA] > 0) & (chi2r > 0)
    if ok.sum() >= 3:
        lr, ls = np.log(p[ok, IR]), p[ok, ILS]
        odd = (np.abs(np.log(p[:, IR]) - np.median(lr)) > 0.2) \
            | (np.abs(p[:, ILS] - np.median(ls)) > 0.4) \
            | (np.hypot(p[:, IE1], p[:, IE2]) > 0.8 * opts.max_ellipticity)
        odd = np.flatnonzero(odd)
        if odd.size:
            q = p[odd].copy()
            q[:, IR] = np.exp(np.median(lr))
            q[:, ILS] = np.median(ls)
            q[:, IE1] = q[:, IE2] = 0.0
            r2 = irls(q, data0[odd], own[odd], pu[odd], pv[odd], 1, opts.iterations // 2,
                      box=(cuv[odd].astype(float), max(1.0 + cstep, 0.25 * r_lo)))
            better = odd[r2.chi2_red < chi2r[odd]]
            sel = r2.chi2_red < chi2r[odd]
            p[better], model[better], resid[better], chi2r[better] = (
                r2.params[sel], r2.model[sel], r2.resid[sel], r2.chi2_red[sel])
    # deblending: subtract the neighbours' bead models (windows overlap within ~2·half) and
    # refit the beads that have neighbours, alternately; touching beads separate this way
    data = data0
    plaus = np.flatnonzero((p[:, IA] > 0) & (_contrast(model, p, pu, pv)
                                            >= 0.5 * opts.min_snr * np.sqrt(chi2r)))
    pairs = plaus[_close_pairs(p[plaus][:, [IU, IV]], 2.0 * setup.half + 1.0)]
    if len(pairs) and opts.deblend:
        inv = np.unique(pairs[:, 0])
        for _ in range(opts.deblend):
            data = data0 - _neighbour_models(p, pu, pv, setup, pairs)
            r = irls(p[inv], data[inv], inside[inv], pu[inv], pv[inv], 1, 4,
                     init_linear=False, box=(cuv[inv].astype(float), max(2.0, 0.5 * r_lo)))
            moved = np.abs(r.params[:, :2] - p[inv, :2]).max()
            p = p.copy()
            p[inv] = r.params
            model[inv], resid[inv], chi2r[inv] = r.model, r.resid, r.chi2_red
            if moved < 1e-3:
                break
        data = data0 - _neighbour_models(p, pu, pv, setup, pairs)
    snr = _contrast(model, p, pu, pv) / np.sqrt(np.maximum(chi2r, 1e-300))
    rad = _radius(p)
    drift = np.hypot(p[:, IU] - cuv[:, 0], p[:, IV] - cuv[:, 1])
    ecc = np.hypot(p[:, IE1], p[:, IE2])
    # a strongly elliptical fit is kept (and flagged occluded) only if the candidate was round
    distorted = ecc > opts.max_ellipticity
    good = ((snr >= opts.min_snr) & (rad >= 0.6 * r_lo) & (rad <= 1.25 * r_hi)
            & (~distorted | (cround >= 0.5)) & (drift <= np.maximum(1.0 + cstep, 0.6 * rad)))
    # duplicates: two candidates converged on one bead -> keep the higher SNR
    idx = np.flatnonzero(good)
    pr = _close_pairs(p[idx][:, [IU, IV]], 0.5 * r_lo)
    if len(pr):
        a, b = idx[pr[:, 0]], idx[pr[:, 1]]
        lose = np.where(snr[a] < snr[b], a, b)
        lose = np.where(snr[a] == snr[b], np.maximum(a, b), lose)
        good[lose] = False
    keep = np.flatnonzero(good)
    if keep.size == 0:
        return _empty(polarity)
    p, data0, inside, pu, pv = p[keep], data0[keep], inside[keep], pu[keep], pv[keep]
    cround, resid, distorted = cround[keep], resid[keep], distorted[keep]
    # neighbours among the accepted beads only (rejected candidates no longer subtract)
    pairs = _close_pairs(p[:, [IU, IV]], 2.0 * setup.half + 1.0)
    data = data0 - _neighbour_models(p, pu, pv, setup, pairs) if len(pairs) else data0
    # final pass: the sandwich covariance of each centre under the image's noise correlation
    # (detector blur), scaled by the bead's own reduced χ²
    # data-driven variance(transmission) from the residuals, then the final weighted fit
    t = 1.0 - _blocked(p, pu, pv, setup)
    knots, rel = transmission_variance(t, resid, inside, np.ones(len(p), bool))
    w = np.where(t < _T_CORE, 0.0, inside / (np.interp(t, knots, rel) * _taper(p, pu, pv)))
    rho, s_det = noise_correlation(work)
    r = fit(p, data, w, pu, pv, setup, iterations=max(4, opts.iterations // 2), rho=rho,
            init_linear=False, fixed=fx)
    p, cov, chi2 = r.params, r.cov_uv, r.chi2_red
    uv = p[:, [IU, IV]].copy()
    if np.tanh(p[0, ILC]) > 0.5:
        # Detector blur acts on the quanta *after* the anatomy has attenuated them, i.e. on the
        # product I_bg(x)·(1 − B(x)); for a log-linear background I_bg ∝ exp(−a·x) this is the
        # bead blurred and shifted by σ_d²·a (exponential tilting of a Gaussian). In a log
        # display a = ∇(background)/gain; σ_d is the detector blur seen in the noise
        # correlation. Undo the shift.
        grad = p[:, [IBU, IBV]] / p[:, IA, None]
        uv -= _TILT * s_det ** 2 * grad
    noise = np.sqrt(chi2)   # background pixel noise (relative variance 1 there)
    # misfit over the bead's own disc (anatomy structure elsewhere in the window does not count),
    # relative to the whole-window noise level: an implant edge across the bead shows here
    du = pu[:, None, :] - p[:, IU, None, None]
    dv = pv[:, :, None] - p[:, IV, None, None]
    rr = np.hypot(du, dv)
    disc = (rr <= _radius(p)[:, None, None] + 1.0) & (inside > 0)
    ring = (rr > _radius(p)[:, None, None] + 2.5 * np.exp(p[:, ILS, None, None])) & (inside > 0)
    z2 = r.resid ** 2 * w * _taper(p, pu, pv)      # whitened, without the taper's down-weighting
    chi2_disc = (z2 * disc).sum(axis=(1, 2)) / np.maximum(disc.sum(axis=(1, 2)), 1) / chi2
    chi2_ring = (z2 * ring).sum(axis=(1, 2)) / np.maximum(ring.sum(axis=(1, 2)), 1) / chi2
    # background change across the bead (fitted quadratic) relative to the bead's contrast
    bg = background(p, du + (p[:, IU] - pu[:, setup.half])[:, None, None],
                    dv + (p[:, IV] - pv[:, setup.half])[:, None, None])
    bg_span = np.where(disc, bg, -np.inf).max(axis=(1, 2)) - np.where(disc, bg, np.inf).min(
        axis=(1, 2))
    chi2 = chi2_disc
    rad = _radius(p)
    c_img = _contrast(r.model, p, pu, pv)
    contrast = c_img * scale
    # SNR in the transmission domain (independent of the display): blocked fraction at the
    # peak times the amplitude (quanta of the background in a linear display, the display gain
    # per unit ln-attenuation in a log display), over the background pixel noise
    snr = p[:, IA] * (1.0 - t.reshape(len(p), -1).min(1)) / noise
    # local misfit around the rim beyond the noise (anatomy edges, neighbours) inflates the
    # uncertainty (Birge ratio of the ring around the bead relative to the typical bead)
    birge = np.maximum(1.0, chi2_ring / np.median(chi2_ring))
    sig = np.sqrt(np.clip(np.diagonal(cov, axis1=1, axis2=2), 0, None) * birge[:, None]
                  + opts.model_error_px ** 2)
    H, Wd = work.shape
    # structure next to the bead (implant or bone edge): the residual variance around it
    # differs strongly between directions (8 sectors of ≈ 50–100 pixels: pure noise keeps
    # their ratio below ≈ 2.5)
    sector = (np.floor((np.arctan2(dv, du) + np.pi) / (np.pi / 4)).astype(int) % 8)
    ring_f = ring.astype(float)
    num = np.stack([(z2 * ring_f * (sector == k)).sum(axis=(1, 2)) for k in range(8)], 1)
    cnt = np.stack([(ring_f * (sector == k)).sum(axis=(1, 2)) for k in range(8)], 1)
    sec = num / np.maximum(cnt, 1.0)
    has = cnt > 8
    anis = np.where(has, sec, -np.inf).max(1) / np.maximum(np.where(has, sec, np.inf).min(1),
                                                           1e-300)
    near_edge = ((bg_span > opts.edge_ratio * np.abs(c_img)) | (anis > opts.edge_anisotropy)
                 | (chi2_ring > opts.max_chi2 * np.median(chi2_ring)))
    occluded = (chi2 > opts.max_chi2) | distorted
    clipped = ((uv[:, 0] - rad < -0.5) | (uv[:, 1] - rad < -0.5)
               | (uv[:, 0] + rad > Wd - 0.5) | (uv[:, 1] + rad > H - 0.5))
    touching = np.zeros(len(p), bool)
    pr = _close_pairs(uv, (2.0 + opts.touch_gap) * float(rad.max()))
    if len(pr):
        gap = np.linalg.norm(uv[pr[:, 0]] - uv[pr[:, 1]], axis=1) - rad[pr[:, 0]] - rad[pr[:, 1]]
        blur = np.exp(p[pr[:, 0], ILS]) + np.exp(p[pr[:, 1], ILS])
        close = gap < opts.touch_gap * np.maximum(rad[pr[:, 0]], rad[pr[:, 1]]) + blur
        touching[pr[close, 0]] = True
    final = snr >= opts.min_snr
    score = ((1.0 - np.exp(-snr / 10.0)) * np.clip(cround, 0, 1)
             / (1.0 + np.maximum(chi2 - 1.0, 0.0)))
    idx = np.flatnonzero(final)
    idx = idx[np.argsort(-score[idx], kind="stable")][: opts.max_beads]
    return Beads2D(uv_px=uv[idx], radius_px=rad[idx], contrast=contrast[idx], snr=snr[idx],
                   sigma_px=sig[idx], score=score[idx], touching=touching[idx],
                   near_edge=near_edge[idx], occluded=occluded[idx], clipped=clipped[idx],
                   polarity=polarity)
