"""Microphone capture through sounddevice (PortAudio) into a bounded ring buffer."""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import Any

import numpy as np
import torch

from .._checks import check_choice, check_positive
from .._optional import require
from .sample import Loader, Sample, SourceError, SourceTimeoutError, _check_count, clock

__all__ = ["MicrophoneLoader"]


class MicrophoneLoader(Loader):
    """Audio blocks from an input device, as (C, N) float32 tensors in [-1, 1].

    PortAudio calls back on its own thread with each block; the block goes into a ring buffer
    holding ``buffer_seconds`` of audio. When the consumer falls behind, the oldest block is
    dropped and counted in :attr:`overflows` (and ``meta["overflows"]``); blocks PortAudio itself
    lost are counted in :attr:`input_overflows`. Nothing is dropped silently.

    Timestamps (on :func:`clock`) are the time of each block's first sample: anchored to the
    host clock at the first callback (minus the block's duration), then advanced
    by the sample count so they do not jitter; re-anchored (counted in :attr:`resyncs`) when a
    block would end after the callback that delivered it (a burst of queued blocks), or when
    they fall more than ``0.1 s`` plus one block behind the host clock (samples lost).

    Args:
        device: PortAudio device index or name substring; None for the default input.
        sample_rate: Samples per second.
        channels: Number of input channels.
        block_size: Samples per block (per channel).
        buffer_seconds: Ring buffer capacity in seconds (at least one block).
        read_timeout: Seconds :meth:`__next__` waits for a block before raising.
        latency: PortAudio's suggested latency, seconds or ``"low"``/``"high"`` (``"high"``
            can delay the first block by seconds on ALSA through PulseAudio).

    Meta keys: ``sample_rate``, ``offset`` (first sample's index since start), ``overflows``,
    ``input_overflows``, ``host_time`` (clock time of the callback).

    Example:
        >>> with MicrophoneLoader(sample_rate=16000, block_size=1600) as mic:  # doctest: +SKIP
        ...     block, t, meta = next(mic)  # (1, 1600) float32, t on clock()
    """

    kind = "audio"

    def __init__(
        self,
        device: int | str | None = None,
        *,
        sample_rate: int = 16000,
        channels: int = 1,
        block_size: int = 1024,
        buffer_seconds: float = 2.0,
        read_timeout: float = 2.0,
        latency: float | str = "low",
    ) -> None:
        if device is not None and (isinstance(device, bool) or not isinstance(device, (int, str))):
            raise TypeError(
                f"MicrophoneLoader: expected `device` to be a device index (int), a name (str) or "
                f"None, got {device!r}."
            )
        super().__init__("default input" if device is None else str(device))
        for name, count in (("sample_rate", sample_rate), ("channels", channels),
                            ("block_size", block_size)):
            _check_count(count, owner="MicrophoneLoader", arg=name)
        for name, value in (("buffer_seconds", buffer_seconds), ("read_timeout", read_timeout)):
            check_positive(value, owner=self, arg=name)
            if not math.isfinite(value):
                raise ValueError(f"MicrophoneLoader: expected `{name}` to be finite, got {value!r}.")
        if isinstance(latency, str):
            check_choice(latency, ("low", "high"), owner=self, arg="latency")
        else:
            check_positive(latency, owner=self, arg="latency", allow_zero=True)
        self.device = device
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.block_size = int(block_size)
        self.buffer_seconds = float(buffer_seconds)
        self.read_timeout = float(read_timeout)
        self.capacity = max(1, math.ceil(buffer_seconds * sample_rate / block_size))
        self.overflows = 0
        self.input_overflows = 0
        self.resyncs = 0
        self._blocks: deque[tuple[np.ndarray, float, int, float]] = deque()
        self._cond = threading.Condition()
        self._started = threading.Event()
        self._next_t: float | None = None
        self._started_at = 0.0
        self._offset = 0
        self._stream: Any = None
        sd = require("sounddevice", feature="mmfuse.perception.MicrophoneLoader")
        try:
            self._stream = sd.InputStream(
                device=device, samplerate=self.sample_rate, channels=self.channels,
                blocksize=self.block_size, dtype="float32", latency=latency,
                callback=self._callback,
            )
            self._started_at = clock()
            self._stream.start()
            self._closed = False
        except (sd.PortAudioError, ValueError) as exc:
            self._closed = True
            self._release()
            raise SourceError(f"MicrophoneLoader: cannot open input device {self.source!r}: {exc}") from exc
        except BaseException:
            self._closed = True
            self._release()
            raise

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        now = clock()
        if status.input_overflow:
            self.input_overflows += 1
        # PortAudio's inputBufferAdcTime is unreliable on some hosts (ALSA through PulseAudio
        # reports blocks half a second old at start-up), so the block is taken as just complete.
        host_start = now - frames / self.sample_rate
        block = indata.T.copy()  # (frames, C) -> (C, frames), a copy: PortAudio reuses indata
        with self._cond:
            duration = frames / self.sample_rate
            if self._next_t is None:  # no sample predates the start of the stream
                self._next_t = max(host_start, self._started_at)
            elif self._next_t + duration > now + 0.002 or host_start - self._next_t > 0.1 + duration:
                # ahead of the host clock (a burst of queued blocks) or behind it (lost samples)
                self._next_t = min(host_start, now - duration)
                self.resyncs += 1
            t = self._next_t
            self._next_t += frames / self.sample_rate
            if len(self._blocks) >= self.capacity:
                self._blocks.popleft()
                self.overflows += 1
            self._blocks.append((block, t, self._offset, now))
            self._offset += frames
            self._cond.notify_all()
        self._started.set()

    def wait_started(self, timeout: float | None = None) -> bool:
        """Block until the first audio callback ran; returns False on timeout."""
        return self._started.wait(self.read_timeout if timeout is None else timeout)

    def _read(self) -> Sample:
        deadline = clock() + self.read_timeout
        with self._cond:
            while not self._blocks:
                left = deadline - clock()
                if left <= 0:
                    raise SourceTimeoutError(
                        f"MicrophoneLoader: no audio from {self.source!r} within "
                        f"read_timeout={self.read_timeout}s."
                    )
                self._cond.wait(left)
            block, t, offset, host = self._blocks.popleft()
            overflows = self.overflows
        meta = self._meta(sample_rate=self.sample_rate, offset=offset, overflows=overflows,
                          input_overflows=self.input_overflows, host_time=host)
        return Sample(torch.from_numpy(block), t, meta)

    def _release(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.abort(ignore_errors=True)
            stream.close(ignore_errors=True)
        with self._cond:
            self._blocks.clear()
