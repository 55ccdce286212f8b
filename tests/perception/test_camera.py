"""CameraLoader against real video files, a live MJPEG server and an RTSP server."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfuse.perception import CameraLoader, DecodeError, SourceError, SourceTimeoutError, clock
from perception._support import VIDEO_FPS, VIDEO_FRAMES, VIDEO_SIZE, Servers, frame_level

cv2 = pytest.importorskip("cv2")


def test_file_frames_rgb_uint8_and_container_timestamps(video_file: Path, no_leaks: None) -> None:
    t0 = clock()
    with CameraLoader(video_file, start=100.0) as cam:
        samples = list(cam)
    assert cam.closed
    assert len(samples) == VIDEO_FRAMES
    for i, (frame, t, meta) in enumerate(samples):
        assert frame.shape == (3, *VIDEO_SIZE) and frame.dtype == torch.uint8
        assert meta["media_time"] == pytest.approx(i / VIDEO_FPS, abs=1e-3)
        assert t == pytest.approx(100.0 + i / VIDEO_FPS, abs=1e-3)
        assert meta["source"] == str(video_file) and meta["index"] == i
        assert meta["wall_time"] > 1e9
        # grey level encodes the frame number (MJPEG is lossy: a few levels of slack)
        assert abs(float(frame[:, 24:, 24:].float().mean()) - frame_level(i)) < 3
        # the top-left square is red in RGB order
        r, g, b = (float(c) for c in frame[:, :6, :6].float().mean(dim=(1, 2)))
        assert r > 200 and g < 40 and b < 60
    # default start: the clock when the file was opened
    with CameraLoader(video_file) as cam:
        assert t0 <= next(cam).timestamp <= clock()


def test_mp4_file_container_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (32, 24))
    for i in range(10):
        writer.write(np.full((24, 32, 3), 20 * i, np.uint8))
    writer.release()
    with CameraLoader(path, start=0.0) as cam:
        times = [t for _, t, _ in cam]
    np.testing.assert_allclose(times, np.arange(10) / 25.0, atol=1e-3)


def test_pyav_file_container_timestamps(tmp_path: Path) -> None:
    av = pytest.importorskip("av", reason="PyAV not installed; the OpenCV-written files above cover files")
    path = tmp_path / "pyav.mp4"
    container = av.open(str(path), mode="w")
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
    for i in range(10):
        frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 20 * i, np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    with CameraLoader(path, start=0.0) as cam:
        samples = list(cam)
    assert len(samples) == 10
    np.testing.assert_allclose([t for _, t, _ in samples], np.arange(10) / 10.0, atol=1e-3)
    levels = [float(f.float().mean()) for f, _, _ in samples]
    np.testing.assert_allclose(levels, 20 * np.arange(10), atol=4)


def test_float_dtype_resize_and_fps_subsampling(video_file: Path) -> None:
    with CameraLoader(video_file, size=(24, 32), fps=4.0, dtype=torch.float32, start=0.0) as cam:
        samples = list(cam)
    times = [t for _, t, _ in samples]
    # naive reference: walk the 10 fps frames, keep one whenever a 4 Hz slot has come due
    kept, due = [], None
    for i in range(VIDEO_FRAMES):
        t = i / VIDEO_FPS
        if due is None or t + 1e-6 >= due:
            kept.append(t)
            due = t + 0.25 if due is None else max(due + 0.25, t + 0.125)
    np.testing.assert_allclose(times, kept, atol=1e-3)
    assert len(samples) == 12  # 3 s at 4 Hz
    for frame, _, meta in samples:
        assert frame.shape == (3, 24, 32) and frame.dtype == torch.float32
        assert 0.0 <= float(frame.min()) and float(frame.max()) <= 1.0
        i = meta["frame"]
        assert abs(float(frame[:, 12:, 12:].mean()) * 255 - frame_level(i)) < 3


def test_resize_matches_opencv_area(video_file: Path) -> None:
    cap = cv2.VideoCapture(str(video_file))
    _, bgr = cap.read()
    cap.release()
    want = cv2.cvtColor(cv2.resize(bgr, (16, 12), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    with CameraLoader(video_file, size=(12, 16)) as cam:
        got = next(cam).data
    np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), want)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda p: p / "missing.mp4", FileNotFoundError, "video file not found: .*missing.mp4"),
        (lambda p: _write(p / "notes.mp4", b"just some notes\n" * 50), DecodeError, "notes.mp4.* text file"),
        (lambda p: _write(p / "noise.avi", np.random.default_rng(0).bytes(20000)), DecodeError,
         "noise.avi.*corrupt or not a video"),
        (lambda p: _write(p / "empty.mp4", b""), DecodeError, "empty.mp4"),
        (lambda p: p, IsADirectoryError, "directory"),
    ],
    ids=["missing", "text", "corrupt", "empty", "directory"],
)
def test_bad_files_raise_naming_the_source(tmp_path: Path, make, error, match, no_leaks: None) -> None:
    with pytest.raises(error, match=match):
        CameraLoader(make(tmp_path))


def test_truncated_video_raises_or_ends_cleanly(video_file: Path, tmp_path: Path) -> None:
    data = video_file.read_bytes()
    cut = _write(tmp_path / "cut.avi", data[: len(data) // 3])
    try:
        with CameraLoader(cut) as cam:
            n = sum(1 for _ in cam)
    except DecodeError as exc:
        assert "cut.avi" in str(exc)
    else:
        assert 0 < n < VIDEO_FRAMES


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unsupported URL scheme 'file'"):
        CameraLoader("file:///tmp/x.mp4")
    with pytest.raises(ValueError, match=r"`size` as \(height, width\)"):
        CameraLoader("x.mp4", size=(3,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`fps` to be a positive"):
        CameraLoader("x.mp4", fps=0)
    with pytest.raises(TypeError, match="dtype"):
        CameraLoader("x.mp4", dtype=torch.int32)
    with pytest.raises(ValueError, match="device index >= 0"):
        CameraLoader(-1)


def test_missing_device_is_a_clear_error(no_leaks: None) -> None:
    with pytest.raises(SourceError, match="cannot open camera device 57"):
        CameraLoader(57)


def test_dead_url_is_a_clear_error(dead_port: int, no_leaks: None) -> None:
    url = f"http://127.0.0.1:{dead_port}/stream.mjpg"
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=f"cannot open stream '{url}'"):
        CameraLoader(url, open_timeout=2.0)
    assert time.monotonic() - t0 < 4.0


def test_server_that_never_answers_times_out(servers: Servers, no_leaks: None) -> None:
    url = f"http://127.0.0.1:{servers.silent}/stream.mjpg"
    t0 = time.monotonic()
    with pytest.raises(SourceTimeoutError, match=r"did not open within open_timeout=1\.0s"):
        CameraLoader(url, open_timeout=1.0, read_timeout=1.0)
    assert time.monotonic() - t0 < 4.0


def test_stream_that_sends_headers_and_no_frame(servers: Servers, no_leaks: None) -> None:
    url = servers.url("/stall.mjpg")
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=re.escape(repr(url))):
        CameraLoader(url, open_timeout=1.0, read_timeout=1.0)
    assert time.monotonic() - t0 < 4.0


def test_mjpeg_stream_frames_in_order_with_host_timestamps(servers: Servers, no_leaks: None) -> None:
    before = clock()
    with CameraLoader(servers.url("/stream.mjpg?fps=30"), read_timeout=3.0, buffer_size=64) as cam:
        samples = [next(cam) for _ in range(12)]
        thread = cam._thread
    after = clock()
    assert thread is not None and not thread.is_alive()  # the reader thread is joined on close
    levels = [round(float(s.data[:, 5:, 2].float().mean()) / 10) for s in samples]
    assert levels == list(range(12))  # frame i has grey level 10 i; none dropped (large buffer)
    times = [s.timestamp for s in samples]
    assert before <= times[0] and times[-1] <= after
    assert times == sorted(times)
    assert samples[0].data.shape == (3, 120, 160)
    assert samples[-1].meta["dropped"] == 0


def test_live_buffer_is_bounded_and_drops_are_counted(servers: Servers) -> None:
    with CameraLoader(servers.url("/stream.mjpg?fps=50"), buffer_size=2) as cam:
        next(cam)
        time.sleep(0.6)  # ~30 frames arrive while the consumer sleeps
        assert len(cam._buffer) <= 2
        _, _, meta = next(cam)
        assert meta["dropped"] == cam.dropped > 5
        # the frames kept are the newest: frame numbers jump
        assert meta["frame"] > 5


def test_stream_drop_ends_with_a_clear_error(servers: Servers, no_leaks: None) -> None:
    url = servers.url("/stream.mjpg?frames=5&fps=30")
    cam = CameraLoader(url, read_timeout=2.0, buffer_size=16)
    got = []
    with pytest.raises(SourceError, match=r"stream '.*frames=5.*' dropped after frame 5"):
        for frame, _, _ in cam:
            got.append(frame)
    assert len(got) == 5
    assert cam.closed  # closed on error


def test_stream_drop_reconnects_when_configured(servers: Servers, no_leaks: None) -> None:
    url = servers.url("/stream.mjpg?frames=4&fps=30")
    with CameraLoader(url, reconnect=3, reconnect_delay=0.05, buffer_size=64) as cam:
        samples = [next(cam) for _ in range(10)]
    levels = [round(float(s.data[:, 5:, 2].float().mean()) / 10) for s in samples]
    assert levels == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]  # each reconnection restarts the stream
    assert samples[-1].meta["reconnects"] == 2


def test_rtsp_camera(rtsp_url: str, no_leaks: None) -> None:
    before = clock()
    with CameraLoader(rtsp_url, size=(60, 80), open_timeout=10.0, read_timeout=5.0) as cam:
        samples = [next(cam) for _ in range(5)]
    assert all(s.data.shape == (3, 60, 80) and s.data.dtype == torch.uint8 for s in samples)
    times = [s.timestamp for s in samples]
    assert before <= times[0] <= times[-1] <= clock()
    assert len({s.meta["frame"] for s in samples}) == 5


def test_a_fifo_is_refused_at_once(tmp_path: Path, no_leaks: None, no_fd_leaks: None) -> None:
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    with pytest.raises(SourceError, match=r"^CameraLoader: '.*clip\.mp4' is not a regular file"):
        CameraLoader(fifo)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"size": (2.5, 4)}, "`size` to be an int, got 2.5"),
    ({"buffer_size": 1.5}, "`buffer_size` to be an int, got 1.5"),
    ({"reconnect": True}, "`reconnect` to be an int, got True"),
])
def test_sizes_and_counts_are_ints(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(TypeError, match=rf"^CameraLoader: expected {re.escape(match)}\.$"):
        CameraLoader("x.mp4", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("arg", "want"), [
    ("open_timeout", "finite"), ("read_timeout", "finite"), ("reconnect_delay", "finite"),
    ("fps", "a finite positive number"),  # the shared check_positive's wording
])
def test_infinite_times_are_refused(arg: str, want: str) -> None:
    with pytest.raises(ValueError, match=rf"^CameraLoader: expected `{arg}` to be {want}, got inf\.$"):
        CameraLoader("x.mp4", **{arg: float("inf")})  # type: ignore[arg-type]
