"""Camera, video file and network stream frames through OpenCV."""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import torch
from torch import Tensor

from .._checks import check_positive
from .._optional import require
from .sample import (
    DecodeError,
    Loader,
    Sample,
    SourceError,
    SourceTimeoutError,
    _check_count,
    clock,
)

__all__ = ["CameraLoader"]

_STREAM_SCHEMES = ("http", "https", "rtsp", "rtsps", "rtmp", "udp", "tcp", "srt")


def _kind_of(source: int | str | os.PathLike[str]) -> str:
    if isinstance(source, bool):
        raise TypeError(f"CameraLoader: expected `source` to be a device index, path or URL, got {source!r}.")
    if isinstance(source, int):
        if source < 0:
            raise ValueError(f"CameraLoader: expected a device index >= 0, got {source}.")
        return "device"
    if isinstance(source, os.PathLike):
        return "file"
    if not isinstance(source, str):
        raise TypeError(
            f"CameraLoader: expected `source` to be a device index, path or URL, got {type(source).__name__}."
        )
    if "://" in source:
        scheme = urlsplit(source).scheme.lower()
        if scheme not in _STREAM_SCHEMES:
            raise ValueError(
                f"CameraLoader: unsupported URL scheme {scheme!r} in {source!r}; expected one of "
                f"{list(_STREAM_SCHEMES)} (give local files as a plain path)."
            )
        return "stream"
    return "file"


def _looks_like_text(path: str) -> bool:
    """True for a file whose head is NUL-free UTF-8 (playlists and SDP files excepted)."""
    if os.path.splitext(path)[1].lower() in (".m3u", ".m3u8", ".sdp"):
        return False
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head or b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 4  # a character cut at the end of the head
    return True


