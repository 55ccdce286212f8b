"""Perception: sensors, files and HTTP APIs as timestamped tensors on one clock.

Every loader is an iterator of :class:`Sample` ``(data, timestamp, meta)`` and a context
manager; timestamps are seconds on :func:`clock` (monotonic, shared by all loaders). The
optional backends (OpenCV, sounddevice, soundfile, httpx) are imported when a loader is
constructed, not when this package is imported.
"""

from __future__ import annotations

from .api import ApiLoader
from .camera import CameraLoader
from .files import AudioFileLoader
from .microphone import MicrophoneLoader
from .sample import (
    DecodeError,
    Loader,
    Sample,
    SourceError,
    SourceTimeoutError,
    clock,
    wall_time,
)
from .sync import Synchronizer, SyncWindow
from .transforms import MFCC, LogMelSpectrogram, NormalizeFrames, Resample, ResizeFrames, resample

__all__ = [
    "MFCC",
    "ApiLoader",
    "AudioFileLoader",
    "CameraLoader",
    "DecodeError",
    "Loader",
    "LogMelSpectrogram",
    "MicrophoneLoader",
    "NormalizeFrames",
    "Resample",
    "ResizeFrames",
    "Sample",
    "SourceError",
    "SourceTimeoutError",
    "SyncWindow",
    "Synchronizer",
    "clock",
    "resample",
    "wall_time",
]
