"""Two beads seen as one in a view, separated with their epipolar lines from the other view.

Two beads whose shadows overlap in one view by more than about half a radius leave a single
detection there that a one-bead model explains nearly as well as two (a slightly larger or
elongated bead); the other view shows both. The correspondence stage (:mod:`rsa.correspond`,
:mod:`rsa.epipolar`) finds such places from the geometry. This module fits the place's window
with two beads sharing its background, each centre held to its epipolar line with the line's
uncertainty (a penalty in the joint fit, :func:`rsa.detect_refits.fit_pair`). The pair is imaged
jointly (:func:`rsa.detect_refits._pair_model` with the detector blur σ_d that the image's
noise correlation shows): each bead's transmission blurred by the focal spot, their product by
the detector, one amplitude for both. Adding two one-bead models instead makes the common core
of heavily overlapping beads as deep as the sum of both, and such pairs then fit worse than one
bead (uniplanar spine phantom seed 1, REF view A: L5-04 and L5-07, 0.57 radii apart; the joint
model leaves about 1/16 of the additive one's residual sum of squares on their noise-free
render, both with the beads' own one-bead fits).
Their shape and blur are the image's typical ones, their radii free, the amplitude shared.

The pair is kept when

* the amplitude is that of a bead in this image, 0.5–2× the typical amplitude (a single bead
  shared out between two lines gives about half). As in
  :func:`rsa.detect_refits.split_merged` this relies on a log display, where the amplitude is
  the display gain, the same for every bead; in a linear display it also scales with the local
  background, and a split far from the typical beads' background may be refused. In a log
  display a pair not kept is fitted once more with the amplitude held at the typical one
  (free, it trades off against the radii);
* it explains the window better than one bead of the image's shape and blur (a one-bead fit
  with the typical ellipticity and blur held, as the pair's are; radius, amplitude and
  background free), by more than χ²₂ at p = 0.001 (:data:`_CHI2_2`): on their lines the two
  beads have about two more free parameters than the one (the second bead's place along its
  line and its radius). At least as well (gain ≥ 0) was not enough next to anatomy: of the
  14 splits kept on the uniplanar spine phantom, seeds 6–9, noise draws 0–1 (seeds the
  precision benchmark does not use), 9 put both halves on one true bead, 0.1–2.0 px off it
  on either side, the second line coming from another detection of the other view; 7 of
  them gained 0–4 and are refused now, the other two (31, 130) lie at
  :data:`MIN_SEPARATION`. The true splits gained 477 and more (the anatomy-free scene of
  tests/test_detect_lines.py: 498 and more, single beads −22 to −67). With its ellipticity
  and blur free, one bead takes the
  elongated, blurred shape of two, which the pair cannot: seed 1's L5-04 and L5-07 then fit
  better as one bead than as two (by 44.7 units of χ²) and were refused; against one bead of
  the image's shape and blur the pair gains 869;
* each bead passes the detector's SNR test (``min_snr``, as in
  :func:`rsa.detect_refits.split_merged`): two "beads" of typical amplitude fitted into the
  noise behind a metal implant gain over one bead there, at an SNR of 1–2;
* both centres sit on their lines within 3 σ;
* they are at least :data:`MIN_SEPARATION` typical radii apart, and each is at most
  :data:`MAX_OFFSET` typical radii from the detection split;
* where both beads are detections already (``detected``: touching beads the detector
  separated, whose pairing is unsound), the lines agree with the image: freed of them, the
  pair's fit of the window gains no more than χ²₂ at p = 0.001 (:data:`_CHI2_2`, in the
  gain's units). A line can come from a detection off its bead: uniplanar spine phantom seed 1,
  noise draw 5, REF-DOUBLE: L5-04 is hidden behind a screw in view B and found there 1.2 px
  off; the split of view A's two detections put L5-04 1.2 px onto that line and L5-07 0.15 px
  off (the detector's joint fit: 0.03 and 0.01 px), a freed-of-the-lines gain of 121. Refused,
  the detections stand. Not tested for a single detection split in two: there the image alone
  cannot place two heavily overlapping beads, and the pair model's own error (below) makes
  even true lines cost more than χ²₂ (tests/test_detect_lines.py scene, seeds 0, 1, 3: 10 of
  18 true splits).

The lines act as constraints, not as observations with their σ: each penalty, 1/σ² times the
squared distance, is added to a pixel cost in units of the pixel variance (the normalised
image's; reduced χ² times variance inflation 3·10⁻⁴–1·10⁻³ on the phantom's splits), so the
line of σ 0.43 px above held like one of σ 0.007 px. Held at their stated σ instead (scaled by
each window's pixel variance), splits near structure went wrong more often: uniplanar spine
seeds 0–5, noise draws 0–1, 2D RMS error of the used beads 0.106 → 0.129 px, bead views off by
more than 0.5 px 23 → 38 — the image term then absorbs the pair model's error near screws,
which the tight lines held off.

The centres' covariance is that of the joint fit (line penalties included), scaled by the pair's
reduced χ² and the noise correlation's variance inflation, plus ``model_error_px`` and the pair
model's own systematic error (:data:`PAIR_MODEL_ERROR`) in quadrature. It contains the other
view's information across each line, so the caller should not read the crossing-line error of
the resulting pairs as independent evidence.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from rsa.detect import Beads2D, DetectOptions, _validate
from rsa.detect_refine import (
    IA,
    IB0,
    IE1,
    IE2,
    ILC,
    ILK,
    ILS,
    IR,
    IU,
    IV,
    NPAR,
    blur_correlation,
    make_setup,
    model_and_jacobian,
    noise_blur,
    variance_inflation,
)
from rsa.detect_refits import blocked, fit_pair, pair_weights
from rsa.detect_stages import _rel_variance_t, _windows, reweighted_fit
from rsa.errors import InputError

#: Clean beads fitted for the image's typical radius, blur and amplitude.
N_TYPICAL = 8
#: Systematic error of a split centre, per axis, as a fraction of the typical radius (the pair
#: model holds shape and blur at the typical bead's). Without anatomy it is small: 0.05–0.09 px
#: RMS per axis at 0.4–1.6 radii apart with radii 3.5–4.8 px (tests/test_detect_lines.py scene,
#: 6 seeds), 0.24 px at 0.2 radii — closer than :data:`MIN_SEPARATION` a split is not kept. On
#: bone, next to screws and rods, it is larger, mostly along the lines. Measured on the split
#: beads of the uniplanar spine phantom that lie on two true beads, seeds 6–15 (seeds the
#: precision benchmark does not use; every exam, both views, noise draws 0–3 for seeds 6–9 and
#: 0–1 for 10–15): 40 split beads of 20 splits in 9 places, 0.041 typical radii RMS per axis
#: (0.16 px at radius 3.98 px; largest 0.49 px; σ of the fit's noise alone 0.02–0.1 px);
#: rounded up here. Before the χ²₂ gain test this was 0.12, from 16 split beads of seeds 6–9
#: that were 0.47 px RMS off: most of those splits put one bead in two places, which the test
#: now refuses (module doc).
PAIR_MODEL_ERROR = 0.05
#: χ²(2 dof) exceeded with probability 0.001: how much better the pair on its lines must fit
#: the window than one bead, and how much better it may fit without its two lines than on them
_CHI2_2 = 13.82
#: Smallest separation of the two centres, in typical radii, at which a split is kept.
MIN_SEPARATION = 0.3
#: Largest distance of either centre from the detection split, in typical radii: two beads
#: seen as one lie up to about two radii from it (the split pairs of tests/test_detect_lines.py:
#: up to 1.95). Farther, a centre is set by its line's penalty, not by the window's pixels
#: (uniplanar spine phantom seed 1, REF view A: a screw-head detection "split" into two centres
#: 20 px, 5 radii, away).
MAX_OFFSET = 3.0


@dataclass(frozen=True)
class LineSplit:
    """Result of :func:`split_on_lines` for K detections.

    Attributes
    ----------
    uv_px : (K, 2, 2) ndarray
        Centres of the two beads, in the order of the lines given.
    sigma_px : (K, 2, 2) ndarray
        Their standard uncertainties along u and v.
    ok : (K,) ndarray of bool
        The two-bead fit was accepted (module doc).
    amplitude : (K, 2) ndarray
        Fitted amplitude relative to the image's typical bead (shared: both columns equal).
    gain : (K,) ndarray
        Decrease of the window's χ² from the one-bead fit to the pair, in units of the
        pair's noise (reduced χ² times the noise correlation's variance inflation).
    """

    uv_px: np.ndarray
    sigma_px: np.ndarray
    ok: np.ndarray
    amplitude: np.ndarray
    gain: np.ndarray


def _typical(work, beads: Beads2D, setup, opts, log_display: bool) -> np.ndarray | None:
    """Median parameters of the image's best clean beads (one-bead fits), or None."""
    clean = np.flatnonzero(~np.asarray(beads.flags))
    if clean.size < 3:
        return None
    pick = clean[np.argsort(-np.asarray(beads.score)[clean], kind="stable")][:N_TYPICAL]
    p = _start(beads.uv_px[pick], beads.radius_px[pick], opts, setup, log_display)
    r = _fit_one(work, p, setup, opts)
    ok = (r.params[:, IA] > 0) & np.isfinite(r.params).all(1)
    if ok.sum() < 3:
        return None
    return np.median(r.params[ok], axis=0)