class CameraLoader(Loader):
    """Frames from a camera device, a video file or a network stream, as (C, H, W) RGB tensors.

    The source is opened (and its first frame decoded) in the constructor, so a missing device,
    a missing, corrupt or non-video file, or a dead URL raises at once, naming the source.

    Timestamps are on :func:`clock`. For a video file they come from the container
    (``CAP_PROP_POS_MSEC``): ``timestamp = start + media_time``. For devices and streams they
    are the host clock when the frame was grabbed (the times OpenCV reports for live streams are
    made up); a background thread reads frames into a buffer of ``buffer_size`` frames, the
    oldest frame dropped when the consumer lags (counted in :attr:`dropped`).

    Args:
        source: Device index (``0``), video file path, or stream URL (``http://``, ``rtsp://``).
        size: ``(height, width)`` to resize to (area interpolation), or None to keep.
        fps: Keep at most this many frames per second (by timestamp), or None for all.
        dtype: ``torch.uint8`` (0..255) or a floating dtype (values in [0, 1]).
        open_timeout: Seconds to wait for a stream to open (OpenCV's FFmpeg backend).
        read_timeout: Seconds to wait for a frame from a live source.
        reconnect: How many times in a row to try reopening a live source that drops (the
            count restarts after each frame received); 0 ends with an error at the first drop.
        reconnect_delay: Seconds to wait before each reconnection attempt.
        buffer_size: Frames a live source buffers before dropping the oldest.
        start: Clock time of a file's first frame; defaults to :func:`clock` at opening.

    Meta keys: ``media_time`` (files: container seconds), ``frame`` (source frame number),
    ``dropped`` (live: frames dropped so far), ``reconnects`` (live: successful reopenings).

    Example:
        >>> with CameraLoader("clip.mp4", size=(120, 160), fps=10) as cam:  # doctest: +SKIP
        ...     for frame, t, meta in cam:
        ...         print(frame.shape, t)  # torch.Size([3, 120, 160]) 1234.56
    """

    kind = "frames"

    def __init__(
        self,
        source: int | str | os.PathLike[str],
        *,
        size: tuple[int, int] | None = None,
        fps: float | None = None,
        dtype: torch.dtype = torch.uint8,
        open_timeout: float = 10.0,
        read_timeout: float = 5.0,
        reconnect: int = 0,
        reconnect_delay: float = 0.5,
        buffer_size: int = 4,
        start: float | None = None,
    ) -> None:
        self._mode = _kind_of(source)
        super().__init__(os.fspath(source) if isinstance(source, os.PathLike) else source)  # type: ignore[arg-type]
        self._cap: Any = None
        self._thread: threading.Thread | None = None
        if size is not None:
            if not (isinstance(size, (tuple, list)) and len(size) == 2):
                raise ValueError(f"CameraLoader: expected `size` as (height, width), got {size!r}.")
            for s in size:
                _check_count(s, owner="CameraLoader", arg="size")
        if fps is not None:
            check_positive(fps, owner=self, arg="fps")
        if not isinstance(dtype, torch.dtype) or not (dtype == torch.uint8 or dtype.is_floating_point):
            raise TypeError(f"CameraLoader: expected `dtype` torch.uint8 or a floating dtype, got {dtype}.")
        for arg, value in (("open_timeout", open_timeout), ("read_timeout", read_timeout),
                           ("fps", fps), ("reconnect_delay", reconnect_delay)):
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"CameraLoader: expected `{arg}` to be finite, got {value!r}.")
        check_positive(open_timeout, owner=self, arg="open_timeout")
        check_positive(read_timeout, owner=self, arg="read_timeout")
        _check_count(reconnect, owner="CameraLoader", arg="reconnect", allow_zero=True)
        check_positive(reconnect_delay, owner=self, arg="reconnect_delay", allow_zero=True)
        _check_count(buffer_size, owner="CameraLoader", arg="buffer_size")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.fps = fps
        self.dtype = dtype
        self.open_timeout = float(open_timeout)
        self.read_timeout = float(read_timeout)
        self.reconnect = int(reconnect)
        self.reconnect_delay = float(reconnect_delay)
        self.buffer_size = int(buffer_size)
        self.dropped = 0
        self.reconnects = 0
        self._cv2 = require("cv2", feature="mmfuse.perception.CameraLoader")
        self._next_due = -float("inf")
        self._frame_no = 0
        self._buffer: deque[tuple[Tensor, float, int]] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._first: tuple[Any, float] | None = None
        if self._mode == "file":
            if not os.path.exists(self.source):
                raise FileNotFoundError(f"CameraLoader: video file not found: {self.source!r}.")
            if os.path.isdir(self.source):
                raise IsADirectoryError(f"CameraLoader: expected a video file, got a directory: {self.source!r}.")
            if not os.path.isfile(self.source):  # a FIFO or device would block the checks below
                raise SourceError(
                    f"CameraLoader: {self.source!r} is not a regular file (a FIFO, socket or "
                    f"device); expected a video file."
                )
            if _looks_like_text(self.source):
                # FFmpeg would "play" a text file through its tty demuxer
                raise DecodeError(f"CameraLoader: {self.source!r} is a text file, not a video.")
        try:
            self._cap = self._open()
            ok, frame = self._cap.read()
            if not ok or frame is None:
                if self._mode == "file":
                    raise DecodeError(
                        f"CameraLoader: {self.source!r} opened but gave no frame (corrupt or not a video file)."
                    )
                raise SourceError(
                    f"CameraLoader: {self.source!r} opened but gave no frame within "
                    f"read_timeout={self.read_timeout}s."
                )
            self._first = (frame, self._time_of_frame())
            self.start = float(start) if start is not None else clock()
            self._closed = False
            if self._mode != "file":
                self._thread = threading.Thread(
                    target=self._run, name=f"CameraLoader({self.source})", daemon=True
                )
                self._thread.start()
        except BaseException:
            self._closed = True
            self._release()
            raise

    # -- opening -----------------------------------------------------------------------------
    def _open(self) -> Any:
        cv2 = self._cv2
        if self._mode == "device":
            cap = cv2.VideoCapture(int(self.source))
            if not cap.isOpened():
                cap.release()
                raise SourceError(f"CameraLoader: cannot open camera device {self.source} (no such device or busy).")
            return cap
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout * 1000),
        ]
        t0 = clock()
        cap = cv2.VideoCapture(str(self.source), cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            if self._mode == "file":
                raise DecodeError(
                    f"CameraLoader: cannot open {self.source!r} as a video (corrupt or not a video file)."
                )
            waited = clock() - t0
            if waited >= self.open_timeout * 0.9:
                raise SourceTimeoutError(
                    f"CameraLoader: stream {self.source!r} did not open within "
                    f"open_timeout={self.open_timeout}s."
                )
            raise SourceError(f"CameraLoader: cannot open stream {self.source!r} (server down or not a video stream).")
        return cap

    def _time_of_frame(self) -> float:
        if self._mode == "file":
            return float(self._cap.get(self._cv2.CAP_PROP_POS_MSEC)) / 1000.0
        return clock()

    # -- frames ------------------------------------------------------------------------------
    def _convert(self, frame: Any) -> Tensor:
        cv2 = self._cv2
        if self.size is not None and (frame.shape[0], frame.shape[1]) != self.size:
            frame = cv2.resize(frame, (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA)
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        else:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        x = torch.from_numpy(frame).permute(2, 0, 1)  # (H, W, C) -> (C, H, W), a view
        if self.dtype != torch.uint8:
            x = x.to(self.dtype).div_(255.0)
        return x

    def _keep(self, t: float) -> bool:
        """Frame-rate subsampling by timestamp."""
        if self.fps is None:
            return True
        if t + 1e-6 < self._next_due:
            return False
        period = 1.0 / self.fps
        if self._next_due == -float("inf"):
            self._next_due = t + period
        else:  # stay on the grid, but never fall more than half a period behind
            self._next_due = max(self._next_due + period, t + 0.5 * period)
        return True

    def _read(self) -> Sample:
        if self._mode == "file":
            return self._read_file()
        return self._read_live()

    def _read_file(self) -> Sample:
        cap = self._cap
        while True:
            if self._first is not None:
                frame, media_time = self._first
                self._first = None
            else:
                if not cap.grab():
                    raise StopIteration
                media_time = self._time_of_frame()
                frame = None
            self._frame_no += 1
            if not self._keep(media_time):
                continue
            if frame is None:
                ok, frame = cap.retrieve()
                if not ok:
                    raise DecodeError(f"CameraLoader: cannot decode frame {self._frame_no - 1} of {self.source!r}.")
            meta = self._meta(media_time=media_time, frame=self._frame_no - 1)
            return Sample(self._convert(frame), self.start + media_time, meta)

    # -- live sources: a reader thread into a bounded buffer ---------------------------------
    def _run(self) -> None:
        attempts = 0  # consecutive failed reads / reopenings
        try:
            while not self._stop.is_set():
                if self._first is not None:
                    frame, t = self._first
                    self._first = None
                    ok = True
                else:
                    ok, frame = self._cap.read()
                    t = clock()
                if not ok or frame is None:
                    if self._stop.is_set():
                        return
                    if attempts >= self.reconnect:
                        raise SourceError(
                            f"CameraLoader: stream {self.source!r} dropped after frame "
                            f"{self._frame_no} (no frame within read_timeout={self.read_timeout}s "
                            f"or connection closed; {attempts} reconnection attempt(s) made, "
                            f"reconnect={self.reconnect})."
                        )
                    self._cap.release()
                    self._cap = None
                    if self._stop.wait(self.reconnect_delay):
                        return
                    attempts += 1
                    try:
                        self._cap = self._open()
                        self.reconnects += 1
                    except SourceError:
                        if attempts >= self.reconnect:
                            raise
                        self._cap = _DeadCapture()  # its read fails: the next attempt follows
                    continue
                attempts = 0
                self._frame_no += 1
                if not self._keep(t):
                    continue
                x = self._convert(frame)
                with self._cond:
                    if len(self._buffer) >= self.buffer_size:
                        self._buffer.popleft()
                        self.dropped += 1
                    self._buffer.append((x, t, self._frame_no - 1))
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the consumer
            with self._cond:
                self._error = exc
                self._cond.notify_all()
        finally:
            with self._cond:
                self._cond.notify_all()

    def _read_live(self) -> Sample:
        # a reconnection may take reconnect_delay + open_timeout on top of the read timeout
        budget = self.read_timeout + 1.0
        if self.reconnect:
            budget += self.reconnect * (self.reconnect_delay + self.open_timeout)
        deadline = clock() + budget
        with self._cond:
            while not self._buffer:
                if self._error is not None:
                    raise self._error
                if self._thread is None or not self._thread.is_alive():
                    raise SourceError(f"CameraLoader: stream {self.source!r} stopped.")
                left = deadline - clock()
                if left <= 0:
                    raise SourceTimeoutError(
                        f"CameraLoader: no frame from {self.source!r} within {budget:.1f}s "
                        f"(read_timeout={self.read_timeout}s)."
                    )
                self._cond.wait(min(left, 0.1))
            x, t, frame_no = self._buffer.popleft()
        meta = self._meta(frame=frame_no, dropped=self.dropped, reconnects=self.reconnects)
        return Sample(x, t, meta)

    def _release(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # OpenCV's read returns within read_timeout (FFmpeg); a device read within a frame.
            thread.join(self.read_timeout + self.open_timeout + 1.0)
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        with self._cond:
            self._buffer.clear()

    def extra_repr(self) -> str:
        return f"size={self.size}, fps={self.fps}, dtype={self.dtype}"


class _DeadCapture:
    """Stands in for a capture that failed to reopen: every read fails."""

    def read(self) -> tuple[bool, None]:
        return False, None

    def release(self) -> None:
        pass
