"""Overlapping beads in :mod:`rsa.detect`: the neighbours' models and the joint refit.

Internal module (inputs validated by :func:`rsa.detect.detect_beads`). Each bead is fitted in
its own window with its neighbours' bead models subtracted (deblending). With the ellipticity
free, a bead whose disc overlaps another's absorbs in its shape what the neighbour's
subtracted model leaves, and the alternation settles with both centres pulled towards each
other (two 1.0 mm beads 1.6 radii apart: 0.86 px, 78× the Cramér–Rao bound); holding the shape
while alternating lets the pair oscillate instead. Beads of one image share one shape (the
focal spot and the detector blur, the same at every bead), so :func:`pair_refit` fits each
such bead last jointly with its neighbour, both with the shape of the beads without
neighbours (tests/test_detect_deblend.py, tests/test_detect_overlap.py).

It runs after every decision of the fitting stage and changes only the overlapping beads'
own rows: no image-wide statistic (pooled pixel variance, median χ²) is taken from its fits.
"""

from __future__ import annotations

import numpy as np

from rsa.detect_candidates import _close_pairs
from rsa.detect_refine import (
    FIT_FIELDS,
    IA,
    IE1,
    IE2,
    IEA,
    IU,
    IV,
    NPAR,
    FitResult,
    FitSetup,
    variance_inflation,
)
from rsa.detect_refits import (
    PAIR_BEAD,
    bead_model,
    fit_pair,
    mean_radius,
    pair_outputs,
    pair_weights,
)


def neighbour_models(p: np.ndarray, pu: np.ndarray, pv: np.ndarray, setup: FitSetup,
                     pairs: np.ndarray) -> np.ndarray:
    """Sum of bead models of neighbours j (no background) on the windows of beads i."""
    out = np.zeros((len(p), pu.shape[1], pv.shape[1]))
    if len(pairs) == 0:
        return out
    i, j = pairs[:, 0], pairs[:, 1]
    np.add.at(out, i, bead_model(p[j], pu[i], pv[i], setup))
    return out


def overlapping(p: np.ndarray, setup: FitSetup) -> np.ndarray:
    """Beads (N,) whose disc overlaps another's, as :func:`pair_refit` decides it (its pairs'
    eligibility aside)."""
    pairs = _close_pairs(p[:, [IU, IV]], 2.0 * setup.half + 1.0)
    out = np.zeros(len(p), bool)
    if len(pairs):
        lone = np.setdiff1d(np.flatnonzero(~_stepped(p)), pairs.ravel())
        out[pairs[overlap(p, pairs, lone)[0]].ravel()] = True
    return out


def _stepped(p: np.ndarray) -> np.ndarray:
    """Beads (N,) whose background has a step (edge layout, amplitude ≠ 0)."""
    return p[:, IEA] != 0.0 if p.shape[1] > NPAR else np.zeros(len(p), bool)


