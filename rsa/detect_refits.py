"""Refits of beads that one bead on a quadratic background does not describe.

Internal module of :mod:`rsa.detect` (used by :mod:`rsa.detect_stages`): evidence of structure
next to a bead (:func:`structure`), the blurred-step background (straight or curved) for a bead
on an implant or bone edge (:func:`edge_refit`), the fit of a bead half over a metal implant
edge whose plain fit failed (:func:`edge_rescue`, with the noise of the background level:
:func:`level_variance`) and the joint two-bead fit for two overlapping beads found as one
(:func:`split_merged`), plus the window-level model helpers both modules share. The edge and
split refits are kept only where a χ² test (p = 0.001) says the data need their extra
parameters; a rescue fit must pass the detector's SNR test with a typical amplitude.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.ndimage import convolve1d
from scipy.special import ndtr

from rsa.detect_refine import (
    _QS,
    FIT_FIELDS,
    IA,
    IBU,
    IBUU,
    IBUV,
    IBV,
    IBVV,
    IE1,
    IE2,
    IEA,
    IED,
    IEK,
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
    _display,
    background,
    background_jacobian,
    edge_profile,
    fit,
    linear_init,
    linear_params,
    model_and_jacobian,
    variance_inflation,
)


def bead_model(p: np.ndarray, pu: np.ndarray, pv: np.ndarray, setup: FitSetup) -> np.ndarray:
    """The bead part of the model (no background) of beads ``p`` on windows pu, pv, (N, W, W)."""
    q = p.copy()
    q[:, linear_params(q.shape[1])] = 0.0
    q[:, IA] = p[:, IA]
    return model_and_jacobian(q, pu, pv, pu[:, 0], pv[:, 0], setup, jac=False)[0]


def peak_contrast(model: np.ndarray, p: np.ndarray, pu: np.ndarray, pv: np.ndarray) -> np.ndarray:
    """Peak of the fitted bead model above its background plane, (N,)."""
    du = (pu - pu[:, pu.shape[1] // 2, None])[:, None, :]
    dv = (pv - pv[:, pv.shape[1] // 2, None])[:, :, None]
    bg = background(p, du, dv)
    return (model - bg).reshape(len(p), -1).max(1)


def mean_radius(p: np.ndarray) -> np.ndarray:
    """Geometric-mean radius of the fitted ellipse."""
    e2 = p[:, IE1] ** 2 + p[:, IE2] ** 2
    return p[:, IR] / np.sqrt(np.sqrt(np.clip(1.0 - e2, 1e-6, None)))


def _unit_beads(p: np.ndarray) -> np.ndarray:
    """Beads ``p`` with amplitude 1, no background and a linear display: their model is the
    blurred blocked fraction B, their Jacobian ∂B/∂θ."""
    q = p.copy()
    q[:, linear_params(q.shape[1])] = 0.0
    q[:, IA] = 1.0
    q[:, ILC] = 0.0
    return q


def blocked(p: np.ndarray, pu: np.ndarray, pv: np.ndarray, setup: FitSetup) -> np.ndarray:
    """Blurred blocked fraction B (N, W, W) of each bead model (no display, no background)."""
    return model_and_jacobian(_unit_beads(p), pu, pv, pu[:, 0], pv[:, 0], setup, jac=False)[0]


def background_gradient(p: np.ndarray, pu: np.ndarray, pv: np.ndarray, setup: FitSetup
                        ) -> np.ndarray:
    """Gradient (N, 2) of each bead's fitted background (quadratic, and the edge term in the
    edge layout), averaged over the bead where its centre is measured: weighted by the squared
    gradient of its blurred blocked fraction (the rim)."""
    cu, cv = pu[:, setup.half], pv[:, setup.half]
    du = (pu - cu[:, None])[:, None, :]
    dv = (pv - cv[:, None])[:, :, None]
    gu = p[:, IBU, None, None] + _QS * (2.0 * p[:, IBUU, None, None] * du
                                        + p[:, IBUV, None, None] * dv)
    gv = p[:, IBV, None, None] + _QS * (p[:, IBUV, None, None] * du
                                        + 2.0 * p[:, IBVV, None, None] * dv)
    if p.shape[1] > NPAR:
        _, phi_w, _, (_, _, _, s_u, s_v) = edge_profile(p, du, dv)
        dF = p[:, IEA, None, None] * phi_w
        gu = gu + dF * s_u
        gv = gv + dF * s_v
    bv, bu = np.gradient(blocked(p, pu, pv, setup), axis=(1, 2))
    wt = bu * bu + bv * bv
    tot = np.maximum(wt.sum(axis=(1, 2)), 1e-300)
    return np.stack([(wt * gu).sum(axis=(1, 2)), (wt * gv).sum(axis=(1, 2))], 1) / tot[:, None]


def taper(p: np.ndarray, pu: np.ndarray, pv: np.ndarray, width: float = 3.0) -> np.ndarray:
    """Variance inflation of background pixels beyond the blurred rim, (N, W, W).

    Those pixels only fix the local background; far ones would let anatomy structure leak into
    the fit. Symmetric about the current centre, so it cannot bias it.
    """
    du = pu[:, None, :] - p[:, IU, None, None]
    dv = pv[:, :, None] - p[:, IV, None, None]
    edge = (mean_radius(p) + 2.5 * np.exp(p[:, ILS]))[:, None, None]
    beyond = np.clip(np.hypot(du, dv) - edge, 0.0, None)
    return np.exp(np.minimum(0.5 * (beyond / width) ** 2, 60.0))


def structure(r: FitResult, inside: np.ndarray, w: np.ndarray, pu: np.ndarray,
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
    disc = (rr <= mean_radius(p)[:, None, None] + 1.0) & (inside > 0)
    ring = (rr > mean_radius(p)[:, None, None] + 2.5 * np.exp(p[:, ILS, None, None])) & (inside > 0)
    z2 = r.resid ** 2 * w * taper(p, pu, pv)      # whitened, without the taper's down-weighting
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
    c_img = peak_contrast(r.model, p, pu, pv)
    near_edge = ((bg_span > opts.edge_ratio * np.abs(c_img)) | (anis > opts.edge_anisotropy)
                 | (chi2_ring > opts.max_chi2 * np.median(chi2_ring)))
    return near_edge, chi2_disc, chi2_ring


# χ²(4 dof) exceeded with probability 0.001: a straight edge is kept only when its four
# parameters explain that much more of the window than noise could
_EDGE_CHI2 = 18.47
# χ²(1 dof) exceeded with probability 0.001: the edge's curvature, likewise
_CURVE_CHI2 = 10.83
# χ²(5 dof) exceeded with probability 0.001: a curved edge (step and curvature) against none
_CURVED_EDGE_CHI2 = 20.52


def _edge_start(p: np.ndarray, model: np.ndarray, data: np.ndarray, inside: np.ndarray,
                pu: np.ndarray, pv: np.ndarray, setup: FitSetup) -> np.ndarray:
    """Start values (N, NPAR_EDGE) of the edge layout from a plain fit (``p``, ``model``).

    The edge direction is the dominant gradient direction (structure tensor) of the window with
    the fitted bead removed, outside the bead's blurred disc; its offset the gradient-weighted
    mean position along that direction. Amplitude and the rest are solved linearly by the fit.
    """
    cu, cv = pu[:, setup.half], pv[:, setup.half]
    du = (pu - cu[:, None])[:, None, :]
    dv = (pv - cv[:, None])[:, :, None]
    bg = data - (model - background(p, du, dv))
    gv, gu = np.gradient(bg, axis=(1, 2))
    rr = np.hypot(du - (p[:, IU] - cu)[:, None, None], dv - (p[:, IV] - cv)[:, None, None])
    edge = mean_radius(p) + 2.0 * np.exp(p[:, ILS])
    m = ((inside > 0) & (rr > edge[:, None, None])).astype(float)
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


def _step_start(p: np.ndarray, model: np.ndarray, data: np.ndarray, inside: np.ndarray,
                w: np.ndarray, pu: np.ndarray, pv: np.ndarray, setup: FitSetup) -> np.ndarray:
    """Start of a step fit from a plain fit (``p``, ``model``): :func:`_edge_start` with the
    linear parameters (amplitude, background, step) solved for the weights ``w``."""
    q = _edge_start(p, model, data, inside, pu, pv, setup)
    return linear_init(q, data, w, pu, pv, pu[:, setup.half], pv[:, setup.half], setup)


def edge_refit(r: FitResult, data: np.ndarray, inside: np.ndarray, w: np.ndarray,
               pu: np.ndarray, pv: np.ndarray, setup: FitSetup, rho: np.ndarray,
               flagged: np.ndarray, fixed: tuple[int, ...], iterations: int,
               skip: np.ndarray | None = None, box_px: float = np.inf,
               earlier: np.ndarray | None = None,
               typical: tuple[float, float] | None = None) -> FitResult:
    """Refit beads with a blurred step (straight, then curved) in their background where the
    data ask for it.

    An implant or cortical-bone edge under or next to a bead is not a quadratic; fitted as one it
    pulls the centre towards or away from the edge by up to pixels. The step model (Φ of the
    distance to a line, free amplitude, direction, position and width) is kept where it lowers the
    weighted misfit by more than noise could: χ²₄ at p = 0.001, in units of the refit's reduced χ²
    times the noise correlation's variance inflation. Candidates for the (costly) non-linear refit
    are the ``flagged`` beads, every bead whose misfit already drops by a quarter of that with the
    step at its start position and only the linear parameters solved (a cheap, liberal screen), and,
    with ``typical``, every plain fit that traded radius for blur (:func:`traded_radius_for_blur`);
    never the ``skip`` beads. Each centre stays within ``box_px`` (per axis) of the plain fit's:
    with a strong curved edge in the window (a screw head) the step fit can otherwise leave the
    window, the "bead" then modelling the edge (uniplanar spine phantom seed 1, M06 view A: L5-05's
    fit moved 45 px with amplitude 373 against the plain fit's 0.15, a false detection;
    tests/test_detect_screw_head.py). On another machine the same fits ran into that bound (15.7 px
    off, held at the box): a fit whose centre ends on its box has not converged on a bead and is not
    kept. (A bound on the distance moved cannot tell this from a bead whose plain fit modelled the
    edge: uniplanar implant seed 0, M03 view B, tibia-04's plain fit is 5 px off with amplitude
    0.02, its step fit 0.008 px.) The final plain fit is not bounded and can also leave its bead for
    the edge: where it ended far from ``earlier`` (the candidate pass's fit: centre more than a
    pixel away, or amplitude changed more than 2× either way), the step is also fitted from
    ``earlier`` and the fit of lower misfit kept (uniplanar implant seed 0, Y01-DOUBLE view B,
    tibia-04, 8 px from a saturated metal edge: the candidate pass found it 1.4 px off with
    amplitude 0.18, the final plain fit went 2.4 px off with amplitude 0.02 and the step fit from
    there 9 px off, modelling noise; the bead was lost). The edge is then let curve
    (:func:`rsa.detect_refine.edge_profile`, a circle): kept over the straight step where that
    lowers the misfit by more than noise could (χ²₁ at p = 0.001, same units), or over no step where
    the curved step passes the test that the straight one failed (χ²₅): a straight step fitted to a
    curved edge (a screw head, a cup rim) leaves misfit that pulls the bead. With ``typical`` = (log
    blur, radius) of the image's clean beads, a step fit that traded radius for blur is fitted again
    from the typical shape (:func:`_shape_restart`).

    Returns the fits of all beads in the edge layout (no step: amplitude 0).
    """
    n = len(r.params)
    p = np.zeros((n, NPAR_EDGE))
    p[:, :NPAR] = r.params
    cov, model, resid, chi2 = (x.copy() for x in (r.cov_uv, r.model, r.resid, r.chi2_red))
    infl = variance_inflation(rho)
    cost0 = r.chi2_red * np.maximum(r.npix - NPAR, 1)
    q = _step_start(r.params, r.model, data, inside, w, pu, pv, setup)
    cu, cv = pu[:, setup.half], pv[:, setup.half]
    m_lin = model_and_jacobian(q, pu, pv, cu, cv, setup, jac=False)[0]
    cost_lin = np.einsum("nij,nij->n", w, (data - m_lin) ** 2)
    screen = (cost0 - cost_lin) / (np.maximum(r.chi2_red, 1e-300) * infl) > 0.25 * _EDGE_CHI2
    if typical is not None:
        # a plain fit blurrier (half again) and smaller than the image's typical bead has taken
        # structure into its shape that the flags and the screen can miss: an edge through the
        # bead, seen on neither side of it (uniplanar spine phantom seed 0, REF view A, noise
        # draw 1: L4-07 unflagged, its linear screen at 0.15 of its threshold, blur 2.4× and
        # radius 0.79× the typical, 0.48 px off; its step fit 0.04 px:
        # tests/test_detect_screw_edge_beads.py)
        screen |= traded_radius_for_blur(r.params, typical)
    if skip is not None:
        screen &= ~skip
        flagged = flagged & ~skip
    idx = np.flatnonzero((flagged | screen) & (r.params[:, IA] > 0))
    if idx.size:
        start = r.params[idx][:, [IU, IV]]
        e = fit(q[idx], data[idx], w[idx], pu[idx], pv[idx], setup, iterations=iterations,
                rho=rho, fixed=fixed, box=(start, box_px))
        if earlier is not None:
            e, start = _second_start(e, start, r.params[idx], earlier[idx], data[idx],
                                     inside[idx], w[idx], pu[idx], pv[idx], setup, rho, fixed,
                                     iterations, box_px)
        if typical is not None:
            e = _shape_restart(e, start, typical, data[idx], w[idx], pu[idx], pv[idx], setup,
                               rho, fixed, iterations, box_px)
        box = (start, box_px)
        cost1 = e.chi2_red * np.maximum(e.npix - NPAR_EDGE, 1)
        gain = (cost0[idx] - cost1) / (np.maximum(e.chi2_red, 1e-300) * infl)
        ok = (gain > _EDGE_CHI2) & (e.params[:, IA] > 0) & np.isfinite(e.params).all(1)
        # the edge let curve, from the straight fit: kept over the straight step where it
        # explains more than noise could (χ²₁), over no step where the curved step does (χ²₅;
        # a straight step fitted to a strongly curved edge may not pass its own test)
        c, valid = _curved(e, data[idx], w[idx], pu[idx], pv[idx], setup, rho, fixed,
                           iterations, box)
        cost_c = c.chi2_red * np.maximum(c.npix - NPAR_EDGE, 1)
        unit = np.maximum(c.chi2_red, 1e-300) * infl
        curved = valid & np.where(ok, (cost1 - cost_c) / unit > _CURVE_CHI2,
                                  (cost0[idx] - cost_c) / unit > _CURVED_EDGE_CHI2)
        e = _rows(e, c, curved)
        ok |= curved
        # a fit whose centre ended on its box is held there, not converged on a bead: it was
        # leaving the window for the edge. Not kept
        ok &= _within_box(e.params, start, box_px)
        k = idx[ok]
        p[k], cov[k], model[k], resid[k], chi2[k] = (e.params[ok], e.cov_uv[ok], e.model[ok],
                                                     e.resid[ok], e.chi2_red[ok])
    return FitResult(params=p, cov_uv=cov, resid=resid, model=model, chi2_red=chi2,
                     npix=r.npix)


def _second_start(e: FitResult, start: np.ndarray, plain: np.ndarray, earlier: np.ndarray,
                  data: np.ndarray, inside: np.ndarray, w: np.ndarray, pu: np.ndarray,
                  pv: np.ndarray, setup: FitSetup, rho: np.ndarray, fixed: tuple[int, ...],
                  iterations: int, box_px: float) -> tuple[FitResult, np.ndarray]:
    """:func:`edge_refit`'s step fits ``e`` (from the ``plain`` fits, centres held near
    ``start``) with the step also fitted from ``earlier`` where the plain fit ended far from it
    (see there); per row the fit of lower misfit, and the centre its box is around."""
    ratio = plain[:, IA] / np.where(earlier[:, IA] > 0, earlier[:, IA], np.nan)
    far = (np.abs(plain[:, [IU, IV]] - earlier[:, [IU, IV]]).max(axis=1) > 1.0) | ~(
        (ratio >= 0.5) & (ratio <= 2.0))
    j = np.flatnonzero(far & (earlier[:, IA] > 0))
    if not j.size:
        return e, start
    m = model_and_jacobian(earlier[j], pu[j], pv[j], pu[j, setup.half], pv[j, setup.half], setup,
                           jac=False)[0]
    q = _step_start(earlier[j], m, data[j], inside[j], w[j], pu[j], pv[j], setup)
    e2 = fit(q, data[j], w[j], pu[j], pv[j], setup, iterations=iterations, rho=rho, fixed=fixed,
             box=(earlier[j][:, [IU, IV]], box_px))
    better = _lower_misfit(e, j, e2)
    start = start.copy()
    start[j[better]] = earlier[j[better]][:, [IU, IV]]
    return _scatter(e, j[better], e2, better), start


def traded_radius_for_blur(p: np.ndarray, typical: tuple[float, float],
                           radius_frac: float = 1.0) -> np.ndarray:
    """Fits ``p`` (N, ≥ NPAR) that traded radius for blur: blurred more than half again as much
    as the image's typical bead (``typical`` = (log blur, radius) of its clean beads) and
    smaller than ``radius_frac`` × its radius, with finite parameters.

    Beads of one image share the detector blur, and the geometric magnification scales a bead's
    radius and its focal-spot penumbra together (cage control markers near the tubes: both
    larger). A fit that is blurrier than that and not larger has taken structure next to the
    bead into its shape: an edge through the bead, or a second minimum of a step fit
    (:func:`_shape_restart`).
    """
    return ((p[:, ILS] > typical[0] + np.log(1.5)) & (mean_radius(p) < radius_frac * typical[1])
            & np.isfinite(p).all(1))


def _shape_restart(e: FitResult, start: np.ndarray, typical: tuple[float, float],
                   data: np.ndarray, w: np.ndarray, pu: np.ndarray, pv: np.ndarray,
                   setup: FitSetup, rho: np.ndarray, fixed: tuple[int, ...], iterations: int,
                   box_px: float) -> FitResult:
    """:func:`edge_refit`'s step fits ``e`` where they traded radius for blur, fitted again from
    the image's typical bead shape; per row the fit of lower misfit.

    Next to a strong edge the fit has a second minimum: a small disc (radius below 3/4 of the
    typical, ``typical`` = (log blur, radius) of the clean beads) blurred more than half again
    as much as the typical bead, at several times the amplitude. Such fits are started again
    at the typical radius and blur (round, linear parameters solved), with the same centre box
    around ``start``. In the titanium cylinder scene of tests/test_detect_shape_restart.py
    (seeds 0–9), 32 of 34 such fits were replaced, with 0.23–0.96 of the misfit and a radius
    of 3.7–5.5 px instead of 2.4–2.8 (true radii 4.2–4.6 px).
    """
    collapsed = traded_radius_for_blur(e.params, typical, 0.75)
    j = np.flatnonzero(collapsed)
    if not j.size:
        return e
    q = e.params[j].copy()
    q[:, IR], q[:, ILS], q[:, IE1], q[:, IE2] = typical[1], typical[0], 0.0, 0.0
    q = linear_init(q, data[j], w[j], pu[j], pv[j], pu[j, setup.half], pv[j, setup.half], setup)
    e2 = fit(q, data[j], w[j], pu[j], pv[j], setup, iterations=iterations, rho=rho,
             fixed=fixed, box=(start[j], box_px), init_linear=False)
    better = _lower_misfit(e, j, e2)
    return _scatter(e, j[better], e2, better)


def line_restart(r: FitResult, data: np.ndarray, w: np.ndarray, pu: np.ndarray,
                 pv: np.ndarray, setup: FitSetup, rho: np.ndarray, fixed: tuple[int, ...],
                 iterations: int, rows: np.ndarray) -> FitResult:
    """The kept step fits ``rows`` (mask) of ``r`` fitted again from the edge line of least
    misfit across the window, where that is another line; per row the fit of lower misfit.

    A blurred step fitted to the square-root rise of a convex body's outline (a screw shaft or
    head in projection) has more than one minimum: narrow at the outline's onset, or wide a
    few pixels further in, or along another stretch of a curved outline. Which one the fit
    finds from its start (the structure tensor's direction and the gradient-weighted mean
    position, :func:`_edge_start`) is decided by the noise, and they pull the centre
    differently: uniplanar spine phantom seed 0, exam M06, view A, L4-07 (an outline 2.5 px
    from its centre) ended at offset ≈ 8 px in 3 of 8 noise draws (v error +0.10 to
    +0.15 px) and at ≈ 1 px in the others (−0.03 px), a spread of 0.08 px against a
    Cramér–Rao bound of 0.010 px, and the ≈ 1 px minimum has the lower misfit in every draw
    (tests/test_detect_screw_edge_beads.py). Here the misfit is profiled over straight lines on a
    grid across the window (12 directions, offsets 1 px apart), the bead's shape and the
    step's width held and the linear parameters solved in closed form; where the least lies on
    another line (direction 15° or more apart, or offset more than 2 px) with less misfit than
    the grid's line nearest the fit's, the step is fitted again from there (curvature free if
    the fit's was), its centre kept within the window's half width of the fit's. Only fits
    whose step was kept are tried: elsewhere a free line finds a second bead or noise to fit,
    and the step test would then pass more often (on two overlapping beads found as one it
    stops their split: tests/test_detect_deblend.py).
    """
    k = np.flatnonzero(rows)
    if not k.size:
        return r
    p = r.params[k]
    n = k.size
    th = np.arange(12) * (np.pi / 12)
    off = np.arange(1 - setup.half, setup.half, dtype=float)
    T, D = (x.ravel() for x in np.meshgrid(th, off, indexing="ij"))
    # in chunks of rows: the grid's step images are (rows, lines, pixels)
    cost = np.concatenate([_line_costs(p[c], data[k[c]], w[k[c]], pu[k[c]], pv[k[c]], setup,
                                       T, D) for c in np.array_split(np.arange(n), -(-n // 16))])
    at = np.arange(n)
    best = np.argmin(cost, axis=1)
    # the grid line nearest the fit's: θ + π is the same line with the offset's sign flipped
    turns = np.rint(p[:, IET] / (np.pi / 12)).astype(int)
    ti = turns % 12
    d0 = np.where((turns // 12) % 2 == 1, -p[:, IED], p[:, IED])
    here = ti * off.size + np.argmin(np.abs(off[None, :] - d0[:, None]), axis=1)
    dth = np.abs(np.mod(T[best] - th[ti] + 0.5 * np.pi, np.pi) - 0.5 * np.pi)
    other = (dth > np.radians(14.9)) | (np.abs(D[best] - D[here]) > 2.0)
    i = np.flatnonzero(other & (cost[at, best] < cost[at, here]))
    if not i.size:
        return r
    start = p[i].copy()
    start[:, IET], start[:, IED], start[:, IEK] = T[best[i]], D[best[i]], 0.0
    j = k[i]
    start = linear_init(start, data[j], w[j], pu[j], pv[j], pu[j, setup.half],
                        pv[j, setup.half], setup)
    box = (p[i][:, [IU, IV]], float(setup.half))
    curved = p[i, IEK] != 0.0
    out = r
    for sel, bend in ((~curved, False), (curved, True)):
        if not sel.any():
            continue
        e = fit(start[sel], data[j[sel]], w[j[sel]], pu[j[sel]], pv[j[sel]], setup,
                iterations=iterations, rho=rho, fixed=fixed, curved=bend,
                box=(box[0][sel], box[1]), init_linear=False)
        better = _lower_misfit(out, j[sel], e) & _within_box(e.params, box[0][sel], box[1])
        out = _scatter(out, j[sel][better], e, better)
    return out


def _line_costs(p: np.ndarray, data: np.ndarray, w: np.ndarray, pu: np.ndarray,
                pv: np.ndarray, setup: FitSetup, T: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Weighted misfit (N, G) of each bead ``p`` (shape held) with a straight step of its own
    width along each line (direction ``T``, offset ``D`` from the window centre), the linear
    parameters (amplitude, quadratic background, step) solved in closed form."""
    n = len(p)
    y = data.reshape(n, -1)
    wt = w.reshape(n, -1)
    cu, cv = pu[:, setup.half], pv[:, setup.half]
    q = p.copy()
    q[:, linear_params(q.shape[1])] = 0.0
    q[:, IA] = 1.0
    h = model_and_jacobian(q, pu, pv, cu, cv, setup, jac=False)[0]
    du = np.broadcast_to((pu - cu[:, None])[:, None, :], h.shape)
    dv = np.broadcast_to((pv - cv[:, None])[:, :, None], h.shape)
    B0 = np.stack([h, np.ones(h.shape), du, dv, du * du * _QS, du * dv * _QS, dv * dv * _QS],
                  axis=1).reshape(n, 7, -1)
    dist = (np.cos(T)[None, :, None] * du.reshape(n, 1, -1)
            + np.sin(T)[None, :, None] * dv.reshape(n, 1, -1) - D[None, :, None])
    E = ndtr(dist / np.exp(p[:, IEW])[:, None, None])               # (n, G, P)
    Bw = B0 * wt[:, None, :]
    Ew = E * wt[:, None, :]
    g = T.size
    # normal equations of [B0, E_g] per line g, bordered by the step's column
    M = np.empty((n, g, 8, 8))
    M[:, :, :7, :7] = (Bw @ np.swapaxes(B0, 1, 2))[:, None]
    M[:, :, :7, 7] = M[:, :, 7, :7] = np.einsum("nkp,ngp->ngk", Bw, E)
    M[:, :, 7, 7] = (Ew * E).sum(-1)
    M += 1e-9 * np.eye(8) * np.maximum(np.diagonal(M, axis1=2, axis2=3).max(-1),
                                       1e-300)[..., None, None]
    rhs = np.concatenate([np.broadcast_to((Bw @ y[:, :, None])[:, None, :, 0], (n, g, 7)),
                          (Ew * y[:, None, :]).sum(-1)[..., None]], -1)
    return (wt * y * y).sum(-1)[:, None] - (rhs * np.linalg.solve(M, rhs[..., None])[..., 0]
                                            ).sum(-1)


def _within_box(params: np.ndarray, start: np.ndarray, box_px: float) -> np.ndarray:
    """Fits whose centre did not end on its box (``box_px`` per axis around ``start``): one
    that did was held there, leaving the window for an edge, not converged on a bead."""
    return np.abs(params[:, [IU, IV]] - start).max(axis=1) < box_px - 0.01


def _scatter(a: FitResult, rows: np.ndarray, b: FitResult, take: np.ndarray) -> FitResult:
    """A copy of ``a`` with its rows ``rows`` replaced by ``b``'s rows ``take``."""
    out = {f: getattr(a, f).copy() for f in FIT_FIELDS}
    for f in FIT_FIELDS:
        out[f][rows] = getattr(b, f)[take]
    return FitResult(**out)


def _curved(e: FitResult, data: np.ndarray, w: np.ndarray, pu: np.ndarray, pv: np.ndarray,
            setup: FitSetup, rho: np.ndarray | None, fixed: tuple[int, ...], iterations: int,
            box: tuple[np.ndarray, float] | None) -> tuple[FitResult, np.ndarray]:
    """Fits ``e`` (edge layout) refitted with the edge's curvature free (same weights ``w``):
    the refit and the rows where it is a valid fit (finite, positive amplitude)."""
    c = fit(e.params, data, w, pu, pv, setup, iterations=iterations, rho=rho, fixed=fixed,
            box=box, init_linear=False, curved=True)
    return c, _valid(c)


def _valid(r: FitResult) -> np.ndarray:
    """Rows of ``r`` that are a bead's fit: finite, with a positive amplitude."""
    return (r.params[:, IA] > 0) & np.isfinite(r.params).all(1)


def _lower_misfit(e: FitResult, rows: np.ndarray, e2: FitResult) -> np.ndarray:
    """Where the refit ``e2`` of ``e``'s rows ``rows`` is valid and fits better."""
    return (e2.chi2_red < e.chi2_red[rows]) & _valid(e2)


def _rows(a: FitResult, b: FitResult, take: np.ndarray) -> FitResult:
    """``a`` with the rows ``take`` from ``b``."""
    return FitResult(**{f: np.where(take.reshape((-1,) + (1,) * (getattr(a, f).ndim - 1)),
                                     getattr(b, f), getattr(a, f))
                        for f in FIT_FIELDS})


# shape parameters a rescued bead keeps from the image's typical bead
RESCUE_FIXED = (IR, IE1, IE2, ILS)


def level_variance(p: np.ndarray, pu: np.ndarray, pv: np.ndarray, setup: FitSetup,
                   eps: float) -> np.ndarray:
    """Relative pixel variance from the modelled background level (log display), (N, W, W).

    In a log display a background level ``A·x`` above that at the bead centre (``A``, the bead
    amplitude, is the display gain per unit ln-attenuation) means that the pixel receives
    ``T = exp(−x)`` of the quanta there, and its variance is ``(T + eps)/(T²(1 + eps))`` times
    the centre's (quantum and read-out noise, as for the bead's own transmission). The level is
    the whole background (quadratic and step): an implant's edge is a step with a ramp. Behind a
    metal implant (``x`` of 5–10) this is 10²–10⁴: those pixels fix nothing.
    """
    cu, cv = pu[:, setup.half], pv[:, setup.half]
    du = (pu - cu[:, None])[:, None, :]
    dv = (pv - cv[:, None])[:, :, None]
    amp = np.where(p[:, IA] > 0, p[:, IA], np.inf)[:, None, None]
    at_c = background(p, (p[:, IU] - cu)[:, None, None], (p[:, IV] - cv)[:, None, None])
    x = np.clip((background(p, du, dv) - at_c) / amp, -30.0, 30.0)
    t = np.exp(-x)
    return (t + eps) / (t * t * (1.0 + eps))


def edge_rescue(p0: np.ndarray, data: np.ndarray, inside: np.ndarray,
                bead_var: Callable[[np.ndarray], np.ndarray],
                pu: np.ndarray, pv: np.ndarray, setup: FitSetup, fixed: tuple[int, ...],
                iterations: int, eps: float, log_display: bool, *,
                box: tuple[np.ndarray, float] | None = None, rho: np.ndarray | None = None,
                rounds: int = 2, covariance: bool = True) -> tuple[FitResult, np.ndarray]:
    """Fits of beads half over a metal implant edge: typical shape, step, noise of the levels.

    Half over the edge of a metal implant, a bead's plain fit is pulled onto the edge: drifted,
    elongated and misfitted, it fails the detector's tests although half the bead is plain to
    see. Two things make such a window unlike a bead's: the step, and the noise behind the
    implant, which in a log display is ``exp(x)`` times the bead side's (``x`` the implant's
    ln-attenuation, 5–10 for a stem). This fit models both: the edge layout (step of
    :func:`edge_refit`) and pixel variances ``bead_var(p) ×`` :func:`level_variance` of the
    fitted background (log display; ``rounds`` rounds, as an IRLS). With half the disc hidden,
    radius, blur and ellipticity trade off against the amplitude and collapse onto a small
    bright ellipse, so they are held at the image's typical bead (:data:`RESCUE_FIXED`, set in
    ``p0``; a radius free within the range of the image's beads trades off against the
    amplitude instead, and does not move the centre). ``p0`` is in the plain layout (the step
    then starts from the window's dominant gradient, :func:`_edge_start`) or the edge layout
    (a previous rescue fit, refitted).

    Returns the fit (its centre covariance only with ``covariance``) and the weights of its
    last round. The weights depend on the background, not on the bead alone, so they are not
    symmetric about the centre; and the model adds the step to the bead in the display, while
    the detector blur acts on the quanta after the implant has attenuated them. A bias along
    the edge normal remains (0.1–0.2 px on a titanium plate of 2.8 ln-attenuation:
    tests/test_detect_edge.py; 0.02–0.08 px on the biplanar implant phantom's tray, held at the
    patient beads' shape: tests/test_detect_tray_edge_beads.py); the caller flags these beads
    and widens their uncertainty.
    """
    cu, cv = pu[:, setup.half], pv[:, setup.half]
    fx = tuple(fixed) + RESCUE_FIXED
    if p0.shape[1] == NPAR:
        w = inside / bead_var(p0)
        p = linear_init(p0, data, w, pu, pv, cu, cv, setup)
        model = model_and_jacobian(p, pu, pv, cu, cv, setup, jac=False)[0]
        p = _edge_start(p, model, data, inside, pu, pv, setup)
        init = True
    else:
        p, init = p0, False
    r = None
    for k in range(rounds):
        w = inside / bead_var(p[:, :NPAR])
        if log_display:
            w = w / level_variance(p, pu, pv, setup, eps)
        r = fit(p, data, w, pu, pv, setup, iterations=iterations, fixed=fx, box=box, rho=rho,
                init_linear=init, covariance=covariance and k == rounds - 1)
        p, init, iterations = r.params, False, max(4, iterations // 2)
    return r, w


PAIR_BEAD = (IU, IV, IR, IE1, IE2, ILS, IA)   # parameters of the second bead of a split pair


def pair_weights(qa: np.ndarray, qb: np.ndarray, inside: np.ndarray, pu: np.ndarray,
                 pv: np.ndarray, setup: FitSetup,
                 variance: Callable[[np.ndarray], np.ndarray],
                 detector_blur: float | None = None) -> np.ndarray:
    """Pixel weights (N, W, W) of two beads ``qa``, ``qb`` sharing a window: the relative
    variance ``variance(t)`` at the transmission t both leave, inflated beyond the rim of
    either (the smaller of their tapers). t is that of the joint model of :func:`_pair_model`
    with ``detector_blur``, else 1 − B_a − B_b."""
    if detector_blur is None:
        t = 1.0 - blocked(qa, pu, pv, setup) - blocked(qb, pu, pv, setup)
    else:
        t = _joint_transmission(qa, qb, pu, pv, setup, detector_blur, False)[0]
    t = np.clip(t, 1e-6, 1.0)
    return inside / (variance(t) * np.minimum(taper(qa, pu, pv), taper(qb, pu, pv)))


def _pixel_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of σ ``sigma`` px over the last two (pixel) axes of ``x``; the window's
    edge values continue beyond it."""
    if sigma <= 0.0:
        return x
    half = int(np.ceil(3.0 * sigma))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    k /= k.sum()
    return convolve1d(convolve1d(x, k, axis=-1, mode="nearest"), k, axis=-2, mode="nearest")


def _focal(p: np.ndarray, detector_blur: float) -> tuple[np.ndarray, np.ndarray]:
    """Beads ``p`` as :func:`blocked` models them, with the blur before the detector only:
    σ_f² = σ² − σ_d² (σ_f at least 0.1 σ); and ∂ log σ_f / ∂ log σ, (N,)."""
    q = _unit_beads(p)
    s2 = np.exp(2.0 * p[:, ILS])
    f2 = np.maximum(s2 - detector_blur ** 2, 0.01 * s2)
    q[:, ILS] = 0.5 * np.log(f2)
    return q, np.where(s2 - detector_blur ** 2 > 0.01 * s2, s2 / f2, 0.0)


def _joint_transmission(pa: np.ndarray, pb: np.ndarray, pu: np.ndarray, pv: np.ndarray,
                        setup: FitSetup, detector_blur: float, jac: bool
                        ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Transmission D (N, W, W) of two beads in the joint model of :func:`_pair_model`, and
    with ``jac`` its derivatives in the bead parameters of A and of B, (N, NPAR, W, W) each
    (zero but for the geometric ones)."""
    cu, cv = pu[:, setup.half], pv[:, setup.half]
    (qa, ca), (qb, cb) = _focal(pa, detector_blur), _focal(pb, detector_blur)
    Ba, Ja = model_and_jacobian(qa, pu, pv, cu, cv, setup, jac=jac)
    Bb, Jb = model_and_jacobian(qb, pu, pv, cu, cv, setup, jac=jac)
    D = _pixel_blur((1.0 - Ba) * (1.0 - Bb), detector_blur)
    if not jac:
        return D, None, None
    out = []
    geometric = [IU, IV, IR, IE1, IE2, ILS, ILK]      # the other rows are zero
    for J, other, c in ((Ja, Bb, ca), (Jb, Ba, cb)):
        dg = -(1.0 - other)[:, None] * J[:, geometric]
        dg[:, geometric.index(ILS)] *= c[:, None, None]
        dT = np.zeros(J.shape)
        dT[:, geometric] = _pixel_blur(dg, detector_blur)
        out.append(dT)
    return D, out[0], out[1]


def _pair_model(pa: np.ndarray, pb: np.ndarray, pu: np.ndarray, pv: np.ndarray,
                setup: FitSetup, jac: bool, detector_blur: float | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Model of bead A with its background plus bead B, and the Jacobian in [all of A's
    parameters, B's bead parameters :data:`PAIR_BEAD`], (N, P + 7, W, W).

    By default each bead is blurred and shown through its own display with its own amplitude,
    and the two are added: in a log display the product of the beads' transmissions blurred
    each on its own. With ``detector_blur`` = σ_d (px) the model is the joint one: each bead's
    transmission blurred by what acts before the detector only (the focal spot, at the bead's
    own magnification: σ_f² = σ² − σ_d²), their product blurred by the detector (σ_d, on the
    quanta after both beads attenuated them), shown once through A's display with A's
    amplitude, which stands for both (B's amplitude column is zero). The detector blur on the
    product is what keeps the common core of two overlapping beads from being as deep as the
    sum of both; the additive model makes it too deep, and two beads 0.57 radii apart (spine
    phantom seed 1, REF view A) fit it only at about half their amplitude, as one bead shared
    out between them would (tests/test_detect_pair_model.py compares both with the simulator).
    """
    cu, cv = pu[:, setup.half], pv[:, setup.half]
    if detector_blur is None:
        ma, ja = model_and_jacobian(pa, pu, pv, cu, cv, setup, jac=jac)
        q = pb.copy()
        q[:, linear_params(q.shape[1])] = 0.0
        q[:, IA] = pb[:, IA]
        mb, jb = model_and_jacobian(q, pu, pv, cu, cv, setup, jac=jac)
        if not jac:
            return ma + mb, None
        return ma + mb, np.concatenate([ja, jb[:, list(PAIR_BEAD)]], axis=1)
    D, dDa, dDb = _joint_transmission(pa, pb, pu, pv, setup, detector_blur, jac)
    A = pa[:, IA, None, None]
    h, dh, dht = _display(1.0 - D, pa[:, ILC])
    du = (pu - cu[:, None])[:, None, :]
    dv = (pv - cv[:, None])[:, :, None]
    model = A * h + background(pa, du, dv)
    if not jac:
        return model, None
    npa = pa.shape[1]
    J = np.zeros((len(pa), npa + len(PAIR_BEAD), *model.shape[1:]))
    J[:, :NPAR] = -(A * dh)[:, None] * dDa
    J[:, npa:] = -(A * dh)[:, None] * dDb[:, list(PAIR_BEAD)]
    J[:, ILC] = A * dht
    J[:, IA] = h
    background_jacobian(pa, du, dv, edge_profile(pa, du, dv) if npa > NPAR else None, J)
    return model, J


def fit_pair(pa: np.ndarray, pb: np.ndarray, data: np.ndarray, wts: np.ndarray,
             pu: np.ndarray, pv: np.ndarray, setup: FitSetup, fixed: tuple[int, ...],
             iterations: int, lines: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
             detector_blur: float | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Levenberg–Marquardt fit of two beads sharing one window and background (batched).

    With ``detector_blur`` the joint model of :func:`_pair_model` is fitted, one amplitude for
    both beads (B's is held, and returned equal to A's).

    ``lines`` = (normals (N, 2, 2), offsets (N, 2), weights (N, 2)) adds, for bead A and B, the
    penalty ``weight · (offset − normal·centre)²``: each centre observed on a line (e.g. its
    epipolar line from the other view) with standard uncertainty ``weight^(−½)`` across it, in
    the units of the pixel cost (``wts`` relative to the pixel variance: a weight 1/σ² holds the
    line far tighter than σ, as :mod:`rsa.detect_lines` uses it).

    Returns both parameter sets, the weighted cost (pixels plus penalties) and the (N, 4, 4)
    inverse normal matrix of the two centres (uA, vA, uB, vB), unscaled.
    """
    npa = pa.shape[1]
    n, k = len(pa), npa + len(PAIR_BEAD)
    free = np.ones(k, bool)
    free[list(fixed)] = False
    joint = detector_blur is not None
    if joint:
        free[npa + PAIR_BEAD.index(IA)] = False
    if npa > NPAR:
        free[IEK] = False                                 # an edge's curvature stays as found
    cols = np.array([[IU, IV], [npa, npa + 1]])          # centre columns of A and B in theta

    def model(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m, J = _pair_model(a, b, pu, pv, setup, True, detector_blur)
        J[:, ~free] = 0.0
        return m, J

    def penalty(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cost, gradient (N, k) and normal matrix (N, k, k) of the line penalties."""
        g = np.zeros((n, k))
        H = np.zeros((n, k, k))
        if lines is None:
            return np.zeros(n), g, H
        nrm, off, lw = lines
        c = theta[:, cols]                                # (N, 2 beads, 2)
        res = off - np.einsum("nbi,nbi->nb", nrm, c)      # (N, 2)
        for b in range(2):
            ci = cols[b]
            g[:, ci] += (lw[:, b] * res[:, b])[:, None] * nrm[:, b]
            H[:, ci[:, None], ci[None, :]] += lw[:, b, None, None] * np.einsum(
                "ni,nj->nij", nrm[:, b], nrm[:, b])
        return np.sum(lw * res * res, axis=1), g, H

    def split(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = _clip(theta[:, :npa].copy(), setup)
        b = theta[:, :npa].copy()
        b[:, list(PAIR_BEAD)] = theta[:, npa:]
        return a, _clip(b, setup)

    theta = np.concatenate([pa, pb[:, list(PAIR_BEAD)]], axis=1)
    m, J = model(*split(theta))
    r = data - m
    pc, pg, pH = penalty(theta)
    cost = np.einsum("nij,nij->n", wts, r * r) + pc
    lam = np.full(n, 1e-3)
    eye = np.eye(k)
    sw = wts.reshape(n, 1, -1)
    for _ in range(iterations):
        Jf = J.reshape(n, k, -1).astype(np.float64)
        H = (Jf * sw) @ np.swapaxes(Jf, 1, 2) + pH * free[:, None] * free[None, :]
        g = ((Jf * sw) @ r.reshape(n, -1, 1))[..., 0] + pg * free
        d = np.diagonal(H, axis1=1, axis2=2)
        Hd = H + (lam[:, None] * d + 1e-12 * d.max(1, keepdims=True) + 1e-300
                  + ~free)[:, :, None] * eye
        step = np.linalg.solve(Hd, g[..., None])[..., 0]
        a, b = split(theta + step)
        mt, Jt = model(a, b)
        rt = data - mt
        tt = np.concatenate([a, b[:, list(PAIR_BEAD)]], axis=1)
        pct, pgt, pHt = penalty(tt)
        ct = np.einsum("nij,nij->n", wts, rt * rt) + pct
        ok = ct <= cost
        theta[ok] = tt[ok]
        J[ok], r[ok], cost[ok] = Jt[ok], rt[ok], ct[ok]
        pg[ok], pH[ok] = pgt[ok], pHt[ok]
        lam = np.where(ok, np.maximum(lam * 0.3, 1e-7), lam * 10.0)
    Jf = J.reshape(n, k, -1).astype(np.float64)
    H = (Jf * sw) @ np.swapaxes(Jf, 1, 2) + pH * free[:, None] * free[None, :]
    H += 1e-9 * eye * np.maximum(np.diagonal(H, axis1=1, axis2=2).max(1), 1e-300)[:, None, None]
    Hinv = np.linalg.pinv(H, hermitian=True)
    c = [IU, IV, npa, npa + 1]           # centres of A and B
    a, b = split(theta)
    if joint:
        b[:, IA] = a[:, IA]
    return a, b, cost, Hinv[:, c][:, :, c]


def pair_outputs(pa: np.ndarray, pb: np.ndarray, red: np.ndarray, hinv: np.ndarray,
                 infl: float, data: np.ndarray, pu: np.ndarray, pv: np.ndarray,
                 setup: FitSetup) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a joint two-bead fit (:func:`fit_pair`) reports for its beads: the (N, 4, 4)
    covariance of both centres (the inverse normal matrix scaled by the reduced χ² ``red`` and
    the noise correlation's variance inflation), bead A's model with the shared background, and
    the residuals of the pair model."""
    cu, cv = pu[:, setup.half], pv[:, setup.half]
    ma = model_and_jacobian(pa, pu, pv, cu, cv, setup, jac=False)[0]
    return hinv * (red * infl)[:, None, None], ma, data - ma - bead_model(pb, pu, pv, setup)


# χ²(7 dof) exceeded with probability 0.001: a second bead (centre, radius, shape, amplitude)
_SPLIT_CHI2 = 24.32


def window_noise(data: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Noise level of each window from its data alone, (N,), in arbitrary but common units.

    Robust variance (MAD²) of the 4-neighbour Laplacian over the window's pixels: the Laplacian
    removes the smooth background and most of a bead, the median ignores edges. Ratios of a
    fit's reduced χ² to this compare misfit between windows whose noise differs (in a log
    display it grows with the attenuation behind the bead).
    """
    lap = (data[:, :-2, 1:-1] + data[:, 2:, 1:-1] + data[:, 1:-1, :-2] + data[:, 1:-1, 2:]
           - 4.0 * data[:, 1:-1, 1:-1])
    ok = (inside[:, :-2, 1:-1] > 0) & (inside[:, 2:, 1:-1] > 0) & (inside[:, 1:-1, :-2] > 0) & (
        inside[:, 1:-1, 2:] > 0) & (inside[:, 1:-1, 1:-1] > 0)
    x = np.where(ok, lap, np.nan).reshape(len(data), -1)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # a window with no pixel: NaN
        mad = np.nanmedian(np.abs(x - np.nanmedian(x, axis=1, keepdims=True)), axis=1)
    return np.nan_to_num((1.4826 * mad) ** 2, nan=np.inf)


def split_merged(r: FitResult, data: np.ndarray, inside: np.ndarray, w: np.ndarray,
                 pu: np.ndarray, pv: np.ndarray, setup: FitSetup, rho: np.ndarray,
                 sel: np.ndarray, fixed: tuple[int, ...], iterations: int,
                 variance: tuple[np.ndarray, np.ndarray], min_snr: float, max_chi2: float,
                 typical: np.ndarray | None = None) -> tuple[FitResult, np.ndarray, np.ndarray]:
    """Two overlapping beads found as one candidate: split where two beads fit much better.

    Beads whose centres lie within about a radius of each other leave one candidate; one bead
    fitted to both sits between them (pixels off) with an elongated shape and misfit on its
    disc. For the beads ``sel`` two beads sharing the window's background are fitted jointly
    (:func:`fit_pair`), started on the long axis of the fitted ellipse at several separations.
    The pair is kept when the misfit drops by more than noise could (χ²₇ at p = 0.001, in units
    of the pair's reduced χ² times the noise correlation's variance inflation) and both
    amplitudes are those of a bead in this image (within 2× of the median: in a log display the
    amplitude is the display gain, the same for every bead), each passes the detector's SNR
    test, and the pair's reduced χ² is within ``max_chi2`` of the image's median bead fit
    (misfitted structure, e.g. a screw tip, also gains from a second "bead" but stays
    misfitted), each reduced χ² taken relative to its own window's noise level
    (:func:`window_noise`: the noise differs across the image, and a pair behind dense anatomy
    compared in absolute terms would fail by its noise, not its misfit); medians over the
    ``typical`` beads (default all). The pixel weights are those of the
    pair (transmission of both beads, taper around either). The centres' covariance is the
    joint one, scaled by the reduced χ² and the noise correlation's variance inflation.
    This fit decides the split; the centres reported are those of the joint refit with the
    image's typical shape held that comes last (:func:`rsa.detect_overlap.pair_refit`).

    Returns the fits with the first bead of each split pair in place of the merged fit and the
    second ones appended, the parent row of every appended bead, and the weights of all rows.
    """
    idx = np.flatnonzero(sel & (r.params[:, IA] > 0))
    none = np.zeros(0, np.intp)
    if idx.size == 0:
        return r, none, w
    knots, rel = variance
    infl = variance_inflation(rho)
    r_typ = float(np.sqrt(setup.r_min * setup.r_max))
    typ = np.ones(len(r.params), bool) if typical is None or not typical.any() else typical
    a_typ = float(np.median(r.params[typ, IA]))
    p0 = r.params[idx]
    dat, ins, u_, v_ = data[idx], inside[idx], pu[idx], pv[idx]
    e1, e2 = p0[:, IE1], p0[:, IE2]
    ang = 0.5 * np.arctan2(e2, e1) + 0.5 * np.pi     # long axis of Q = [[1+e1, e2], [e2, 1−e1]]
    axis = np.column_stack([np.cos(ang), np.sin(ang)])

    def weights(qa: np.ndarray, qb: np.ndarray) -> np.ndarray:
        return pair_weights(qa, qb, ins, u_, v_, setup, lambda t: np.interp(t, knots, rel))

    # short fits from two separations, the better one refitted with its own pair weights
    best = None
    for frac in (0.4, 0.8):
        pa, pb = p0.copy(), p0.copy()
        for q, sgn in ((pa, 1.0), (pb, -1.0)):
            q[:, [IU, IV]] = p0[:, [IU, IV]] + sgn * frac * r_typ * axis
            q[:, IR] = r_typ
            q[:, IE1] = q[:, IE2] = 0.0
            q[:, IA] = a_typ
        pa, pb, cost, _ = fit_pair(pa, pb, dat, weights(pa, pb), u_, v_, setup, fixed,
                                   max(4, iterations // 2))
        if best is None:
            best = (pa, pb, cost)
        else:
            better = (np.nan_to_num(cost, nan=np.inf) < best[2])[:, None]
            best = (np.where(better, pa, best[0]), np.where(better, pb, best[1]),
                    np.where(better[:, 0], cost, best[2]))
    wts = weights(best[0], best[1])
    pa, pb, cost, hinv = fit_pair(best[0], best[1], dat, wts, u_, v_, setup, fixed, iterations)
    cost1 = np.einsum("nij,nij->n", wts, (dat - r.model[idx]) ** 2)
    red = cost / np.maximum(r.npix[idx] - p0.shape[1] - 7, 1)      # pair's reduced χ²
    gain = (cost1 - cost) / np.maximum(red * infl, 1e-300)
    # each bead of the pair must pass the detector's own SNR test (peak blocked fraction times
    # amplitude over the pixel noise)
    noise = np.sqrt(red)
    # window noise of the pairs and of the typical beads; a window without any (MAD 0: an
    # exactly smooth, e.g. noise-free synthetic, image) takes the least seen in any of them,
    # and with none anywhere the misfits compare as they are (not as 0/0)
    n_pair, n_typ = window_noise(dat, ins), window_noise(data[typ], inside[typ])
    seen = np.concatenate([n_pair, n_typ])
    seen = seen[np.isfinite(seen) & (seen > 0)]
    floor = seen.min() if seen.size else 1.0
    n_pair, n_typ = np.maximum(n_pair, floor), np.maximum(n_typ, floor)
    snr_a = pa[:, IA] * blocked(pa, u_, v_, setup).reshape(len(idx), -1).max(1) / noise
    snr_b = pb[:, IA] * blocked(pb, u_, v_, setup).reshape(len(idx), -1).max(1) / noise
    ok = ((gain > _SPLIT_CHI2) & np.isfinite(gain)
          & (snr_a >= min_snr) & (snr_b >= min_snr)
          # closer than half a radius, two beads are not identifiable against one bead of
          # another size or shape (a cage marker larger than the radius bound splits in two)
          & (np.hypot(*(pa[:, [IU, IV]] - pb[:, [IU, IV]]).T) >= 0.5 * r_typ)
          # and the pair must explain its window as well as a typical bead fit explains its
          # own (structure such as a screw tip also drops χ² when split, but stays misfitted)
          & (red / n_pair <= max_chi2 * float(np.median(r.chi2_red[typ] / n_typ)))
          & (pa[:, IA] > 0.5 * a_typ) & (pa[:, IA] < 2.0 * a_typ)
          & (pb[:, IA] > 0.5 * a_typ) & (pb[:, IA] < 2.0 * a_typ))
    if not ok.any():
        return r, none, w
    k = idx[ok]
    pa, pb, red, hinv, wts = pa[ok], pb[ok], red[ok], hinv[ok], wts[ok]
    dat, u_, v_ = dat[ok], u_[ok], v_[ok]
    npix = r.npix[k]
    cov, ma, resid = pair_outputs(pa, pb, red, hinv, infl, dat, u_, v_, setup)
    mb = model_and_jacobian(pb, u_, v_, u_[:, setup.half], v_[:, setup.half], setup,
                            jac=False)[0]                                # shared background
    fields = {f: getattr(r, f).copy() for f in FIT_FIELDS}
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
