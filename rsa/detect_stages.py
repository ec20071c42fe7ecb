"""Fitting stage of :mod:`rsa.detect`: from candidates to tested, flagged sub-pixel beads.

Internal module (inputs validated by :func:`rsa.detect.detect_beads`); the model and the
batched Levenberg–Marquardt solver are in :mod:`rsa.detect_refine`. Steps:

1. windows around all candidates; start radii from the area above half contrast;
2. the strongest 16 candidates are fitted from both ends of the radius range (the blur–radius
   trade-off has local minima); their blur and radius scale start all others, and bound the
   radius of every fit (beads of one image differ only by diameter and ≤ 1.25× magnification);
3. first pass with each window cut at the mid-line to any close candidate (Voronoi) and the
   centre held within a box around the candidate, so that touching beads cannot merge;
   atypical fits are restarted from the typical shape;
4. deblending: the neighbours' bead models are subtracted from each window and the beads with
   neighbours refitted, alternately, until the centres settle;
5. tests (SNR, radius, drift, shape) and removal of duplicates;
6. final weighted pass: pixel variance as a function of the modelled transmission (pooled,
   from the residuals), the sandwich covariance under the image's noise correlation (detector
   blur, from the noise itself), scaled per bead by its reduced χ² and the misfit around it,
   plus a model-error floor; correction of the shift that the detector blur causes on a
   background gradient (log display);
7. beads with structure next to them (flagged, or screened by a cheap linear fit) are refitted
   with a blurred straight step in the background, kept where χ² drops by more than noise
   could (:func:`_edge_refit`);
8. quality flags.

Weights are always symmetric about the current centre (functions of the bead model), so they
cannot bias the centre.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from rsa.detect_candidates import _close_pairs
from rsa.detect_refine import (
    IA,
    IBU,
    IBV,
    IE1,
    IE2,
    IEA,
    IED,
    IET,
    IEW,
    ILC,
    ILK,
    ILS,
    IR,
    IU,
    IV,
    NPAR,
    NPAR_EDGE,
    FitResult,
    FitSetup,
    _clip,
    background,
    fit,
    linear_init,
    linear_params,
    make_setup,
    model_and_jacobian,
    noise_correlation,
    transmission_variance,
)


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
    np.add.at(out, i, _bead_model(p[j], pu[i], pv[i], setup))
    return out


def _bead_model(p: np.ndarray, pu: np.ndarray, pv: np.ndarray, setup: FitSetup) -> np.ndarray:
    """The bead part of the model (no background) of beads ``p`` on windows pu, pv, (N, W, W)."""
    q = p.copy()
    q[:, linear_params(q.shape[1])] = 0.0
    q[:, IA] = p[:, IA]
    return model_and_jacobian(q, pu, pv, pu[:, 0], pv[:, 0], setup, jac=False)[0]


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


_FIELDS = ("uv_px", "radius_px", "contrast", "snr", "sigma_px", "score", "touching",
           "near_edge", "occluded", "clipped")


def _empty() -> dict[str, np.ndarray]:
    z = np.zeros(0)
    b = np.zeros(0, bool)
    return {"uv_px": np.zeros((0, 2)), "radius_px": z, "contrast": z, "snr": z,
            "sigma_px": np.zeros((0, 2)), "score": z, "touching": b, "near_edge": b,
            "occluded": b, "clipped": b}


def _blocked(p: np.ndarray, pu: np.ndarray, pv: np.ndarray, setup: FitSetup) -> np.ndarray:
    """Blurred blocked fraction B (N, W, W) of each bead model (no display, no background)."""
    q = p.copy()
    q[:, linear_params(q.shape[1])] = 0.0
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
    return t ** (-2.0 * c) * (t + eps) / (1.0 + eps) * _taper(p, pu, pv)



def _structure(r: FitResult, inside: np.ndarray, w: np.ndarray, pu: np.ndarray,
               pv: np.ndarray, setup: FitSetup, opts: Any
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evidence of structure (implant or bone edge) next to each fitted bead.

    Returns ``near_edge`` (N,) and the reduced χ² over the bead's disc and over the ring
    around it, both relative to the whole window's (background noise) level.
    """
    p = r.params
    chi2 = r.chi2_red
    # misfit over the bead's own disc (anatomy structure elsewhere in the window does not
    # count), relative to the whole-window noise level: an implant edge across the bead
    du = pu[:, None, :] - p[:, IU, None, None]
    dv = pv[:, :, None] - p[:, IV, None, None]
    rr = np.hypot(du, dv)
    disc = (rr <= _radius(p)[:, None, None] + 1.0) & (inside > 0)
    ring = (rr > _radius(p)[:, None, None] + 2.5 * np.exp(p[:, ILS, None, None])) & (inside > 0)
    z2 = r.resid ** 2 * w * _taper(p, pu, pv)      # whitened, without the taper's down-weighting
    chi2_disc = (z2 * disc).sum(axis=(1, 2)) / np.maximum(disc.sum(axis=(1, 2)), 1) / chi2
    chi2_ring = (z2 * ring).sum(axis=(1, 2)) / np.maximum(ring.sum(axis=(1, 2)), 1) / chi2
    # background change across the bead (fitted) relative to the bead's contrast
    bg = background(p, du + (p[:, IU] - pu[:, setup.half])[:, None, None],
                    dv + (p[:, IV] - pv[:, setup.half])[:, None, None])
    bg_span = np.where(disc, bg, -np.inf).max(axis=(1, 2)) - np.where(disc, bg, np.inf).min(
        axis=(1, 2))
    # the residual variance around the bead differs strongly between directions (8 sectors of
    # ≈ 50–100 pixels: pure noise keeps their ratio below ≈ 2.5)
    sector = (np.floor((np.arctan2(dv, du) + np.pi) / (np.pi / 4)).astype(int) % 8)
    ring_f = ring.astype(float)
    num = np.stack([(z2 * ring_f * (sector == k)).sum(axis=(1, 2)) for k in range(8)], 1)
    cnt = np.stack([(ring_f * (sector == k)).sum(axis=(1, 2)) for k in range(8)], 1)
    sec = num / np.maximum(cnt, 1.0)
    has = cnt > 8
    # ratio of the largest to the smallest sector variance; 1 (isotropic) when no sector has
    # enough pixels (a bead at the image border), instead of −inf/inf = NaN with a warning
    hi = np.where(has, sec, 0.0).max(1)
    lo = np.where(has, sec, np.inf).min(1)
    anis = np.where(has.any(1), hi / np.maximum(np.where(np.isfinite(lo), lo, 1.0), 1e-300), 1.0)
    c_img = _contrast(r.model, p, pu, pv)
    near_edge = ((bg_span > opts.edge_ratio * np.abs(c_img)) | (anis > opts.edge_anisotropy)
                 | (chi2_ring > opts.max_chi2 * np.median(chi2_ring)))
    return near_edge, chi2_disc, chi2_ring


