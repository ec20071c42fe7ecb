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
5. tests (SNR, radius, drift, shape); candidates that fail them are refitted as beads half over a
   metal implant edge (typical shape, a blurred step in the background, pixel noise growing with
   the background level: :func:`rsa.detect_refits.edge_rescue`) and kept if that fit passes the
   SNR test with a typical amplitude (flagged occluded, uncertainty widened along the edge
   normal); a failed rescue that found a step and part of a bead starts once more a typical
   radius along the step's normal, the way it moved (next to a strong edge a bead's LoG peak
   can lie on the edge, beyond the rescue's box); a rescued bead's last fit, after step 6, holds
   the shape of the clean beads nearest to it (the image's typical bead is mostly a cage
   marker's, smaller than the patient's); removal of duplicates;
6. final weighted pass: pixel variance as a function of the modelled transmission (pooled,
   from the residuals), the sandwich covariance under the image's noise correlation (detector
   blur, from the noise itself), scaled per bead by its reduced χ² and the misfit around it,
   plus a model-error floor; correction of the shift that the detector blur causes on a
   background gradient (log display);
7. beads with structure next to them (flagged; blurrier and smaller than the image's typical
   bead; or screened by a cheap linear fit) are refitted with a blurred straight step in the
   background, then with its edge let curve, each kept where χ² drops by more than noise
   could; beads with misfit on their disc away from structure are tried as two overlapping
   beads (joint fit, same kind of test) — both in :mod:`rsa.detect_refits`; then each kept
   step (of a bead not split and not overlapping another) is fitted again from the straight
   edge line of least misfit across its window, where that is another line and the refit's
   misfit is lower (:func:`rsa.detect_refits.line_restart`: a step fitted to a screw's
   square-root outline has more than one minimum);
8. last, after every decision: each bead whose disc overlaps a neighbour's (split beads
   included) is refitted jointly with it, both with the image's typical shape
   (:func:`rsa.detect_overlap.pair_refit`; the alternating deblending of step 4 leaves such
   pairs pulled together, and the split's free-shape fit leaves 0.1–0.5 px along the pair's
   axis); only their own rows change, the image-wide statistics (pooled variance, median ring
   χ²) stay those of step 6;
9. quality flags.

