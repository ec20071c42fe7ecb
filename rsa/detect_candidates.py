"""Candidate stage of :mod:`rsa.detect`: scale-normalised LoG peaks with shape tests.

Internal module (inputs validated by :func:`rsa.detect.detect_beads`). Steps, all on arrays
with OpenCV filters (loops only over the 2–3 scales):

* the image is reduced ×2 (area average) when the smallest bead keeps ≥ 1.4 px radius;
* scale-normalised −σ²∇²G responses at the bead scales σ = R/√2 [1]_, maximum over scales;
* local maxima by grey dilation with a disc (non-maximum suppression);
* each peak's strength = response / noise, where the noise is the image's robust LoG noise
  (MAD) scaled by the local pixel noise in an annulus around the peak (median |4-neighbour
  Laplacian|) — radiograph noise is not stationary (quantum noise, implants);
* Hessian shape test at the answering scale: a round blob has two equal negative eigenvalues,
  an implant edge or a wire one near zero [2]_.

References
----------
.. [1] Lindeberg T. Feature detection with automatic scale selection. Int J Comput Vis
       1998;30:79–116.
.. [2] Frangi AF et al. Multiscale vessel enhancement filtering. MICCAI 1998, LNCS 1496:130–137.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class _Candidates:
    uv: np.ndarray          # (M, 2) int pixel positions
    radius: np.ndarray      # (M,) scale-implied radius px
    strength: np.ndarray    # (M,) response / noise
    roundness: np.ndarray   # (M,)


def _log_stack(work: np.ndarray, radii: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Smoothed images and scale-normalised −LoG responses (bright-blob positive)."""
    blurred, resp = [], []
    for r in radii:
        s = float(r / np.sqrt(2.0))
        g = cv2.GaussianBlur(work, (0, 0), s, borderType=cv2.BORDER_REPLICATE)
        lap = cv2.Laplacian(g, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REPLICATE)
        blurred.append(g)
        resp.append(lap * np.float32(-s * s))
    return blurred, resp