# χ²(4 dof) exceeded with probability 0.001: a straight edge is kept only when its four
# parameters explain that much more of the window than noise could
_EDGE_CHI2 = 18.47


def _edge_start(r: FitResult, data: np.ndarray, inside: np.ndarray, pu: np.ndarray,
                pv: np.ndarray, setup: FitSetup) -> np.ndarray:
    """Start values (N, NPAR_EDGE) of the edge layout from a plain fit ``r``.

    The edge direction is the dominant gradient direction (structure tensor) of the window with
    the fitted bead removed, outside the bead's blurred disc; its offset the gradient-weighted
    mean position along that direction. Amplitude and the rest are solved linearly by the fit.
    """
    p = r.params
    cu, cv = pu[:, setup.half], pv[:, setup.half]
    du = (pu - cu[:, None])[:, None, :]
    dv = (pv - cv[:, None])[:, :, None]
    bg = data - (r.model - background(p, du, dv))
    gv, gu = np.gradient(bg, axis=(1, 2))
    rr = np.hypot(du - (p[:, IU] - cu)[:, None, None], dv - (p[:, IV] - cv)[:, None, None])
    m = ((inside > 0) & (rr > (_radius(p) + 2.0 * np.exp(p[:, ILS]))[:, None, None])).astype(float)
    sxx = (m * gu * gu).sum(axis=(1, 2))
    syy = (m * gv * gv).sum(axis=(1, 2))
    sxy = (m * gu * gv).sum(axis=(1, 2))
    th = 0.5 * np.arctan2(2.0 * sxy, sxx - syy)
    c, s = np.cos(th)[:, None, None], np.sin(th)[:, None, None]
    wt = m * (c * gu + s * gv) ** 2
    proj = c * du + s * dv
    q = np.zeros((len(p), NPAR_EDGE))
    q[:, :NPAR] = p
    q[:, IET] = th
    q[:, IED] = (wt * proj).sum(axis=(1, 2)) / np.maximum(wt.sum(axis=(1, 2)), 1e-300)
    q[:, IEW] = 0.0
    return q


