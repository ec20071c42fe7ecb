"""Benchmark: `rsa.triangulate.intersect_rays` vs `cv2.triangulatePoints` on 1 000 000 bead pairs.

Run with ``python benchmarks/bench_triangulate.py [--n N] [--repeats R]``.

Set-up (not timed): a uniplanar RSA geometry built with
:func:`rsa.synthetic.geometry.look_at_view` — one detector plane z = 0, two foci 1.5 m away at
±20° from the detector normal, 0.1 mm pixels — and N random bead positions in a 200 mm cube in
front of the detector. Each bead is projected exactly into both views (``view.project``); the
image points are turned into rays with ``view.rays`` for rsa, and into float64 C-contiguous 2×N
arrays for OpenCV, with ``P = view.projection_matrix()``.

Timed sections (best of `repeats`, same projections for both contenders):

* rsa:  ``points, cle = intersect_rays(o1, d1, o2, d2)`` on the (N, 3) ray arrays returned by
  ``view.rays`` — includes input validation, the closed-form midpoint and the crossing-line error.
* cv2:  ``X = cv2.triangulatePoints(P1, P2, uv1, uv2)`` followed by the homogeneous division
  ``(X[:3] / X[3]).T`` to obtain (N, 3) points — no CLE.

Checks (exit status 1 on failure): both contenders agree with each other and with the true
bead positions to 1e-6 mm; the CLE of the exact projections is below 1e-6 mm.
"""

from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np
from _timing import best_of

from rsa.synthetic.geometry import look_at_view
from rsa.triangulate import intersect_rays

TOL_MM = 1e-6


def build_views():
    """Uniplanar set-up: detector in z = 0, foci 1500 mm away at ±20° about the y axis."""
    views = []
    for name, sign in (("A", -1.0), ("B", 1.0)):
        ang = np.deg2rad(20.0) * sign
        focus = 1500.0 * np.array([np.sin(ang), 0.0, np.cos(ang)])
        views.append(look_at_view(focus_mm=focus, detector_centre_mm=[0.0, 0.0, 0.0],
                                  up=[0.0, 1.0, 0.0], pixel_spacing_mm=0.1, shape=(3000, 3000),
                                  detector_normal=[0.0, 0.0, 1.0], name=name))
    return views


def bench_setup(argv: list[str] | None, description: str, n_default: int):
    """Arguments (``--n``, ``--repeats``, ``--seed``), their random generator, the two views
    (:func:`build_views`) and ``n`` true bead positions in a 200 mm cube centred 150 mm in front
    of the detector: the set-up the triangulation benchmarks share."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--n", type=int, default=n_default, help="number of bead pairs")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats (best is reported)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    views = build_views()
    truth = rng.uniform(-100.0, 100.0, size=(args.n, 3)) + np.array([0.0, 0.0, 150.0])
    return args, rng, views, truth


def main(argv: list[str] | None = None) -> int:
    args, _, (va, vb), truth = bench_setup(argv, __doc__.splitlines()[0], 1_000_000)
    uv1, uv2 = va.project(truth), vb.project(truth)
    o1, d1 = va.rays(uv1)
    o2, d2 = vb.rays(uv2)
    P1, P2 = va.projection_matrix(), vb.projection_matrix()
    uv1_cv = np.ascontiguousarray(uv1.T)  # float64, 2×N
    uv2_cv = np.ascontiguousarray(uv2.T)

    def run_rsa():
        return intersect_rays(o1, d1, o2, d2)

    def run_cv2():
        X = cv2.triangulatePoints(P1, P2, uv1_cv, uv2_cv)
        return (X[:3] / X[3]).T

    t_rsa, (p_rsa, cle) = best_of(run_rsa, args.repeats)
    t_cv2, p_cv2 = best_of(run_cv2, args.repeats)

    err_pair = float(np.max(np.abs(p_rsa - p_cv2)))
    err_rsa = float(np.max(np.abs(p_rsa - truth)))
    err_cv2 = float(np.max(np.abs(p_cv2 - truth)))
    cle_max = float(np.max(cle))
    ok = max(err_pair, err_rsa, err_cv2, cle_max) < TOL_MM and np.isfinite(cle).all()

    print(f"bead pairs: {args.n:,}   repeats: {args.repeats} (best of)   numpy {np.__version__}"
          f"   opencv {cv2.__version__}")
    print(f"rsa.intersect_rays (points + CLE): {t_rsa * 1e3:9.1f} ms")
    print(f"cv2.triangulatePoints (points):    {t_cv2 * 1e3:9.1f} ms")
    print(f"speed-up rsa vs cv2: {t_cv2 / t_rsa:.2f}x")
    print(f"max |rsa - cv2| = {err_pair:.2e} mm, max |rsa - truth| = {err_rsa:.2e} mm, "
          f"max |cv2 - truth| = {err_cv2:.2e} mm, max CLE = {cle_max:.2e} mm "
          f"(tolerance {TOL_MM:g} mm)")
    print("result check:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
