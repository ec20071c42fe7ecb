"""Benchmark: bead detection on a simulated 3000×3000 16-bit RSA radiograph, against peers and
the Cramér–Rao lower bound.

Plain script: ``python benchmarks/bench_detect.py [--quick]``. One view of the uniplanar cage
(88 tantalum markers, 1.0 mm) with 60 patient beads (0.8 / 1.0 mm) in bone and on an implant,
a CoCr stem, limb anatomy and the physical noise model of :mod:`rsa.synthetic.render`
(0.143 mm pixels, 16 bits stored). In one run:

* ``rsa.detect.detect_beads`` (defaults, polarity and display found automatically);
* ``trackpy.locate`` (bandpass + centroid, diameter = odd ≈ bead diameter, ``minmass`` tuned
  against the truth to its best F1 — an advantage no real user has; timed for that setting);
* ``skimage.feature.blob_log`` at the bead scales + background-subtracted intensity-weighted
  centroid in a disc of the blob radius (threshold likewise tuned to its best F1);
* the Cramér–Rao lower bound of the centre for every bead: Fisher information
  ``Jᵀ C⁻¹ J`` with J the derivative of the noise-free expected image (finite differences of
  :func:`rsa.synthetic.render.render_expected` with the beads moved ±δ) and C the pixel
  covariance of the renderer's noise model — Poisson quanta spread by the detector blur plus
  read-out noise, through the log display (delta method), plus rounding — in a 21×21 window
  (``benchmarks/_crlb.py``, shared with ``bench_precision.py``).

Truth match within 1 px; accuracy over "clear" beads (not hidden, not clipped, no implant on or
within 2 px of the disc). Checks (exit status 1 if any fails): time ≤ 0.5 s, ≥ 5× faster than
trackpy, RMS no worse than the best peer, RMS ≤ 1.5 × the CRLB (RMS over beads of the per-bead
bound), recall ≥ 99 %, ≤ 1 false detection.
"""

from __future__ import annotations

import sys
import time
import warnings

import cv2
import numpy as np
from _crlb import crlb
from scipy.spatial import cKDTree

from rsa.cage import load_cage
from rsa.detect import detect_beads
from rsa.synthetic.geometry import look_at_view
from rsa.synthetic.render import (
    Capsule,
    RenderOptions,
    render_expected,
    render_view,
)

SHAPE = (3000, 3000)
SPACING = 0.143
DIAMETERS = (0.8, 1.0)


def scene(seed: int, photons: float):
    rng = np.random.default_rng(seed)
    cage = load_cage("uniplanar")
    v = cage.views["A"]
    view = look_at_view(focus_mm=v.focus_mm, detector_centre_mm=v.detector_centre_mm,
                        up=v.detector_up, detector_normal=v.detector_normal,
                        pixel_spacing_mm=SPACING, shape=SHAPE, name="A")
    bone = rng.uniform([-45, -70, 60], [45, 10, 140], (30, 3))
    implant = rng.uniform([-25, 15, 80], [25, 70, 120], (30, 3))
    centres = np.concatenate([cage.xyz_mm, bone, implant])
    radii = np.concatenate([cage.diameter_mm / 2, rng.choice([0.4, 0.5], 60)])
    stem = (Capsule(p0_mm=[0, 20, 100], p1_mm=[5, 110, 100], radius_mm=6.0),)
    opts = RenderOptions(photons_per_pixel=photons, bit_depth=16, supersample=8)
    rv = render_view(view, centres, radii, capsules=stem, options=opts, rng=seed)
    return view, centres, radii, stem, opts, rv


def clear_beads(view, centres, radii, stem, rv):
    """Beads with no implant attenuation (> 0.05) on their disc or within 2 px of it."""
    ev = render_expected(view, np.zeros((0, 3)), np.zeros(0), capsules=stem,
                         options=RenderOptions(background=False, supersample=2))
    implant = (ev.quanta < 0.95 * RenderOptions().photons_per_pixel).astype(np.uint8)
    r_px = radii * view.magnification(centres) / SPACING + 2.0
    dist = cv2.distanceTransform(1 - implant, cv2.DIST_L2, 5)   # px to the implant shadow
    u = np.clip(np.rint(rv.uv_px[:, 0]).astype(int), 0, SHAPE[1] - 1)
    v = np.clip(np.rint(rv.uv_px[:, 1]).astype(int), 0, SHAPE[0] - 1)
    return ~rv.hidden & ~rv.clipped & (dist[v, u] > r_px + 1.0)


