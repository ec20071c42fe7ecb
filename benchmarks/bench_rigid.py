"""Benchmark: batched ``rsa.rigid.fit_rigid`` vs a Python loop of scipy ``Rotation.align_vectors``.

10 000 bodies × 8 beads, random rotations/translations plus 0.05 mm bead noise. Both methods get
the same data; scipy gets the centred coordinates (align_vectors solves rotation only, while
fit_rigid also returns translations, per-bead residuals and ME, all included in its time). Checks
that the rotations agree to 1e-9, prints the best-of-repeats timings and the speed ratio, and
exits non-zero if the check fails.

Run:  python benchmarks/bench_rigid.py [--bodies 10000] [--beads 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from _timing import best_of
from scipy.spatial.transform import Rotation

from rsa.rigid import fit_rigid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bodies", type=int, default=10_000)
    ap.add_argument("--beads", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    rng = np.random.default_rng(20261125)
    m, n = args.bodies, args.beads
    x = rng.normal(scale=15.0, size=(m, n, 3))
    R_true = Rotation.random(m, rng=rng).as_matrix()
    t_true = rng.normal(scale=20.0, size=(m, 3))
    y = np.einsum("bij,bnj->bni", R_true, x) + t_true[:, None, :]
    y += rng.normal(scale=0.05, size=y.shape)

    t_rsa, fit = best_of(lambda: fit_rigid(x, y), args.repeats)

    A = x - x.mean(axis=1, keepdims=True)
    B = y - y.mean(axis=1, keepdims=True)

    def scipy_loop():
        out = np.empty((m, 3, 3))
        for i in range(m):
            out[i] = Rotation.align_vectors(B[i], A[i])[0].as_matrix()  # B ≈ R A
        return out

    t_scipy, R_scipy = best_of(scipy_loop, max(1, min(args.repeats, 3)))

    err = float(np.abs(fit.rotation - R_scipy).max())
    ok = err < 1e-9
    print(f"bodies={m} beads={n}")
    print(f"rsa.rigid.fit_rigid (batched, R+t+residuals+ME): {t_rsa * 1e3:9.2f} ms")
    print(f"scipy Rotation.align_vectors (loop, R only):     {t_scipy * 1e3:9.2f} ms")
    print(f"speed ratio scipy/rsa:                           {t_scipy / t_rsa:9.1f}x"
          "  (target >= 100x)")
    print(f"max |R_rsa - R_scipy| = {err:.2e}  ->  {'OK' if ok else 'FAIL'} (tol 1e-9)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
