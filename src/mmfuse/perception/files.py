"""Audio files (WAV, FLAC, OGG) through soundfile, streamed in blocks or whole."""

from __future__ import annotations

import math
import os
import stat
from typing import Any

import numpy as np
import torch

from .._optional import require
from .sample import DecodeError, Loader, Sample, SourceError, _check_count, clock, wall_time

__all__ = ["AudioFileLoader"]


class AudioFileLoader(Loader):
    """An audio file as (C, N) float32 blocks, or as one (C, S) sample in whole-file mode.

    The file is opened in the constructor (a missing or undecodable file, or a path that is not
    a regular file (a directory, FIFO or device), raises at once, naming it) and read in chunks of about 65,536 frames cut into blocks, so memory stays bounded
    however long the file. Blocks are views into their chunk.

    Args:
        path: WAV, FLAC or OGG file (anything libsndfile reads).
        block_size: Samples per block (per channel); None reads the whole file as one sample.
            The last block may be shorter.
        start: Clock time of the first sample; defaults to :func:`clock` at opening. Give two
            loaders the same ``start`` to put a video file and its audio on one timeline.

    Meta keys: ``sample_rate``, ``offset`` (first sample's index in the file), ``media_time``
    (seconds into the file), ``frames`` (total samples in the file).

    Example:
        >>> with AudioFileLoader("speech.wav", block_size=1600) as audio:  # doctest: +SKIP
        ...     for block, t, meta in audio:
        ...         print(block.shape, meta["media_time"])  # torch.Size([1, 1600]) 0.0
    """

    kind = "audio"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        block_size: int | None = None,
        start: float | None = None,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"AudioFileLoader: expected `path` to be a str or path, got {type(path).__name__}.")
        super().__init__(str(os.fspath(path)))
        self._file: Any = None
        if block_size is not None:
            _check_count(block_size, owner="AudioFileLoader", arg="block_size")
        if start is not None:
            if isinstance(start, bool) or not isinstance(start, (int, float)):
                raise TypeError(f"AudioFileLoader: expected `start` to be a number or None, got {start!r}.")
            if not math.isfinite(start):
                raise ValueError(f"AudioFileLoader: expected `start` to be finite, got {start!r}.")
        self.block_size = block_size
        sf = require("soundfile", feature="mmfuse.perception.AudioFileLoader")
        try:
            mode = os.stat(self.source).st_mode
        except FileNotFoundError:
            raise FileNotFoundError(f"AudioFileLoader: audio file not found: {self.source!r}.") from None
        except OSError as exc:
            raise SourceError(f"AudioFileLoader: cannot open {self.source!r}: {exc.strerror}.") from None
        if not stat.S_ISREG(mode):  # a FIFO or device would block or never end; refuse at once
            raise SourceError(
                f"AudioFileLoader: {self.source!r} is not a regular file ({_kind(mode)}); "
                f"expected an audio file."
            )
        try:
            self._file = sf.SoundFile(self.source, "r")
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise DecodeError(
                f"AudioFileLoader: cannot decode {self.source!r} as audio (corrupt or unsupported "
                f"format): {exc}"
            ) from exc
        self._closed = False
        self.sample_rate = int(self._file.samplerate)
        self.channels = int(self._file.channels)
        self.frames = int(self._file.frames)
        self.start = clock() if start is None else float(start)
        self._offset = 0
        # blocks are cut from chunks of about 64k frames: fewer libsndfile calls per block
        self._chunk_frames = 0 if block_size is None else block_size * max(1, 65536 // block_size)
        self._chunk: np.ndarray = np.zeros((0, self.channels), np.float32)
        self._pos = 0

    def _read(self) -> Sample:
        if self.block_size is None:  # whole file
            if self._offset >= self.frames:
                raise StopIteration
            data = self._read_frames(self.frames)
        else:
            if self._pos >= len(self._chunk):
                self._chunk = self._read_frames(self._chunk_frames)
                self._pos = 0
                if len(self._chunk) == 0:
                    raise StopIteration
            data = self._chunk[self._pos:self._pos + self.block_size]
            self._pos += len(data)
        if len(data) == 0:
            raise StopIteration
        offset = self._offset
        self._offset += len(data)
        media_time = offset / self.sample_rate
        meta = {"source": self.source, "index": self._index, "wall_time": wall_time(),
                "sample_rate": self.sample_rate, "offset": offset, "media_time": media_time,
                "frames": self.frames}
        return Sample(torch.from_numpy(data.T), self.start + media_time, meta)  # (C, N) view

    def _read_frames(self, n: int) -> np.ndarray:
        try:
            return self._file.read(n, dtype="float32", always_2d=True)  # (N, C)
        except RuntimeError as exc:
            raise DecodeError(
                f"AudioFileLoader: cannot decode {self.source!r} at sample {self._offset}: {exc}"
            ) from exc

    def _release(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.close()


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"  # pragma: no cover - no other kind on Linux
