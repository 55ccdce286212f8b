"""Synchronizer on real loaders (an OpenCV-written video file and a WAV file)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfuse.perception import (
    AudioFileLoader,
    CameraLoader,
    Loader,
    LogMelSpectrogram,
    MicrophoneLoader,
    Sample,
    Synchronizer,
    clock,
)
from perception._support import VIDEO_FPS, WAV_RATE, Pulse, Servers

pytest.importorskip("cv2")
pytest.importorskip("soundfile")


def _all_frames(video_file: Path) -> tuple[np.ndarray, torch.Tensor]:
    with CameraLoader(video_file, start=0.0, dtype=torch.float64) as cam:
        samples = list(cam)
    return np.array([s.timestamp for s in samples]), torch.stack([s.data for s in samples])


def test_nearest_windows_match_a_naive_reference(video_file: Path, wav_file: Path,
                                                 wav_signal: np.ndarray, no_leaks: None) -> None:
    times, frames = _all_frames(video_file)
    cam = CameraLoader(video_file, start=0.0, dtype=torch.float64)
    audio = AudioFileLoader(wav_file, block_size=700, start=0.0)
    with Synchronizer({"video": cam, "audio": audio}, window=0.5, rates={"video": 4.0},
                      start=0.01) as sync:
        windows = list(sync)
    assert cam.closed and audio.closed
    # audio (2 s) ends first: windows [0.01 + 0.5 k, 0.51 + 0.5 k) while 0.51 + 0.5 k <= 2
    assert len(windows) == 3
    n = round(0.5 * WAV_RATE)
    for k, w in enumerate(windows):
        assert w.start == pytest.approx(0.01 + 0.5 * k) and w.end == pytest.approx(w.start + 0.5)
        grid = w.start + np.arange(2) / 4.0
        assert w.data["video"].shape == (1, 2, 3, 48, 64)
        np.testing.assert_allclose(w.times["video"][0].numpy(), grid)
        for i, t in enumerate(grid):
            nearest = int(np.argmin(np.abs(times - t)))
            torch.testing.assert_close(w.data["video"][0, i], frames[nearest])
        i0 = round(w.start * WAV_RATE)
        assert w.data["audio"].shape == (1, 2, n)
        np.testing.assert_array_equal(w.data["audio"][0].numpy(), wav_signal[i0:i0 + n].T)
        np.testing.assert_allclose(w.times["audio"][0].numpy(), w.start + np.arange(n) / WAV_RATE)


def test_linear_interpolates_between_neighbouring_frames(video_file: Path, wav_file: Path) -> None:
    times, frames = _all_frames(video_file)
    with Synchronizer(
        {"video": CameraLoader(video_file, start=0.0, dtype=torch.float64),
         "audio": AudioFileLoader(wav_file, block_size=4000, start=0.0)},
        window=1.0, rates={"video": 3.0}, mode="linear",
    ) as sync:
        windows = list(sync)
    assert len(windows) == 2
    assert all(loader.closed for loader in sync.loaders.values())  # closed at the end
    for w in windows:
        for i, t in enumerate(w.times["video"][0].tolist()):
            j = int(np.searchsorted(times, t))  # first frame at or after t
            if abs(times[j] - t) < 1e-9:
                want = frames[j]
            else:
                a = (t - times[j - 1]) / (times[j] - times[j - 1])
                want = frames[j - 1] * (1 - a) + frames[j] * a
            torch.testing.assert_close(w.data["video"][0, i], want)


def test_spectrogram_layout_for_data_level_fusion(video_file: Path, wav_file: Path,
                                                  wav_signal: np.ndarray) -> None:
    mel = LogMelSpectrogram(WAV_RATE, n_fft=400, hop_length=160, n_mels=32)
    with Synchronizer(
        {"video": CameraLoader(video_file, start=0.0, size=(24, 32), fps=VIDEO_FPS),
         "audio": AudioFileLoader(wav_file, block_size=1024, start=0.0)},
        window=0.5, hop=0.25, transforms={"audio": mel},
    ) as sync:
        windows = list(sync)
    # overlapping windows every 0.25 s over 2 s of audio: starts 0, 0.25, ..., 1.5
    assert [w.start for w in windows] == pytest.approx([0.25 * k for k in range(7)])
    for w in windows:
        video, vt = w.data["video"], w.times["video"]
        spec, st = w.data["audio"], w.times["audio"]
        assert video.shape == (1, 5, 3, 24, 32) and video.dtype == torch.uint8  # (B, T, C, H, W)
        assert vt.shape == (1, 5) and vt.dtype == torch.float64
        assert spec.shape == (1, 32, 51) and st.shape == (1, 51)  # (B, F, S)
        i0 = round(w.start * WAV_RATE)
        mono = torch.from_numpy(wav_signal[i0:i0 + 8000].mean(axis=1))
        torch.testing.assert_close(spec[0], mel(mono))
        torch.testing.assert_close(st[0], mel.frame_times(w.start, 51))


class _Blocks(Loader):
    """A loader of audio blocks with chosen timestamps (to model samples lost upstream)."""

    kind = "audio"

    def __init__(self, starts: list[float], size: int, rate: int) -> None:
        super().__init__("blocks")
        self.starts, self.size, self.rate = starts, size, rate
        self._closed = False  # nothing to acquire

    def _read(self) -> Sample:
        if self._index >= len(self.starts):
            raise StopIteration
        value = float(self._index + 1)
        data = torch.full((1, self.size), value)
        return Sample(data, self.starts[self._index], self._meta(sample_rate=self.rate))

    def _release(self) -> None:
        pass


def test_lost_audio_blocks_become_zeros_and_are_counted() -> None:
    rate, size = 100, 10  # blocks of 0.1 s; the third block (0.2 s) is missing
    starts = [0.0, 0.1, 0.3, 0.4, 0.5, 0.6]
    with Synchronizer({"a": _Blocks(starts, size, rate)}, window=0.6) as sync:
        (w,) = list(sync)
    want = torch.cat([torch.full((10,), v) for v in (1.0, 2.0, 0.0, 3.0, 4.0, 5.0)])
    torch.testing.assert_close(w.data["a"][0, 0], want)
    assert sync.gap_samples == {"a": 10}


def test_configuration_errors(video_file: Path, wav_file: Path) -> None:
    cam = CameraLoader(video_file)
    try:
        with pytest.raises(ValueError, match=r"frame stream 'video' needs a grid rate: pass rates=\{'video': hz\}"):
            Synchronizer({"video": cam}, window=1.0)
        with pytest.raises(ValueError, match="name 'audio' is not a stream"):
            Synchronizer({"video": cam}, window=1.0, rates={"video": 2.0, "audio": 3.0})
        with pytest.raises(ValueError, match="unknown `mode` 'cubic'"):
            Synchronizer({"video": cam}, window=1.0, rates={"video": 2.0}, mode="cubic")
        with pytest.raises(ValueError, match="`window` to be a positive"):
            Synchronizer({"video": cam}, window=0.0, rates={"video": 2.0})
    finally:
        cam.close()
    with pytest.raises(ValueError, match="non-empty mapping"):
        Synchronizer({}, window=1.0)


def test_a_failing_loader_closes_every_loader(video_file: Path, tmp_path: Path) -> None:
    class Broken(_Blocks):
        def _read(self) -> Sample:
            raise OSError("sensor unplugged")

    cam = CameraLoader(video_file, start=0.0)
    broken = Broken([0.0], 10, 100)
    sync = Synchronizer({"video": cam, "a": broken}, window=0.5, rates={"video": 2.0})
    with pytest.raises(OSError, match="sensor unplugged"):
        next(sync)
    assert cam.closed and broken.closed


def test_live_camera_and_microphone(servers: Servers, pulse: Pulse, no_leaks: None) -> None:
    """A live MJPEG camera (20 fps, 4-frame buffer) and the PulseAudio microphone, in real time."""
    mel = LogMelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=16)
    t0 = clock()
    cam = CameraLoader(servers.url("/stream.mjpg?fps=20"), buffer_size=4)
    mic = MicrophoneLoader(sample_rate=16000, block_size=1024, buffer_seconds=2.0)
    with Synchronizer({"audio": mic, "video": cam}, window=0.5, rates={"video": 10.0},
                      transforms={"audio": mel}) as sync:
        windows = [next(sync)]
        dropped = cam.dropped  # frames dropped while the microphone started (stale, expected)
        windows += [next(sync) for _ in range(2)]
        dropped = cam.dropped - dropped
    assert cam.closed and mic.closed
    assert clock() - t0 < 10.0
    for k, w in enumerate(windows):
        assert w.start >= t0 and w.start == pytest.approx(windows[0].start + 0.5 * k)
        assert w.data["video"].shape == (1, 5, 3, 120, 160) and w.data["audio"].shape == (1, 16, 51)
    # the server's frame i has grey level 10 (i mod 25): along the 10 Hz grid the frame number
    # advances by about 2 per step
    levels = [round(float(f[:, 5:, 2].float().mean()) / 10) for w in windows for f in w.data["video"][0]]
    steps = [(b - a) % 25 for a, b in itertools.pairwise(levels)]
    assert all(0 <= d <= 6 for d in steps), levels
    assert sum(steps) >= 10  # 14 grid steps of 0.1 s at 20 fps: about 28
    # once windows flow, both bounded buffers keep draining: nothing dropped or overflowed
    assert dropped <= 3 and mic.overflows == 0


def test_non_numeric_values_are_a_clear_error() -> None:
    class Words(_Blocks):
        kind = "values"

        def _read(self) -> Sample:
            return Sample({"word": "hello"}, 0.0, self._meta())

    with pytest.raises(TypeError, match="expected stream 'w' to give tensors or numbers, got dict"):
        next(Synchronizer({"w": Words([0.0], 1, 1)}, window=1.0, rates={"w": 1.0}))


def test_window_before_the_first_audio_sample_is_silence() -> None:
    starts = [0.0, 0.1, 0.2, 0.3]  # 0.1 s blocks valued 1, 2, 3, 4
    with Synchronizer({"a": _Blocks(starts, 10, 100)}, window=0.3, start=-0.05) as sync:
        w = next(sync)
    want = torch.cat([torch.zeros(5), torch.full((10,), 1.0), torch.full((10,), 2.0), torch.full((5,), 3.0)])
    torch.testing.assert_close(w.data["a"][0, 0], want)
