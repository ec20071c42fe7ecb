"""Smooth anatomical background of a simulated radiograph: a soft-tissue limb and long bones.

The background is a map of the line integral ``Σ μ·L`` (dimensionless attenuation) over the
detector, built in detector millimetres from simple projected solids:

* a soft-tissue limb (water-equivalent) whose path length across the limb axis follows the chord of
  a cylinder, ``T0·sqrt(1 − (x/R)²)``, modulated by a few broad Gaussian bumps (±15 %) for
  low-frequency thickness variation;
* two long bones along the limb (e.g. femur and tibia meeting at a joint line), each a cortical
  tube whose path ``2(sqrt(Ro² − x²) − sqrt(Ri² − x²))`` gives the two bright cortical bands of a
  radiograph, plus a low-density trabecular/marrow filling of the canal.

Dimensions are drawn from a generator seeded by ``(seed, crc32(view name))`` so a view's background
is deterministic and the two views of an exam differ. By default the field is evaluated at
``1/downsample`` of the detector resolution and upsampled bilinearly (``cv2.resize``), a few
milliseconds for 3000×3000. That is exact enough inside the limb and the bones, but not at their
edges, where a chord rises like the square root of the distance inside: the upsampled map has
straight segments with kinks on the coarse grid there (up to 0.18 in ``Σ μ·L`` at step 8).
``chord_step=1`` evaluates the chords at every pixel (the smooth thickness modulations stay on
the coarse grid).
Attenuation coefficients are those of :mod:`rsa.synthetic.materials` (60 keV effective).
"""

from __future__ import annotations

import functools
import zlib

import cv2
import numpy as np

from rsa._validate import check_positive_int, readonly
from rsa.synthetic.geometry import DetectorView
from rsa.synthetic.materials import MU_CORTICAL_BONE_PER_MM, MU_WATER_PER_MM

#: Typical geometric magnification of anatomy in an RSA set-up (focus–detector ≈ 1.5 m).
TYPICAL_MAGNIFICATION = 1.25


def _tube_path(x: np.ndarray, r_out: float, r_in: float) -> np.ndarray:
    """Chord through a tube (annulus cross-section) at perpendicular distance ``x``."""
    outer = np.sqrt(np.maximum(r_out * r_out - x * x, 0.0))
    inner = np.sqrt(np.maximum(r_in * r_in - x * x, 0.0))
    return 2.0 * (outer - inner), 2.0 * inner


def anatomy_attenuation(view: DetectorView, *, seed: int = 0, downsample: int = 8,
                        chord_step: int = 8) -> np.ndarray:
    """Attenuation map ``Σ μ·L`` (rows, cols) of a synthetic limb with two long bones.

    Parameters
    ----------
    view : DetectorView
        Detector geometry (only the image size, pixel spacing and name are used).
    seed : int
        Seed of the anatomy; combined with the view name.
    downsample : int
        Grid step in pixels of the smooth modulations (thickness bumps, bone ends), which are
        upsampled bilinearly.
    chord_step : int
        Grid step in pixels of the chords through the limb and the cortical tubes (1: every
        pixel, about a second for 3000 × 3000). Their edges rise like the square root of the
        distance inside; sampled on a coarser grid and upsampled bilinearly they get kinks, up
        to 0.18 in ``Σ μ·L`` at step 8 along every bone edge, structure no radiograph has. With
        ``chord_step`` equal to ``downsample`` (the default) the whole map is computed on that
        grid in double precision and upsampled once, as in every earlier version.

    Returns
    -------
    attenuation : (rows, cols) ndarray of float32
        Dimensionless line integral; 0 outside the limb (direct exposure). A new array on
        each call (maps are cached per view geometry and seed).
    """
    check_positive_int(downsample, "downsample")
    check_positive_int(chord_step, "chord_step")
    rows, cols = view.shape
    su, sv = (float(s) for s in view.pixel_spacing_mm)
    return _anatomy(int(rows), int(cols), su, sv, view.name, int(seed), int(downsample),
                    int(chord_step)).copy()


