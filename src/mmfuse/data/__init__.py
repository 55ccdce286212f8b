"""Demo data sets built from packages and files users already have."""

from __future__ import annotations

from .av_digits import (
    AVDigits,
    AVSplit,
    corrupt_images,
    fsdd_speakers,
    load_av_digits,
    load_fsdd,
    mix_noise,
    synthesize_spoken_digits,
)

__all__ = [
    "AVDigits", "AVSplit", "corrupt_images", "fsdd_speakers", "load_av_digits", "load_fsdd",
    "mix_noise", "synthesize_spoken_digits",
]