def _start(uv, radius, opts, setup, log_display: bool) -> np.ndarray:
    p = np.zeros((len(uv), NPAR))
    p[:, IU], p[:, IV] = uv[:, 0], uv[:, 1]
    p[:, IR] = radius
    p[:, ILK] = np.log(opts.optical_depth)
    p[:, ILC] = np.arctanh(np.tanh(setup.t_lim)) if log_display else 0.0
    return p


def _fit_one(work, p, setup, opts, rounds: int = 2, fixed=(ILC, ILK)):
    """Plain one-bead fit (weighting rounds), windows on the rounded start centres; no
    covariance (the parameters are what the split uses)."""
    data, inside, pu, pv = _windows(work, np.rint(p[:, [IU, IV]]).astype(int), setup.half)
    return reweighted_fit(p, data, inside, pu, pv, setup, opts.read_noise_fraction, rounds,
                          opts.iterations, fixed, covariance=False)


def split_on_lines(image: ArrayLike, beads: Beads2D, centres: ArrayLike, points: ArrayLike,
                   normals: ArrayLike, line_sigma_px: ArrayLike, *,
                   pixel_spacing_mm: ArrayLike, bead_diameters_mm: ArrayLike = (0.8, 1.0),
                   options: DetectOptions | None = None,
                   detected: ArrayLike | None = None) -> LineSplit:
    """Fit the image around ``centres`` as two beads on two given lines (module doc).

    Parameters
    ----------
    image : (rows, cols) array_like
        The radiograph ``beads`` were detected in (same polarity convention).
    beads : Beads2D
        Its detections (:func:`rsa.detect.detect_beads`): the image's typical bead is taken from
        them.
    centres : (K, 2) array_like
        Where to fit (px): a detection, or a candidate the detector turned down.
    points, normals : (K, 2, 2) array_like
        For each detection, a point on each of the two lines and the lines' unit normals (px).
    line_sigma_px : (K, 2) array_like
        Standard uncertainty of each line across itself (px).
    pixel_spacing_mm, bead_diameters_mm, options
        As given to :func:`rsa.detect.detect_beads`.
    detected : (K,) array_like of bool, optional
        Whether both beads of a candidate are detections already (touching beads the detector
        separated): such a split must also agree with the image freed of the lines (module
        doc). Default: none.

    Returns
    -------
    LineSplit

    Raises
    ------
    InputError
        Arrays of the wrong shape or non-finite centres.
    """
    opts = options if options is not None else DetectOptions()
    cen = np.asarray(centres, float).reshape(-1, 2)
    K = len(cen)
    pts = np.asarray(points, float)
    nrm = np.asarray(normals, float)
    lsig = np.asarray(line_sigma_px, float)
    if pts.shape != (K, 2, 2) or nrm.shape != (K, 2, 2) or lsig.shape != (K, 2):
        raise InputError(f"split_on_lines: expected points and normals of shape ({K}, 2, 2) and "
                         f"line_sigma_px ({K}, 2) for {K} centres, got {pts.shape}, "
                         f"{nrm.shape}, {lsig.shape}.")
    if not np.isfinite(cen).all():
        raise InputError("split_on_lines: centres must be finite.")
    both = np.zeros(K, bool) if detected is None else np.asarray(detected, bool)
    if both.shape != (K,):
        raise InputError(f"split_on_lines: expected `detected` of shape ({K},) for {K} centres, "
                         f"got {both.shape}.")
    empty = LineSplit(np.full((K, 2, 2), np.nan), np.full((K, 2, 2), np.nan),
                      np.zeros(K, bool), np.full((K, 2), np.nan), np.full(K, np.nan))
    if K == 0:
        return empty
    work, spacing, diam, _ = _validate(image, pixel_spacing_mm, bead_diameters_mm)
    if beads.polarity == "dark":
        work = np.float32(1.0) - work
    r_lo = float(diam.min() / 2 * opts.magnification[0] / spacing)
    r_hi = float(diam.max() / 2 * opts.magnification[1] / spacing)
    setup = make_setup(r_lo, r_hi, sub=opts.subsample)
    typ = _typical(work, beads, setup, opts, beads.log_display)
    if typ is None:
        return empty
    r_typ = float(typ[IR])
    d_ratio = float(np.sqrt(diam.max() / diam.min()))
    setup = dataclasses.replace(setup, r_min=r_typ / (1.25 * d_ratio),
                                r_max=r_typ * 1.25 * d_ratio)
    # the one-bead fit of each detection, with the image's bead shape as the pair's: the
    # hypothesis to beat, and the background start
    p1 = _start(cen, np.full(K, r_typ), opts, setup, beads.log_display)
    p1[:, [IE1, IE2, ILS]] = typ[[IE1, IE2, ILS]]
    one = _fit_one(work, p1, setup, opts, rounds=1, fixed=(ILC, ILK, IE1, IE2, ILS))
    data, inside, pu, pv = _windows(work, np.rint(cen).astype(int), setup.half)
    # starts: the foot of the one-bead centre on each line, and the same moved apart along the
    # lines (two beads on nearly parallel lines are separated mostly along them); short fits
    # from each, the best one refitted with its own pair weights
    c = one.params[:, [IU, IV]]
    off = np.einsum("kbi,kbi->kb", nrm, pts)                       # n·x = off on each line
    foot = c[:, None] - (np.einsum("kbi,ki->kb", nrm, c) - off)[..., None] * nrm
    along = np.stack([-nrm[..., 1], nrm[..., 0]], -1)                # (K, 2, 2) line directions
    eps = opts.read_noise_fraction
    cc = np.tanh(typ[ILC])

    def weights(qa, qb, rows):
        return pair_weights(qa, qb, inside[rows], pu[rows], pv[rows], setup,
                            lambda t: _rel_variance_t(t, cc, eps), s_det)

    lw = 1.0 / np.maximum(lsig, 1e-3) ** 2
    npa = NPAR
    s_det = beads.noise_blur_px if np.isfinite(beads.noise_blur_px) else noise_blur(work)
    rho = blur_correlation(s_det)
    infl = variance_inflation(rho)
    cu, cv = pu[:, setup.half], pv[:, setup.half]
    model1 = model_and_jacobian(one.params, pu, pv, cu, cv, setup, jac=False)[0]

    def attempt(fixed, n_free, rows):
        """The pair fit of the candidates ``rows`` with the parameters ``fixed`` held."""
        n = len(rows)
        d, u, v = data[rows], pu[rows], pv[rows]
        lines = (nrm[rows], off[rows], lw[rows])
        # the three starts as one batch (the fit is row by row): shift-major rows
        shifts = np.repeat([0.0, 0.4 * r_typ, -0.4 * r_typ], n)[:, None]
        r3 = np.tile(rows, 3)
        pa = np.repeat(typ[None], 3 * n, axis=0)
        pa[:, IB0:] = one.params[r3, IB0:]           # the one-bead fit's background
        pa[:, IE1] = pa[:, IE2] = 0.0                # round
        pb = pa.copy()
        pa[:, [IU, IV]] = foot[r3, 0] + shifts * along[r3, 0]
        pb[:, [IU, IV]] = foot[r3, 1] - shifts * along[r3, 1]
        pa[:, IA] = pb[:, IA] = typ[IA]
        a, b, cost, _ = fit_pair(pa, pb, data[r3], weights(pa, pb, r3), pu[r3], pv[r3], setup,
                                 fixed, max(4, opts.iterations // 3),
                                 lines=(nrm[r3], off[r3], lw[r3]), detector_blur=s_det)
        # the best start of each candidate (the first of equal ones)
        pick = np.argmin(np.nan_to_num(cost, nan=np.inf).reshape(3, n), axis=0) * n
        pick += np.arange(n)
        a, b = a[pick], b[pick]
        wts = weights(a, b, rows)
        a, b, cost, hinv = fit_pair(a, b, d, wts, u, v, setup, fixed, opts.iterations,
                                    lines=lines, detector_blur=s_det)
        cost1 = np.einsum("nij,nij->n", wts, (d - model1[rows]) ** 2)
        cab = np.stack([a[:, [IU, IV]], b[:, [IU, IV]]], 1)
        res = lines[1] - np.einsum("kbi,kbi->kb", lines[0], cab)
        pen = np.sum(lines[2] * res * res, axis=1)
        npix = (wts > 0).reshape(n, -1).sum(1)
        red = (cost - pen) / np.maximum(npix - n_free, 1)
        amp = np.stack([a[:, IA], b[:, IA]], 1) / typ[IA]
        gain = (cost1 - (cost - pen)) / np.maximum(red * infl, 1e-300)
        # the detector's SNR test for each bead: peak blocked fraction times amplitude over the
        # pixel noise (the pair's reduced χ²: weights are relative to the background's variance)
        snr = np.stack([q[:, IA] * blocked(q, u, v, setup).reshape(n, -1).max(1)
                        for q in (a, b)], 1) / np.sqrt(np.maximum(red, 1e-300))[:, None]
        ok = (np.isfinite(cost) & (gain > _CHI2_2)
              & np.all((amp >= 0.5) & (amp <= 2.0), axis=1)
              & np.all(np.abs(res) * np.sqrt(lines[2]) <= 3.0, axis=1)
              & (np.linalg.norm(cab[:, 0] - cab[:, 1], axis=1) >= MIN_SEPARATION * r_typ)
              & np.all(np.linalg.norm(cab - cen[rows][:, None], axis=2)
                       <= MAX_OFFSET * r_typ, axis=1)
              & np.all(snr >= opts.min_snr, axis=1))
        # two detections: the lines must agree with the image (module doc)
        k = np.flatnonzero(ok & both[rows])
        if k.size:
            free = fit_pair(a[k], b[k], d[k], wts[k], u[k], v[k], setup, fixed, opts.iterations,
                            detector_blur=s_det)[2]
            ok[k] = (cost[k] - pen[k] - free) / np.maximum(red[k] * infl, 1e-300) <= _CHI2_2
        cov = hinv * (red * infl)[:, None, None]
        var = np.clip(np.diagonal(cov, axis1=1, axis2=2), 0, None).reshape(n, 2, 2)
        sig = np.sqrt(var + opts.model_error_px ** 2 + (PAIR_MODEL_ERROR * r_typ) ** 2)
        return cab, sig, ok, amp, gain

    # free: background 6, the amplitude (both beads'); per bead centre 2, radius
    fixed = (IE1, IE2, ILS, ILK, ILC, npa + 3, npa + 4, npa + 5)
    cab, sig, ok, amp, gain = attempt(fixed, 13, np.arange(K))
    redo = np.flatnonzero(~ok)
    if beads.log_display and redo.size:
        # In a log display the amplitude is the display gain, the same for every bead. Free,
        # it trades off against the radius: two heavily overlapping beads can grow to the
        # radius bound at half the amplitude and fail the amplitude test. Those not kept are
        # fitted once more with it held at the typical bead's.
        alt = attempt(fixed + (IA,), 12, redo)
        take = alt[2]
        for x, y in zip((cab, sig, ok, amp, gain), alt, strict=True):
            x[redo[take]] = y[take]
    return LineSplit(cab, sig, ok, amp, gain)
