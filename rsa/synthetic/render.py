"""Physically rendered RSA radiographs: tantalum spheres, metal implants, anatomy, blur, noise.

Image formation of one view (DESIGN §5), in this order:

1. **Attenuation** ``A = Σ μ·L`` per pixel: anatomy (:mod:`rsa.synthetic.background`), implant
   capsules (exact chord of every ray, :func:`~rsa.synthetic.chords.capsule_chords`) and tantalum
   spheres. A sphere's chord along the ray from the focus to a detector point is
   ``2·sqrt(r² − δ²)`` with δ the distance from the centre to that ray, evaluated exactly for
   ``s × s`` sub-samples per pixel (each sub-sample on the silhouette edge refined to 4 × 4 rays),
   only in a small window around each sphere.
2. **Beer–Lambert and pixel integration**: the *transmission* ``exp(−μ·L)`` (not ``L``) is
   averaged over the sub-samples, as a detector integrates photons over its pixel area.
3. **Focal-spot blur**: a Gaussian focal spot of FWHM ``f`` (IEC 60336 nominal size) blurs an
   object at magnification ``M`` on the detector by a Gaussian of σ = f·(M − 1)/2.355 (detector mm).
   Each sphere is blurred with its own M, at sub-sample resolution, before pixel averaging
   (separable matrices ``K_v (1 − T) K_uᵀ``, one batched matmul); each capsule with the M of its
   mid-point. The smooth anatomy is not blurred. Objects are combined by adding their blurred
   attenuations ``−log(T̄)``: exact for spheres whose windows do not overlap, and the product of
   the separately blurred transmissions where they do.
4. **Quanta**: ``I = I0·exp(−A)`` with ``I0 = photons_per_pixel`` (unattenuated, detected quanta).
5. **Noise and detector blur** (indirect flat panel: quanta are absorbed, then light spreads, then
   read out): ``Poisson(I)`` → Gaussian detector blur σ = ``detector_blur_px`` (``cv2``, global)
   → additive Gaussian read-out noise of σ = ``electronic_noise`` quanta (1 ADU = 1 quantum in
   the linear signal). Without noise, ``I`` is only blurred.
6. **Display** as DR systems do (log transform, beads bright): ``D = k·ln(2·I0 / max(I, ½))``,
   ``k = (2^b − 1) / ln(4·I0)`` so air maps to ``k·ln 2`` and ½ quantum to full scale; rounded
   and clipped to ``[0, 2^b − 1]``, stored as uint16.

Accuracy (measured, ``tests/test_render.py`` and ``benchmarks/bench_render.py``): the
noise-free centroid of a sphere alone lies within 0.004 px (0.1 mm pixels) to 0.014 px (0.143 mm
pixels, cage markers with little focal blur) of its exact projection in the display (log) domain.
The remainder is physical: the log of a pixel-integrated intensity is not linear in the pixel's
coverage, which pulls log-domain centroids towards pixel centres; in the linear domain
(``1 − I/I0``) the centroid agrees with the perspective model (the projected sphere is an
ellipse whose weighted centroid is offset from the projected centre, ≤ 0.001 px for RSA beads) to
about 0.001 px.

Validity flags per sphere (definitions):

* ``hidden``: the projected centre lies outside the image ``[−½, cols − ½] × [−½, rows − ½]``, or
  the implant capsules attenuate the ray through the sphere centre by at least
  ``options.hidden_attenuation`` (default ln 10: the implants absorb ≥ 90 % of that ray, e.g.
  ≥ 2 mm CoCrMo or ≥ 6.6 mm titanium);
* ``clipped``: the projected silhouette (the exact ellipse traced by the tangent cone) crosses the
  image border, i.e. is partly inside and partly outside.

References
----------
.. [1] J. T. Bushberg et al., *The Essential Physics of Medical Imaging*, 3rd ed., ch. 7 (focal
   spot blur ∝ f·(M − 1), geometric unsharpness) and ch. 9 (flat-panel detectors).
.. [2] IEC 60336:2020, X-ray tube assemblies — characteristics of focal spots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import ArrayLike

from rsa._validate import as_points, check_finite, check_positive_int, readonly
from rsa.errors import ShapeError
from rsa.synthetic.background import anatomy_attenuation
from rsa.synthetic.chords import _capsule_chords
from rsa.synthetic.geometry import DetectorView
from rsa.synthetic.materials import MU_COCR_PER_MM, MU_TANTALUM_PER_MM
from rsa.synthetic.raster import add_capsule, add_spheres, silhouette_bounds

_FLOOR_QUANTA = 0.5


@dataclass(frozen=True, eq=False)
class Capsule:
    """Radio-opaque implant part: the segment ``p0–p1`` swept by a sphere of ``radius_mm``.

    Parameters
    ----------
    p0_mm, p1_mm : (3,) array_like
        Axis end points in lab coordinates, mm (may coincide).
    radius_mm : float
        Radius, mm (> 0).
    mu_per_mm : float
        Linear attenuation coefficient, 1/mm (default CoCrMo at 60 keV, 1.157 /mm; titanium is
        :data:`rsa.synthetic.materials.MU_TITANIUM_PER_MM`, 0.348 /mm).
    """

    p0_mm: np.ndarray
    p1_mm: np.ndarray
    radius_mm: float
    mu_per_mm: float = MU_COCR_PER_MM

    def __post_init__(self) -> None:
        for name in ("p0_mm", "p1_mm"):
            p = as_points(getattr(self, name), name, spec="(3,)")
            if p.shape != (3,):
                raise ShapeError(f"Expected `{name}` to have shape (3,), got {p.shape}.")
            check_finite(p, name)
            object.__setattr__(self, name, readonly(p))
        for name in ("radius_mm", "mu_per_mm"):
            val = float(getattr(self, name))
            if not np.isfinite(val) or val <= 0:
                raise ShapeError(f"Expected `{name}` to be positive and finite, got {val}.")
            object.__setattr__(self, name, val)


@dataclass(frozen=True)
class RenderOptions:
    """Physical and numerical settings of the radiograph simulator.

    Attributes
    ----------
    supersample : int
        Sub-samples per pixel along each axis (8 → 64 rays per pixel) for spheres and for the
        edge pixels of implant shadows. 8 keeps a rendered bead's centre within 0.001 px of its
        exact projection (4 leaves up to ≈ 0.007 px, measured against 8×8 and finer grids), so
        the simulator's truth is well below the 0.01 px bias that detection is judged on.
    mu_bead_per_mm : float
        Attenuation of the spheres: tantalum at 60 keV effective, 5.944 /mm (NIST,
        :mod:`rsa.synthetic.materials`).
    photons_per_pixel : float
        Detected quanta per pixel without any object (dose). 2e4 ≈ 60 µGy air kerma at the
        detector for 0.1 mm pixels (≈ 340 quanta/µGy per (0.1 mm)² at 60 keV), so ≈ 1000 quanta
        remain behind a 150 mm water-equivalent limb, typical of a DR exposure.
    electronic_noise : float
        Standard deviation of the additive read-out noise, in quanta (ADU at 1 ADU per quantum of
        the linear signal). Flat panels: a few quanta.
    focal_spot_mm : float
        Nominal focal spot size, taken as the FWHM of a Gaussian source (RSA tubes: 0.6–1.2 mm).
    detector_blur_px : float
        σ of the Gaussian detector point-spread function in pixels (CsI flat panel ≈ 0.5–0.7).
    bit_depth : int
        Bits stored in the output (12–16).
    background : bool
        Add the anatomy (soft tissue and bone) of
        :func:`~rsa.synthetic.background.anatomy_attenuation`.
    background_seed : int
        Seed of the anatomy (combined with the view name), so noise-free output is deterministic.
    anatomy_chord_step : int
        Grid step (px) on which the anatomy's chords through the limb and the bones are
        evaluated before bilinear upsampling
        (:func:`~rsa.synthetic.background.anatomy_attenuation` ``chord_step``). 1 evaluates
        them at every pixel: the sharp square-root rise of a cortical edge. The default 8 (the
        bundled phantom studies, and every benchmark figure so far) smooths that rise into
        straight segments with kinks on the 8 px grid, up to 0.18 in ``Σ μ·L``; the anatomy
        is not blurred by the focal spot either way.
    noise : bool
        Poisson quantum noise and electronic noise; ``False`` gives a deterministic image.
    hidden_attenuation : float
        Implant attenuation ``Σ μ·L`` on a sphere's centre ray at and above which the sphere is
        flagged ``hidden`` (default ln 10: implants absorb ≥ 90 % of the ray).
    """

    supersample: int = 8
    mu_bead_per_mm: float = MU_TANTALUM_PER_MM
    photons_per_pixel: float = 2.0e4
    electronic_noise: float = 3.0
    focal_spot_mm: float = 1.0
    detector_blur_px: float = 0.6
    bit_depth: int = 14
    background: bool = True
    background_seed: int = 0
    anatomy_chord_step: int = 8
    noise: bool = True
    hidden_attenuation: float = float(np.log(10.0))

    def __post_init__(self) -> None:
        for name in ("supersample", "anatomy_chord_step"):
            check_positive_int(getattr(self, name), name)
        if not 8 <= int(self.bit_depth) <= 16 or int(self.bit_depth) != self.bit_depth:
            raise ShapeError(f"Expected `bit_depth` to be an integer in 8..16, got "
                             f"{self.bit_depth!r}.")
        for name in ("mu_bead_per_mm", "photons_per_pixel"):
            if not np.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ShapeError(f"Expected `{name}` to be positive, got {getattr(self, name)!r}.")
        for name in ("electronic_noise", "focal_spot_mm", "detector_blur_px",
                     "hidden_attenuation"):
            if not np.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ShapeError(f"Expected `{name}` to be non-negative, got "
                                 f"{getattr(self, name)!r}.")


#: The default options (immutable), used when ``options`` is not given.
DEFAULT_OPTIONS = RenderOptions()


@dataclass(frozen=True, eq=False)
class RenderedView:
    """One simulated radiograph and the exact truth of its spheres.

    Attributes
    ----------
    image : (rows, cols) ndarray of uint16
        Display values, MONOCHROME2 sense (more attenuation = larger value; beads bright).
    uv_px : (N, 2) ndarray
        Exact central projection of each sphere centre (``view.project``), px.
    hidden : (N,) ndarray of bool
        Centre projected outside the image, or behind implants (see module docstring).
    clipped : (N,) ndarray of bool
        Projected silhouette crosses the image border.
    """

    image: np.ndarray
    uv_px: np.ndarray
    hidden: np.ndarray
    clipped: np.ndarray

    def __post_init__(self) -> None:
        for name in ("image", "uv_px", "hidden", "clipped"):
            object.__setattr__(self, name, readonly(getattr(self, name)))


@dataclass(frozen=True, eq=False)
class ExpectedView:
    """Noise-free expectation of a rendered view (for Cramér–Rao bounds and model fitting).

    Attributes
    ----------
    quanta : (rows, cols) ndarray of float64
        Expected detected quanta per pixel after all blur (before noise), ``E[I]``.
    display : (rows, cols) ndarray of float64
        ``display_values(quanta, options)``: display values before rounding (same units as
        :attr:`RenderedView.image`).
    dn_per_attenuation : float
        ``k``, display units per unit of ``ln`` attenuation.
    uv_px, hidden, clipped
        As in :class:`RenderedView`.

    Notes
    -----
    With noise, pixel ``i`` has variance ``≈ k²·(g·quanta_i + e²) / quanta_i² + 1/12`` in display
    units: :func:`display_variance` (for Cramér–Rao bounds of bead centres).
    """

    quanta: np.ndarray
    display: np.ndarray
    dn_per_attenuation: float
    uv_px: np.ndarray
    hidden: np.ndarray
    clipped: np.ndarray

    def __post_init__(self) -> None:
        for name in ("quanta", "display", "uv_px", "hidden", "clipped"):
            object.__setattr__(self, name, readonly(getattr(self, name)))


def display_scale(options: RenderOptions) -> tuple[float, float]:
    """Reference quanta ``2·I0`` and display units per unit attenuation ``k`` of the log display."""
    ref = 2.0 * options.photons_per_pixel
    return ref, (2.0 ** options.bit_depth - 1.0) / float(np.log(ref / _FLOOR_QUANTA))


def display_values(quanta: ArrayLike, options: RenderOptions) -> np.ndarray:
    """Log display ``k·ln(2·I0 / max(I, ½))`` of detected quanta (float, unrounded, unclipped)."""
    ref, k = display_scale(options)
    q = np.maximum(np.asarray(quanta, dtype=np.float64), _FLOOR_QUANTA)
    return k * np.log(ref / q)


def display_variance(quanta: ArrayLike, options: RenderOptions) -> np.ndarray:
    """Approximate noise variance (display units²) of pixels with expected ``quanta``.

    Delta method on ``D = k·ln(2·I0/I)``: ``Var D ≈ k²·(g·I + e²)/I² + 1/12`` where ``g = Σ w²``
    is the energy of the (normalised) detector-blur kernel that spreads each pixel's Poisson
    quanta, ``e`` the electronic noise and 1/12 the rounding to integers. Exact to O(1/I) for a
    locally flat field; near sharp edges ``g·I`` approximates ``Σ w_j² I_j``.
    """
    k = display_scale(options)[1]
    q = np.maximum(np.asarray(quanta, dtype=np.float64), _FLOOR_QUANTA)
    sigma = options.detector_blur_px
    if sigma > 0:
        w = cv2.getGaussianKernel(_kernel_size(sigma), sigma).ravel()
        g = float(np.sum(w * w) ** 2)
    else:
        g = 1.0
    return k * k * (g * q + options.electronic_noise**2) / (q * q) + 1.0 / 12.0


def render_view(view: DetectorView, centres_mm: ArrayLike, radii_mm: ArrayLike, *,
                capsules: Sequence[Capsule] = (), options: RenderOptions = DEFAULT_OPTIONS,
                rng: np.random.Generator | int | None = None) -> RenderedView:
    """Render one radiograph of tantalum spheres, implant capsules and anatomy.

    Parameters
    ----------
    view : DetectorView
        Exact pinhole geometry (focus, detector plane, pixel grid).
    centres_mm : (N, 3) array_like
        Sphere centres in lab coordinates, mm; all between the focus and the detector.
    radii_mm : (N,) array_like
        Sphere radii, mm (> 0; RSA beads 0.4–0.5 mm).
    capsules : sequence of Capsule
        Implant parts.
    options : RenderOptions
    rng : numpy.random.Generator, int or None
        Source of the noise (ignored when ``options.noise`` is False).

    Returns
    -------
    RenderedView
        uint16 image (beads bright) with the exact projections and the hidden/clipped flags.

    Raises
    ------
    ShapeError
        Wrong shapes, non-finite values, non-positive radii, spheres or capsules not strictly
        between the focus and the detector plane.
    """
    centres, radii, caps = _validate(view, centres_mm, radii_mm, capsules)
    quanta, uv, hidden, clipped = _expected_quanta(view, centres, radii, caps, options)
    sigma = options.detector_blur_px
    if options.noise:
        gen = np.random.default_rng(rng)
        counts = gen.poisson(quanta).astype(np.float32)
        signal = _blur(counts, sigma)
        if options.electronic_noise > 0:
            noise = gen.standard_normal(signal.shape, dtype=np.float32)
            signal += np.float32(options.electronic_noise) * noise
    else:
        signal = _blur(quanta, sigma)
    display = display_values(signal, options)
    top = 2.0 ** options.bit_depth - 1.0
    image = np.clip(np.rint(display), 0.0, top).astype(np.uint16)
    return RenderedView(image=image, uv_px=uv, hidden=hidden, clipped=clipped)


def render_expected(view: DetectorView, centres_mm: ArrayLike, radii_mm: ArrayLike, *,
                    capsules: Sequence[Capsule] = (),
                    options: RenderOptions = DEFAULT_OPTIONS) -> ExpectedView:
    """Noise-free expected quanta and display values of :func:`render_view` (float64, unrounded).

    Same arguments as :func:`render_view` (``options.noise`` is ignored).
    """
    centres, radii, caps = _validate(view, centres_mm, radii_mm, capsules)
    quanta, uv, hidden, clipped = _expected_quanta(view, centres, radii, caps, options)
    quanta = _blur(quanta, options.detector_blur_px).astype(np.float64)
    return ExpectedView(quanta=quanta, display=display_values(quanta, options),
                        dn_per_attenuation=display_scale(options)[1], uv_px=uv, hidden=hidden,
                        clipped=clipped)


# -- internals ------------------------------------------------------------------------------

def _validate(view, centres_mm, radii_mm, capsules):
    if not isinstance(view, DetectorView):
        raise ShapeError(f"Expected `view` to be a DetectorView, got {type(view).__name__}.")
    c = as_points(centres_mm, "centres_mm", min_ndim=2, spec="(N, 3)")
    if c.ndim != 2:
        raise ShapeError(f"Expected `centres_mm` to have shape (N, 3), got {c.shape}.")
    try:
        r = np.asarray(radii_mm, dtype=np.float64)
    except (TypeError, ValueError):
        raise ShapeError("Expected `radii_mm` to be a numeric array (N,).") from None
    if r.shape != (c.shape[0],):
        raise ShapeError(f"Expected `radii_mm` to have shape ({c.shape[0]},), got {r.shape}.")
    check_finite(c, "centres_mm")
    check_finite(r, "radii_mm")
    if np.any(r <= 0):
        raise ShapeError("Expected `radii_mm` to be positive.")
    caps = tuple(capsules) if capsules is not None else ()
    if not all(isinstance(k, Capsule) for k in caps):
        raise ShapeError("Expected `capsules` to be a sequence of Capsule.")
    n, depth_det = _depth_axis(view)
    depth = (c - view.focus_mm) @ n
    if np.any(depth - r <= 0) or np.any(depth + r >= depth_det):
        raise ShapeError("Expected every sphere to lie strictly between the focus and the "
                         "detector plane.")
    for k in caps:
        d = (np.stack([k.p0_mm, k.p1_mm]) - view.focus_mm) @ n
        if np.any(d - k.radius_mm <= 0) or np.any(d + k.radius_mm >= depth_det):
            raise ShapeError("Expected every capsule to lie strictly between the focus and the "
                             "detector plane.")
    return c, r, caps


def _depth_axis(view: DetectorView) -> tuple[np.ndarray, float]:
    """Detector normal oriented from the focus to the detector, and the focus–detector distance."""
    n = view.normal
    dist = float((view.origin_mm - view.focus_mm) @ n)
    return (n, dist) if dist > 0 else (-n, -dist)


def _kernel_size(sigma: float) -> int:
    return 2 * int(np.ceil(4.0 * sigma)) + 1


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    img = np.ascontiguousarray(img, dtype=np.float32)
    if sigma <= 0:
        return img
    k = _kernel_size(sigma)
    return cv2.GaussianBlur(img, (k, k), sigmaX=sigma, sigmaY=sigma,
                            borderType=cv2.BORDER_REFLECT)


def _expected_quanta(view, centres, radii, caps, opt):
    """Expected quanta before detector blur (float32), projections and flags."""
    rows, cols = view.shape
    att = (anatomy_attenuation(view, seed=opt.background_seed,
                               chord_step=opt.anatomy_chord_step) if opt.background
           else np.zeros((rows, cols), np.float32))
    for cap in caps:
        add_capsule(att, view, cap, opt)
    uv = view.project(centres) if len(centres) else np.zeros((0, 2))
    lo, hi = silhouette_bounds(view, centres, radii)
    inside = ((uv[:, 0] >= -0.5) & (uv[:, 0] <= cols - 0.5)
              & (uv[:, 1] >= -0.5) & (uv[:, 1] <= rows - 0.5))
    touches = (hi[:, 0] >= -0.5) & (lo[:, 0] <= cols - 0.5) & (hi[:, 1] >= -0.5) \
        & (lo[:, 1] <= rows - 0.5)
    within = (lo[:, 0] >= -0.5) & (hi[:, 0] <= cols - 0.5) & (lo[:, 1] >= -0.5) \
        & (hi[:, 1] <= rows - 0.5)
    clipped = touches & ~within
    occlusion = np.zeros(len(centres))
    if caps and len(centres):
        d = centres - view.focus_mm
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        for cap in caps:
            occlusion += cap.mu_per_mm * _capsule_chords(view.focus_mm, d, cap.p0_mm,
                                                         cap.p1_mm, cap.radius_mm)
    hidden = ~inside | (occlusion >= opt.hidden_attenuation)
    if np.any(touches):
        add_spheres(att, view, centres[touches], radii[touches], lo[touches], hi[touches], opt)
    quanta = np.float32(opt.photons_per_pixel) * np.exp(-att)
    return quanta, uv, hidden, clipped
