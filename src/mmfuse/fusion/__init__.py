"""Fusion at the data, feature and decision levels, for any number of named modalities."""

from __future__ import annotations

from .concat import ConcatFusion

__all__ = ["ConcatFusion"]
