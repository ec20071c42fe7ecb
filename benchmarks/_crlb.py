"""Cramér–Rao lower bound of bead centres in a simulated radiograph (shared by the benchmarks).

Fisher information ``Jᵀ C⁻¹ J`` per bead, in a (2h+1)² pixel window around its exact projection:
J is the derivative of the noise-free expected display image with respect to the bead's image
centre (finite differences of :func:`rsa.synthetic.render.render_expected` with the beads moved
±δ along the detector axes, mapped to px with the exact projection), C the pixel covariance of the
renderer's noise model — Poisson quanta spread by the detector blur plus read-out noise, through
the log display (delta method), plus rounding.

``nuisance=True`` also gives the bound when the estimator must estimate what no analysis of a
patient image knows: each bead's contrast (a factor on its display contribution) and radius, the
local background (a quadratic in the window, as the detector fits) and, where an implant reaches
into the window, the implant's position (a shift along each detector axis), attenuation and
radius. The centre-only bound takes them as known exactly; the Fisher matrix then has up to
2 + 12 columns and the centre block of its inverse is the bound [1]_.

.. [1] Kay SM. Fundamentals of Statistical Signal Processing: Estimation Theory. Prentice Hall
       1993, §3.7 (vector parameter, nuisance parameters: the bound is the block of F⁻¹).
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from rsa.synthetic.render import Capsule, display_scale, render_expected


def crlb(view, centres, radii, capsules, opts, uv_px, which, half=10, move=None,
         nuisance=False):
    """Per-bead Cramér–Rao bound (σ_u, σ_v) in px for beads ``which`` (see module doc).

    ``opts`` are the render options of the noisy image (its noise model is used; the expected
    image is rendered with the same options and ``noise=False``); ``uv_px`` the exact projections
    of ``centres``; ``move`` (bool mask, default all) the beads displaced for the derivatives.
    Beads whose window (plus the detector-blur margin) leaves the image get NaN, beads without
    information (singular Fisher matrix, e.g. behind metal) inf. With ``nuisance`` returns the
    centre-only bound and the bound with contrast, radius, quadratic background and implants
    unknown.
    """
    e_opts = replace(opts, noise=False)
    rows, cols = view.shape
    base = render_expected(view, centres, radii, capsules=capsules, options=e_opts)
    k = display_scale(e_opts)[1]
    mv = np.ones(len(centres), bool) if move is None else np.asarray(move, bool)
    # move the beads by ±δ mm along the detector axes; map to px with the exact projection
    d_mm = 0.002
    J = {}
    duv = {}
    for ax, vec in (("u", view.u_axis), ("v", view.v_axis)):
        step = d_mm * vec * mv[:, None]
        plus = render_expected(view, centres + step, radii, capsules=capsules,
                               options=e_opts).display
        minus = render_expected(view, centres - step, radii, capsules=capsules,
                                options=e_opts).display
        J[ax] = (plus - minus) / 2.0
        duv[ax] = (view.project(centres + d_mm * vec) - view.project(centres - d_mm * vec)) / 2
    if nuisance:
        # contrast: the moved beads' display contribution; radius: ±1 % (per unit relative
        # radius); both for all moved beads at once, like the centre derivatives
        bare = render_expected(view, centres[~mv], radii[~mv], capsules=capsules,
                               options=e_opts).display
        J["a"] = base.display - bare
        eps = 0.01
        J["r"] = sum(sgn * render_expected(view, centres, radii * (1 + sgn * eps * mv),
                                           capsules=capsules, options=e_opts).display
                     for sgn in (1.0, -1.0)) / (2 * eps)
        yy, xx = (np.mgrid[-half:half + 1, -half:half + 1] / half).reshape(2, -1)
        poly = np.stack([np.ones_like(xx), xx, yy, xx * xx, xx * yy, yy * yy], 1)
        # the implants: where they lie (a shift along each detector axis), their attenuation and
        # radius (±1 %), all implants at once; a term that vanishes in a window is left out there
        imp = []
        if capsules:
            for f in (lambda c, g: Capsule(c.p0_mm + g * 0.005 * view.u_axis,
                                           c.p1_mm + g * 0.005 * view.u_axis,
                                           c.radius_mm, c.mu_per_mm),
                      lambda c, g: Capsule(c.p0_mm + g * 0.005 * view.v_axis,
                                           c.p1_mm + g * 0.005 * view.v_axis,
                                           c.radius_mm, c.mu_per_mm),
                      lambda c, g: Capsule(c.p0_mm, c.p1_mm, c.radius_mm,
                                           c.mu_per_mm * (1 + 0.01 * g)),
                      lambda c, g: Capsule(c.p0_mm, c.p1_mm, c.radius_mm * (1 + 0.01 * g),
                                           c.mu_per_mm)):
                imp.append(sum(g * render_expected(view, centres, radii,
                                                   capsules=[f(c, g) for c in capsules],
                                                   options=e_opts).display
                               for g in (1.0, -1.0)) / 2.0)
    # noise covariance in a (2h+1)² window: S = G·Poisson(I) + e·N, D = k ln(2I0/S)
    sig = opts.detector_blur_px
    g1 = cv2.getGaussianKernel(2 * int(np.ceil(4 * sig)) + 1, sig).ravel()
    n = 2 * half + 1
    m = g1.size // 2
    G1 = np.zeros((n, n + 2 * m))
    for i in range(n):
        G1[i, i:i + g1.size] = g1
    G = np.kron(G1, G1)
    out = np.full((len(centres), 2), np.nan)
    out_n = np.full((len(centres), 2), np.nan)
    for b in np.flatnonzero(which):   # one 441×441 solve per bead (benchmark-side truth)
        u0, v0 = np.rint(uv_px[b]).astype(int)
        if not (half + m <= u0 < cols - half - m and half + m <= v0 < rows - half - m):
            continue
        big = (slice(v0 - half - m, v0 + half + m + 1), slice(u0 - half - m, u0 + half + m + 1))
        win = (slice(v0 - half, v0 + half + 1), slice(u0 - half, u0 + half + 1))
        # the expected quanta before the detector blur are not returned; the blurred ones differ
        # from them by O(σ²∇²I), negligible in the variance
        Iq = base.quanta[big].ravel()
        cov_s = (G * Iq) @ G.T + opts.electronic_noise ** 2 * np.eye(n * n)
        s = np.maximum(base.quanta[win].ravel(), 0.5)
        C = (k / s)[:, None] * cov_s * (k / s)[None, :] + np.eye(n * n) / 12.0
        A = np.stack([J["u"][win].ravel(), J["v"][win].ravel()], 1)   # per δ mm
        M = np.stack([duv["u"][b], duv["v"][b]], 1)                   # px per δ mm (2×2)
        Jpx = A @ np.linalg.inv(M)                                     # ∂D/∂(u, v)
        parts = [Jpx]
        if nuisance:
            parts += [J["a"][win].ravel()[:, None], J["r"][win].ravel()[:, None], poly]
            parts += [c for c in (x[win].ravel()[:, None] for x in imp)
                      if np.abs(c).max() > 1e-6 * np.abs(Jpx).max()]
        Af = np.concatenate(parts, 1)
        F = Af.T @ np.linalg.solve(C, Af)
        for res, Fk in ((out, F[:2, :2]), (out_n, F)):
            try:
                res[b] = np.sqrt(np.diag(np.linalg.inv(Fk))[:2])
            except np.linalg.LinAlgError:   # no information (e.g. bead behind metal)
                res[b] = np.inf
    return (out, out_n) if nuisance else out
