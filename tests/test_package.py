"""Package-level checks: version, error hierarchy, CLI entry point."""

import subprocess
import sys

import pytest

import rsa
from rsa import errors


def test_error_hierarchy():
    assert issubclass(errors.ShapeError, errors.RsaError)
    assert issubclass(errors.ShapeError, ValueError)
    for cls in (errors.InputError, errors.CalibrationError, errors.EstimationError):
        assert issubclass(cls, errors.RsaError)
    assert issubclass(errors.RsaWarning, UserWarning)


def test_cli_version():
    out = subprocess.run(
        [sys.executable, "-m", "rsa", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"rsa {rsa.__version__}"


@pytest.mark.parametrize("bad", ["--no-such-option"])
def test_cli_bad_option_exits_nonzero(bad):
    out = subprocess.run([sys.executable, "-m", "rsa", bad], capture_output=True, text=True)
    assert out.returncode != 0
