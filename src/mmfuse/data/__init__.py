"""Data sets built from packages and files users already have, and real benchmark loaders."""

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
from .utd_mhad import (
    TEST_SUBJECTS,
    TRAIN_SUBJECTS,
    UTDMHAD,
    UTDMHADError,
    collate_utd_mhad,
    skeleton_adjacency,
)

__all__ = [
    "TEST_SUBJECTS",
    "TRAIN_SUBJECTS",
    "UTDMHAD",
    "AVDigits",
    "AVSplit",
    "UTDMHADError",
    "collate_utd_mhad",
    "corrupt_images",
    "fsdd_speakers",
    "load_av_digits",
    "load_fsdd",
    "mix_noise",
    "skeleton_adjacency",
    "synthesize_spoken_digits",
]
