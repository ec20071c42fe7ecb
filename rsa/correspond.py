"""Correspondence of one exam's patient beads between its two views, with their uncertainties.

Rays through the patient detections of both views are paired by crossing-line error
(:func:`rsa.triangulate.match_rays`, with each ray's uncertainty). Then beads that overlap in
one view only are split there on the other view's epipolar lines (:mod:`rsa.epipolar`,
:func:`rsa.detect_lines.split_on_lines`) and the rays are paired again. Two pairs whose
crossed pairings meet as well (two beads near one epipolar plane) are given with both pairings,
all four points not likely, for the marker models to decide (:func:`_with_swaps`). Each pair's
point weighs its two detections by their ``sigma_px`` (:func:`_weighted_points`: a bead measured
poorly in one view is placed mostly by the other), and its 3D uncertainty follows from them
(:func:`_triangulation_sigma`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace

import numpy as np

from rsa.detect import Beads2D, DetectOptions
from rsa.detect_lines import LineSplit, split_on_lines
from rsa.epipolar import one_view_overlaps
from rsa.triangulate import RayMatch, intersect_rays, match_rays, pair_nll
from rsa.triangulate_ml import triangulate_ml


@dataclass(frozen=True, eq=False)
class Correspondence:
    """Paired patient beads of an exam.

    ``match`` pairs rows of ``uv_px`` (patient detections of each view, then the beads added by
    splits); ``sigma_px`` and ``occluded`` per row; ``sigma_mm``, ``cov_mm2`` and ``misfit``
    per pair (``cov_mm2``: the first-order covariance of the pair's point from its two
    detections' σ, :func:`_weighted_points`, NaN where it has none; ``misfit``: either
    detection is flagged occluded, came from a split, or has a contrast atypical of the image's
    beads, :func:`_atypical`); ``n_split`` the detections split on epipolar lines.
    """

    match: RayMatch
    uv_px: tuple[np.ndarray, np.ndarray]
    sigma_px: tuple[np.ndarray, np.ndarray]
    occluded: tuple[np.ndarray, np.ndarray]
    sigma_mm: np.ndarray
    misfit: np.ndarray
    n_split: int
    cov_mm2: np.ndarray | None = None

    @property
    def pair_sigma_px(self) -> np.ndarray:
        """(M, 2, 2) each pair's centre σ per view (a, b) and axis (u, v), px: the weights
        of its point (:func:`_weighted_points`)."""
        return _per_pair(self.sigma_px, self.match.pairs)


def correspond(images: tuple[np.ndarray, np.ndarray], beads: tuple[Beads2D, Beads2D], cal, *,
               pixel_spacing_mm, gate_mm: float, options: DetectOptions | None = None,
               split_overlaps: bool = True,
               split_elsewhere: Callable[[int, dict], Future] | None = None) -> Correspondence:
    """Pair the patient beads of an exam's two views (module doc).

    Parameters
    ----------
    images : the two radiographs (as detected), for the splits
    beads : their detections (:class:`rsa.detect.Beads2D`; objects with only ``uv_px``,
        ``sigma_px`` and ``occluded`` are paired without the splits)
    cal : rsa.calibrate.ExamCalibration of the exam (``a``, ``b`` with ``patient_mask``)
    pixel_spacing_mm : detector pixel spacing
    gate_mm : largest crossing-line error of a pair
    options : the detection options used
    split_overlaps : try the epipolar splits (default True)
    split_elsewhere : optional ``f(x, lines) -> Future`` of
        ``split_on_lines(images[x], beads[x], **lines, pixel_spacing_mm=pixel_spacing_mm,
        options=options)`` computed elsewhere (e.g. a worker process that reads the image
        itself; ``lines`` holds the keyword arguments ``centres``, ``points``, ``normals``,
        ``line_sigma_px`` and ``detected``): when both views have split candidates, one view's
        splits run there while this process fits the other's. The result is the same as
        without it.
    """
    opts = options if options is not None else DetectOptions()
    cviews = (cal.a, cal.b)
    masks = (cal.a.patient_mask, cal.b.patient_mask)
    det = list(beads)
    uv = [d.uv_px[k].copy() for d, k in zip(det, masks, strict=True)]
    sig_px = [d.sigma_px[k].copy() for d, k in zip(det, masks, strict=True)]
    occl = [d.occluded[k].copy() for d, k in zip(det, masks, strict=True)]

    def match():
        rays = [v.rays(u) for v, u in zip(cviews, uv, strict=True)]
        sig = tuple(_ray_sigma(v, s, pixel_spacing_mm)
                    for v, s in zip(cviews, sig_px, strict=True))
        return match_rays(*rays[0], *rays[1], gate_mm=gate_mm, sigma_mm=sig), rays, sig

    m, rays, sig = match()
    # beads overlapping in one view only: split there on the other view's epipolar lines
    n_split = 0
    # (the splits refit the images: only for detections of rsa.detect, not bare centres)
    split = split_overlaps and all(isinstance(d, Beads2D) for d in det)

    def inputs(x: int, y: int):
        """View x's split candidates and their lines (split_on_lines's keyword arguments),
        or None."""
        c = one_view_overlaps(cviews[x], cviews[y], uv[x], uv[y], m.pairs[:, [x, y]],
                              float(np.median(det[x].radius_px[masks[x]])),
                              det[x].turned_down_uv,
                              m.likely & ~occl[x][m.pairs[:, x]] & ~occl[y][m.pairs[:, y]])
        if len(c) == 0:
            return None
        lsig = np.hypot(np.max(sig_px[y][c.y], axis=-1), np.hypot(cviews[x].rms_px,
                                                                  cviews[y].rms_px))
        return c, {"centres": c.centre, "points": c.points, "normals": c.normals,
                   "line_sigma_px": lsig, "detected": (c.x >= 0).all(axis=1)}

    def split_here(x: int, lines: dict) -> LineSplit:
        return split_on_lines(images[x], det[x], **lines, pixel_spacing_mm=pixel_spacing_mm,
                              options=opts)

    # Both views' splits at once when both have candidates: the one with fewer candidates
    # elsewhere (its worker reads the image first), the other here, both from the first match.
    # View a's splits are applied first; view b's result is used only if they left its inputs
    # unchanged, else view b is fitted again
    first = [inputs(0, 1), inputs(1, 0)] if split else [None, None]
    done: dict[int, LineSplit | Future] = {}
    if split_elsewhere is not None and first[0] is not None and first[1] is not None:
        far = int(len(first[1][0]) <= len(first[0][0]))
        done[far] = split_elsewhere(far, first[far][1])
        done[1 - far] = split_here(1 - far, first[1 - far][1])
    for x, y in ((0, 1), (1, 0)) if split else ():
        cur = first[x] if x == 0 or n_split == 0 else inputs(x, y)
        if cur is None:
            continue
        c, lines = cur
        if x in done and _same(lines, first[x][1]):
            sp = done[x].result() if isinstance(done[x], Future) else done[x]
        else:
            sp = split_here(x, lines)
        # the best split (largest χ² gain) first; each detection of either view used once
        ok = np.zeros(len(c), bool)
        used_x: set[int] = set()
        used_y: set[int] = set()
        taken: list[np.ndarray] = []
        for k in np.argsort(-np.nan_to_num(sp.gain, nan=-np.inf), kind="stable"):
            xs = {int(i) for i in c.x[k] if i >= 0}
            ys = set(c.y[k].tolist())
            here = any(np.all(np.abs(t - c.centre[k]) < 1e-9) for t in taken)
            if sp.ok[k] and not here and not (used_x & xs) and not (used_y & ys):
                ok[k] = True
                used_x |= xs
                used_y |= ys
                taken.append(c.centre[k])
        if not ok.any():
            continue
        new_uv, new_sig = [], []
        for k in np.flatnonzero(ok):
            for b in range(2):
                i = c.x[k, b]
                if i >= 0:                       # an existing detection takes this bead
                    uv[x][i], sig_px[x][i], occl[x][i] = sp.uv_px[k, b], sp.sigma_px[k, b], True
                else:
                    new_uv.append(sp.uv_px[k, b])
                    new_sig.append(sp.sigma_px[k, b])
        if new_uv:
            uv[x] = np.concatenate([uv[x], new_uv])
            sig_px[x] = np.concatenate([sig_px[x], new_sig])
            occl[x] = np.concatenate([occl[x], np.ones(len(new_uv), bool)])
        n_split += int(ok.sum())
    if n_split:
        m, rays, sig = match()
    m = _with_swaps(m, rays, sig)
    m, cov = _weighted_points(m, cviews, uv, sig_px)
    sigma = _triangulation_sigma(m, cviews, (rays[0][1], rays[1][1]), sig_px, pixel_spacing_mm)
    odd = [np.concatenate([_atypical(d)[k], np.zeros(len(u) - int(k.sum()), bool)])
           for d, k, u in zip(det, masks, uv, strict=True)]      # split beads: not tested
    misfit = (occl[0] | odd[0])[m.pairs[:, 0]] | (occl[1] | odd[1])[m.pairs[:, 1]]
    return Correspondence(m, tuple(uv), tuple(sig_px), tuple(occl), sigma, misfit, n_split,
                          cov)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _with_swaps(m: RayMatch, rays, sig) -> RayMatch:
    """``m`` with the other pairing of every two pairs whose pairings cannot be told apart.

    Two beads near one epipolar plane give rays whose crossed pairings meet as well as the
    true ones ([1]_ §9.1 of :func:`rsa.triangulate.match_rays`): pairs (a₁, b₁), (a₂, b₂)
    such that (a₁, b₂) and (a₂, b₁) are also likely (CLE within their rays' uncertainty, as
    :func:`rsa.triangulate.match_rays` judges a pair). The crossed pairs are added as two more
    points, and all four are marked not likely: the marker models decide (a point that is not
    likely is labelled only within the label tolerance of its bead, and reported only when
    labelled). Rows stay sorted by the view-A ray.
    """
    if len(m.alternatives) == 0:
        return m
    nA, nB = len(rays[0][1]), len(rays[1][1])
    pair_of_a = np.full(nA, -1)
    pair_of_b = np.full(nB, -1)
    pair_of_a[m.pairs[:, 0]] = np.arange(len(m))
    pair_of_b[m.pairs[:, 1]] = np.arange(len(m))
    alt, cle = m.alternatives, m.alternatives_cle_mm
    # likely as for a pair in match_rays: one bead seen twice beats unrelated rays
    good = pair_nll(cle, sig[0][alt[:, 0]] ** 2 + sig[1][alt[:, 1]] ** 2, m.gate_mm) < 0
    like = np.zeros((nA, nB), bool)
    like[alt[good, 0], alt[good, 1]] = True
    p, q = pair_of_a[alt[good, 0]], pair_of_b[alt[good, 1]]      # (a₁, b₂): a₁ ∈ p, b₂ ∈ q
    ok = (p >= 0) & (q >= 0) & (p != q)
    p, q = p[ok], q[ok]
    ok = like[m.pairs[q, 0], m.pairs[p, 1]] & m.likely[p] & m.likely[q]  # (a₂, b₁) likely too
    grp = np.unique(np.sort(np.stack([p[ok], q[ok]], 1), axis=1), axis=0)
    if len(grp) == 0:
        return m
    # only pairs in one group: three or more beads in one plane are left as matched
    n_in = np.bincount(grp.ravel(), minlength=len(m))
    grp = grp[(n_in[grp[:, 0]] == 1) & (n_in[grp[:, 1]] == 1)]
    if len(grp) == 0:
        return m
    a, b = m.pairs[grp[:, 0]], m.pairs[grp[:, 1]]
    new = np.concatenate([np.stack([a[:, 0], b[:, 1]], 1), np.stack([b[:, 0], a[:, 1]], 1)])
    (oa, da), (ob, db) = rays
    pts, c = intersect_rays(np.broadcast_to(oa, da.shape)[new[:, 0]], da[new[:, 0]],
                            np.broadcast_to(ob, db.shape)[new[:, 1]], db[new[:, 1]])
    likely = m.likely.copy()
    likely[grp.ravel()] = False
    pairs = np.concatenate([m.pairs, new])
    order = np.argsort(pairs[:, 0], kind="stable")
    return RayMatch(pairs=pairs[order], cle_mm=np.concatenate([m.cle_mm, c])[order],
                    points_mm=np.concatenate([m.points_mm, pts])[order],
                    ambiguous=np.concatenate([m.ambiguous | np.isin(np.arange(len(m)), grp),
                                              np.ones(len(new), bool)])[order],
                    alternatives=m.alternatives, alternatives_cle_mm=m.alternatives_cle_mm,
                    gate_mm=m.gate_mm,
                    likely=np.concatenate([likely, np.zeros(len(new), bool)])[order])


def _weighted_points(m: RayMatch, views, uv, sigma_px) -> tuple[RayMatch, np.ndarray]:
    """``m`` with each pair's point triangulated from its two detections weighted by their
    ``sigma_px`` (:func:`rsa.triangulate_ml.triangulate_ml`) instead of the rays' midpoint,
    and that point's first-order covariance (M, 3, 3) mm²; the CLE stays that of the rays.
    Where it gives no point, the midpoint stays, with a NaN covariance."""
    if len(m) == 0:
        return m, np.zeros((0, 3, 3))
    P = np.stack([v.projection_matrix for v in views])
    pts, cov = triangulate_ml(P, _per_pair(uv, m.pairs), _per_pair(sigma_px, m.pairs))
    cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))      # exactly symmetric (stored as a triangle)
    return replace(m, points_mm=np.where(np.isfinite(pts), pts, m.points_mm)), cov


def _per_pair(rows: tuple[np.ndarray, np.ndarray], pairs: np.ndarray) -> np.ndarray:
    """(M, 2, ...) the rows of view a's and view b's arrays that each pair joins."""
    return np.stack([rows[0][pairs[:, 0]], rows[1][pairs[:, 1]]], axis=1)


def _atypical(beads) -> np.ndarray:
    """(N,) detections whose contrast is not that of a bead of this image: outside 0.5–2× the
    median over the view's detections (cage markers included). Only in a log display, where a
    bead's contrast is its own ln-attenuation whatever lies behind it (0.8 and 1.0 mm beads
    differ by 1.25×); in a linear one it scales with the background, and nothing is flagged.
    E.g. the rim of a screw's rounded tip, seen in both views, fitted as a faint wide "bead"."""
    c = np.asarray(getattr(beads, "contrast", np.zeros(0)), float)
    if not getattr(beads, "log_display", False) or c.size < 3:
        return np.zeros(len(beads.uv_px), bool)
    ratio = c / np.median(c)
    return (ratio < 0.5) | (ratio > 2.0)