def overlap(p: np.ndarray, pairs: np.ndarray, lone: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which close ``pairs`` (K, 2) overlap (centres nearer than the sum of the radii), and
    their distances. A fitted radius can sit at its lower bound with the blur taking up the
    rest (the blur–radius trade-off): the typical radius of the ``lone`` beads (without
    neighbours or step) counts too."""
    rad = mean_radius(p)
    if lone.size:
        rad = np.maximum(rad, np.median(rad[lone]))
    i, j = pairs[:, 0], pairs[:, 1]
    gap = np.hypot(*(p[i][:, [IU, IV]] - p[j][:, [IU, IV]]).T)
    return gap < rad[i] + rad[j], gap


def pair_refit(r: FitResult, data0: np.ndarray, inside: np.ndarray, pu: np.ndarray,
               pv: np.ndarray, setup: FitSetup, variance: tuple[np.ndarray, np.ndarray],
               rho: np.ndarray, fixed: tuple[int, ...], eligible: np.ndarray,
               max_move: float, iterations: int
               ) -> tuple[np.ndarray, FitResult | None, np.ndarray]:
    """Refit each overlapping bead jointly with its neighbour, the image's typical shape held.

    Each bead whose disc overlaps another's is fitted in its own window as two beads sharing
    the window's background (:func:`rsa.detect_refits.fit_pair`): itself and the closest
    neighbour it overlaps, both with the ellipticity of the beads without neighbours; any
    further neighbours' models are subtracted. Fitted jointly, neither bead can take the
    other's misfit, and no alternation is needed (alternating, the pair's anti-symmetric motion
    need not settle: pair scene, seed 0, up to 2.7 px).

    Parameters
    ----------
    r : the final fit of all N beads (read only).
    data0 : (N, W, W) windows without any neighbour subtracted.
    inside, pu, pv : the windows' in-image mask and pixel coordinates.
    variance : ``(knots, rel)``, the pooled pixel variance against the modelled transmission.
    rho : the image's noise correlation (detector blur); its variance inflation scales the
        joint covariance, as for split beads.
    fixed : parameters the final fit holds; the ellipticity of both beads is held as well.
    eligible : (N,) bool, beads that may be refitted or be a partner (not rescued); those
        without neighbours and without an edge step give the typical shape. A bead with an
        edge step keeps it (free) in the joint fit. The two beads of a split
        (:func:`rsa.detect_refits.split_merged`, shape free) are refitted here as well.
    max_move : a refit is kept only when the bead's centre moves less than this (px), with
        finite parameters and a positive amplitude.
    iterations : Levenberg–Marquardt iterations of the joint fit.

    Returns
    -------
    rows : indices of the refitted beads (empty when none overlap, or fewer than three
        eligible beads without neighbours and without an edge step give the shape).
    fit : their fit (the joint model's residuals, bead A's model), or None.
    weights : (len(rows), W, W) the pixel weights of that fit.
    """
    p = r.params
    pairs = _close_pairs(p[:, [IU, IV]], 2.0 * setup.half + 1.0)
    none = np.zeros(0, np.intp), None, np.zeros((0,) + inside.shape[1:])
    stepped = _stepped(p)
    lone = np.setdiff1d(np.flatnonzero(eligible & ~stepped), pairs.ravel())
    if len(pairs) == 0 or lone.size < 3:
        return none
    i, j = pairs[:, 0], pairs[:, 1]
    hit, gap = overlap(p, pairs, lone)
    hit &= eligible[i] & eligible[j]
    if not hit.any():
        return none
    # each bead's closest overlapping neighbour is its partner
    cand = pairs[hit][np.argsort(gap[hit], kind="stable")]
    rows, first = np.unique(cand[:, 0], return_index=True)
    partner = cand[first, 1]
    shape = np.median(p[lone][:, [IE1, IE2]], axis=0)
    out = [_joint(r, data0, inside, pu, pv, setup, variance, rho, fixed, shape, pairs,
                  rows[m], partner[m], npar, max_move, iterations)
           for npar, m in ((NPAR, ~stepped[rows]), (p.shape[1], stepped[rows])) if m.any()]
    out = [o for o in out if o[0].size]
    if not out:
        return none
    rows = np.concatenate([o[0] for o in out])
    order = np.argsort(rows)
    fit_ = FitResult(**{f: np.concatenate([getattr(o[1], f) for o in out])[order]
                        for f in FIT_FIELDS})
    return rows[order], fit_, np.concatenate([o[2] for o in out])[order]


def _joint(r: FitResult, data0: np.ndarray, inside: np.ndarray, pu: np.ndarray, pv: np.ndarray,
           setup: FitSetup, variance: tuple[np.ndarray, np.ndarray], rho: np.ndarray,
           fixed: tuple[int, ...], shape: np.ndarray, pairs: np.ndarray, rows: np.ndarray,
           partner: np.ndarray, npar: int, max_move: float, iterations: int
           ) -> tuple[np.ndarray, FitResult | None, np.ndarray]:
    """:func:`pair_refit` for beads ``rows`` with their ``partner`` beads, bead A's first
    ``npar`` parameters free (with the edge step when ``npar`` > ``NPAR``)."""
    p = r.params
    # the rows' windows without their further neighbours (all but the partner)
    others = pairs[np.isin(pairs[:, 0], rows)]
    others = others[others[:, 1] != partner[np.searchsorted(rows, others[:, 0])]]
    data = data0[rows] - neighbour_models(p, pu, pv, setup, others)[rows]
    ins, u_, v_ = inside[rows], pu[rows], pv[rows]
    pa, pb = p[rows, :npar].copy(), p[partner, :NPAR].copy()
    pa[:, [IE1, IE2]] = shape
    pb[:, [IE1, IE2]] = shape
    knots, rel = variance
    w = pair_weights(pa, pb, ins, u_, v_, setup, lambda t: np.interp(t, knots, rel))
    held = fixed + (IE1, IE2, npar + PAIR_BEAD.index(IE1), npar + PAIR_BEAD.index(IE2))
    a, b, cost, hinv = fit_pair(pa, pb, data, w, u_, v_, setup, held, iterations)
    ok = (np.isfinite(a).all(1) & np.isfinite(b).all(1) & np.isfinite(cost) & (a[:, IA] > 0)
          & (np.hypot(*(a[:, [IU, IV]] - p[rows][:, [IU, IV]]).T) < max_move))
    if not ok.any():
        return rows[ok], None, w[ok]
    rows, a, b, cost, hinv, w = rows[ok], a[ok], b[ok], cost[ok], hinv[ok], w[ok]
    data, u_, v_ = data[ok], u_[ok], v_[ok]
    npix = (w > 0).sum(axis=(1, 2))
    red = cost / np.maximum(npix - npar - len(PAIR_BEAD), 1)
    cov, model, resid = pair_outputs(a, b, red, hinv, variance_inflation(rho), data, u_, v_,
                                     setup)
    full = p[rows].copy()
    full[:, :npar] = a
    out = FitResult(params=full, cov_uv=cov[:, :2, :2], resid=resid, model=model,
                    chi2_red=red, npix=npix)
    return rows, out, w
