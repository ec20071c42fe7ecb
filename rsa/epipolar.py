"""Epipolar lines between the two calibrated views, and beads that overlap in one view only.

Two beads a few pixels apart in one view while the other view shows them apart are a common
cause of lost beads: the first view has a single detection (or none, when the detector turns the
pair's candidate down, or two distorted ones after deblending), the one-to-one correspondence
pairs it with one of the beads, often with a large crossing-line error, and the other bead is
lost. :func:`one_view_overlaps` finds such places from the geometry: a detection of view Y
without a partner whose epipolar line in view X passes within a bead radius of an X detection
or turned-down candidate; or two touching X detections whose pairs are not both sound. Each is
then fitted in X as two beads held to the epipolar lines of their Y partners
(:func:`rsa.detect_lines.split_on_lines`); the caller puts the accepted beads in place of the
detections (or adds them) and matches the rays again (:func:`rsa.correspond.correspond`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Half length (mm) of the stretch of a ray, around its closest approach to the lab origin (the
#: cage centre), that is projected into the other view: where a patient bead can be, generously
#: (the patient need not sit at the cage centre).
RAY_HALF_MM = 400.0


def epipolar_lines(view_from, view_to, uv_px: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epipolar lines in ``view_to`` of image points ``uv_px`` (N, 2) of ``view_from``.

    Returns a point on each line (N, 2), the unit normals (N, 2), and the length (N,) of the
    segment from that point that the rays' stretch of ±:data:`RAY_HALF_MM` around their closest
    approach to the lab origin covers (px): where a bead on the ray can appear.
    """
    o, d = view_from.rays(uv_px)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    s0 = -np.einsum("...i,...i->...", o, d)
    x0 = o + s0[..., None] * d
    p0 = view_to.project(x0 - RAY_HALF_MM * d)
    p1 = view_to.project(x0 + RAY_HALF_MM * d)
    t = p1 - p0
    length = np.linalg.norm(t, axis=-1)
    t = t / length[..., None]
    return p0, np.stack([-t[..., 1], t[..., 0]], axis=-1), length


@dataclass(frozen=True)
class OverlapCandidates:
    """Places in view X to fit as two beads on the lines of two detections of view Y.

    ``centre`` (K, 2) px: where to fit; ``x`` (K, 2) the X detections that take the first and
    the second bead (−1: a new detection); ``y`` (K, 2) the two Y detections whose epipolar lines
    ``points`` and ``normals`` (K, 2, 2) hold the beads.
    """

    centre: np.ndarray
    x: np.ndarray
    y: np.ndarray
    points: np.ndarray
    normals: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    @classmethod
    def empty(cls) -> OverlapCandidates:
        return cls(np.zeros((0, 2)), np.zeros((0, 2), np.intp), np.zeros((0, 2), np.intp),
                   np.zeros((0, 2, 2)), np.zeros((0, 2, 2)))


def one_view_overlaps(view_x, view_y, uv_x: np.ndarray, uv_y: np.ndarray, pairs: np.ndarray,
                      radius_px: float, turned_down_x: np.ndarray | None = None,
                      sound: np.ndarray | None = None) -> OverlapCandidates:
    """Candidates for two beads seen as one, or as two distorted ones, in view X (module doc).

    ``pairs`` (M, 2) are the current (x, y) correspondences and ``sound`` (M,) whether each
    pair's crossing-line error is within its rays' uncertainty and neither detection is flagged
    occluded (default all); ``turned_down_x`` strong
    candidates of X the detector turned down (:attr:`rsa.detect.Beads2D.turned_down_uv`).

    * A Y detection without a partner ("lone") whose epipolar line passes within ``radius_px``
      of an X place (on the stretch where a bead can appear) makes a candidate with it and a
      second line: the place's current partner for a paired X detection (which keeps the first
      bead; the second is new), or each other lone line near it for a lone X detection or a
      turned-down candidate.
    * Two X detections closer than 3 radii (touching beads, deblended) whose pairs are not both
      sound are refitted jointly on their partners' lines, each keeping its own bead (only
      where the lines agree with the image: ``detected`` of
      :func:`rsa.detect_lines.split_on_lines`).

    The image fit decides which candidates, if any, are two beads.
    """
    td = np.zeros((0, 2)) if turned_down_x is None else np.asarray(turned_down_x, float)
    lk = np.ones(len(pairs), bool) if sound is None else np.asarray(sound, bool)
    paired_y = np.zeros(len(uv_y), bool)
    paired_y[pairs[:, 1]] = True
    partner = np.full(len(uv_x), -1)
    partner[pairs[:, 0]] = pairs[:, 1]
    lone = np.flatnonzero(~paired_y & np.isfinite(uv_y[:, 0]))
    sites = np.concatenate([uv_x, td])
    site_x = np.concatenate([np.arange(len(uv_x)), np.full(len(td), -1)])
    if len(uv_y) == 0:
        return OverlapCandidates.empty()
    combos = []                                   # (centre u, v, x first, x second, y1, y2)
    # every Y detection's line in X, once
    py_all, ny_all, len_all = epipolar_lines(view_y, view_x, uv_y)
    if lone.size and len(sites):
        px, nx, length = py_all[lone], ny_all[lone], len_all[lone]      # (L, 2), (L,)
        rel = sites[None] - px[:, None]                                  # (L, S, 2)
        dist = np.abs(np.einsum("lsi,li->ls", rel, nx))
        along = np.einsum("lsi,li->ls", rel, np.stack([nx[:, 1], -nx[:, 0]], -1))
        near = (dist <= radius_px) & (along >= -radius_px) \
            & (along <= length[:, None] + radius_px) & np.isfinite(sites[:, 0])[None]
        for si in np.flatnonzero(near.any(axis=0)):
            ls = lone[near[:, si]]
            xi = site_x[si]
            if xi >= 0 and partner[xi] >= 0:
                combos += [(*sites[si], xi, -1, partner[xi], j) for j in ls]
            else:
                combos += [(*sites[si], xi, -1, j, k) for n, j in enumerate(ls)
                           for k in ls[n + 1:]]
    # touching X detections whose pairs are not both sound
    px_ = pairs[:, 0]
    if len(pairs) > 1:
        d = np.linalg.norm(uv_x[px_][:, None] - uv_x[px_][None], axis=-1)
        i, j = np.nonzero(np.triu(d < 3.0 * radius_px, 1))
        weak = ~(lk[i] & lk[j])
        for a, b in zip(i[weak], j[weak], strict=True):
            mid = 0.5 * (uv_x[px_[a]] + uv_x[px_[b]])
            combos.append((*mid, px_[a], px_[b], pairs[a, 1], pairs[b, 1]))
    if not combos:
        return OverlapCandidates.empty()
    c = np.array(combos)
    y = c[:, 4:].astype(np.intp)
    return OverlapCandidates(c[:, :2], c[:, 2:4].astype(np.intp), y, py_all[y], ny_all[y])
