"""Helpers shared by the perception tests and their fixtures."""

from __future__ import annotations

import os
from dataclasses import dataclass


def children() -> set[int]:
    """PIDs of this process's live (non-zombie) children, read from /proc."""
    me, out = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            out.add(int(entry))
    return out


@dataclass(frozen=True)
class Servers:
    http: int
    silent: int
    pid: int
    trickle: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http}{path}"


VIDEO_FPS = 10.0
VIDEO_FRAMES = 30
VIDEO_SIZE = (48, 64)  # (H, W)


def frame_level(i: int) -> int:
    """Grey level of frame i in the test video."""
    return (8 * i) % 240


WAV_RATE = 16000


@dataclass(frozen=True)
class Pulse:
    server: str
    sink: str
    pid: int
    home: str
