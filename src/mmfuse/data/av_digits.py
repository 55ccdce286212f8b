"""Audio-visual digits: handwritten digit images paired by label with spoken digits.

In the spirit of AV-MNIST, from data users already have: the images are scikit-learn's real
handwritten digits (``sklearn.datasets.load_digits``, 8x8 grey); the audio is either the real
Free Spoken Digit Dataset recordings (``audio_dir`` pointing at a folder of
``{digit}_{speaker}_{index}.wav`` files, CC BY-SA 4.0) or, when ``audio_dir`` is None, a
**synthetic** set of spoken-digit-like sounds made here (harmonic "voices" with digit-specific
formant glides, random pitch, length and noise). The synthetic audio is for running things
without the recordings; it is not speech, and results on it say little about real audio.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from .._checks import check_positive
from .._optional import require
from ..functional.audio import log_mel_spectrogram

__all__ = ["AVDigits", "AVSplit", "load_av_digits", "load_fsdd", "synthesize_spoken_digits"]

SAMPLE_RATE = 8000
_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")


class AVSplit(NamedTuple):
    """One split: images (N, 1, 8, 8) in [0, 1], log-mel audio (N, n_mels, frames) and the
    shared labels (N,) long."""

    images: Tensor
    audio: Tensor
    labels: Tensor


class AVDigits(NamedTuple):
    """The train and test splits and where the audio came from."""

    train: AVSplit
    test: AVSplit
    synthetic: bool
    source: str


def _fit_length(wave: Tensor, length: int) -> Tensor:
    """Peak-normalise, centre-crop or zero-pad at the end to ``length`` samples."""
    wave = wave / wave.abs().max().clamp_min(1e-8)
    if wave.numel() >= length:
        start = (wave.numel() - length) // 2
        return wave[start : start + length]
    return torch.nn.functional.pad(wave, (0, length - wave.numel()))


def load_fsdd(audio_dir: str | os.PathLike[str], *, clip_samples: int = 6000
              ) -> tuple[Tensor, Tensor, Tensor]:
    """Read FSDD recordings: waveforms (N, clip_samples), labels (N,), and is_test (N,) bool.

    The split follows the dataset's convention: recordings with index 0-4 (of each digit and
    speaker) are the test set, the rest training. Needs ``soundfile``.

    Raises:
        FileNotFoundError: the folder does not exist or holds no FSDD-named WAV file.
    """
    folder = Path(audio_dir)
    if (folder / "recordings").is_dir():
        folder = folder / "recordings"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"load_fsdd: expected `audio_dir` to be a folder of FSDD recordings "
            f"({{digit}}_{{speaker}}_{{index}}.wav), got {str(audio_dir)!r}, which does not exist."
        )
    matches = sorted(((p, m) for p in folder.iterdir() if (m := _FSDD_NAME.match(p.name))),
                     key=lambda pm: pm[0].name)
    if not matches:
        raise FileNotFoundError(
            f"load_fsdd: expected FSDD recordings named {{digit}}_{{speaker}}_{{index}}.wav in "
            f"`audio_dir`, got none in {str(folder)!r}."
        )
    sf = require("soundfile", feature="mmfuse.data.load_fsdd")
    waves, labels, is_test = [], [], []
    for p, m in matches:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
        if rate != SAMPLE_RATE:
            raise ValueError(
                f"load_fsdd: expected {SAMPLE_RATE} Hz recordings, got {rate} Hz in {p.name!r}."
            )
        waves.append(_fit_length(torch.from_numpy(data.mean(axis=1)), clip_samples))
        labels.append(int(m.group(1)))
        is_test.append(int(m.group(3)) < 5)
    return torch.stack(waves), torch.tensor(labels), torch.tensor(is_test)


# Two formant targets (F1, F2 in Hz) per digit: the sound glides from the first to the second,
# roughly like the vowels of the English number words; digits with a fricative get a noise burst.
_FORMANTS = {
    0: ((300, 2300), (500, 1000)),   # "zero": i -> o
    1: ((500, 900), (650, 1200)),    # "one": w-a
    2: ((400, 1000), (320, 900)),    # "two": u
    3: ((350, 1700), (300, 2300)),   # "three": r-i
    4: ((550, 900), (500, 1300)),    # "four": o-r
    5: ((700, 1200), (350, 2000)),   # "five": ai
    6: ((400, 2000), (600, 1800)),   # "six": i + s
    7: ((550, 1800), (450, 1500)),   # "seven": e-e
    8: ((600, 1900), (400, 2200)),   # "eight": ei
    9: ((700, 1100), (400, 2000)),   # "nine": ai-n
}
_FRICATIVE = {0: 0.0, 6: 0.8, 7: 0.5, 3: 0.3, 5: 0.3}  # onset/offset noise strength


def synthesize_spoken_digits(
    n_per_class: int, *, clip_samples: int = 6000, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Synthetic spoken-digit-like sounds: waveforms (10 * n, clip_samples) and labels.

    Each clip is a harmonic voice (random pitch 90-220 Hz, random length 0.3-0.7 s) whose
    spectral envelope glides between two digit-specific formant pairs, jittered by about 10 %
    per clip, plus a noise burst for digits with a fricative and background noise. Not speech:
    it only stands in for FSDD where the recordings are not at hand.
    """
    gen = torch.Generator().manual_seed(seed)
    n = 10 * n_per_class
    labels = torch.arange(10).repeat_interleave(n_per_class)
    t = torch.arange(clip_samples, dtype=torch.float32) / SAMPLE_RATE
    out = torch.zeros(n, clip_samples, dtype=torch.float32)

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=gen, dtype=torch.float32)

    for i in range(n):
        d = int(labels[i])
        f0 = 90 + 130 * float(rand(1))
        dur = 0.3 + 0.4 * float(rand(1))
        start = float(rand(1)) * max(0.0, clip_samples / SAMPLE_RATE - dur) * 0.5
        (a1, a2), (b1, b2) = _FORMANTS[d]
        jitter = 1 + 0.1 * (rand(4) - 0.5) * 2
        u = ((t - start) / dur).clamp(0, 1)  # progress through the word
        f1 = (a1 + (b1 - a1) * u) * jitter[0]
        f2 = (a2 + (b2 - a2) * u) * jitter[1]
        pitch = f0 * (1 + 0.15 * (rand(1) - 0.5) * u)  # a little intonation
        phase = 2 * math.pi * torch.cumsum(pitch, 0) / SAMPLE_RATE  # (S,)
        h = torch.arange(1, int(3800 // f0) + 1, dtype=torch.float32)[:, None]  # (H, 1)
        # the spectral envelope changes slowly: evaluate it every 50 samples, then interpolate
        fh = h * pitch[::50]  # (H, S/50)
        amp = torch.exp(-((fh - f1[::50]) / 120) ** 2) + 0.7 * torch.exp(-((fh - f2[::50]) / 180) ** 2)
        amp = torch.nn.functional.interpolate(amp[None], size=clip_samples, mode="linear",
                                              align_corners=False)[0]  # (H, S)
        wave = (amp * torch.sin(h * phase)).sum(0)  # (S,)
        env = torch.sin(math.pi * u).clamp_min(0) ** 0.5 * ((t >= start) & (t <= start + dur))
        wave = wave * env
        fric = _FRICATIVE.get(d, 0.0)
        if fric:
            burst = ((t - start).abs() < 0.06) | ((t - start - dur).abs() < 0.06)
            noise = torch.randn(clip_samples, generator=gen, dtype=torch.float32)
            wave += fric * noise * burst * wave.abs().max()
        wave += 0.05 * wave.abs().max() * torch.randn(clip_samples, generator=gen,
                                                      dtype=torch.float32)
        out[i] = wave / wave.abs().max().clamp_min(1e-8)
    return out.float(), labels


def _pair_images(labels: Tensor, pools: dict[int, Tensor], gen: torch.Generator) -> Tensor:
    """For each label an image index from that label's pool, cycling through a shuffle."""
    idx = torch.empty_like(labels)
    for d in range(10):
        where = (labels == d).nonzero().flatten()
        pool = pools[d]
        order = torch.cat([pool[torch.randperm(len(pool), generator=gen)]
                           for _ in range(len(where) // len(pool) + 1)])
        idx[where] = order[: len(where)]
    return idx


def load_av_digits(
    audio_dir: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    n_mels: int = 32,
    n_fft: int = 256,
    hop_length: int = 128,
    clip_samples: int = 6000,
    image_test_fraction: float = 0.25,
    limit_per_class: int | None = None,
    test_pairings: int = 1,
    synthetic_per_class: tuple[int, int] = (180, 20),
) -> AVDigits:
    """Audio-visual digits: each spoken digit paired with a handwritten image of the same digit.

    Audio splits: FSDD's own (indices 0-4 test), or for synthetic audio
    ``synthetic_per_class = (train, test)`` clips per digit. Images are split per class
    (``image_test_fraction`` to the test side) so no test image is seen in training; each
    audio clip gets an image of its label from its own split, drawn with ``seed``.

    Args:
        audio_dir: Folder of FSDD recordings; None uses the synthetic audio (``synthetic=True``
            in the result).
        seed: Seed of the image split, the pairing and the synthetic audio.
        n_mels: Mel bands of the log-mel features (8 kHz audio).
        n_fft: FFT size of the log-mel features.
        hop_length: Hop of the log-mel features, in samples.
        clip_samples: Clip length in samples (6000 = 0.75 s): centre-cropped or zero-padded.
        image_test_fraction: Share of each class's images kept for the test split.
        limit_per_class: Keep at most this many training pairs per class (for quick runs).
        test_pairings: Pair each test clip with this many test images (distinct where the
            class has enough), so the image side of the test set is sampled more widely.
        synthetic_per_class: Train and test clips per digit of the synthetic audio.

    Returns:
        :class:`AVDigits` with ``train`` and ``test`` :class:`AVSplit` tensors.

    Raises:
        FileNotFoundError: ``audio_dir`` is given but holds no FSDD recordings.
    """
    for arg, value in (("test_pairings", test_pairings), ("limit_per_class", limit_per_class)):
        if value is not None:
            check_positive(value, owner="load_av_digits", arg=arg)
    datasets = require("sklearn.datasets", feature="mmfuse.data.load_av_digits")
    digits = datasets.load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    image_labels = torch.tensor(digits.target)
    gen = torch.Generator().manual_seed(seed)

    if audio_dir is None:
        n_train, n_test = synthetic_per_class
        if limit_per_class is not None:
            n_train = min(n_train, limit_per_class)
        waves, labels = synthesize_spoken_digits(n_train + n_test, clip_samples=clip_samples,
                                                 seed=seed)
        rank = torch.arange(len(labels)) % (n_train + n_test)  # position within its class
        is_test = rank < n_test
        synthetic, source = True, "synthetic spoken-digit-like audio"
    else:
        waves, labels, is_test = load_fsdd(audio_dir, clip_samples=clip_samples)
        synthetic, source = False, f"FSDD recordings in {os.fspath(audio_dir)}"

    audio = log_mel_spectrogram(waves, SAMPLE_RATE, n_fft=n_fft, hop_length=hop_length,
                                n_mels=n_mels, eps=1e-6)  # (N, n_mels, frames)

    train_pool, test_pool = {}, {}
    for d in range(10):
        idx = (image_labels == d).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = max(1, round(image_test_fraction * len(idx)))
        test_pool[d], train_pool[d] = idx[:k], idx[k:]

    splits = []
    for test_side, pools in ((False, train_pool), (True, test_pool)):
        sel = (is_test == test_side).nonzero().flatten()
        if limit_per_class is not None and not test_side:
            keep = [sel[labels[sel] == d][:limit_per_class] for d in range(10)]
            sel = torch.cat(keep).sort().values
        if test_side:
            sel = sel.repeat(test_pairings)
        lab = labels[sel]
        img = images[_pair_images(lab, pools, gen)]
        splits.append(AVSplit(img, audio[sel], lab))
    return AVDigits(splits[0], splits[1], synthetic, source)
