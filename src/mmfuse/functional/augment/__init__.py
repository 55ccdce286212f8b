"""Paired augmentation of aligned modalities: mixup with one draw for every modality, and time
jitter applied alike to every time-aligned stream."""

from __future__ import annotations

from .paired import (
    PairedMixup,
    TimeJitter,
    paired_mixup,
    time_jitter,
)

__all__ = ["PairedMixup", "TimeJitter", "paired_mixup", "time_jitter"]
