"""Demo data sets built from packages and files users already have."""

from __future__ import annotations

from .av_digits import AVDigits, AVSplit, load_av_digits, load_fsdd, synthesize_spoken_digits
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
    "load_av_digits",
    "load_fsdd",
    "skeleton_adjacency",
    "synthesize_spoken_digits",
]
