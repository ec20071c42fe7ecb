"""Cramér–Rao lower bound of bead centres in a simulated radiograph (shared by the benchmarks).

Fisher information ``Jᵀ C⁻¹ J`` per bead, in a (2h+1)² pixel window around its exact projection:
J is the derivative of the noise-free expected display image with respect to the image centre of
the bead and of every other sphere whose image reaches into the window (finite differences of
:func:`rsa.synthetic.render.render_expected` with the spheres moved ±δ along the detector axes,
mapped to px with the exact projection), C the pixel covariance of the renderer's noise model —
Poisson quanta spread by the detector blur plus read-out noise, through the log display (delta
method), plus rounding. The bead's bound is the centre block of the inverse: no analysis knows
where an overlapping neighbour lies. The spheres are moved in colours, so far apart within one
colour that no window sees two of them, which gives each its own derivative in a few renders.

``nuisance=True`` also gives the bound when the estimator must estimate what no analysis of a
patient image knows: each sphere's contrast (a factor on its display contribution) and radius, the
local background (a quadratic in the window, as the detector fits) and, where an implant reaches
into the window, the implant's position (a shift along each detector axis), attenuation and
radius. The centre-only bound takes them as known exactly; the Fisher matrix then has 4 columns
per sphere in the window, 6 for the background and up to 4 for the implants, and the bead's
centre block of its inverse is the bound [1]_.

.. [1] Kay SM. Fundamentals of Statistical Signal Processing: Estimation Theory. Prentice Hall
       1993, §3.7 (vector parameter, nuisance parameters: the bound is the block of F⁻¹).
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from rsa.synthetic.raster import focal_sigma_px
from rsa.synthetic.render import Capsule, display_scale, render_expected


def crlb(view, centres, radii, capsules, opts, uv_px, which, half=10, nuisance=False):
    """Per-bead Cramér–Rao bound (σ_u, σ_v) in px for beads ``which`` (see module doc).

    ``opts`` are the render options of the noisy image (its noise model is used; the expected
    image is rendered with the same options and ``noise=False``); ``uv_px`` the exact projections
    of ``centres``. Every sphere whose image reaches into a bead's window is a parameter of that
    window (its own centre, and with ``nuisance`` its own contrast and radius): the bound of a
    bead whose image overlaps another's is the block of the joint inverse, as no analysis knows
    where the other sphere lies. Beads whose window (plus the detector-blur margin) leaves the
    image get NaN, beads without information (singular Fisher matrix, e.g. behind metal) inf.
    With ``nuisance`` returns the centre-only bound and the bound with contrast, radius,
    quadratic background and implants unknown.
    """
    e_opts = replace(opts, noise=False)
    rows, cols = view.shape
    centres = np.asarray(centres, float)
    radii = np.asarray(radii, float)
    uv_px = np.asarray(uv_px, float)
    base = render_expected(view, centres, radii, capsules=capsules, options=e_opts)
    k = display_scale(e_opts)[1]
    d_mm = 0.002    # centre derivatives: ±δ mm along the detector axes
    duv = {ax: (view.project(centres + d_mm * vec) - view.project(centres - d_mm * vec)) / 2
           for ax, vec in (("u", view.u_axis), ("v", view.v_axis))}
    # how far each sphere's image reaches (radius at its magnification + 4σ of the focal-spot
    # and detector blur + 1 px), and colours: spheres of one colour are so far apart that no
    # window sees two of them, so moving a whole colour at once gives every sphere's own
    # derivative in every window
    px_per_mm = np.linalg.norm(duv["u"], axis=1) / d_mm
    blur = np.hypot(focal_sigma_px(view, centres, opts.focal_spot_mm).max(axis=-1),
                    opts.detector_blur_px)
    reach = radii * px_per_mm + 4 * blur + 1.0
    colour = _colours(uv_px, reach, half)
    n_col = int(colour.max()) + 1 if len(colour) else 0
    J = []   # per colour: {"u", "v"[, "a", "r"]} derivative images
    for c in range(n_col):
        mc = colour == c
        d = {}
        for ax, vec in (("u", view.u_axis), ("v", view.v_axis)):
            step = d_mm * vec * mc[:, None]
            d[ax] = (render_expected(view, centres + step, radii, capsules=capsules,
                                     options=e_opts).display
                     - render_expected(view, centres - step, radii, capsules=capsules,
                                       options=e_opts).display) / 2.0
        if nuisance:
            # contrast: the colour's display contribution; radius: ±1 % (per unit relative)
            d["a"] = base.display - render_expected(view, centres[~mc], radii[~mc],
                                                    capsules=capsules, options=e_opts).display
            eps = 0.01
            d["r"] = sum(sgn * render_expected(view, centres, radii * (1 + sgn * eps * mc),
                                               capsules=capsules, options=e_opts).display
                         for sgn in (1.0, -1.0)) / (2 * eps)
        J.append(d)
    if nuisance:
        yy, xx = (np.mgrid[-half:half + 1, -half:half + 1] / half).reshape(2, -1)
        poly = np.stack([np.ones_like(xx), xx, yy, xx * xx, xx * yy, yy * yy], 1)
        imp = _implant_derivatives(view, centres, radii, capsules, e_opts)
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
        # the bead itself first, then every other sphere reaching into the window
        near = np.max(np.abs(uv_px - uv_px[b]), axis=1) <= half + reach
        near[b] = False
        centre_cols, extra = [], []
        for j in (b, *np.flatnonzero(near)):
            d = J[colour[j]]
            A = np.stack([d["u"][win].ravel(), d["v"][win].ravel()], 1)     # per δ mm
            M = np.stack([duv["u"][j], duv["v"][j]], 1)                      # px per δ mm
            A = A @ np.linalg.inv(M)                                         # ∂D/∂(u, v)
            if centre_cols and np.abs(A).max() <= 1e-3 * np.abs(centre_cols[0]).max():
                continue    # reaches the window only in the margin
            centre_cols.append(A)
            if nuisance:
                extra += [d["a"][win].ravel()[:, None], d["r"][win].ravel()[:, None]]
        own = np.abs(centre_cols[0]).max()
        Af = np.concatenate(centre_cols, 1)
        F = Af.T @ np.linalg.solve(C, Af)
        if nuisance:
            parts = [Af, *extra, poly]
            parts += [c for c in (x[win].ravel()[:, None] for x in imp)
                      if np.abs(c).max() > 1e-6 * own]
            An = np.concatenate(parts, 1)
            Fn = An.T @ np.linalg.solve(C, An)
        out[b] = _centre_bound(F)
        out_n[b] = _centre_bound(Fn) if nuisance else out[b]
    return (out, out_n) if nuisance else out


def _centre_bound(F):
    """(σ_u, σ_v) of the first two parameters: the inverse of their Schur complement in the
    Fisher matrix ``F`` (the centre block of F⁻¹), with the other parameters' block
    pseudo-inverted (a direction of them the window cannot tell apart, e.g. a hidden
    neighbour's contrast against its radius, is then held, as it carries nothing on the
    centre), all on unit-diagonal scaling; inf where the centre has no information (e.g. a
    bead behind metal)."""
    d = np.sqrt(np.maximum(np.diag(F), 1e-300))
    Fs = F / d[:, None] / d[None, :]
    S = Fs[:2, :2]
    if len(F) > 2:
        S = S - Fs[:2, 2:] @ np.linalg.pinv(Fs[2:, 2:], rcond=1e-10, hermitian=True) @ Fs[2:, :2]
    try:
        var = np.diag(np.linalg.inv(S)) / d[:2] ** 2
    except np.linalg.LinAlgError:
        return np.full(2, np.inf)
    return np.where(var > 0, np.sqrt(np.abs(var)), np.inf)


def _colours(uv_px, reach, half):
    """Greedy colouring of the spheres: two share a colour only when no (2·half+1)² window
    around any sphere can see both images."""
    colour = np.full(len(uv_px), -1)
    for i in np.argsort(-reach):
        clash = np.max(np.abs(uv_px - uv_px[i]), axis=1) <= 2 * half + reach + reach[i] + 1
        taken = set(colour[clash & (colour >= 0)].tolist())
        colour[i] = next(c for c in range(len(taken) + 1) if c not in taken)
    return colour


def _implant_derivatives(view, centres, radii, capsules, e_opts):
    """Display derivatives with respect to where the implants lie (a shift along each detector
    axis), their attenuation and radius (±1 %), all implants at once."""
    imp = []
    for f in (lambda c, g: Capsule(c.p0_mm + g * 0.005 * view.u_axis,
                                   c.p1_mm + g * 0.005 * view.u_axis, c.radius_mm, c.mu_per_mm),
              lambda c, g: Capsule(c.p0_mm + g * 0.005 * view.v_axis,
                                   c.p1_mm + g * 0.005 * view.v_axis, c.radius_mm, c.mu_per_mm),
              lambda c, g: Capsule(c.p0_mm, c.p1_mm, c.radius_mm, c.mu_per_mm * (1 + 0.01 * g)),
              lambda c, g: Capsule(c.p0_mm, c.p1_mm, c.radius_mm * (1 + 0.01 * g),
                                   c.mu_per_mm)):
        if capsules:
            imp.append(sum(g * render_expected(view, centres, radii,
                                               capsules=[f(c, g) for c in capsules],
                                               options=e_opts).display
                           for g in (1.0, -1.0)) / 2.0)
    return imp
