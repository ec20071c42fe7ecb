"""Benchmark: `rsa.triangulate_ml.triangulate_ml` (σ-weighted reprojection) vs
`cv2.triangulatePoints` (linear, unweighted) and the rays' midpoint on noisy bead pairs.

Run with ``python benchmarks/bench_triangulate_ml.py [--n N] [--repeats R]``.

Set-up (not timed): the uniplanar geometry of ``bench_triangulate.py`` and N random beads in a
200 mm cube in front of the detector. Each bead's exact projections get Gaussian noise: in half
of the beads view A's centre is 10× less certain than view B's (σ 0.3 vs 0.03 px, a bead next
to a screw head in one view), in the other half the other way round; per axis. rsa is given
these σ; OpenCV's linear triangulation and the midpoint (``rsa.triangulate.intersect_rays``)
have no use for them.

Timed (best of `repeats`, same noisy centres):

* rsa: ``triangulate_ml(P, uv, sigma)`` — points and their covariance (validation, start from
  the rays' least-squares point, Gauss–Newton to convergence).
* cv2: ``cv2.triangulatePoints(P1, P2, uv1, uv2)`` and the homogeneous division.

Checks (exit status 1 on failure):

* the weighted points' errors match their predicted covariance: the mean Mahalanobis distance²
  is within 4 SD (√(6/N)) of 3;
* their RMS error across the epipolar plane (y, the coordinate both views measure) is at most
  that of the prediction for the ideal weighting, 1/√(1/σ_A² + 1/σ_B²) magnified, within 4 SD
  of the RMS estimate, and at least 3× smaller than cv2's and the midpoint's (for 10:1 σ the
  ideal factor is ≈ 5; the midpoint keeps half of the poor view's error);
* on exact centres all three agree with the truth to 1e-6 mm.

The speed ratio to cv2 is printed (rsa does more: iterations and covariances), not checked.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
from _timing import best_of
from bench_triangulate import bench_setup

from rsa.triangulate import intersect_rays
from rsa.triangulate_ml import triangulate_ml

TOL_MM = 1e-6


def main(argv: list[str] | None = None) -> int:
    args, rng, (va, vb), truth = bench_setup(argv, __doc__.splitlines()[0], 200_000)
    n = args.n
    exact = np.stack([va.project(truth), vb.project(truth)], axis=1)      # (N, 2, 2)
    sig = np.empty((n, 2, 2))
    poor_a = np.arange(n) < n // 2
    sig[:, 0] = np.where(poor_a, 0.3, 0.03)[:, None]
    sig[:, 1] = np.where(poor_a, 0.03, 0.3)[:, None]
    uv = exact + sig * rng.normal(size=exact.shape)
    P = np.stack([va.projection_matrix(), vb.projection_matrix()])
    uv1_cv, uv2_cv = (np.ascontiguousarray(uv[:, k].T) for k in range(2))

    def run_rsa():
        return triangulate_ml(P, uv, sig)

    def run_cv2():
        X = cv2.triangulatePoints(P[0], P[1], uv1_cv, uv2_cv)
        return (X[:3] / X[3]).T

    t_rsa, (p_rsa, cov) = best_of(run_rsa, args.repeats)
    t_cv2, p_cv2 = best_of(run_cv2, args.repeats)
    p_mid, _ = intersect_rays(*va.rays(uv[:, 0]), *vb.rays(uv[:, 1]))

    e = p_rsa - truth
    maha = np.einsum("ni,nij,nj->n", e, np.linalg.inv(cov), e)
    maha_ok = abs(maha.mean() - 3.0) < 4 * np.sqrt(6.0 / n)
    rms_y = {name: float(np.sqrt(np.mean((p - truth)[:, 1] ** 2)))
             for name, p in (("rsa", p_rsa), ("cv2", p_cv2), ("midpoint", p_mid))}
    pred_y = float(np.sqrt(np.mean(cov[:, 1, 1])))
    # the RMS of n squares has a relative SD of about √(2/n)/2 for a Gaussian
    ideal_ok = rms_y["rsa"] <= pred_y * (1 + 4 * np.sqrt(2.0 / n) / 2)
    gain_ok = min(rms_y["cv2"], rms_y["midpoint"]) >= 3 * rms_y["rsa"]

    p0, _ = triangulate_ml(P, exact, sig)
    X0 = cv2.triangulatePoints(P[0], P[1], np.ascontiguousarray(exact[:, 0].T),
                               np.ascontiguousarray(exact[:, 1].T))
    exact_err = max(float(np.max(np.abs(p0 - truth))),
                    float(np.max(np.abs((X0[:3] / X0[3]).T - truth))))
    ok = maha_ok and ideal_ok and gain_ok and exact_err < TOL_MM

    print(f"bead pairs: {n:,}   repeats: {args.repeats} (best of)   numpy {np.__version__}"
          f"   opencv {cv2.__version__}")
    print(f"rsa.triangulate_ml (points + covariance): {t_rsa * 1e3:8.1f} ms")
    print(f"cv2.triangulatePoints (points):           {t_cv2 * 1e3:8.1f} ms")
    print(f"time rsa / cv2: {t_rsa / t_cv2:.2f}")
    print(f"RMS error across the epipolar plane (y), µm: rsa {1e3 * rms_y['rsa']:.2f} "
          f"(predicted {1e3 * pred_y:.2f}), cv2 {1e3 * rms_y['cv2']:.2f}, "
          f"midpoint {1e3 * rms_y['midpoint']:.2f}")
    print(f"mean Mahalanobis² of rsa's errors: {maha.mean():.3f} (3 ± {4 * np.sqrt(6.0 / n):.3f})")
    print(f"exact centres: max |error| {exact_err:.2e} mm (tolerance {TOL_MM:g} mm)")
    print("result check:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
