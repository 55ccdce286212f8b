"""Root pytest configuration: names available to the docstring examples (doctests)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace: dict) -> None:
    doctest_namespace["torch"] = torch
