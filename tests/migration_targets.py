"""Shared check of the issue-7 accuracy targets against a phantom's truth (test helper)."""

import numpy as np

from rsa.summary import truth_rows

KEYS = ("tx", "ty", "tz", "rx", "ry", "rz", "mtpm")


def assert_migration_targets(result, truth_path, reference: str = "REF") -> None:
    """Issue-7 targets, set for 0.143 mm pixels (stricter on the tests' coarser phantoms):
    translation RMS ≤ 0.02 mm per axis, rotation RMS ≤ 0.05°, |MTPM error| ≤ 0.03 mm."""
    rows = [r for r in truth_rows(result, truth_path) if r["exam"] != reference]
    err = np.array([[r[f"{k}_error"] for k in KEYS] for r in rows])
    rms = np.sqrt(np.mean(err ** 2, axis=0))
    assert np.all(rms[:3] <= 0.02), rms
    assert np.all(rms[3:6] <= 0.05), rms
    assert np.all(np.abs(err[:, 6]) <= 0.03), err[:, 6]
