"""Rasterisation of spheres and capsules for the radiograph simulator (internal).

Exact chords of the ray from the focus through sub-samples of each pixel, Beer–Lambert
transmission averaged over the pixel area, and focal-spot blur at each object's own magnification
(see :mod:`rsa.synthetic.render` for the image-formation model and its references).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.special import ndtr

from rsa.synthetic.chords import _capsule_chords
from rsa.synthetic.geometry import DetectorView

_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
_SAMPLES_PER_CHUNK = 1_000_000


def focal_sigma_px(view: DetectorView, points: np.ndarray, focal_spot_mm: float) -> np.ndarray:
    """(…, 2) σ of the focal-spot blur along u and v in pixels for objects at ``points``."""
    m = view.magnification(points)
    sigma_mm = focal_spot_mm * _FWHM_TO_SIGMA * np.maximum(m - 1.0, 0.0)
    return sigma_mm[..., None] / view.pixel_spacing_mm


def silhouette_bounds(view, centres, radii, n_points: int = 64):
    """Bounding boxes (lo, hi) in px of the exact projected silhouettes (tangent-cone ellipses)."""
    if len(centres) == 0:
        return np.zeros((0, 2)), np.zeros((0, 2))
    q = centres - view.focus_mm
    dist = np.linalg.norm(q, axis=1)
    w = q / dist[:, None]
    helper = np.where(np.abs(w[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
    e1 = np.cross(w, helper)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(w, e1)
    rho = radii * np.sqrt(1.0 - (radii / dist) ** 2)
    base = centres - (radii**2 / dist)[:, None] * w
    phi = np.linspace(0.0, 2.0 * np.pi, n_points, endpoint=False)
    ring = (base[:, None, :] + rho[:, None, None]
            * (np.cos(phi)[None, :, None] * e1[:, None, :] + np.sin(phi)[None, :, None]
               * e2[:, None, :]))
    uv = view.project(ring)
    # The polygon inscribed in the ellipse underestimates the extent by ≤ 1 − cos(π/n).
    pad = (1.0 / np.cos(np.pi / n_points) - 1.0) * (uv.max(1) - uv.min(1)) / 2
    return uv.min(1) - pad, uv.max(1) + pad


def _gauss_matrix(n: int, sigma_sub: np.ndarray) -> np.ndarray:
    """(B, n, n) box-integrated Gaussian convolution matrices, σ in sub-samples."""
    k = np.arange(n)
    diff = (k[:, None] - k[None, :])[None].astype(np.float64)
    s = np.maximum(sigma_sub, 1e-9)[:, None, None]
    return ndtr((diff + 0.5) / s) - ndtr((diff - 0.5) / s)


def _boundary(inside: np.ndarray) -> np.ndarray:
    """Cells of a (B, n, n) mask with an 8-neighbour on the other side of the mask's boundary."""
    e = np.zeros_like(inside)
    for sl_a, sl_b in (((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
                       ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                       ((slice(1, None), slice(1, None)), (slice(None, -1), slice(None, -1))),
                       ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None)))):
        a, b = (slice(None), *sl_a), (slice(None), *sl_b)
        d = inside[a] != inside[b]
        e[a] |= d
        e[b] |= d
    return e


