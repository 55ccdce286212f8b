"""Live audio-visual fusion: camera + microphone -> Synchronizer -> fusion model -> predictions.

Reads frames from a camera (or a video file, or a network stream URL) and audio from a
microphone (or an audio file), windows both onto one timeline with
:class:`mmfuse.perception.Synchronizer` (frames on a regular grid, audio as a log-mel
spectrogram), and feeds each window to a small fusion model, printing one timestamped
prediction per window. The model is untrained (fixed seed): the point is the pipeline.

Where :class:`mmfuse.fusion.DataLevelFusion` exists it fuses the raw frames and spectrogram
(aligned on their timestamps) into one tensor; otherwise per-modality features are pooled and
joined by :class:`mmfuse.fusion.ConcatFusion`.

Examples::

    python examples/live_av.py                                  # camera 0 + default microphone
    python examples/live_av.py --video clip.mp4 --audio clip.wav --small --windows 3
    python examples/live_av.py --url http://127.0.0.1:8080/stream.mjpg --audio speech.wav
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from torch import Tensor, nn

import mmfuse.fusion
from mmfuse.perception import (
    AudioFileLoader,
    CameraLoader,
    Loader,
    LogMelSpectrogram,
    MicrophoneLoader,
    NormalizeFrames,
    Synchronizer,
    clock,
)

SAMPLE_RATE = 16000


class AVModel(nn.Module):
    """A small fusion head over one synchronised window (batched, B = 1)."""

    def __init__(self, channels: int, n_mels: int, num_classes: int) -> None:
        super().__init__()
        self.normalize = NormalizeFrames()
        data_level = getattr(mmfuse.fusion, "DataLevelFusion", None)
        self.fusion_kind = "data-level" if data_level is not None else "feature-level (concat)"
        if data_level is not None:
            self.fuse: nn.Module = data_level(channels, n_mels)
            width = channels + n_mels  # C + F channels per frame
        else:
            self.fuse = mmfuse.fusion.ConcatFusion({"video": 2 * channels, "audio": 2 * n_mels})
            width = 2 * channels + 2 * n_mels
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, num_classes))

    def forward(self, frames: Tensor, frame_times: Tensor, spec: Tensor, spec_times: Tensor) -> Tensor:
        x = self.normalize(frames)  # (B, T, C, H, W) float
        if self.fusion_kind == "data-level":
            fused = self.fuse(x, frame_times, spec, spec_times)  # (B, T, C + F, H, W)
            features = fused.mean(dim=(1, 3, 4))  # (B, C + F)
        else:
            video = torch.cat([x.mean(dim=(1, 3, 4)), x.std(dim=(1, 3, 4))], dim=-1)  # (B, 2C)
            audio = torch.cat([spec.mean(dim=-1), spec.std(dim=-1)], dim=-1)  # (B, 2F)
            features = self.fuse({"video": video, "audio": audio})
        return self.head(features).softmax(dim=-1)  # (B, classes)


def build_loaders(args: argparse.Namespace) -> dict[str, Loader]:
    start = clock()  # shared by file sources so they start together
    size = (args.size[0], args.size[1])
    if args.video:
        video: Loader = CameraLoader(args.video, size=size, start=start)
    elif args.url:
        video = CameraLoader(args.url, size=size, open_timeout=args.timeout, read_timeout=args.timeout)
    else:
        video = CameraLoader(args.camera, size=size)
    try:
        if args.audio:
            audio: Loader = AudioFileLoader(args.audio, block_size=2048, start=start)
        else:
            device = int(args.mic) if args.mic is not None and args.mic.isdigit() else args.mic
            audio = MicrophoneLoader(device, sample_rate=SAMPLE_RATE, block_size=1024)
    except BaseException:
        video.close()
        raise
    return {"video": video, "audio": audio}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--camera", type=int, default=0, help="camera device index (default 0)")
    src.add_argument("--video", help="video file instead of a camera")
    src.add_argument("--url", help="network stream (http MJPEG, rtsp) instead of a camera")
    snd = p.add_mutually_exclusive_group()
    snd.add_argument("--mic", default=None, help="input device (index or name); default input")
    snd.add_argument("--audio", help="audio file (WAV/FLAC/OGG) instead of a microphone")
    p.add_argument("--window", type=float, default=1.0, help="window length, seconds")
    p.add_argument("--rate", type=float, default=8.0, help="video frames per window second")
    p.add_argument("--size", type=int, nargs=2, default=(120, 160), metavar=("H", "W"))
    p.add_argument("--n-mels", type=int, default=64)
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--windows", type=int, default=0, help="stop after this many windows (0: until the end)")
    p.add_argument("--timeout", type=float, default=10.0, help="network open/read timeout, seconds")
    p.add_argument("--small", action="store_true", help="tiny sizes for a quick run (CI)")
    args = p.parse_args(argv)
    if args.small:
        args.size, args.n_mels, args.rate, args.window = (32, 40), 16, 4.0, 0.5
        args.windows = args.windows or 3

    torch.manual_seed(0)
    model = AVModel(3, args.n_mels, args.classes).eval()
    mel = LogMelSpectrogram(SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=args.n_mels)
    loaders = build_loaders(args)
    audio_rate = getattr(loaders["audio"], "sample_rate", SAMPLE_RATE)
    if audio_rate != SAMPLE_RATE:
        mel = LogMelSpectrogram(audio_rate, n_fft=400, hop_length=audio_rate // 100, n_mels=args.n_mels)
    print(f"fusion: {model.fusion_kind}; window {args.window} s, video {args.rate} Hz at "
          f"{args.size[0]}x{args.size[1]}, audio {audio_rate} Hz -> {args.n_mels} mel bands")
    count = 0
    with Synchronizer(loaders, window=args.window, rates={"video": args.rate},
                      transforms={"audio": mel}) as sync, torch.no_grad():
        for w in sync:
            frames, spec = w.data["video"], w.data["audio"]  # (1, T, C, H, W), (1, F, S)
            # times relative to the window start: float32 keeps sub-millisecond precision
            ft = (w.times["video"] - w.start).float()
            st = (w.times["audio"] - w.start).float()
            probs = model(frames, ft, spec, st)[0]
            top = int(probs.argmax())
            info: dict[str, Any] = {"frames": tuple(frames.shape), "spec": tuple(spec.shape)}
            print(f"t={w.start:.3f}-{w.end:.3f} s  class {top} (p={float(probs[top]):.2f})  {info}",
                  flush=True)
            count += 1
            if args.windows and count >= args.windows:
                break
    print(f"{count} windows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
