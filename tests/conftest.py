"""Shared pytest setup: hypothesis profiles, thread count, device parametrization."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Private helper modules (servers run as child processes, shared references) are imported by
# the tests, never collected themselves (the test run collects doctests from every module).
collect_ignore_glob = ["*/_*.py"]

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=10,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=20,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ],
    ),
]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    """Run a test on the CPU and, where one exists, on a CUDA device."""
    return str(request.param)