def _ray_sigma(view, sigma_px: np.ndarray, spacing_mm) -> np.ndarray:
    """Across-ray uncertainty (mm) of each detection's ray at the patient, for matching.

    The centre uncertainty (largest axis of ``sigma_px``) on the detector, scaled to the cage
    centre (the lab origin, where the patient is) by focus–origin / focus–detector distance,
    with the view's calibration residual (object space, at the markers) in quadrature.
    """
    s = _sigma_at(view, sigma_px, spacing_mm, float(np.linalg.norm(view.focus_mm)))
    return np.maximum(np.hypot(s, view.rms_mm), 1e-6)   # > 0 also for noise-free input


def _sigma_at(view, sigma_px: np.ndarray, spacing_mm, dist_mm) -> np.ndarray:
    """Centre uncertainty (largest axis of ``sigma_px``) in mm at ``dist_mm`` from the focus
    (scaled from the detector by distance / focus–detector distance)."""
    s = np.max(np.atleast_2d(sigma_px), axis=-1) if np.ndim(sigma_px) > 1 else np.asarray(
        sigma_px)
    return s * float(np.mean(spacing_mm)) * np.asarray(dist_mm) / view.focus_detector_distance_mm


def _triangulation_sigma(match, views, directions, sigma_px, spacing_mm) -> np.ndarray:
    """Approximate 3D standard uncertainty (mm) of each triangulated bead.

    Each view's centre uncertainty (largest axis of ``sigma_px``) is scaled to the bead by the
    pixel spacing and the ratio focus–bead / focus–detector distance; the two ray errors combine
    in quadrature and are amplified by 1/sin of the angle between the rays (intersection of two
    uncertain lines).
    """
    out = [_sigma_at(view, np.asarray(sig)[match.pairs[:, k]], spacing_mm,
                     np.linalg.norm(match.points_mm - view.focus_mm, axis=-1))
           for k, (view, sig) in enumerate(zip(views, sigma_px, strict=True))]
    da = directions[0][match.pairs[:, 0]]
    db = directions[1][match.pairs[:, 1]]
    sin = np.linalg.norm(np.cross(da, db), axis=-1)
    return np.hypot(out[0], out[1]) / np.maximum(sin, 1e-3)
