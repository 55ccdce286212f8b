"""Benchmarks on real data sets: ``mmfuse bench utd-mhad``."""

from __future__ import annotations

from . import utd_mhad

__all__ = ["utd_mhad"]
