"""Shared test configuration: deterministic hypothesis profile and a seeded RNG fixture."""

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "rsa", derandomize=True, deadline=None, max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("rsa")


@pytest.fixture
def rng() -> np.random.Generator:
    """A fixed-seed generator so every failure is reproducible."""
    return np.random.default_rng(20261125)