def match(found_uv, truth_uv, clear):
    if len(found_uv) == 0:
        return np.zeros(len(truth_uv), bool), np.zeros(len(truth_uv), int), 0
    d, j = cKDTree(found_uv).query(truth_uv)
    hit = d < 1.0
    d2, _ = cKDTree(truth_uv).query(found_uv)
    return hit, j, int(np.sum(d2 > 1.0))


def score(found_uv, truth_uv, clear):
    hit, j, false = match(found_uv, truth_uv, clear)
    ok = hit & clear
    err = found_uv[j[ok]] - truth_uv[ok] if ok.any() else np.zeros((0, 2))
    rms = np.sqrt(np.mean(err ** 2, axis=0)) if len(err) else np.array([np.nan, np.nan])
    return {"recall": float(ok.sum() / clear.sum()), "false": false, "rms": rms, "err": err,
            "ok": ok}


def run_trackpy(img, diameter, truth_uv, clear):
    import trackpy as tp
    tp.quiet()
    t = time.perf_counter()
    f = tp.locate(img, diameter, minmass=0, preprocess=True, engine="numba")
    elapsed = time.perf_counter() - t
    uv = f[["x", "y"]].to_numpy()
    mass = f["mass"].to_numpy()
    best = None
    for q in np.linspace(50, 99.9, 60):   # best-F1 minmass (post-filter = trackpy's own filter)
        thr = np.percentile(mass, q)
        sel = mass >= thr
        hit, _, false = match(uv[sel], truth_uv, clear)
        tp_ = (hit & clear).sum()
        f1 = 2 * tp_ / (2 * tp_ + false + (clear & ~hit).sum())
        if best is None or f1 > best[0]:
            best = (f1, sel)
    return uv[best[1]], elapsed


def run_skimage(img, r_lo, r_hi, truth_uv, clear):
    from skimage.feature import blob_log
    x = img.astype(np.float64)
    x = (x - x.min()) / (x.max() - x.min())
    best = None
    for thr in (0.02, 0.05, 0.1):
        t = time.perf_counter()
        blobs = blob_log(x, min_sigma=r_lo / np.sqrt(2), max_sigma=r_hi / np.sqrt(2),
                         num_sigma=5, threshold=thr)
        uv = centroid_refine(x, blobs)
        elapsed = time.perf_counter() - t
        hit, _, false = match(uv, truth_uv, clear)
        tp_ = (hit & clear).sum()
        f1 = 2 * tp_ / (2 * tp_ + false + (clear & ~hit).sum())
        if best is None or f1 > best[0]:
            best = (f1, uv, elapsed)
    return best[1], best[2]


def centroid_refine(x, blobs):
    """Background-subtracted intensity-weighted centroid in a disc of the blob radius."""
    if len(blobs) == 0:
        return np.zeros((0, 2))
    v0, u0 = blobs[:, 0].astype(int), blobs[:, 1].astype(int)
    r = blobs[:, 2] * np.sqrt(2)
    h = int(np.ceil(r.max())) + 3
    off = np.arange(-h, h + 1)
    H, W = x.shape
    vv = np.clip(v0[:, None] + off, 0, H - 1)
    uu = np.clip(u0[:, None] + off, 0, W - 1)
    win = x[vv[:, :, None], uu[:, None, :]]
    dd = np.hypot(off[None, :, None], off[None, None, :])
    disc = dd <= (r[:, None, None] + 1.0)
    ring = (dd > r[:, None, None] + 2.0) & (dd <= r[:, None, None] + 3.0)
    bg = np.array([np.median(w[m]) for w, m in zip(win, ring, strict=True)])
    wgt = np.clip(win - bg[:, None, None], 0, None) * disc
    s = wgt.sum(axis=(1, 2)) + 1e-30
    du = (wgt * off[None, None, :]).sum(axis=(1, 2)) / s
    dv = (wgt * off[None, :, None]).sum(axis=(1, 2)) / s
    return np.stack([u0 + du, v0 + dv], 1)


