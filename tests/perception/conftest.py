"""Real sources for the perception tests: local servers, a PulseAudio daemon, media files.

Every server is a child process on 127.0.0.1 started by a fixture and stopped by its PID at
teardown; a fixture whose tool is missing skips its tests with the reason.
"""

from __future__ import annotations

import ctypes.util
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from perception._support import (
    VIDEO_FPS,
    VIDEO_FRAMES,
    VIDEO_SIZE,
    WAV_RATE,
    Pulse,
    Servers,
    children,
    frame_level,
)

HERE = Path(__file__).parent
SYSTEM_PYTHON = "/usr/bin/python3"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _read_lines(proc: subprocess.Popen[bytes], count: int, timeout: float) -> list[str]:
    """The first ``count`` lines the child prints (raw reads: select sees no buffered data)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"\n") < count:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            _stop(proc)
            raise RuntimeError(f"server did not start (printed {data!r}, exit code {proc.poll()})")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            data += os.read(fd, 4096)
    return data.decode().splitlines()[:count]


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    """The MJPEG camera + API HTTP server, a server that accepts and never answers, and one
    that trickles its headers."""
    pytest.importorskip("cv2", reason="the MJPEG server encodes frames with OpenCV")
    proc = subprocess.Popen([sys.executable, str(HERE / "_servers.py")], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    lines = dict(line.split() for line in _read_lines(proc, 3, 20.0))
    try:
        yield Servers(int(lines["HTTP"]), int(lines["SILENT"]), proc.pid, int(lines["TRICKLE"]))
    finally:
        _stop(proc)


@pytest.fixture
def dead_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rtsp_available() -> str | None:
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} not found"
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
             "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
             "assert all(Gst.ElementFactory.find(e) for e in ('videotestsrc', 'jpegenc', 'rtpjpegpay'))")
    r = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30)
    if r.returncode:
        return ("GStreamer RTSP server not installed (apt: python3-gi python3-gst-1.0 "
                "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good)")
    return None


@pytest.fixture(scope="session")
def rtsp_url() -> Iterator[str]:
    """An RTSP camera (GStreamer's RTSP server, MJPEG test pattern) on 127.0.0.1."""
    reason = _rtsp_available()
    if reason:
        pytest.skip(reason)
    proc = subprocess.Popen([SYSTEM_PYTHON, str(HERE / "_rtsp_server.py")], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    port = int(_read_lines(proc, 1, 20.0)[0].split()[1])
    try:
        yield f"rtsp://127.0.0.1:{port}/cam"
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def pulse() -> Iterator[Pulse]:
    """A PulseAudio daemon whose default source is the monitor of a null sink.

    Audio played into the sink (``paplay --device=<sink>``) arrives at the default input, so
    MicrophoneLoader captures exactly what the test plays. PULSE_SERVER is set before
    PortAudio (re)initialises, as sounddevice reads devices at import.
    """
    missing = [t for t in ("pulseaudio", "pactl", "paplay") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{missing} not installed (apt: pulseaudio pulseaudio-utils libasound2-plugins)")
    if ctypes.util.find_library("portaudio") is None:
        pytest.skip("PortAudio not installed (apt: libportaudio2)")
    if not os.path.exists("/usr/share/alsa/pulse-alsa.conf"):
        pytest.skip("ALSA's PulseAudio plugin not installed (apt: libasound2-plugins)")
    home = tempfile.mkdtemp(prefix="mmfuse-pulse-")
    sock = os.path.join(home, "native")
    sink = "mmfuse_null"
    conf = os.path.join(home, "default.pa")
    with open(conf, "w") as f:
        f.write(
            f"load-module module-null-sink sink_name={sink} rate=16000 channels=1\n"
            f"load-module module-native-protocol-unix socket={sock} auth-anonymous=1\n"
            f"set-default-sink {sink}\nset-default-source {sink}.monitor\n"
        )
    env = {**os.environ, "HOME": home, "XDG_RUNTIME_DIR": home, "PULSE_SERVER": f"unix:{sock}"}
    proc = subprocess.Popen(
        ["pulseaudio", "-n", "-F", conf, "--daemonize=no", "--exit-idle-time=-1",
         "--disallow-exit", "--use-pid-file=no", "--system=no", "--log-target=stderr"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode:
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.skip("PulseAudio did not start here")
            time.sleep(0.1)
    except BaseException:
        _stop(proc)
        raise
    saved = {k: os.environ.get(k) for k in ("PULSE_SERVER", "XDG_RUNTIME_DIR")}
    os.environ.update(PULSE_SERVER=env["PULSE_SERVER"], XDG_RUNTIME_DIR=home)
    if "sounddevice" in sys.modules:  # PortAudio read the devices before the server existed
        sd = sys.modules["sounddevice"]
        sd._terminate()
        sd._initialize()
    try:
        yield Pulse(env["PULSE_SERVER"], sink, proc.pid, home)
    finally:
        _stop(proc)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail if the test leaves a thread or a child process behind."""
    threads = set(threading.enumerate())
    kids = children()
    yield
    deadline = time.monotonic() + 3.0
    while True:
        extra_threads = [t for t in threading.enumerate() if t not in threads and t.is_alive()]
        extra_kids = children() - kids
        if not (extra_threads or extra_kids) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not extra_threads, f"leaked threads: {extra_threads}"
    assert not extra_kids, f"leaked child processes: {extra_kids}"


def open_fds() -> set[str]:
    """The file descriptors this process holds, from /proc/self/fd."""
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_fd_leaks() -> Iterator[None]:
    """Fail if the test leaves a file descriptor open or a thread running (the count of
    threads and the descriptors in /proc/self/fd, before and after)."""
    threads = threading.active_count()
    fds = open_fds()
    yield
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and (threading.active_count() > threads or open_fds() - fds):
        time.sleep(0.05)
    assert threading.active_count() <= threads, f"leaked threads: {threading.enumerate()}"
    leaked = {fd: _fd_target(fd) for fd in open_fds() - fds}
    assert not leaked, f"leaked file descriptors: {leaked}"


def _fd_target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


@pytest.fixture(scope="session")
def video_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 frames at 10 fps, 64 x 48, written by OpenCV (MJPG in AVI, near-lossless).

    Frame i is grey level ``frame_level(i)`` with a pure red (RGB) square in its top-left
    8 x 8 corner, so colour order and frame order can both be checked.
    """
    cv2 = pytest.importorskip("cv2")
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    h, w = VIDEO_SIZE
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), VIDEO_FPS, (w, h))
    assert writer.isOpened()
    for i in range(VIDEO_FRAMES):
        frame = np.full((h, w, 3), frame_level(i), np.uint8)
        frame[:8, :8] = (0, 0, 255)  # BGR red
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="session")
def wav_signal() -> np.ndarray:
    """2 s of a reproducible stereo test signal, (S, 2) float32."""
    t = np.arange(2 * WAV_RATE) / WAV_RATE
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    right = 0.25 * np.sin(2 * np.pi * 1000 * t)
    return np.stack([left, right], axis=1).astype(np.float32)


@pytest.fixture(scope="session")
def wav_file(tmp_path_factory: pytest.TempPathFactory, wav_signal: np.ndarray) -> Path:
    sf = pytest.importorskip("soundfile")
    path = tmp_path_factory.mktemp("audio") / "tone.wav"
    sf.write(str(path), wav_signal, WAV_RATE, subtype="FLOAT")
    return path
