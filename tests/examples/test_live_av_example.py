"""Run examples/live_av.py with its --small flag on a generated video and WAV file, and on a
local MJPEG server (a child process on 127.0.0.1, stopped by PID)."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "live_av.py"
cv2 = pytest.importorskip("cv2")
sf = pytest.importorskip("soundfile")

LINE = re.compile(r"^t=(\d+\.\d{3})-(\d+\.\d{3}) s  class (\d) \(p=(\d\.\d\d)\)  ")


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _media(tmp_path: Path) -> tuple[Path, Path]:
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (80, 60))
    for i in range(25):
        writer.write(np.full((60, 80, 3), 9 * i, np.uint8))
    writer.release()
    audio = tmp_path / "tone.wav"
    t = np.arange(40000) / 16000
    sf.write(str(audio), (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000)
    return video, audio


def _check(stdout: str, windows: int) -> list[float]:
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("fusion: ")
    preds = [LINE.match(line) for line in lines[1:-1]]
    assert all(preds), stdout
    assert len(preds) == windows and lines[-1] == f"{windows} windows"
    starts = [float(m.group(1)) for m in preds if m]
    assert np.allclose(np.diff(starts), 0.5, atol=1e-3)  # --small: back-to-back 0.5 s windows
    return starts


def test_live_av_on_files(tmp_path: Path) -> None:
    video, audio = _media(tmp_path)
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), "--video", str(video), "--audio", str(audio), "--small"],
        capture_output=True, text=True, timeout=60, env=_env(), check=True,
    )
    _check(out.stdout, 3)
    assert "(1, 2, 3, 32, 40)" in out.stdout and "(1, 16, 51)" in out.stdout


def test_live_av_on_a_local_mjpeg_stream(tmp_path: Path) -> None:
    _, audio = _media(tmp_path)
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "perception" / "_servers.py")],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], 20)
        assert ready, "server did not start"
        port = int(os.read(server.stdout.fileno(), 4096).decode().split()[1])
        url = f"http://127.0.0.1:{port}/stream.mjpg?fps=20"
        t0 = time.monotonic()
        out = subprocess.run(
            [sys.executable, str(EXAMPLE), "--url", url, "--audio", str(audio), "--small",
             "--timeout", "5"],
            capture_output=True, text=True, timeout=60, env=_env(), check=True,
        )
        _check(out.stdout, 3)
        assert time.monotonic() - t0 < 60
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(10)