def main(quick: bool = False) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)
    photons = 2.0e4 / 4   # a quarter of the renderer's default dose
    view, centres, radii, stem, opts, rv = scene(7, photons)
    clear = clear_beads(view, centres, radii, stem, rv)
    truth = rv.uv_px
    img = rv.image
    r_lo = DIAMETERS[0] / 2 * 1.05 / SPACING
    r_hi = DIAMETERS[1] / 2 * 1.6 / SPACING
    detect_beads(img[:600, :600], pixel_spacing_mm=SPACING)    # warm-up (imports, caches)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        beads = detect_beads(img, pixel_spacing_mm=SPACING, bead_diameters_mm=DIAMETERS)
        times.append(time.perf_counter() - t)
    t_rsa = min(times)
    res = {"rsa.detect": (score(beads.uv_px, truth, clear), t_rsa)}
    unflagged = np.ones(len(beads), bool) & ~beads.flags
    res["rsa.detect (unflagged)"] = (score(beads.uv_px[unflagged], truth, clear), t_rsa)
    if not quick:
        d_typ = int(2 * np.ceil(np.median(radii * view.magnification(centres)) / SPACING) + 1)
        uv_tp, t_tp = run_trackpy(img, d_typ | 1, truth, clear)
        res["trackpy.locate"] = (score(uv_tp, truth, clear), t_tp)
        uv_sk, t_sk = run_skimage(img, r_lo, r_hi, truth, clear)
        res["skimage blob_log+centroid"] = (score(uv_sk, truth, clear), t_sk)
    s0 = res["rsa.detect"][0]
    bound, bound_n = crlb(view, centres, radii, stem, opts, rv.uv_px, s0["ok"], nuisance=True)
    crlb_rms = np.sqrt(np.nanmean(bound[s0["ok"]] ** 2, axis=0))
    crlb_n_rms = np.sqrt(np.nanmean(bound_n[s0["ok"]] ** 2, axis=0))
    snr = beads.snr
    print(f"Image {SHAPE[0]}×{SHAPE[1]} uint16, {SPACING} mm px, {len(centres)} beads "
          f"({clear.sum()} clear), {photons:.0f} quanta/px, bead SNR median "
          f"{np.median(snr):.0f} (5–95 %: {np.percentile(snr, 5):.0f}–"
          f"{np.percentile(snr, 95):.0f})")
    print(f"{'method':28s} {'time s':>8s} {'recall':>7s} {'false':>6s} {'RMS u px':>9s} "
          f"{'RMS v px':>9s} {'RMS/CRLB':>9s}")
    for name, (s, t) in res.items():
        ratio = np.max(s["rms"] / crlb_rms)
        print(f"{name:28s} {t:8.3f} {100 * s['recall']:6.1f}% {s['false']:6d} "
              f"{s['rms'][0]:9.4f} {s['rms'][1]:9.4f} {ratio:9.2f}")
    print(f"{'Cramér–Rao bound':28s} {'':8s} {'':7s} {'':6s} {crlb_rms[0]:9.4f} "
          f"{crlb_rms[1]:9.4f} {1.0:9.2f}")
    # the bound when contrast, radius and a quadratic background are unknown too (not used by
    # the checks; shows how little the centre-only bound owes to knowing them)
    print(f"{'  … + contrast, bg, implant':28s} {'':8s} {'':7s} {'':6s} "
          f"{crlb_n_rms[0]:9.4f} {crlb_n_rms[1]:9.4f} {np.max(crlb_n_rms / crlb_rms):9.2f}")
    checks = {
        "time ≤ 0.5 s": t_rsa <= 0.5,
        "recall ≥ 99 %": s0["recall"] >= 0.99,
        "≤ 1 false detection": s0["false"] <= 1,
        "RMS ≤ 1.5 × CRLB": bool(np.all(s0["rms"] <= 1.5 * crlb_rms)),
    }
    if not quick:
        t_tp = res["trackpy.locate"][1]
        best_peer = min(np.max(res[k][0]["rms"]) for k in ("trackpy.locate",
                                                            "skimage blob_log+centroid"))
        print(f"speed-up vs trackpy.locate: {t_tp / t_rsa:.1f}×")
        checks["≥ 5× faster than trackpy"] = t_tp / t_rsa >= 5.0
        checks["RMS ≤ best peer"] = bool(np.max(s0["rms"]) <= best_peer)
    for k, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {k}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main(quick="--quick" in sys.argv))