def _edge_refit(r: FitResult, data: np.ndarray, inside: np.ndarray, w: np.ndarray,
                pu: np.ndarray, pv: np.ndarray, setup: FitSetup, rho: np.ndarray,
                flagged: np.ndarray, fixed: tuple[int, ...], iterations: int) -> FitResult:
    """Refit beads with a straight blurred step in their background where the data ask for it.

    An implant or cortical-bone edge under or next to a bead is not a quadratic; fitted as one
    it pulls the centre towards or away from the edge by up to pixels. The step model (Φ of the
    distance to a line, free amplitude, direction, position and width) is kept where it lowers
    the weighted misfit by more than noise could: χ²₄ at p = 0.001, in units of the refit's
    reduced χ² times the noise correlation's variance inflation. Candidates for the (costly)
    non-linear refit are the ``flagged`` beads and every bead whose misfit already drops by a
    quarter of that with the step at its start position and only the linear parameters solved
    (a cheap, liberal screen). Returns the fits of all beads in the edge layout (no step:
    amplitude 0).
    """
    n = len(r.params)
    p = np.zeros((n, NPAR_EDGE))
    p[:, :NPAR] = r.params
    cov, model, resid, chi2 = (x.copy() for x in (r.cov_uv, r.model, r.resid, r.chi2_red))
    infl = max(float(rho.sum()), 1.0)
    cost0 = r.chi2_red * np.maximum(r.npix - NPAR, 1)
    q = _edge_start(r, data, inside, pu, pv, setup)
    cu, cv = pu[:, setup.half], pv[:, setup.half]
    q = linear_init(q, data, w, pu, pv, cu, cv, setup)
    m_lin = model_and_jacobian(q, pu, pv, cu, cv, setup, jac=False)[0]
    cost_lin = np.einsum("nij,nij->n", w, (data - m_lin) ** 2)
    screen = (cost0 - cost_lin) / (np.maximum(r.chi2_red, 1e-300) * infl) > 0.25 * _EDGE_CHI2
    idx = np.flatnonzero((flagged | screen) & (r.params[:, IA] > 0))
    if idx.size:
        e = fit(q[idx], data[idx], w[idx], pu[idx], pv[idx], setup, iterations=iterations,
                rho=rho, fixed=fixed)
        cost1 = e.chi2_red * np.maximum(e.npix - NPAR_EDGE, 1)
        gain = (cost0[idx] - cost1) / (np.maximum(e.chi2_red, 1e-300) * infl)
        ok = (gain > _EDGE_CHI2) & (e.params[:, IA] > 0) & np.isfinite(e.params).all(1)
        k = idx[ok]
        p[k], cov[k], model[k], resid[k], chi2[k] = (e.params[ok], e.cov_uv[ok], e.model[ok],
                                                     e.resid[ok], e.chi2_red[ok])
    return FitResult(params=p, cov_uv=cov, resid=resid, model=model, chi2_red=chi2,
                     npix=r.npix)


