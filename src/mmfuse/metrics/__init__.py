"""Metrics: cross-modal retrieval, classification, and robustness to missing, corrupted and
adversarial modalities."""

from __future__ import annotations

from .classification import accuracy, f1_score
from .retrieval import RetrievalMetrics, retrieval_metrics
from .robustness import (
    Corruption,
    RobustnessRow,
    RobustnessTable,
    fgsm,
    pgd,
    plot_robustness,
    robustness,
)

__all__ = [
    "Corruption",
    "RetrievalMetrics",
    "RobustnessRow",
    "RobustnessTable",
    "accuracy",
    "f1_score",
    "fgsm",
    "pgd",
    "plot_robustness",
    "retrieval_metrics",
    "robustness",
]
