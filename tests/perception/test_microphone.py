"""MicrophoneLoader against a real PulseAudio server: a null sink whose monitor is the default input.

What a test plays into the sink with ``paplay`` is what the microphone hears, so capture,
content and timing are checked end to end (no mocked PortAudio).
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from mmfuse.perception import MicrophoneLoader, SourceError, clock
from perception._support import Pulse

sf = pytest.importorskip("soundfile")
RATE = 16000


def _play(pulse: Pulse, path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["paplay", f"--device={pulse.sink}", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_captures_what_is_played_at_the_right_time(pulse: Pulse, tmp_path: Path, no_leaks: None) -> None:
    rng = np.random.default_rng(0)
    signal = (0.4 * rng.standard_normal(RATE // 2)).clip(-1, 1).astype(np.float32)  # 0.5 s noise
    path = tmp_path / "noise.wav"
    sf.write(str(path), signal, RATE, subtype="FLOAT")
    with MicrophoneLoader(sample_rate=RATE, channels=1, block_size=800, buffer_seconds=5.0) as mic:
        assert mic.wait_started(10.0), "no audio callback within 10 s"
        played_at = clock()
        player = _play(pulse, path)
        blocks = []
        while clock() - played_at < 1.5:
            blocks.append(next(mic))
        assert player.wait(10) == 0
    assert mic.closed
    assert mic.overflows == 0 and blocks[-1].meta["overflows"] == 0
    for block, _, meta in blocks:
        assert block.shape == (1, 800) and meta["sample_rate"] == RATE
    # timestamps advance by the block duration (sample-count timeline)
    times = np.array([b.timestamp for b in blocks])
    if mic.resyncs == 0:
        np.testing.assert_allclose(np.diff(times), 800 / RATE, atol=1e-6)
    recorded = np.concatenate([b.data[0].numpy() for b in blocks])
    corr = np.correlate(recorded, signal, mode="valid")
    lag = int(np.argmax(corr))
    assert corr[lag] / float(signal @ signal) > 0.8  # the played noise arrived (16-bit sink)
    k = lag // 800
    arrival = blocks[k].timestamp + (lag - k * 800) / RATE  # clock time of the signal's start
    print(f"arrival - play = {arrival - played_at:.3f} s, resyncs {mic.resyncs}")
    assert -0.15 < arrival - played_at < 1.0  # paplay takes a moment to start


def test_overflow_is_counted_and_reported(pulse: Pulse, no_leaks: None) -> None:
    with MicrophoneLoader(sample_rate=RATE, block_size=400, buffer_seconds=0.05) as mic:
        assert mic.capacity == 2
        assert mic.wait_started(10.0)
        time.sleep(0.6)  # ~24 blocks arrive, the buffer holds 2
        _, _, meta = next(mic)
        assert mic.overflows > 10
        assert meta["overflows"] >= mic.overflows - 2  # reported with the samples
        offsets = [next(mic).meta["offset"] for _ in range(3)]
        assert offsets == sorted(offsets)


def test_bad_device_is_a_clear_error(pulse: Pulse, no_leaks: None) -> None:
    with pytest.raises(SourceError, match="cannot open input device '97'"):
        MicrophoneLoader(97, sample_rate=RATE)
    with pytest.raises(SourceError, match="cannot open input device 'no-such-mic'"):
        MicrophoneLoader("no-such-mic", sample_rate=RATE)


def test_closed_loader_stops(pulse: Pulse) -> None:
    mic = MicrophoneLoader(sample_rate=RATE, block_size=800)
    assert mic.wait_started(10.0)
    next(mic)
    mic.close()
    mic.close()  # idempotent
    with pytest.raises(StopIteration):
        next(mic)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="`sample_rate` to be a positive"):
        MicrophoneLoader(sample_rate=0)
    with pytest.raises(ValueError, match="`buffer_seconds` to be a positive"):
        MicrophoneLoader(buffer_seconds=-1.0)


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), [
    ((1.5,), {}, TypeError, "`device` to be a device index (int), a name (str) or None, got 1.5"),
    ((True,), {}, TypeError, "`device` to be a device index (int), a name (str) or None, got True"),
    ((), {"sample_rate": 16000.5}, TypeError, "`sample_rate` to be an int, got 16000.5"),
    ((), {"channels": 1.0}, TypeError, "`channels` to be an int, got 1.0"),
    ((), {"block_size": 0}, ValueError, "`block_size` to be a positive int, got 0"),
    ((), {"read_timeout": float("inf")}, ValueError, "`read_timeout` to be a finite positive number, got inf"),
])
def test_argument_types_are_checked_before_opening(args: tuple[object, ...], kwargs: dict[str, object],
                                                   error: type[Exception], match: str) -> None:
    # no audio device needed: the arguments are refused before PortAudio is touched
    with pytest.raises(error, match=rf"^MicrophoneLoader: expected {re.escape(match)}\.$"):
        MicrophoneLoader(*args, **kwargs)  # type: ignore[arg-type]
