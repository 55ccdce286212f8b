"""The sample every loader yields, the one clock they share, and the loader protocol."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

__all__ = [
    "DecodeError",
    "Loader",
    "Sample",
    "SourceError",
    "SourceTimeoutError",
    "clock",
    "wall_time",
]


def clock() -> float:
    """Seconds on the monotonic clock shared by every loader (``time.monotonic``).

    All :attr:`Sample.timestamp` values are on this clock, so samples from different loaders
    in one process can be compared and aligned directly. It has no fixed epoch: use
    ``meta["wall_time"]`` (``time.time()`` at capture) to relate a sample to calendar time.
    """
    return time.monotonic()


def wall_time() -> float:
    """Seconds since the Unix epoch (``time.time``); for ``meta["wall_time"]`` only."""
    return time.time()


class Sample(NamedTuple):
    """One timestamped item from a loader.

    Attributes:
        data: A tensor (frames (C, H, W), audio blocks (C, N)) or, for :class:`ApiLoader`, the
            parsed Python value.
        timestamp: Seconds on :func:`clock` (for audio, the time of the block's first sample).
        meta: Source details: always ``"source"``, ``"index"`` and ``"wall_time"``; loaders
            add their own keys (documented on each loader).
    """

    data: Any
    timestamp: float
    meta: dict[str, Any]


class SourceError(OSError):
    """A source cannot be opened or read: missing device, dead server, dropped stream."""


class SourceTimeoutError(SourceError, TimeoutError):
    """A source did not answer within its timeout."""


class DecodeError(SourceError, ValueError):
    """A source answered but its content cannot be decoded (corrupt file, invalid JSON)."""


_L = TypeVar("_L", bound="Loader")


def _check_count(value: Any, *, owner: str, arg: str, allow_zero: bool = False) -> None:
    """A size or count: an int (bool refused, TypeError), positive or non-negative (ValueError)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: expected `{arg}` to be an int, got {value!r}.")
    if value < (0 if allow_zero else 1):
        want = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{owner}: expected `{arg}` to be {want} int, got {value!r}.")


class Loader:
    """Base of every loader: an iterator of :class:`Sample` and a context manager.

    A loader acquires its device, thread or connection in ``__init__`` (so a bad source fails
    at construction, naming it) and releases it in :meth:`close`, which runs on ``with`` exit,
    when iteration ends, and when reading raises. ``close`` is idempotent; a closed loader
    yields nothing more.

    Subclasses call ``super().__init__(source)``, acquire their resource and then set
    ``self._closed = False`` (until then ``close`` has nothing to release), and implement
    ``_read() -> Sample`` (raise ``StopIteration`` at the end) and ``_release()``. ``kind`` tells the :class:`Synchronizer` how to window the samples:
    ``"frames"`` (one time point per sample), ``"audio"`` (blocks (C, N) with
    ``meta["sample_rate"]``) or ``"values"``.
    """

    kind: str = "values"

    def __init__(self, source: str) -> None:
        self.source = source
        self._closed = True  # until the subclass has acquired its resource (then False)
        self._close_lock = threading.Lock()
        self._index = 0

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def _read(self) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def _release(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release the device, thread or connection; safe to call more than once."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._release()

    def __iter__(self: _L) -> _L:
        return self

    def __next__(self) -> Sample:
        if self._closed:
            raise StopIteration
        try:
            sample = self._read()
        except BaseException:
            self.close()
            raise
        self._index += 1
        return sample

    def __enter__(self: _L) -> _L:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:
                pass

    def _meta(self, **extra: Any) -> dict[str, Any]:
        return {"source": self.source, "index": self._index, "wall_time": wall_time(), **extra}

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"{type(self).__name__}({self.source!r}, {state})"