def add_spheres(att, view, centres, radii, lo, hi, opt):
    """Add the pixel-averaged, focal-blurred attenuation ``−log T̄`` of spheres into ``att``.

    Transmission is sampled on an ``s × s`` grid per pixel; sub-samples next to the silhouette
    (a sharp edge: the chord grows like a square root) are refined to ``4 × 4`` points each, so
    edge pixels are integrated with ``(4s)²`` rays. Focal blur acts at sub-sample resolution.
    """
    rows, cols = view.shape
    s = int(opt.supersample)
    fine = 4
    sig = focal_sigma_px(view, centres, opt.focal_spot_mm)  # (N, 2) u, v
    margin = np.ceil(4.0 * sig.max(axis=1)) + 2.0
    start = np.floor(lo - margin[:, None]).astype(np.int64)  # (N, 2) first u, v pixel
    extent = np.ceil(hi + margin[:, None]).astype(np.int64) - start + 1
    width = int(extent.max())
    ns = width * s
    chunk = max(1, _SAMPLES_PER_CHUNK // (ns * ns))
    F = view.focus_mm
    eu = view.u_axis * view.pixel_spacing_mm[0]
    ev = view.v_axis * view.pixel_spacing_mm[1]
    g = view.origin_mm - F
    gg, geu, gev, eueu, evev = g @ g, g @ eu, g @ ev, eu @ eu, ev @ ev
    sub = (np.arange(ns) + 0.5) / s - 0.5  # sub-sample offsets from the window's first pixel
    fine_off = ((np.arange(fine) + 0.5) / fine - 0.5) / s
    flat = att.reshape(-1)
    mu = opt.mu_bead_per_mm

    def opacity(c, u, v):
        # c = (q·g, q·eu, q·ev, |q|², r²) per bead with q = centre − focus; ray d = g + u·eu + v·ev;
        # δ² = |q|² − (q·d)²/|d|² (separable in u and v); opacity 1 − exp(−μ·2·sqrt(r² − δ²)).
        qd = c[0] + u * c[1] + v * c[2]
        dd = gg + (2 * geu + eueu * u) * u + (2 * gev + evev * v) * v
        chord = 2.0 * np.sqrt(np.maximum(c[4] - (c[3] - qd * qd / dd), 0.0))
        return -np.expm1(-mu * chord), chord > 0

    for a in range(0, len(centres), chunk):
        b = min(a + chunk, len(centres))
        q = centres[a:b] - F
        coef = np.stack([q @ g, q @ eu, q @ ev, np.sum(q * q, axis=1), radii[a:b] ** 2])
        u = (start[a:b, 0, None] + sub[None, :])[:, None, :]  # (B, 1, ns)
        v = (start[a:b, 1, None] + sub[None, :])[:, :, None]  # (B, ns, 1)
        opaque, inside = opacity(coef[:, :, None, None], u, v)  # (B, ns_v, ns_u)
        nb, iv, iu = np.nonzero(_boundary(inside))
        if len(nb):  # refine sub-samples on the silhouette edge with fine × fine rays each
            ue = u[nb, 0, iu][:, None, None] + fine_off[None, None, :]
            ve = v[nb, iv, 0][:, None, None] + fine_off[None, :, None]
            op_e, _ = opacity(coef[:, nb, None, None], ue, ve)
            opaque[nb, iv, iu] = op_e.mean(axis=(1, 2))
        # Focal blur at sub-sample resolution then pixel averaging: K = mean-over-pixel · G.
        ku = _gauss_matrix(ns, sig[a:b, 0] * s).reshape(b - a, width, s, ns).mean(axis=2)
        kv = _gauss_matrix(ns, sig[a:b, 1] * s).reshape(b - a, width, s, ns).mean(axis=2)
        blocked = kv @ opaque @ ku.transpose(0, 2, 1)  # (B, width_v, width_u)
        a_pix = -np.log(np.clip(1.0 - blocked, 1e-30, 1.0))
        pu = start[a:b, 0, None, None] + np.arange(width)[None, None, :]
        pv = start[a:b, 1, None, None] + np.arange(width)[None, :, None]
        pu, pv = np.broadcast_arrays(pu, pv)
        keep = (a_pix > 0) & (pu >= 0) & (pu < cols) & (pv >= 0) & (pv < rows)
        np.add.at(flat, pv[keep] * cols + pu[keep], a_pix[keep].astype(np.float32))


def _capsule_rays(view, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Unit ray directions (…, 3) from the focus through image points (u, v)."""
    d = view.detector_point(np.stack([u, v], axis=-1)) - view.focus_mm
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def add_capsule(att, view, cap, opt):
    """Add the focal-blurred attenuation of one capsule into ``att`` (bounding box only).

    Transmission is sampled at pixel centres; pixels on the shadow's edge (where the 3×3
    neighbourhood is partly inside, partly outside) are re-sampled with ``supersample²`` rays.
    """
    rows, cols = view.shape
    r = cap.radius_mm
    # The capsule is the convex hull of its end spheres, so is its projection.
    lo, hi = silhouette_bounds(view, np.stack([cap.p0_mm, cap.p1_mm]), np.array([r, r]))
    sig = focal_sigma_px(view, (cap.p0_mm + cap.p1_mm) / 2, opt.focal_spot_mm)
    pad = int(np.ceil(4.0 * sig.max())) + 2
    u0 = max(int(np.floor(lo[:, 0].min())) - pad, 0)
    u1 = min(int(np.ceil(hi[:, 0].max())) + pad, cols - 1)
    v0 = max(int(np.floor(lo[:, 1].min())) - pad, 0)
    v1 = min(int(np.ceil(hi[:, 1].max())) + pad, rows - 1)
    if u0 > u1 or v0 > v1:
        return
    uu, vv = np.meshgrid(np.arange(u0, u1 + 1, dtype=float), np.arange(v0, v1 + 1, dtype=float))
    chord = _capsule_chords(view.focus_mm, _capsule_rays(view, uu, vv), cap.p0_mm, cap.p1_mm, r)
    trans = np.exp(-cap.mu_per_mm * chord)
    s = int(opt.supersample)
    if s > 1:
        inside = (chord > 0).astype(np.uint8)
        kernel = np.ones((3, 3), np.uint8)
        edge = (cv2.dilate(inside, kernel) != cv2.erode(inside, kernel)).nonzero()
        sub = (np.arange(s) + 0.5) / s - 0.5
        su = uu[edge][:, None, None] + sub[None, None, :]
        sv = vv[edge][:, None, None] + sub[None, :, None]
        su, sv = np.broadcast_arrays(su, sv)
        c_sub = _capsule_chords(view.focus_mm, _capsule_rays(view, su, sv), cap.p0_mm,
                                cap.p1_mm, r)
        trans[edge] = np.exp(-cap.mu_per_mm * c_sub).mean(axis=(1, 2))
    trans = trans.astype(np.float32)
    if sig.max() > 0:
        k = 2 * int(np.ceil(4.0 * sig.max())) + 1
        trans = cv2.GaussianBlur(trans, (k, k), sigmaX=float(sig[0]), sigmaY=float(sig[1]),
                                 borderType=cv2.BORDER_REPLICATE)
    att[v0:v1 + 1, u0:u1 + 1] -= np.log(np.maximum(trans, 1e-30))
