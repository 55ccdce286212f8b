"""The loader protocol: iterator, context manager, close on end and on error, idempotent close."""

from __future__ import annotations

import time

import pytest

from mmfuse.perception import Loader, Sample, clock


class Counter(Loader):
    """Yields 0, 1, 2 then ends; or raises at ``fail_at``. Counts releases."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__("counter")
        self.fail_at = fail_at
        self.released = 0
        self._closed = False

    def _read(self) -> Sample:
        if self._index == self.fail_at:
            raise OSError("device unplugged")
        if self._index >= 3:
            raise StopIteration
        return Sample(self._index, clock(), self._meta())

    def _release(self) -> None:
        self.released += 1


def test_iterates_and_closes_at_the_end() -> None:
    c = Counter()
    values = [s.data for s in c]
    assert values == [0, 1, 2]
    assert c.closed and c.released == 1
    c.close()
    assert c.released == 1  # idempotent
    assert list(c) == []  # a closed loader yields nothing


def test_closes_on_error_and_on_with_exit() -> None:
    c = Counter(fail_at=1)
    with pytest.raises(OSError, match="device unplugged"):
        list(c)
    assert c.closed and c.released == 1
    with Counter() as c2:
        meta = next(c2).meta
        assert meta["source"] == "counter" and meta["index"] == 0
        assert meta["wall_time"] == pytest.approx(time.time(), abs=5.0)
    assert c2.closed and c2.released == 1


def test_timestamps_are_on_the_shared_clock() -> None:
    before = clock()
    samples = list(Counter())
    after = clock()
    times = [s.timestamp for s in samples]
    assert before <= times[0] <= times[1] <= times[2] <= after
    assert repr(Counter()) == "Counter('counter', open)"