def _noise_curve(work: np.ndarray, level: np.ndarray, bins: int = 24
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Pixel noise relative to its median as a function of the local image level.

    Quantum noise makes the noise of a radiograph depend on the signal level (in any display);
    the robust spread (median absolute 4-neighbour Laplacian) of a sub-sample of pixels, binned
    by the smoothed level, gives that dependence. Structure (edges, beads) touches few pixels of a
    bin and does not move its median.
    """
    c = work[1:-1:3, 1:-1:3]
    n4 = (work[:-2:3, 1:-1:3] + work[2::3, 1:-1:3] + work[1:-1:3, :-2:3] + work[1:-1:3, 2::3])
    hp = np.abs(4.0 * c - n4[: c.shape[0], : c.shape[1]]).ravel()
    lv = level[1:-1:3, 1:-1:3][: c.shape[0], : c.shape[1]].ravel()
    step = max(1, lv.size // 200_000)
    hp, lv = hp[::step], lv[::step]
    order = np.argsort(lv, kind="stable")
    edges = np.linspace(0, lv.size, bins + 1).astype(int)
    knots = np.array([lv[order[a:b]].mean() for a, b in pairwise(edges)])
    sig = np.array([np.median(hp[order[a:b]]) for a, b in pairwise(edges)])
    keep = np.concatenate([[True], np.diff(knots) > 0])
    knots, sig = knots[keep], np.maximum(sig[keep], 1e-12)
    med = float(np.median(sig))
    if not med > 1e-9:   # no measurable noise (e.g. a noise-free simulation)
        return knots, np.ones_like(sig)
    return knots, np.maximum(sig / med, 1e-3)


def _ring_noise(lap: np.ndarray, vv: np.ndarray, uu: np.ndarray, radius: float
                ) -> np.ndarray:
    """Median |Laplacian| on two circles (radius, 1.5·radius) around each point (local noise).

    32 samples: a bead or edge covering a few of them does not move the median.
    """
    H, W = lap.shape
    ang = np.linspace(0.0, 2.0 * np.pi, 16, endpoint=False)
    rad = np.concatenate([np.full(16, radius), np.full(16, 1.5 * radius)])
    ang = np.concatenate([ang, ang + np.pi / 16])
    rv = np.clip(np.rint(vv[:, None] + rad * np.sin(ang)), 0, H - 1).astype(np.intp)
    ru = np.clip(np.rint(uu[:, None] + rad * np.cos(ang)), 0, W - 1).astype(np.intp)
    return np.median(np.abs(lap[rv, ru]), axis=1) if len(vv) else np.zeros(0)


def _candidates(blurred: list[np.ndarray], resp: list[np.ndarray], radii: np.ndarray,
                sign: float, opts: Any, noise_curve: tuple[np.ndarray, np.ndarray],
                lap: np.ndarray, lap_med: float, ring: float) -> _Candidates:
    """Local maxima of ``sign`` × response over all scales that pass the roundness test."""
    best = resp[0] * np.float32(sign)
    which = np.zeros(best.shape, np.uint8)
    for i in range(1, len(resp)):
        cand = resp[i] * np.float32(sign)
        better = cand > best
        which[better] = i
        np.maximum(best, cand, out=best)
    sub = best[::3, ::3]
    med = float(np.median(sub))
    noise = 1.4826 * float(np.median(np.abs(sub - med))) + 1e-12
    rad = max(1, int(np.floor(radii[0])))
    ker = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rad + 1, 2 * rad + 1))
    dil = cv2.dilate(best, ker)
    _, rel = noise_curve
    # pre-threshold (the local noise below can lower it at most twofold, e.g. in air)
    thr = med + opts.threshold * noise * max(float(rel.min()), 0.5)
    peak = (best >= dil) & (best > thr)
    vv, uu = np.nonzero(peak)
    H, W = best.shape
    # the noise is not stationary (quantum noise; implants): normalise each peak by the noise
    # in an annulus around it, the median |4-neighbour Laplacian| there relative to the image's
    local = _ring_noise(lap, vv, uu, ring) / lap_med
    keep0 = (best[vv, uu] - med) >= opts.threshold * noise * local
    vv, uu, local = vv[keep0], uu[keep0], local[keep0]
    strength = (best[vv, uu] - med) / (noise * np.maximum(local, 1e-6))
    k = which[vv, uu].astype(np.intp)
    # Hessian of the smoothed image at the scale that answered, by central differences
    vm, vp = np.maximum(vv - 1, 0), np.minimum(vv + 1, H - 1)
    um, up = np.maximum(uu - 1, 0), np.minimum(uu + 1, W - 1)
    rows = {-1: vm, 0: vv, 1: vp}
    cols = {-1: um, 0: uu, 1: up}
    def g(dv: int, du: int) -> np.ndarray:
        out = np.empty(len(vv))
        for i, b in enumerate(blurred):
            m = k == i
            out[m] = b[rows[dv][m], cols[du][m]]
        return out

    c = g(0, 0)
    hxx = g(0, 1) + g(0, -1) - 2 * c
    hyy = g(1, 0) + g(-1, 0) - 2 * c
    hxy = 0.25 * (g(1, 1) + g(-1, -1) - g(1, -1) - g(-1, 1))
    tr = 0.5 * (hxx + hyy)
    disc = np.sqrt(0.25 * (hxx - hyy) ** 2 + hxy ** 2)
    l1, l2 = sign * (tr - disc), sign * (tr + disc)    # for sign=+1 bright blob: both < 0
    big = np.minimum(l1, l2)
    small = np.maximum(l1, l2)
    roundness = np.where(big < 0, np.clip(small / np.minimum(big, -1e-30), -1, 1), -1.0)
    keep = (roundness >= opts.min_roundness) & (strength >= opts.threshold)
    order = np.argsort(-strength[keep])
    return _Candidates(uv=np.stack([uu, vv], 1)[keep][order], radius=radii[k][keep][order],
                       strength=strength[keep][order], roundness=roundness[keep][order])


def find_candidates(work: np.ndarray, r_lo: float, r_hi: float, opts: Any
                    ) -> tuple[_Candidates, str, bool, int]:
    """Candidates in a normalised image; also the polarity and whether the display is log.

    Returns
    -------
    cand : _Candidates
        Positions in full-resolution px (within ± f/2 px), radius, strength, roundness.
    polarity : "bright" or "dark"
    log_display : bool
        Quantum noise grows with attenuation in a log display and falls with it in a linear
        one (beads-bright sense): the sign of the noise-vs-level slope tells them apart.
    f : int
        Reduction factor used (1 or 2).
    """
    f = 2 if r_lo >= 2.8 else 1
    small = cv2.resize(work, (work.shape[1] // f, work.shape[0] // f),
                       interpolation=cv2.INTER_AREA) if f > 1 else work
    radii = np.geomspace(r_lo, r_hi, opts.n_scales) if opts.n_scales > 1 else \
        np.array([np.sqrt(r_lo * r_hi)])
    blurred, resp = _log_stack(small, radii / f)
    nc = _noise_curve(small, blurred[0])
    ring = 1.3 * r_hi / f
    lap = cv2.Laplacian(small, cv2.CV_32F, ksize=1)
    lap_med = max(float(np.median(np.abs(lap[::3, ::3]))), 1e-6)
    if opts.polarity == "auto":
        cb = _candidates(blurred, resp, radii / f, 1.0, opts, nc, lap, lap_med, ring)
        cd = _candidates(blurred, resp, radii / f, -1.0, opts, nc, lap, lap_med, ring)
        # more strong *round* blobs wins: strength caps keep a few huge edges from deciding, and
        # weighting by roundness keeps the many elongated dark gaps between bright structures
        # (implant borders, bone edges) from outvoting the beads
        sb = (np.minimum(cb.strength, 50.0) * np.clip(cb.roundness, 0.0, 1.0)).sum()
        sd = (np.minimum(cd.strength, 50.0) * np.clip(cd.roundness, 0.0, 1.0)).sum()
        polarity, cand = ("bright", cb) if sb >= sd else ("dark", cd)
    else:
        polarity = opts.polarity
        cand = _candidates(blurred, resp, radii / f, 1.0 if polarity == "bright" else -1.0, opts,
                           nc, lap, lap_med, ring)
    slope = np.polyfit(nc[0], np.log(nc[1]), 1)[0] if len(nc[0]) > 2 else 1.0
    if polarity == "dark":
        slope = -slope
    # no clear level dependence (e.g. a noise-free simulation): log, as DR images usually are
    log_display = {"auto": bool(slope > -0.3), "log": True, "linear": False}[opts.display]
    m = 4 * opts.max_beads
    cand = _Candidates(uv=cand.uv[:m] * f + (f - 1) // 2, radius=cand.radius[:m] * f,
                       strength=cand.strength[:m], roundness=cand.roundness[:m])
    return cand, polarity, log_display, f


def _close_pairs(uv: np.ndarray, dist: float) -> np.ndarray:
    """Ordered index pairs (i, j), i ≠ j, closer than ``dist`` (grid hashing, no O(N²) loop)."""
    n = len(uv)
    if n < 2:
        return np.zeros((0, 2), int)
    cell = np.floor(uv / dist).astype(np.int64)
    key = cell[:, 0] * 1_000_003 + cell[:, 1]
    order = np.argsort(key)
    pairs = []
    for du in (-1, 0, 1):
        for dv in (-1, 0, 1):
            k2 = (cell[:, 0] + du) * 1_000_003 + cell[:, 1] + dv
            lo = np.searchsorted(key[order], k2, "left")
            hi = np.searchsorted(key[order], k2, "right")
            cnt = hi - lo
            if cnt.sum() == 0:
                continue
            ii = np.repeat(np.arange(n), cnt)
            starts = np.repeat(lo - np.cumsum(cnt) + cnt, cnt) + np.arange(cnt.sum())
            jj = order[starts]
            pairs.append(np.stack([ii, jj], 1))
    pr = np.concatenate(pairs)
    pr = pr[pr[:, 0] != pr[:, 1]]
    d = np.linalg.norm(uv[pr[:, 0]] - uv[pr[:, 1]], axis=1)
    return pr[d < dist]
