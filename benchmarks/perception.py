"""Perception loaders and transforms against their bare baselines, paired in one process.

- CameraLoader frames/s on a video file vs a bare ``cv2.VideoCapture.read`` loop
  (the loader also converts BGR -> RGB and wraps a tensor; target >= 0.9x);
- AudioFileLoader blocks/s vs a bare ``soundfile.SoundFile.read`` loop (target >= 0.9x);
- LogMelSpectrogram vs torchaudio's MelSpectrogram + log where installed, and vs a numpy
  baseline (framing + an explicit DFT matrix + the same mel matrix).

Medians over ``--repeats`` alternating runs. Prints a markdown table.

    OMP_NUM_THREADS=1 python benchmarks/perception.py [--small]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mmfuse.functional import mel_filterbank
from mmfuse.perception import AudioFileLoader, CameraLoader, LogMelSpectrogram


def paired(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """Median seconds of ``a`` and ``b`` run alternately (one warm-up each), and the median of
    the per-pair ratios ``t_b / t_a`` (the speed of ``a`` relative to ``b``; pairing cancels
    most of the drift of a shared machine)."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t0)
    ratio = statistics.median(y / x for x, y in zip(ta, tb))
    return statistics.median(ta), statistics.median(tb), ratio


def make_video(path: Path, frames: int, size: tuple[int, int]) -> None:
    import cv2

    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (w, h))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    for i in range(frames):
        writer.write(np.roll(base, i, axis=1))
    writer.release()


def bench_camera(path: Path, repeats: int) -> tuple[float, float, float, int]:
    import cv2

    def bare() -> int:
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        n = 0
        while True:
            ok, _ = cap.read()
            if not ok:
                break
            n += 1
        cap.release()
        return n

    def loader() -> int:
        with CameraLoader(path) as cam:
            return sum(1 for _ in cam)

    n = bare()
    assert loader() == n
    t_loader, t_bare, ratio = paired(loader, bare, repeats)
    return n / t_loader, n / t_bare, ratio, n


def bench_audio(path: Path, block: int, repeats: int) -> tuple[float, float, float, int]:
    import soundfile as sf

    def bare() -> int:
        n = 0
        with sf.SoundFile(str(path)) as f:
            while True:
                x = f.read(block, dtype="float32", always_2d=True)
                if not len(x):
                    break
                n += 1
        return n

    def loader() -> int:
        with AudioFileLoader(path, block_size=block) as audio:
            return sum(1 for _ in audio)

    n = bare()
    assert loader() == n
    t_loader, t_bare, ratio = paired(loader, bare, repeats)
    return n / t_loader, n / t_bare, ratio, n


def numpy_log_mel(x: np.ndarray, n_fft: int, hop: int, fb: np.ndarray,
                  dft_re: np.ndarray, dft_im: np.ndarray) -> np.ndarray:
    """Reflect pad, frame, periodic Hann, DFT as two matrix products, mel, log."""
    xp = np.pad(x, n_fft // 2, mode="reflect")
    count = 1 + len(x) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(count)[:, None]  # (frames, n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    seg = xp[idx] * window
    power = (seg @ dft_re) ** 2 + (seg @ dft_im) ** 2  # (frames, F)
    return np.log(power @ fb + 1e-10).T  # (n_mels, frames)


def bench_log_mel(seconds: float, repeats: int) -> list[tuple[str, float, float, float]]:
    sr, n_fft, hop, n_mels = 16000, 400, 160, 64
    x = torch.randn(int(seconds * sr))
    mel = LogMelSpectrogram(sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels)
    rows = []
    fb = mel_filterbank(n_fft // 2 + 1, n_mels, sr, dtype=torch.float64).numpy()
    k = np.arange(n_fft // 2 + 1)[None, :]
    n = np.arange(n_fft)[:, None]
    dft_re, dft_im = np.cos(2 * np.pi * k * n / n_fft), -np.sin(2 * np.pi * k * n / n_fft)
    xn = x.double().numpy()
    ref = numpy_log_mel(xn, n_fft, hop, fb, dft_re, dft_im)
    got = mel(x).double().numpy()
    assert np.abs(got - ref).max() < 1e-2, np.abs(got - ref).max()
    ours, base, ratio = paired(lambda: mel(x), lambda: numpy_log_mel(xn, n_fft, hop, fb, dft_re, dft_im),
                               repeats)
    rows.append(("numpy explicit-DFT log-mel", ours, base, ratio))
    try:
        import torchaudio
    except ImportError:
        rows.append(("torchaudio MelSpectrogram + log", ours, math.nan, math.nan))
    else:
        ta = torchaudio.transforms.MelSpectrogram(sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels)
        ours, base, ratio = paired(lambda: mel(x), lambda: torch.log(ta(x) + 1e-10), repeats)
        rows.append(("torchaudio MelSpectrogram + log", ours, base, ratio))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--small", action="store_true", help="fewer frames/samples and repeats")
    p.add_argument("--repeats", type=int, default=0)
    args = p.parse_args()
    repeats = args.repeats or (7 if args.small else 15)
    frames, audio_seconds = (90, 30) if args.small else (300, 120)
    torch.set_num_threads(1)
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "bench.avi"
        make_video(video, frames, (240, 320))
        wav = Path(tmp) / "bench.wav"
        rng = np.random.default_rng(0)
        sf.write(str(wav), (0.1 * rng.standard_normal(16000 * audio_seconds)).astype(np.float32), 16000)
        cam_loader, cam_bare, cam_ratio, n_frames = bench_camera(video, repeats)
        rows_audio = [(block, *bench_audio(wav, block, repeats)) for block in (1024, 4096)]
        mel_rows = bench_log_mel(10.0, repeats)

    print(f"Medians of {repeats} alternating runs; ratio = median of per-pair speed ratios.\n")
    print("| benchmark | mmfuse | baseline | mmfuse speed / baseline speed |")
    print("|---|---|---|---|")
    print(f"| CameraLoader vs bare cv2.VideoCapture loop ({n_frames} MJPG frames 320x240) | "
          f"{cam_loader:.0f} frames/s | {cam_bare:.0f} frames/s | {cam_ratio:.2f}x |")
    for block, ours, bare, ratio, n in rows_audio:
        print(f"| AudioFileLoader vs bare soundfile reads ({audio_seconds} s WAV, {n} blocks of {block}) | "
              f"{ours:.0f} blocks/s | {bare:.0f} blocks/s | {ratio:.2f}x |")
    for name, ours, base, ratio in mel_rows:
        if math.isnan(base):
            print(f"| LogMelSpectrogram (10 s, 16 kHz) vs {name} | {ours * 1e3:.2f} ms | not installed | - |")
        else:
            print(f"| LogMelSpectrogram (10 s, 16 kHz) vs {name} | {ours * 1e3:.2f} ms | "
                  f"{base * 1e3:.2f} ms | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