Weights are symmetric about the current centre (functions of the bead model), so they cannot
bias the centre — except for the rescued beads of step 5, whose weights also follow the
background level across the implant edge.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from rsa.detect_candidates import _close_pairs
from rsa.detect_overlap import neighbour_models, overlapping, pair_refit
from rsa.detect_refine import (
    IA,
    IE1,
    IE2,
    IEA,
    IET,
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
    background,
    fit,
    make_setup,
    noise_correlation,
    transmission_variance,
)
from rsa.detect_refits import (
    background_gradient,
    blocked,
    edge_refit,
    edge_rescue,
    line_restart,
    mean_radius,
    peak_contrast,
    split_merged,
    structure,
    taper,
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


def _rescue(q: np.ndarray, centres: np.ndarray, work: np.ndarray, setup: FitSetup, fx, eps: float,
            log_display: bool, opts: Any, a_typ: float, box: float, *,
            windows: tuple[np.ndarray, ...] | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """Edge-rescue fits (:func:`rsa.detect_refits.edge_rescue`) started from ``q`` with the
    centres at ``centres`` (N, 2) int, in windows centred there (``windows``: data, weights,
    pu, pv as :func:`_windows` gives them, e.g. with the neighbours subtracted; cut from
    ``work`` when None), each centre held within ``box`` px of its start. Returns the
    parameters, SNR and acceptance (the detector's SNR test, an amplitude 0.5–2× the typical
    ``a_typ`` and a fitted step) and the windows."""
    windows = _windows(work, centres, setup.half) if windows is None else windows
    data, inside, pu, pv = windows
    q = q.copy()
    q[:, IU], q[:, IV] = centres[:, 0], centres[:, 1]
    e, _ = edge_rescue(q, data, inside, lambda x: _rel_variance(x, pu, pv, setup, eps), pu, pv,
                       setup, fx, opts.iterations, eps, log_display,
                       box=(centres.astype(float), box), covariance=False)
    pe = e.params
    snr = peak_contrast(e.model, pe, pu, pv) / np.sqrt(np.maximum(e.chi2_red, 1e-300))
    amp = pe[:, IA] / a_typ
    ok = ((snr >= opts.min_snr) & (amp >= 0.5) & (amp <= 2.0) & np.isfinite(pe).all(1)
          & (pe[:, IEA] != 0.0))
    return pe, snr, ok, windows


def _shifted_rescue(q: np.ndarray, centres: np.ndarray, *args) -> tuple[np.ndarray, ...]:
    """:func:`_rescue` from starts moved off the candidates (a separate name, so that a test
    can switch the second attempt off)."""
    return _rescue(q, centres, *args)


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


# accepted beads whose median shape is a half-hidden bead's typical one (_local_typical)
LOCAL_TYPICAL = 5
_FIELDS = ("uv_px", "radius_px", "contrast", "snr", "sigma_px", "score", "touching",
           "near_edge", "occluded", "clipped")


def _empty() -> dict[str, np.ndarray]:
    z = np.zeros(0)
    b = np.zeros(0, bool)
    return {"uv_px": np.zeros((0, 2)), "radius_px": z, "contrast": z, "snr": z,
            "sigma_px": np.zeros((0, 2)), "score": z, "touching": b, "near_edge": b,
            "occluded": b, "clipped": b, "turned_down_uv": np.zeros((0, 2)),
            "noise_blur_px": float("nan")}


def _local_typical(p: np.ndarray, at: np.ndarray, cols: tuple[int, ...],
                   k: int = LOCAL_TYPICAL) -> tuple[np.ndarray, ...]:
    """Median of the parameters ``cols`` over the ``k`` fits of ``p`` (accepted beads) nearest
    to each point ``at`` (M, 2) in the image: the shape a bead there should have.

    A bead's projected radius and blur scale with its magnification, and in an RSA image that
    ranges over ≈ 1.25× (cage markers near the detector or the tubes, the patient's beads in
    between), so the image-wide median is the cage's bead: on the bundled phantoms the patient's
    projected diameters (median 9.7 px uniplanar, 10.5 px biplanar) exceed the cage markers'
    median (8.2 px, 9.0 px) by 16–19 %. A half-hidden bead fitted with the cage's radius is placed
    too close to its visible rim: 0.36–0.73 px on the biplanar implant's tray
    (tests/test_detect_tray_edge_beads.py). Beads of one segment lie together in the image and
    at one depth, so the nearest accepted beads are mostly of the same magnification."""
    tree = cKDTree(p[:, [IU, IV]])
    _, idx = tree.query(at, k=min(k, len(p)))
    idx = idx.reshape(len(at), -1)
    return tuple(np.median(p[idx, c], axis=1) for c in cols)


def _duplicates(p: np.ndarray, rows: np.ndarray, score: np.ndarray, dist: float) -> np.ndarray:
    """Of ``rows`` whose fitted centres lie within ``dist`` of each other (two candidates that
    converged on one bead), the weaker of each pair by ``score`` (ties: the later row)."""
    pr = _close_pairs(p[rows][:, [IU, IV]], dist)
    if len(pr) == 0:
        return np.zeros(0, np.intp)
    a, b = rows[pr[:, 0]], rows[pr[:, 1]]
    return np.where(score[a] == score[b], np.maximum(a, b), np.where(score[a] < score[b], a, b))


def _rel_variance(p: np.ndarray, pu: np.ndarray, pv: np.ndarray, setup: FitSetup,
                  eps: float) -> np.ndarray:
    """Pixel variance relative to the background's, from the bead's blocked fraction B.

    Quantum noise: a pixel behind the bead receives (1 − B) of the background quanta, so its
    variance is ∝ (1 − B) in a linear display (c = 0) and ∝ 1/(1 − B) in a log display (c = 1);
    read-out noise adds a floor ``eps`` (relative to the background's quantum variance). The
    general form ``(1 − B)^(−2c) · ((1 − B) + eps)`` covers both (times the taper).
    """
    c = np.tanh(p[:, ILC])[:, None, None]
    t = np.clip(1.0 - blocked(p, pu, pv, setup), 1e-6, 1.0)
    return _rel_variance_t(t, c, eps) * taper(p, pu, pv)


def _rel_variance_t(t: np.ndarray, c: np.ndarray | float, eps: float) -> np.ndarray:
    """The relative pixel variance of :func:`_rel_variance` at transmission ``t`` (no taper)."""
    return t ** (-2.0 * c) * (t + eps) / (1.0 + eps)


def reweighted_fit(p: np.ndarray, data: np.ndarray, ins: np.ndarray, pu: np.ndarray,
                   pv: np.ndarray, setup: FitSetup, eps: float, rounds: int, iterations: int,
                   fixed: tuple[int, ...], covariance: bool = True, **kw: object) -> FitResult:
    """One-bead fits with the pixel weights of :func:`_rel_variance` renewed from each round's
    fit (``rounds`` rounds; the first starts from a linear fit unless ``init_linear=False``);
    the last round's centre covariance with ``covariance``."""
    r = None
    for k in range(rounds):
        w = ins / _rel_variance(p, pu, pv, setup, eps)
        r = fit(p, data, w, pu, pv, setup, iterations=iterations, fixed=fixed,
                covariance=covariance and k == rounds - 1, **kw)
        p = r.params
        kw["init_linear"] = False
    return r


def _blur_tilt(p: np.ndarray, pu: np.ndarray, pv: np.ndarray, setup: FitSetup, s_det: float,
               clean: np.ndarray) -> np.ndarray:
    """Shift (N, 2) of each fitted centre by the detector blur acting on the quanta *after*
    the background has attenuated them (log display; zero otherwise).

    The blur acts on the product I_bg(x)·(1 − B(x)); for a log-linear background
    I_bg ∝ exp(−a·x) this is the bead blurred and shifted by σ_d²·a (exponential tilting of a
    Gaussian), with σ_d the detector blur seen in the noise correlation. In a log display
    a = ∇(background)/gain, the background's gradient averaged over the bead (plane, curvature
    and any edge term: next to an edge it is not the plane's). The gain (display units per unit
    ln-attenuation) is one number of the image: the median amplitude of the ``clean`` beads
    (found, away from edges, not occluded). A bead's own amplitude is not: next to a strong
    edge a fit can trade radius for blur and end as a small, blurred disc of several times the
    amplitude (14× in a simulated scene: beads at the rim of the shadow of a cylinder twice as
    attenuating as a titanium screw, radius 2.3 px instead of 4.2), and its shift would come
    out that much too small. With fewer than three clean beads each bead's own amplitude
    stands in.
    """
    if np.tanh(p[0, ILC]) <= 0.5:
        return np.zeros((len(p), 2))
    amp = p[:, IA]
    if np.count_nonzero(clean & (amp > 0)) >= 3:
        gain = np.full(len(p), np.median(amp[clean & (amp > 0)]))
    else:
        gain = np.where(amp != 0, amp, np.inf)
    return s_det ** 2 * background_gradient(p, pu, pv, setup) / gain[:, None]


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
        # these fits only start later ones: no covariance
        return reweighted_fit(p, data, ins, pu_, pv_, setup, eps, rounds, iterations, fx,
                              covariance=False, **kw)

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
    # each candidate's fit is held within this box (px per axis) around the candidate
    cbox = max(1.0 + cstep, 0.25 * r_lo)
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
               box=(cuv.astype(float), cbox))
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
                      box=(cuv[odd].astype(float), cbox))
            better = odd[r2.chi2_red < chi2r[odd]]
            sel = r2.chi2_red < chi2r[odd]
            p[better], model[better], resid[better], chi2r[better] = (
                r2.params[sel], r2.model[sel], r2.resid[sel], r2.chi2_red[sel])
    # deblending: subtract the neighbours' bead models (windows overlap within ~2·half) and
    # refit the beads that have neighbours, alternately; touching beads separate this way
    data = data0
    strength = peak_contrast(model, p, pu, pv) / np.sqrt(np.maximum(chi2r, 1e-300))
    plaus = np.flatnonzero((p[:, IA] > 0) & (strength >= 0.5 * opts.min_snr))
    # two candidates that converged on one bead (e.g. the saddle candidate between two touching
    # beads) would each subtract the other's model of that bead and drive both negative: the
    # weaker takes no part (the duplicate test below removes it)
    plaus = np.setdiff1d(plaus, _duplicates(p, plaus, strength, 0.5 * r_lo))
    pairs = plaus[_close_pairs(p[plaus][:, [IU, IV]], 2.0 * setup.half + 1.0)]
    if len(pairs) and opts.deblend:
        inv = np.unique(pairs[:, 0])
        for _ in range(opts.deblend):
            data = data0 - neighbour_models(p, pu, pv, setup, pairs)
            r = irls(p[inv], data[inv], inside[inv], pu[inv], pv[inv], 1, 4,
                     init_linear=False, box=(cuv[inv].astype(float), max(2.0, 0.5 * r_lo)))
            moved = np.abs(r.params[:, :2] - p[inv, :2]).max()
            p = p.copy()
            p[inv] = r.params
            model[inv], resid[inv], chi2r[inv] = r.model, r.resid, r.chi2_red
            if moved < 1e-3:
                break
        data = data0 - neighbour_models(p, pu, pv, setup, pairs)
    snr = peak_contrast(model, p, pu, pv) / np.sqrt(np.maximum(chi2r, 1e-300))
    rad = mean_radius(p)
    drift = np.hypot(p[:, IU] - cuv[:, 0], p[:, IV] - cuv[:, 1])
    ecc = np.hypot(p[:, IE1], p[:, IE2])
    # a strongly elliptical fit is kept (and flagged occluded) only if the candidate was round
    distorted = ecc > opts.max_ellipticity
    good = ((snr >= opts.min_snr) & (rad >= 0.6 * r_lo) & (rad <= 1.25 * r_hi)
            & (~distorted | (cround >= 0.5)) & (drift <= np.maximum(1.0 + cstep, 0.6 * rad)))
    # a bead half over a metal implant edge fails these tests as a plain fit: refit the failed
    # candidates with the typical shape, the step and the noise behind the implant, and apply
    # the same SNR test and a typical amplitude (0.5–2×, as for a split bead) to that fit
    rescue = np.full((n, NPAR_EDGE), np.nan)
    # (the typical bead needs at least three accepted ones)
    fail = np.flatnonzero(~good) if good.sum() >= 3 else np.zeros(0, np.intp)
    if fail.size:
        # only where the background changes across the window by more than the detector's
        # "strong" fraction (edge_ratio) of a typical bead's contrast: a metal edge
        du = (pu[fail] - pu[fail, setup.half, None])[:, None, :]
        dv = (pv[fail] - pv[fail, setup.half, None])[:, :, None]
        bg = background(p[fail], du, dv)
        ins = inside[fail] > 0
        span = np.where(ins, bg, -np.inf).max(axis=(1, 2)) - np.where(ins, bg, np.inf).min(
            axis=(1, 2))
        c_typ = float(np.median(peak_contrast(model[good], p[good], pu[good], pv[good])))
        fail = fail[span > opts.edge_ratio * c_typ]
    if fail.size:
        q = p[fail].copy()
        q[:, IR], q[:, ILS] = np.median(p[good, IR]), np.median(p[good, ILS])
        q[:, IE1] = q[:, IE2] = 0.0
        a_typ = float(np.median(p[good, IA]))
        args = (work, setup, fx, eps, log_display, opts, a_typ, cbox)
        # from the candidates, in their windows (neighbours subtracted) ...
        pe, snr_e, ok, _ = _rescue(q, cuv[fail], *args,
                                   windows=(data[fail], inside[fail], pu[fail], pv[fail]))
        # ... then, for the failed fits that found a step and part of a bead (0.2–2× the
        # typical amplitude), once more a typical radius along the step's normal, the way the
        # fit moved, in a window centred there: next to a strong edge the LoG peak of a bead
        # can lie on the edge, a radius or more from the bead and beyond the rescue's box
        move = pe[:, [IU, IV]] - cuv[fail]
        normal = np.stack([np.cos(pe[:, IET]), np.sin(pe[:, IET])], 1)
        side = np.sign(np.sum(move * normal, axis=1))
        amp = pe[:, IA] / a_typ
        redo = (~ok & np.isfinite(pe).all(1) & (pe[:, IEA] != 0.0) & (side != 0)
                & (amp >= 0.2) & (amp <= 2.0))
        tries = [(fail[ok], pe[ok], snr_e[ok], None)]
        if redo.any():
            start = np.rint(cuv[fail[redo]] + (side[redo] * r_typ)[:, None]
                            * normal[redo]).astype(int)
            pe2, snr2, ok2, w2 = _shifted_rescue(q[redo], start, *args)
            tries.append((fail[redo][ok2], pe2[ok2], snr2[ok2], tuple(x[ok2] for x in w2)))
        best = np.zeros(n)
        for k, pk, sk, win in tries:
            better = sk > best[k]
            k, pk, sk = k[better], pk[better], sk[better]
            best[k] = sk
            if win is not None:   # the bead's windows are now centred at its start
                data0[k], inside[k], pu[k], pv[k] = (x[better] for x in win)
                data[k] = data0[k]
            good[k] = True
            rescue[k] = pk
            p[k], snr[k], distorted[k] = pk[:, :NPAR], sk, False
    # duplicates: two candidates converged on one bead -> keep the higher SNR
    good[_duplicates(p, np.flatnonzero(good), snr, 0.5 * r_lo)] = False
    # strong candidates the tests turned down, away from every accepted bead (e.g. two beads
    # overlapping by about a radius pull a one-bead fit off its candidate): reported by
    # position for the correspondence stage, which may split them on the other view's lines
    down = np.flatnonzero(~good & (snr >= opts.min_snr))
    if down.size and good.any():
        d, _ = cKDTree(p[good][:, [IU, IV]]).query(cuv[down].astype(float))
        down = down[d > r_lo]
    turned_down = cuv[down].astype(float)
    keep = np.flatnonzero(good)
    if keep.size == 0:
        return {**_empty(), "turned_down_uv": turned_down}
    p, data0, inside, pu, pv = p[keep], data0[keep], inside[keep], pu[keep], pv[keep]
    cround, resid, distorted, rescue = cround[keep], resid[keep], distorted[keep], rescue[keep]
    rescued = np.isfinite(rescue[:, 0])
    # neighbours among the accepted beads only (rejected candidates no longer subtract)
    pairs = _close_pairs(p[:, [IU, IV]], 2.0 * setup.half + 1.0)
    data = data0 - neighbour_models(p, pu, pv, setup, pairs) if len(pairs) else data0
    # final pass: the sandwich covariance of each centre under the image's noise correlation
    # (detector blur), scaled by the bead's own reduced χ²
    # data-driven variance(transmission) from the residuals, then the final weighted fit
    t = 1.0 - blocked(p, pu, pv, setup)
    knots, rel = transmission_variance(t, resid, inside, ~rescued)
    w = inside / (np.interp(t, knots, rel) * taper(p, pu, pv))
    rho, s_det = noise_correlation(work)
    r = fit(p, data, w, pu, pv, setup, iterations=max(4, opts.iterations // 2), rho=rho,
            init_linear=False, fixed=fx)
    # structure next to the bead (implant or bone edge): flagged from the plain fit, then such
    # beads are refitted with a blurred step (straight, then curved) in their background, each
    # centre kept within its window (a curved edge, e.g. a screw head, can pull a fit out of it)
    near_edge, chi2_disc, _ = structure(r, inside, w, pu, pv, setup, opts)
    clean = ~near_edge & ~rescued & (r.params[:, IA] > 0)
    typical = ((float(np.median(r.params[clean, ILS])),
                float(np.median(mean_radius(r.params[clean])))) if clean.sum() >= 3 else None)
    r = edge_refit(r, data, inside, w, pu, pv, setup, rho, near_edge, fx, opts.iterations,
                   rescued, box_px=float(setup.half), earlier=p, typical=typical)
    if rescued.any():
        # the rescued beads' own fit (step, noise behind the implant), with the covariance
        i = np.flatnonzero(rescued)
        pu_r, pv_r = pu[i], pv[i]

        def var_r(x: np.ndarray) -> np.ndarray:
            return np.interp(1.0 - blocked(x, pu_r, pv_r, setup), knots, rel) * taper(
                x, pu_r, pv_r)

        # with the shape of the clean beads around it (_local_typical; the image's typical shape
        # decided which candidates are rescued, and that decision stands), the centre held
        # within the rescue's box of the accepted fit
        q = rescue[i].copy()
        if clean.sum() >= 3:
            q[:, IR], q[:, ILS] = _local_typical(r.params[clean], q[:, [IU, IV]], (IR, ILS))
        e, w[i] = edge_rescue(q, data[i], inside[i], var_r, pu_r, pv_r, setup, fx,
                              4, eps, log_display, rho=rho, rounds=1,
                              box=(q[:, [IU, IV]], cbox))
        for name in ("params", "cov_uv", "model", "resid", "chi2_red"):
            getattr(r, name)[i] = getattr(e, name)
    # the transmission of each bead as now fitted (the final and edge fits change shapes)
    t = 1.0 - blocked(r.params, pu, pv, setup)
    # a bead whose background needed the step is next to an edge
    near_edge |= (r.params[:, IEA] != 0.0) | rescued
    # two overlapping beads seen as one: misfit on the disc or a distorted shape, away from
    # structure (next to an edge a second "bead" can absorb the edge model's own misfit and is
    # not identifiable against it), and elongated: two equal discs half a radius apart (the
    # closest pair split_merged accepts) have second moments in the ratio 1 + (1/2)² along
    # and across their axis, an ellipticity e = 0.11; half of that screens round fits out.
    # A bead next to structure is tried too when its fit is elongated to the limit and the
    # step found there is weak (below edge_ratio of the bead's contrast, the detector's own
    # "strong background change"): a weak step cannot stretch a bead, a second bead can (its
    # neighbour makes the ring misfit look like structure).
    # (The disc χ² of the plain fit holds: the edge refit changed only beads near an edge.)
    ecc = np.hypot(r.params[:, IE1], r.params[:, IE2])
    weak_step = np.abs(r.params[:, IEA]) < opts.edge_ratio * peak_contrast(
        r.model, r.params, pu, pv)
    stretched = (ecc > opts.max_ellipticity) & weak_step & ~rescued
    merged = (~near_edge | stretched) & (ecc > 0.055) & (
        distorted | (chi2_disc > opts.max_chi2) | (ecc > opts.max_ellipticity))
    r, parent, w = split_merged(r, data, inside, w, pu, pv, setup, rho, merged, fx,
                                 opts.iterations, (knots, rel), opts.min_snr, opts.max_chi2,
                                 ~rescued)
    if parent.size:
        n0 = len(cround)
        rows = np.concatenate([np.arange(n0), parent])
        pu, pv, inside, cround, data0 = pu[rows], pv[rows], inside[rows], cround[rows], data0[rows]
        near_edge, distorted, t = near_edge[rows], distorted[rows], t[rows]
        rescued = rescued[rows]   # never split: a rescued bead is next to an edge
        split = np.zeros(len(rows), bool)
        split[parent] = True
        split[n0:] = True
        t[split] = 1.0 - blocked(r.params[split], pu[split], pv[split], setup)
        distorted = np.where(split, np.hypot(r.params[:, IE1], r.params[:, IE2])
                             > opts.max_ellipticity, distorted)
        data = data[rows]
    else:
        split = np.zeros(len(r.params), bool)
    # each kept step, now that the splits are decided, also from the edge line of least misfit
    # across its window where that is another line (rsa.detect_refits.line_restart)
    # (not a bead whose disc overlaps another's: its step may be fitting the neighbour, and
    # the pair's joint fit below takes it)
    r = line_restart(r, data, w, pu, pv, setup, rho, fx, opts.iterations,
                       (r.params[:, IEA] != 0.0) & ~rescued & ~split
                       & ~overlapping(r.params, setup))
    _, chi2, chi2_ring = structure(r, inside, w, pu, pv, setup, opts)
    ring_typical = np.median(chi2_ring)
    if opts.deblend:
        # last, each overlapping bead jointly with its neighbour, the image's typical shape
        # held (rsa.detect_overlap); only their own rows change, every decision above stands
        joint, e, w_e = pair_refit(
            r, data0, inside, pu, pv, setup, (knots, rel), rho, fx,
            ~rescued, max(2.0, 0.5 * r_lo), opts.iterations)
        if joint.size:
            for name in ("params", "cov_uv", "model", "resid", "chi2_red"):
                getattr(r, name)[joint] = getattr(e, name)
            w[joint] = w_e
            t[joint] = 1.0 - blocked(e.params, pu[joint], pv[joint], setup)
            _, chi2[joint], chi2_ring[joint] = structure(e, inside[joint], w_e, pu[joint],
                                                         pv[joint], setup, opts)
    p, cov = r.params, r.cov_uv
    noise = np.sqrt(r.chi2_red)   # background pixel noise (relative variance 1 there)
    rad = mean_radius(p)
    contrast = peak_contrast(r.model, p, pu, pv) * scale
    # SNR in the transmission domain (independent of the display): blocked fraction at the
    # peak times the amplitude (quanta of the background in a linear display, the display gain
    # per unit ln-attenuation in a log display), over the background pixel noise
    snr = p[:, IA] * (1.0 - t.reshape(len(p), -1).min(1)) / noise
    # local misfit around the rim beyond the noise (anatomy edges, neighbours) inflates the
    # uncertainty (Birge ratio of the ring around the bead relative to the typical bead)
    # and so does misfit on the bead's own disc (a merged or partly hidden bead): Birge ratio of
    # the disc relative to the window
    birge = np.maximum.reduce([np.ones(len(p)), chi2_ring / ring_typical, chi2])
    sig = np.sqrt(np.clip(np.diagonal(cov, axis1=1, axis2=2), 0, None) * birge[:, None]
                  + opts.model_error_px ** 2)
    # a rescued bead's model leaves out how the implant edge is imaged: the detector blur (σ_d,
    # from the noise correlation) acts on the quanta after the implant has attenuated them, so
    # the half-hidden bead is shifted along the edge normal by up to about σ_d (σ_d ≈ 0.6 px;
    # measured 0.1–0.2 px on a 2.8 ln-attenuation plate, 0.02–0.08 px on the biplanar implant
    # phantom's tray): added there, a bound rather than a standard uncertainty. (It also covers
    # a bead at a corner of a screw's outline, which the straight step cannot follow: 0.30–0.45
    # px off, uniplanar spine phantom seed 0, Y01-NEU view B, L5-05, draws 0–2.)
    n_edge = np.stack([np.cos(p[:, IET]), np.sin(p[:, IET])], 1) * s_det
    sig = np.where(rescued[:, None], np.hypot(sig, n_edge), sig)
    H, Wd = work.shape
    # a rescued bead is half hidden by the implant edge it was found on
    occluded = (chi2 > opts.max_chi2) | distorted | rescued
    uv = p[:, [IU, IV]] - _blur_tilt(p, pu, pv, setup, s_det,
                                     (snr >= opts.min_snr) & ~near_edge & ~occluded)
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
    # only the final rows are kept; a fit with a negative amplitude has a negative SNR, whose
    # exponential would overflow (RuntimeWarning) in rows that are dropped anyway
    score = ((1.0 - np.exp(-np.maximum(snr, 0.0) / 10.0)) * np.clip(cround, 0, 1)
             / (1.0 + np.maximum(chi2 - 1.0, 0.0)))
    idx = np.flatnonzero(final)
    idx = idx[np.argsort(-score[idx], kind="stable")][: opts.max_beads]
    cols = (uv, rad, contrast, snr, sig, score, touching, near_edge, occluded, clipped)
    return {**{k: c[idx] for k, c in zip(_FIELDS, cols, strict=True)},
            "turned_down_uv": turned_down, "noise_blur_px": s_det}