@functools.lru_cache(maxsize=4)
def _anatomy(rows: int, cols: int, su: float, sv: float, name: str, seed: int, f: int,
             step: int) -> np.ndarray:
    """The map of :func:`anatomy_attenuation` (cached: the CRLB of a view renders it dozens of
    times, and at every pixel it takes about a second for 3000 × 3000)."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(name.encode())])
    # full resolution in single precision (speed); a coarse grid in double, as it always was
    dt = np.float32 if step == 1 else np.float64

    def grid(k: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates (mm) of a grid of step ``k`` px, as a row and a column
        (cv2.resize's half-pixel convention)."""
        u = ((np.arange(-(-cols // k)) + 0.5) * k - 0.5) * su
        v = ((np.arange(-(-rows // k)) + 0.5) * k - 0.5) * sv
        return u.astype(dt)[None, :], v.astype(dt)[:, None]

    def resize(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        if a.shape == shape:
            return a
        return cv2.resize(a.astype(np.float32), shape[::-1],
                          interpolation=cv2.INTER_LINEAR).astype(dt)

    Xs, Ys = grid(f)        # smooth modulations
    Xc, Yc = grid(step)     # chords
    chord_shape = (Yc.shape[0], Xc.shape[1])
    width, height = cols * su, rows * sv
    m = TYPICAL_MAGNIFICATION

    # Soft-tissue limb: a cylinder roughly along the image vertical.
    ang = np.deg2rad(rng.uniform(-12.0, 12.0))
    axis = np.array([np.sin(ang), np.cos(ang)])
    normal = np.array([axis[1], -axis[0]])
    centre = np.array([width * rng.uniform(0.4, 0.6), height / 2])
    radius = width * rng.uniform(0.30, 0.42)

    def across_along(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = x - dt(centre[0]), y - dt(centre[1])
        return (dx * dt(normal[0]) + dy * dt(normal[1]), dx * dt(axis[0]) + dy * dt(axis[1]))

    across, along = across_along(Xc, Yc)
    _, along_s = across_along(Xs, Ys)
    t0 = rng.uniform(100.0, 160.0)  # water-equivalent thickness at the limb axis, mm
    soft = dt(t0) * np.sqrt(np.maximum(1.0 - (across / dt(radius)) ** 2, 0.0))
    bumps = np.ones(np.broadcast_shapes(Xs.shape, Ys.shape), dt)
    for _ in range(4):
        c = rng.uniform([0, 0], [width, height])
        s = rng.uniform(0.1, 0.3) * width
        amp = rng.uniform(-0.15, 0.15)
        bumps += dt(amp) * np.exp(-((Xs - dt(c[0])) ** 2 + (Ys - dt(c[1])) ** 2)
                                  / dt(2 * s * s))
    soft = soft * resize(bumps, chord_shape)

    # Two long bones meeting at a joint line across the limb.
    joint = rng.uniform(-0.15, 0.15) * height
    gap = rng.uniform(5.0, 8.0) * m
    cortical = np.zeros_like(soft)
    canal = np.zeros_like(soft)
    for side in (-1.0, 1.0):
        r_out = rng.uniform(11.0, 16.0) * m
        r_in = r_out * rng.uniform(0.5, 0.65)
        offset = rng.uniform(-0.15, 0.15) * radius
        tilt = np.deg2rad(rng.uniform(-4.0, 4.0))
        x = across - dt(offset) - (along - dt(joint)) * dt(np.tan(tilt))
        wall, inner = _tube_path(x, dt(r_out), dt(r_in))
        # Smooth end of the bone at the joint (logistic over ~3 mm).
        present = resize(1.0 / (1.0 + np.exp(-(side * (along_s - dt(joint)) - dt(gap / 2))
                                              / dt(3.0 * m))), chord_shape)
        cortical += present * wall / dt(m)
        canal += present * inner / dt(m)
    # Bone replaces soft tissue; the canal holds marrow/trabecular bone (≈ 25 % cortical density).
    bone = cortical + dt(0.25) * canal
    att = dt(MU_WATER_PER_MM) * np.maximum(soft - bone, 0.0) + dt(MU_CORTICAL_BONE_PER_MM) * bone
    att *= soft > 0  # no bone outside the limb
    return readonly(resize(att, (rows, cols)).astype(np.float32))
