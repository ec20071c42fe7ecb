"""Bead detection and sub-pixel localisation in one radiograph (DESIGN §1, issue 5).

:func:`detect_beads` finds the tantalum beads (patient beads and cage markers) in a radiograph
and returns their centres with an honest per-bead uncertainty and quality flags. No Python loops
over pixels or beads; loops only over the 2–3 filter scales and over fitting passes.

1. **Candidates** (:mod:`rsa.detect_candidates`): scale-normalised Laplacian of Gaussian at the
   bead scales expected from the diameters, magnification range and pixel spacing [1]_ (OpenCV,
   half resolution for beads ≥ 2.8 px), non-maximum suppression by grey dilation, a threshold on
   the robust noise scaled by the local noise around each peak, and a Hessian roundness test
   that rejects implant edges and wires [2]_. Polarity (beads bright or dark) and whether the
   display is logarithmic or linear in the quanta are decided here from the image.
2. **Refinement** (:mod:`rsa.detect_stages`, :mod:`rsa.detect_refine`): a batched
   Levenberg–Marquardt fit of a blurred, Beer–Lambert-attenuated projected-sphere model (centre,
   radius, ellipticity, blur, amplitude, quadratic background) in a window around every
   candidate; the model is point-symmetric about the centre by construction, so it is unbiased
   and cannot lock to the pixel grid. Touching beads are separated by deblending, and beads
   whose discs overlap are refitted last jointly with their neighbour (two beads, the image's
   typical shape: :mod:`rsa.detect_overlap`). The final pass
   is weighted by the transmission-dependent quantum noise and its covariance accounts for the
   noise correlation (detector blur); the centre uncertainty ``sigma_px`` is calibrated against
   simulation truth (tests/test_detect.py). A bead on or next to an implant or cortical-bone
   edge is refitted with a blurred straight step added to its background (edge direction,
   position, width and height free), then with the edge let curve (a circle: screw heads, cup
   rims), each kept where a χ² test says the data need it; a quadratic background fitted
   across such a step had moved those centres by 0.4–1.4 px, a straight step across a curved
   edge by 0.1–0.8 px (tests/test_detect_edge.py, tests/test_detect_curved_edge.py).
3. **Quality flags**: touching, near an implant/bone edge, occluded (misfit or distorted),
   clipped at the border.

Accuracy in simulation (:mod:`rsa.synthetic.render`, tests and benchmarks/bench_detect.py):
RMS ≈ 1.15–1.2 × the Cramér–Rao bound; centroid-type peers (trackpy, scikit-image) are 3–6×
the bound. Anatomy structure under a bead leaves a model error of ≈ 0.005–0.012 px RMS,
included in ``sigma_px``.

References
----------
.. [1] Lindeberg T. Feature detection with automatic scale selection. Int J Comput Vis
       1998;30:79–116.
.. [2] Frangi AF et al. Multiscale vessel enhancement filtering. MICCAI 1998, LNCS 1496:130–137
       (Hessian eigenvalue ratios separate blobs from lines and edges).
.. [3] Parthasarathy R. Rapid, accurate particle tracking by calculation of radial symmetry
       centers. Nat Methods 2012;9:724–726 (centroid bias; why model fits reach the bound).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from rsa._validate import readonly
from rsa.detect_candidates import find_candidates
from rsa.detect_stages import refine_candidates
from rsa.errors import InputError

__all__ = ["Beads2D", "DetectOptions", "detect_beads"]


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
        Rounds of subtracting neighbours' models from each bead's window; 0 switches
        deblending off, and with it the joint refit of overlapping beads.
    max_beads : int
        At most this many beads (highest score) are returned.
    model_error_px : float
        Model error added in quadrature to ``sigma_px``: anatomy structure under a bead (not
        seen by the local quadratic background) shifts noise-free centres by ≈ 0.005 px (along
        the limb) to 0.012 px (across it) RMS in simulated radiographs with limb anatomy
        (tests/test_detect.py scenes rendered without noise); 0.007 px balances the two.
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
    model_error_px: float = 0.007

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
        Peak of the fitted bead model above the local background, in image units.
    snr : (N,) ndarray
        Signal-to-noise ratio in the transmission domain, independent of the display: the
        blocked fraction of the beam at the bead's peak times the fit amplitude (background
        quanta in a linear display, display gain per unit ln-attenuation in a log display),
        over the background pixel noise. ≈ √(background quanta / g) for an opaque bead, g the
        detector-blur noise reduction.
    sigma_px : (N, 2) ndarray
        Standard uncertainty of the centre along u and v: sandwich covariance of the weighted
        fit under the image's noise correlation, scaled by the bead's reduced χ² and by the
        misfit around it, plus ``DetectOptions.model_error_px`` in quadrature.
    score : (N,) ndarray
        Detection confidence in [0, 1] (SNR, roundness and fit quality combined).
    touching, near_edge, occluded, clipped : (N,) bool ndarray
        Quality flags (see :func:`detect_beads`).
    polarity : str
        Polarity used ("bright" or "dark").
    log_display : bool
        Whether the image was taken as a log display of the detected quanta (else linear).
    turned_down_uv : (K, 2) ndarray
        Strong candidates (SNR of their one-bead fit above ``min_snr``) that the fit tests
        turned down, by candidate position, farther than the smallest radius from every bead:
        e.g. two beads overlapping by about a radius, which pull a one-bead fit off its
        candidate. The correspondence stage may split them with the other view's epipolar
        lines (:mod:`rsa.epipolar`).
    noise_blur_px : float
        Width (px) of the Gaussian that gives the image's pixel noise its correlation
        (:func:`rsa.detect_refine.noise_blur`; NaN when no bead was found): later fits of the
        same image (:mod:`rsa.detect_lines`) take it from here.
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
    log_display: bool = True
    turned_down_uv: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    noise_blur_px: float = float("nan")
    flags: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        for name in ("uv_px", "radius_px", "contrast", "snr", "sigma_px", "score", "touching",
                     "near_edge", "occluded", "clipped", "turned_down_uv"):
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
        blurred shadow overlaps; its model was subtracted before the fit, or, where the discs
        overlap, the pair was fitted jointly — the pair is separated, never averaged),
        ``near_edge`` (implant or bone edge next to the bead: strong background change across
        it, direction-dependent misfit around it, or a background that needed the step term),
        ``occluded`` (misfit on the bead's disc, or a distorted shape, e.g. partly behind an
        implant),
        ``clipped`` (the disc crosses the image border). ``flags`` is their union.

    Raises
    ------
    InputError
        Empty, constant, non-finite, 3-D or non-numeric (bool, complex, object) images, bad
        spacing or diameters.

    Notes
    -----
    The expected radius range is ``min(d)/2 · M_lo / s`` to ``max(d)/2 · M_hi / s`` px. With
    ``polarity="auto"`` the polarity with more strong round blobs wins (give it explicitly when
    known, e.g. from the DICOM photometric interpretation); ``display="auto"`` decides log vs
    linear from how the image noise varies with the level. In simulation (tests/test_detect.py,
    benchmarks/bench_detect.py) the RMS of ``sigma_px``-normalised errors is 0.8–1.35 and
    the centre RMS 1.15–1.2 × the Cramér–Rao bound.

    Examples
    --------
    >>> beads = detect_beads(image, pixel_spacing_mm=0.143)        # doctest: +SKIP
    >>> good = beads.uv_px[~beads.flags]                            # doctest: +SKIP
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
    cand, polarity, log_display, f = find_candidates(work, r_lo, r_hi, opts)
    if polarity == "dark":
        work = np.float32(1.0) - work
    cols = refine_candidates(work, cand.uv, cand.radius, cand.roundness, r_lo, r_hi, diam,
                             log_display, opts, scale, float(f))
    return Beads2D(**cols, polarity=polarity, log_display=bool(log_display))
