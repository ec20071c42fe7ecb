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
is deterministic and the two views of an exam differ. The field is evaluated at ``1/downsample`` of
the detector resolution and upsampled bilinearly (``cv2.resize``): it is smooth on the pixel scale,
so this costs no accuracy that matters and keeps a 3000×3000 map to a few milliseconds.
Attenuation coefficients are those of :mod:`rsa.synthetic.materials` (60 keV effective).
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np

from rsa.synthetic.geometry import DetectorView
from rsa.synthetic.materials import MU_CORTICAL_BONE_PER_MM, MU_WATER_PER_MM

#: Typical geometric magnification of anatomy in an RSA set-up (focus–detector ≈ 1.5 m).
TYPICAL_MAGNIFICATION = 1.25


def _tube_path(x: np.ndarray, r_out: float, r_in: float) -> np.ndarray:
    """Chord through a tube (annulus cross-section) at perpendicular distance ``x``."""
    outer = np.sqrt(np.maximum(r_out * r_out - x * x, 0.0))
    inner = np.sqrt(np.maximum(r_in * r_in - x * x, 0.0))
    return 2.0 * (outer - inner), 2.0 * inner


def anatomy_attenuation(view: DetectorView, *, seed: int = 0, downsample: int = 8) -> np.ndarray:
    """Attenuation map ``Σ μ·L`` (rows, cols) of a synthetic limb with two long bones.

    Parameters
    ----------
    view : DetectorView
        Detector geometry (only the image size and pixel spacing are used).
    seed : int
        Seed of the anatomy; combined with the view name.
    downsample : int
        Evaluation grid step in pixels before bilinear upsampling.

    Returns
    -------
    attenuation : (rows, cols) ndarray of float32
        Dimensionless line integral; 0 outside the limb (direct exposure).
    """
    rows, cols = view.shape
    su, sv = (float(s) for s in view.pixel_spacing_mm)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(view.name.encode())])
    f = max(int(downsample), 1)
    nr, nc = -(-rows // f), -(-cols // f)
    # Low-res pixel centres in full-res pixel units (cv2.resize's half-pixel convention).
    u = ((np.arange(nc) + 0.5) * f - 0.5) * su
    v = ((np.arange(nr) + 0.5) * f - 0.5) * sv
    X, Y = np.meshgrid(u, v)
    width, height = cols * su, rows * sv
    m = TYPICAL_MAGNIFICATION

    # Soft-tissue limb: a cylinder roughly along the image vertical.
    ang = np.deg2rad(rng.uniform(-12.0, 12.0))
    axis = np.array([np.sin(ang), np.cos(ang)])
    normal = np.array([axis[1], -axis[0]])
    centre = np.array([width * rng.uniform(0.4, 0.6), height / 2])
    radius = width * rng.uniform(0.30, 0.42)
    dx, dy = X - centre[0], Y - centre[1]
    across = dx * normal[0] + dy * normal[1]
    along = dx * axis[0] + dy * axis[1]
    t0 = rng.uniform(100.0, 160.0)  # water-equivalent thickness at the limb axis, mm
    soft = t0 * np.sqrt(np.maximum(1.0 - (across / radius) ** 2, 0.0))
    bumps = np.ones_like(soft)
    for _ in range(4):
        c = rng.uniform([0, 0], [width, height])
        s = rng.uniform(0.1, 0.3) * width
        amp = rng.uniform(-0.15, 0.15)
        bumps += amp * np.exp(-((X - c[0]) ** 2 + (Y - c[1]) ** 2) / (2 * s * s))
    soft *= bumps

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
        x = across - offset - (along - joint) * np.tan(tilt)
        wall, inner = _tube_path(x, r_out, r_in)
        # Smooth end of the bone at the joint (logistic over ~3 mm).
        present = 1.0 / (1.0 + np.exp(-(side * (along - joint) - gap / 2) / (3.0 * m)))
        cortical += present * wall / m
        canal += present * inner / m
    # Bone replaces soft tissue; the canal holds marrow/trabecular bone (≈ 25 % cortical density).
    bone = cortical + 0.25 * canal
    att = MU_WATER_PER_MM * np.maximum(soft - bone, 0.0) + MU_CORTICAL_BONE_PER_MM * bone
    att *= soft > 0  # no bone outside the limb
    return cv2.resize(att.astype(np.float32), (cols, rows), interpolation=cv2.INTER_LINEAR)
