"""Fusion at the data, feature and decision levels, for any number of named modalities."""

from __future__ import annotations

from .concat import ConcatFusion
from .data_level import DataLevelFusion
from .decision_level import DecisionFusion

__all__ = ["ConcatFusion", "DataLevelFusion", "DecisionFusion"]
