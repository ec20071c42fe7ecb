"""Double-exam precision on phantom studies vs the precision implied by the image noise (issue 7).

Run: ``python benchmarks/bench_precision.py [--seeds 4] [--setup uniplanar] [--variant implant]
[--mc 40]``

Each seed is one phantom subject (bead placement, exam geometry, repositioning and image noise
all differ); the bundled definition gives every follow-up a double exam, so ``--seeds 4`` pools
12 double exams (implant) for the precision of each motion component.

*Observed*: SD of the double-exam differences (double − partner) from the full pipeline; the
true difference is exactly zero, so this is pure measurement error.

*Implied by the noise*: the same analysis repeated ``--mc`` times on the measured 3D beads
perturbed by their propagated uncertainty (per bead, from the detector's calibrated
``sigma_px`` through the calibrated views: ``rsa.pipeline._triangulation_sigma``, isotropic
σ/√3 per axis), i.e. the spread the image noise alone produces in the motion components.

Check (exit 1 on failure): observed SD ≤ 1.5 × implied SD for every translation and rotation
component (issue 7). The observed SD of n differences has a relative sampling SD of about
1/√(2(n−1)); the table prints it so a marginal ratio can be judged.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from rsa.errors import RsaWarning
from rsa.pipeline import analyse_study
from rsa.series import COMPONENTS, analyse_subject, double_exam_differences
from rsa.synthetic import write_study


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--setup", default="uniplanar")
    ap.add_argument("--variant", default="implant")
    ap.add_argument("--mc", type=int, default=40)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="rsa-precision-"))
    rng = np.random.default_rng(0)
    observed, implied = [], []
    for seed in range(args.seeds):
        study = write_study(base / f"s{seed}", setup=args.setup, variant=args.variant,
                            seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RsaWarning)
            res = analyse_study(study / "study.toml", base / f"r{seed}", resume=False)
        spec = res.study.motions[0]
        for subj, series in zip(res.study.subjects, res.series, strict=True):
            diff, _ = double_exam_differences(series, spec)
            observed.append(diff)
            meas = [res.measurements[f"{subj.id}/{e.id}"] for e in subj.exams]
            sig = [np.nan_to_num(m.sigma_mm, nan=0.0) for m in meas]
            for _ in range(args.mc):
                pts = [m.points_mm + rng.normal(size=m.points_mm.shape) * s[:, None] / np.sqrt(3)
                       for m, s in zip(meas, sig, strict=True)]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RsaWarning)
                    sim = analyse_subject(subj, pts, res.study.motions, res.study.thresholds,
                                          sigma_mm=sig)
                sim_diff = double_exam_differences(sim, spec)[0]
                if sim_diff.shape == diff.shape:  # same double pairs fitted
                    implied.append(sim_diff - diff)  # the noise's effect on each difference
        print(f"seed {seed}: {len(observed[-1])} double exams analysed", flush=True)
    obs = np.concatenate(observed)
    imp = np.concatenate(implied)
    obs, imp = obs[np.all(np.isfinite(obs), 1)], imp[np.all(np.isfinite(imp), 1)]
    n = len(obs)
    sd_obs = obs.std(axis=0, ddof=1)
    # implied: RMS of the noise's effect on a double-exam difference (zero-mean by construction)
    sd_imp = np.sqrt(np.mean(imp ** 2, axis=0))
    ratio = sd_obs / sd_imp
    rel = 1 / np.sqrt(2 * (n - 1))
    print(f"\n{args.setup} {args.variant}: n = {n} double exams; observed SD relative sampling "
          f"SD ≈ {rel:.0%}")
    print(f"{'component':<10}{'observed SD':>13}{'implied SD':>13}{'ratio':>8}")
    for k, c in enumerate(COMPONENTS):
        unit = "mm" if k < 3 else "deg"
        print(f"{c + ' (' + unit + ')':<10}{sd_obs[k]:>13.4f}{sd_imp[k]:>13.4f}{ratio[k]:>8.2f}")
    ok = bool(np.all(ratio <= 1.5))
    print("OK" if ok else "FAILED: observed precision worse than 1.5 × the noise-implied one")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
