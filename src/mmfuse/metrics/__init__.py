"""Metrics: cross-modal retrieval and classification."""

from __future__ import annotations

from .classification import accuracy, f1_score
from .retrieval import RetrievalMetrics, retrieval_metrics

__all__ = ["RetrievalMetrics", "accuracy", "f1_score", "retrieval_metrics"]