# χ²(7 dof) exceeded with probability 0.001: a second bead (centre, radius, shape, amplitude)
_SPLIT_CHI2 = 24.32


_BEAD = (IU, IV, IR, IE1, IE2, ILS, IA)   # parameters of the second bead of a split pair


def _pair_model(pa: np.ndarray, pb: np.ndarray, pu: np.ndarray, pv: np.ndarray,
                setup: FitSetup, jac: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Model of bead A with its background plus bead B (no background), and the Jacobian in
    [all of A's parameters, B's bead parameters :data:`_BEAD`], (N, P + 7, W, W)."""
    cu, cv = pu[:, setup.half], pv[:, setup.half]
    ma, ja = model_and_jacobian(pa, pu, pv, cu, cv, setup, jac=jac)
    q = pb.copy()
    q[:, linear_params(q.shape[1])] = 0.0
    q[:, IA] = pb[:, IA]
    mb, jb = model_and_jacobian(q, pu, pv, cu, cv, setup, jac=jac)
    if not jac:
        return ma + mb, None
    return ma + mb, np.concatenate([ja, jb[:, list(_BEAD)]], axis=1)


def _fit_pair(pa: np.ndarray, pb: np.ndarray, data: np.ndarray, wts: np.ndarray,
              pu: np.ndarray, pv: np.ndarray, setup: FitSetup, fixed: tuple[int, ...],
              iterations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Levenberg–Marquardt fit of two beads sharing one window and background (batched).

    Returns both parameter sets, the weighted cost and the (N, 4, 4) inverse normal matrix of
    the two centres (uA, vA, uB, vB), unscaled.
    """
    npa = pa.shape[1]
    n, k = len(pa), npa + len(_BEAD)
    free = np.ones(k, bool)
    free[list(fixed)] = False

    def split(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = _clip(theta[:, :npa].copy(), setup)
        b = theta[:, :npa].copy()
        b[:, list(_BEAD)] = theta[:, npa:]
        return a, _clip(b, setup)

    theta = np.concatenate([pa, pb[:, list(_BEAD)]], axis=1)
    m, J = _pair_model(*split(theta), pu, pv, setup, True)
    J[:, ~free] = 0.0
    r = data - m
    cost = np.einsum("nij,nij->n", wts, r * r)
    lam = np.full(n, 1e-3)
    eye = np.eye(k)
    sw = wts.reshape(n, 1, -1)
    for _ in range(iterations):
        Jf = J.reshape(n, k, -1).astype(np.float64)
        H = (Jf * sw) @ np.swapaxes(Jf, 1, 2)
        g = ((Jf * sw) @ r.reshape(n, -1, 1))[..., 0]
        d = np.diagonal(H, axis1=1, axis2=2)
        Hd = H + (lam[:, None] * d + 1e-12 * d.max(1, keepdims=True) + 1e-300
                  + ~free)[:, :, None] * eye
        step = np.linalg.solve(Hd, g[..., None])[..., 0]
        a, b = split(theta + step)
        mt, Jt = _pair_model(a, b, pu, pv, setup, True)
        Jt[:, ~free] = 0.0
        rt = data - mt
        ct = np.einsum("nij,nij->n", wts, rt * rt)
        ok = ct <= cost
        theta[ok] = np.concatenate([a, b[:, list(_BEAD)]], axis=1)[ok]
        J[ok], r[ok], cost[ok] = Jt[ok], rt[ok], ct[ok]
        lam = np.where(ok, np.maximum(lam * 0.3, 1e-7), lam * 10.0)
    Jf = J.reshape(n, k, -1).astype(np.float64)
    H = (Jf * sw) @ np.swapaxes(Jf, 1, 2)
    H += 1e-9 * eye * np.maximum(np.diagonal(H, axis1=1, axis2=2).max(1), 1e-300)[:, None, None]
    Hinv = np.linalg.pinv(H, hermitian=True)
    c = [IU, IV, npa, npa + 1]           # centres of A and B
    a, b = split(theta)
    return a, b, cost, Hinv[:, c][:, :, c]


# χ²(7 dof) exceeded with probability 0.001: a second bead (centre, radius, shape, amplitude)
_SPLIT_CHI2 = 24.32


def _split_merged(r: FitResult, data: np.ndarray, inside: np.ndarray, w: np.ndarray,
                  pu: np.ndarray, pv: np.ndarray, setup: FitSetup, rho: np.ndarray,
                  sel: np.ndarray, fixed: tuple[int, ...], iterations: int,
                  variance: tuple[np.ndarray, np.ndarray], min_snr: float
                  ) -> tuple[FitResult, np.ndarray, np.ndarray]:
    """Two overlapping beads found as one candidate: split where two beads fit much better.

    Beads whose centres lie within about a radius of each other leave one candidate; one bead
    fitted to both sits between them (pixels off) with an elongated shape and misfit on its
    disc. For the beads ``sel`` two beads sharing the window's background are fitted jointly
    (:func:`_fit_pair`), started on the long axis of the fitted ellipse at several separations.
    The pair is kept when the misfit drops by more than noise could (χ²₇ at p = 0.001, in units
    of the pair's reduced χ² times the noise correlation's variance inflation) and both
    amplitudes are those of a bead in this image (within 2× of the median: in a log display the
    amplitude is the display gain, the same for every bead) and each passes the detector's SNR
    test. The pixel weights are those of the
    pair (transmission of both beads, taper around either). The centres' covariance is the
    joint one, scaled by the reduced χ² and the noise correlation's variance inflation.

    Returns the fits with the first bead of each split pair in place of the merged fit and the
    second ones appended, the parent row of every appended bead, and the weights of all rows.
    """
    idx = np.flatnonzero(sel & (r.params[:, IA] > 0))
    none = np.zeros(0, np.intp)
    if idx.size == 0:
        return r, none, w
    knots, rel = variance
    infl = max(float(rho.sum()), 1.0)
    r_typ = float(np.sqrt(setup.r_min * setup.r_max))
    a_typ = float(np.median(r.params[:, IA]))
    p0 = r.params[idx]
    dat, ins, u_, v_ = data[idx], inside[idx], pu[idx], pv[idx]
    e1, e2 = p0[:, IE1], p0[:, IE2]
    ang = 0.5 * np.arctan2(e2, e1) + 0.5 * np.pi     # long axis of Q = [[1+e1, e2], [e2, 1−e1]]
    axis = np.column_stack([np.cos(ang), np.sin(ang)])
    best = None
    for frac in (0.35, 0.6, 0.9):
        pa, pb = p0.copy(), p0.copy()
        for q, sgn in ((pa, 1.0), (pb, -1.0)):
            q[:, [IU, IV]] = p0[:, [IU, IV]] + sgn * frac * r_typ * axis
            q[:, IR] = r_typ
            q[:, IE1] = q[:, IE2] = 0.0
            q[:, IA] = a_typ
        for _ in range(2):      # weights of the current pair, then refit
            t = np.clip(1.0 - _blocked(pa, u_, v_, setup) - _blocked(pb, u_, v_, setup),
                        1e-6, 1.0)
            wts = ins / (np.interp(t, knots, rel)
                         * np.minimum(_taper(pa, u_, v_), _taper(pb, u_, v_)))
            pa, pb, cost, hinv = _fit_pair(pa, pb, dat, wts, u_, v_, setup, fixed, iterations)
        cost1 = np.einsum("nij,nij->n", wts, (dat - r.model[idx]) ** 2)
        gain = (cost1 - cost) / np.maximum(cost / np.maximum(r.npix[idx] - p0.shape[1] - 7, 1)
                                           * infl, 1e-300)
        cand = (pa, pb, cost, hinv, wts, gain)
        if best is None:
            best = cand
        else:
            better = np.nan_to_num(gain, nan=-np.inf) > np.nan_to_num(best[5], nan=-np.inf)
            best = tuple(np.where(better.reshape((-1,) + (1,) * (x.ndim - 1)), y, x)
                         for x, y in zip(best, cand, strict=True))
    pa, pb, cost, hinv, wts, gain = best
    # each bead of the pair must pass the detector's own SNR test (peak blocked fraction times
    # amplitude over the pixel noise)
    noise = np.sqrt(cost / np.maximum(r.npix[idx] - p0.shape[1] - 7, 1))
    snr_a = pa[:, IA] * _blocked(pa, u_, v_, setup).reshape(len(idx), -1).max(1) / noise
    snr_b = pb[:, IA] * _blocked(pb, u_, v_, setup).reshape(len(idx), -1).max(1) / noise
    ok = ((gain > _SPLIT_CHI2) & np.isfinite(gain) & (pa[:, IA] > 0) & (pb[:, IA] > 0)
          & (snr_a >= min_snr) & (snr_b >= min_snr)
          # closer than half a radius, two beads are not identifiable against one bead of
          # another size or shape (a cage marker larger than the radius bound splits in two)
          & (np.hypot(*(pa[:, [IU, IV]] - pb[:, [IU, IV]]).T) >= 0.5 * r_typ)
          & (np.abs(np.log(np.abs(pa[:, IA]) / a_typ)) < np.log(2.0))
          & (np.abs(np.log(np.abs(pb[:, IA]) / a_typ)) < np.log(2.0)))
    if not ok.any():
        return r, none, w
    k = idx[ok]
    pa, pb, cost, hinv, wts = pa[ok], pb[ok], cost[ok], hinv[ok], wts[ok]
    dat, u_, v_ = dat[ok], u_[ok], v_[ok]
    npix = r.npix[k]
    red = cost / np.maximum(npix - p0.shape[1] - 7, 1)
    cov = hinv * (red * infl)[:, None, None]
    ma = model_and_jacobian(pa, u_, v_, u_[:, setup.half], v_[:, setup.half], setup,
                            jac=False)[0]
    mb_bead = _bead_model(pb, u_, v_, setup)
    ma_bead = _bead_model(pa, u_, v_, setup)
    mb = ma - ma_bead + mb_bead                       # B with the shared background
    resid = dat - ma - mb_bead
    fields = {f: getattr(r, f).copy() for f in ("params", "cov_uv", "resid", "model", "chi2_red",
                                                "npix")}
    new = {"params": (pa, pb), "cov_uv": (cov[:, :2, :2], cov[:, 2:, 2:]),
           "resid": (resid, resid), "model": (ma, mb), "chi2_red": (red, red),
           "npix": (npix, npix)}
    for name, (xa, xb) in new.items():
        fields[name][k] = xa
        fields[name] = np.concatenate([fields[name], xb])
    w_all = w.copy()
    w_all[k] = wts
    w_all = np.concatenate([w_all, wts])
    return FitResult(**fields), k, w_all

def refine_candidates(work: np.ndarray, cuv: np.ndarray, crad: np.ndarray, cround: np.ndarray,
                      r_lo: float, r_hi: float, diam: np.ndarray, log_display: bool, opts: Any,
                      scale: float, cstep: float = 1.0) -> dict[str, np.ndarray]:
    """Model fits, tests and flags for the candidates ``cuv`` (M, 2) of a normalised image.

    ``work`` is the image scaled to [0, 1] with beads bright, ``scale`` the factor back to
    image units, ``cstep`` the candidates' position quantum (px). Returns the columns of
    :class:`rsa.detect.Beads2D`, sorted by decreasing score.
    """
    if len(cuv) == 0:
        return _empty()
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
        return _empty()
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
    w = inside / (np.interp(t, knots, rel) * _taper(p, pu, pv))
    rho, s_det = noise_correlation(work)
    r = fit(p, data, w, pu, pv, setup, iterations=max(4, opts.iterations // 2), rho=rho,
            init_linear=False, fixed=fx)
    # structure next to the bead (implant or bone edge): flagged from the plain fit, then such
    # beads are refitted with a straight blurred step in their background
    near_edge = _structure(r, inside, w, pu, pv, setup, opts)[0]
    r = _edge_refit(r, data, inside, w, pu, pv, setup, rho, near_edge, fx, opts.iterations)
    # a bead whose background needed the step is next to an edge
    near_edge |= r.params[:, IEA] != 0.0
    # two overlapping beads seen as one: misfit on the disc or a distorted shape, away from
    # structure (next to an edge the misfit may be the structure's, and a second bead is not
    # identifiable against it)
    _, chi2_disc, _ = _structure(r, inside, w, pu, pv, setup, opts)
    merged = ~near_edge & (distorted | (chi2_disc > opts.max_chi2) | (
        np.hypot(r.params[:, IE1], r.params[:, IE2]) > opts.max_ellipticity))
    r, parent, w = _split_merged(r, data, inside, w, pu, pv, setup, rho, merged, fx,
                                 opts.iterations, (knots, rel), opts.min_snr)
    if parent.size:
        n0 = len(cround)
        rows = np.concatenate([np.arange(n0), parent])
        pu, pv, inside, cround = pu[rows], pv[rows], inside[rows], cround[rows]
        near_edge, distorted = near_edge[rows], distorted[rows]
        t = 1.0 - _blocked(r.params, pu, pv, setup)
        split = np.zeros(len(rows), bool)
        split[parent] = True
        split[n0:] = True
        distorted = np.where(split, np.hypot(r.params[:, IE1], r.params[:, IE2])
                             > opts.max_ellipticity, distorted)
    p, cov = r.params, r.cov_uv
    uv = p[:, [IU, IV]].copy()
    if np.tanh(p[0, ILC]) > 0.5:
        # Detector blur acts on the quanta *after* the anatomy has attenuated them, i.e. on the
        # product I_bg(x)·(1 − B(x)); for a log-linear background I_bg ∝ exp(−a·x) this is the
        # bead blurred and shifted by σ_d²·a (exponential tilting of a Gaussian). In a log
        # display a = ∇(background)/gain; σ_d is the detector blur seen in the noise
        # correlation. Undo the shift.
        grad = p[:, [IBU, IBV]] / np.where(p[:, IA] != 0, p[:, IA], np.inf)[:, None]
        uv -= s_det ** 2 * grad
    noise = np.sqrt(r.chi2_red)   # background pixel noise (relative variance 1 there)
    _, chi2, chi2_ring = _structure(r, inside, w, pu, pv, setup, opts)
    rad = _radius(p)
    contrast = _contrast(r.model, p, pu, pv) * scale
    # SNR in the transmission domain (independent of the display): blocked fraction at the
    # peak times the amplitude (quanta of the background in a linear display, the display gain
    # per unit ln-attenuation in a log display), over the background pixel noise
    snr = p[:, IA] * (1.0 - t.reshape(len(p), -1).min(1)) / noise
    # local misfit around the rim beyond the noise (anatomy edges, neighbours) inflates the
    # uncertainty (Birge ratio of the ring around the bead relative to the typical bead)
    # and so does misfit on the bead's own disc (a merged or partly hidden bead): Birge ratio of
    # the disc relative to the window
    birge = np.maximum.reduce([np.ones(len(p)), chi2_ring / np.median(chi2_ring), chi2])
    sig = np.sqrt(np.clip(np.diagonal(cov, axis1=1, axis2=2), 0, None) * birge[:, None]
                  + opts.model_error_px ** 2)
    H, Wd = work.shape
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
    cols = (uv, rad, contrast, snr, sig, score, touching, near_edge, occluded, clipped)
    return {k: c[idx] for k, c in zip(_FIELDS, cols, strict=True)}
