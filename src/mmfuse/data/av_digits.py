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
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from .._checks import check_positive
from .._optional import require
from ..functional.audio import log_mel_spectrogram

__all__ = [
    "AVDigits", "AVSplit", "corrupt_images", "fsdd_speakers", "load_av_digits", "load_fsdd",
    "mix_noise", "synthesize_spoken_digits",
]

SAMPLE_RATE = 8000
_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
_AUDIO_NOISE_SEED = 7_919  # offsets: the noise streams differ from the pairing's
_IMAGE_NOISE_SEED = 104_729


class AVSplit(NamedTuple):
    """One split: images (N, 1, 8, 8) in [0, 1], log-mel audio (N, n_mels, frames) and the
    shared labels (N,) long."""

    images: Tensor
    audio: Tensor
    labels: Tensor


class AVDigits(NamedTuple):
    """The train and test splits, where the audio came from, and the speakers on each side
    (sorted names; empty for the synthetic audio)."""

    train: AVSplit
    test: AVSplit
    synthetic: bool
    source: str
    train_speakers: tuple[str, ...] = ()
    test_speakers: tuple[str, ...] = ()


def _fit_length(wave: Tensor, length: int) -> Tensor:
    """Peak-normalise, centre-crop or zero-pad at the end to ``length`` samples."""
    wave = wave / wave.abs().max().clamp_min(1e-8)
    if wave.numel() >= length:
        start = (wave.numel() - length) // 2
        return wave[start : start + length]
    return torch.nn.functional.pad(wave, (0, length - wave.numel()))


class _Recordings(NamedTuple):
    """FSDD recordings read from one folder, in file-name order."""

    waves: Tensor  # (N, clip_samples)
    labels: Tensor  # (N,) long
    speakers: list[str]  # (N,)
    indices: Tensor  # (N,) the recording index within its digit and speaker


def _read_fsdd(audio_dir: str | os.PathLike[str], clip_samples: int, owner: str,
               arg: str = "audio_dir") -> _Recordings:
    """Read every FSDD-named WAV file of ``audio_dir`` (or its ``recordings/``); unreadable files
    are skipped with one warning that counts them."""
    folder = Path(audio_dir)
    if (folder / "recordings").is_dir():
        folder = folder / "recordings"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{owner}: expected `{arg}` to be a folder of FSDD recordings "
            f"({{digit}}_{{speaker}}_{{index}}.wav), got {str(audio_dir)!r}, which does not exist."
        )
    matches = sorted(((p, m) for p in folder.iterdir() if (m := _FSDD_NAME.match(p.name))),
                     key=lambda pm: pm[0].name)
    if not matches:
        raise FileNotFoundError(
            f"{owner}: expected FSDD recordings named {{digit}}_{{speaker}}_{{index}}.wav in "
            f"`{arg}`, got none in {str(folder)!r}."
        )
    sf = require("soundfile", feature=f"mmfuse.data.{owner}")
    waves, labels, speakers, indices = [], [], [], []
    skipped: list[tuple[str, str]] = []
    for p, m in matches:
        try:
            data, rate = sf.read(str(p), dtype="float32", always_2d=True)
        except (RuntimeError, OSError) as exc:  # not audio, truncated, unreadable
            skipped.append((p.name, str(exc).strip().splitlines()[0] if str(exc).strip() else
                            type(exc).__name__))
            continue
        if rate != SAMPLE_RATE:
            raise ValueError(
                f"{owner}: expected {SAMPLE_RATE} Hz recordings, got {rate} Hz in {p.name!r}."
            )
        if data.shape[0] == 0:
            skipped.append((p.name, "no samples"))
            continue
        waves.append(_fit_length(torch.from_numpy(data.mean(axis=1)), clip_samples))
        labels.append(int(m.group(1)))
        speakers.append(m.group(2))
        indices.append(int(m.group(3)))
    if skipped:
        name, why = skipped[0]
        first = f"{name!r} ({why})"
        if not waves:
            raise ValueError(
                f"{owner}: none of the {len(matches)} FSDD recordings in {str(folder)!r} could be "
                f"read as audio, e.g. {first}."
            )
        warnings.warn(
            f"{owner}: skipped {len(skipped)} unreadable recording(s) of {len(matches)} in "
            f"{str(folder)!r}, e.g. {first}.", RuntimeWarning, stacklevel=3)
    return _Recordings(torch.stack(waves), torch.tensor(labels), speakers, torch.tensor(indices))


def load_fsdd(audio_dir: str | os.PathLike[str], *, clip_samples: int = 6000
              ) -> tuple[Tensor, Tensor, Tensor]:
    """Read FSDD recordings: waveforms (N, clip_samples), labels (N,), and is_test (N,) bool.

    The split follows the dataset's convention: recordings with index 0-4 (of each digit and
    speaker) are the test set, the rest training. Files with a recording's name that cannot be
    read as audio are skipped with one ``RuntimeWarning`` that counts them. Needs ``soundfile``.

    Raises:
        FileNotFoundError: the folder does not exist or holds no FSDD-named WAV file.
        ValueError: no recording could be read, or one has another sample rate than 8 kHz.
    """
    rec = _read_fsdd(audio_dir, clip_samples, "load_fsdd")
    return rec.waves, rec.labels, rec.indices < 5


def fsdd_speakers(audio_dir: str | os.PathLike[str]) -> list[str]:
    """The speakers of the FSDD-named files in ``audio_dir`` (or its ``recordings/``), sorted.

    Reads only the file names. Raises ``FileNotFoundError`` as :func:`load_fsdd` does.
    """
    folder = Path(audio_dir)
    if (folder / "recordings").is_dir():
        folder = folder / "recordings"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"fsdd_speakers: expected `audio_dir` to be a folder of FSDD recordings, got "
            f"{str(audio_dir)!r}, which does not exist."
        )
    names = {m.group(2) for p in folder.iterdir() if (m := _FSDD_NAME.match(p.name))}
    if not names:
        raise FileNotFoundError(
            f"fsdd_speakers: expected FSDD recordings named {{digit}}_{{speaker}}_{{index}}.wav "
            f"in `audio_dir`, got none in {str(folder)!r}."
        )
    return sorted(names)


def mix_noise(waves: Tensor, snr_db: float, *, generator: torch.Generator | None = None
              ) -> Tensor:
    """Add white Gaussian noise to each clip at ``snr_db`` dB signal-to-noise ratio.

    The SNR is per clip, over the whole clip: noise power = mean(wave ** 2) / 10 ** (snr / 10),
    with the noise scaled so that its own mean square over the clip matches exactly.

    Shape:
        - waves: (N, S); output: (N, S)

    Example:
        >>> w = torch.sin(torch.arange(8000.0)[None] / 5)
        >>> noisy = mix_noise(w, 10.0, generator=torch.Generator().manual_seed(0))
        >>> round(float(10 * torch.log10(w.pow(2).mean() / (noisy - w).pow(2).mean())), 3)
        10.0
    """
    noise = torch.randn(waves.shape, generator=generator, dtype=waves.dtype)
    power = waves.pow(2).mean(-1, keepdim=True)  # (N, 1)
    noise = noise * (power / noise.pow(2).mean(-1, keepdim=True)).sqrt() * 10 ** (-snr_db / 20)
    return waves + noise


def corrupt_images(images: Tensor, std: float, *, generator: torch.Generator | None = None
                   ) -> Tensor:
    """Add Gaussian pixel noise of standard deviation ``std`` and clip back to [0, 1].

    Shape:
        - images: (N, C, H, W) in [0, 1]; output: the same

    Example:
        >>> x = torch.full((2, 1, 8, 8), 0.5)
        >>> y = corrupt_images(x, 0.1, generator=torch.Generator().manual_seed(0))
        >>> bool(y.min() >= 0 and y.max() <= 1), round(float((y - x).std()), 1)
        (True, 0.1)
    """
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return (images + std * noise).clamp(0.0, 1.0)


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
    test_audio_dir: str | os.PathLike[str] | None = None,
    test_speakers: Sequence[str] | None = None,
    validation: bool = False,
    audio_snr: float | None = None,
    image_noise: float = 0.0,
) -> AVDigits:
    """Audio-visual digits: each spoken digit paired with a handwritten image of the same digit.

    Audio splits, for FSDD recordings:

    - by default FSDD's own: recordings with index 0-4 of each digit and speaker are the test
      set, the rest training (the same speakers on both sides);
    - ``test_audio_dir``: every recording there is test data, and training uses the recordings
      of ``audio_dir`` whose speakers are not among the test speakers (speaker-independent);
    - ``test_speakers``: those speakers' recordings of ``audio_dir`` are the test set, the other
      speakers' the training set (one fold of leave-one-speaker-out).

    For the synthetic audio, ``synthetic_per_class = (train, test)`` clips per digit. Images are
    split per class (``image_test_fraction`` to the test side) so no test image is seen in
    training; each audio clip gets an image of its label from its own split, drawn with ``seed``.

    ``validation=True`` sets the test split aside and holds out part of the training data
    instead (FSDD: the training recordings with index 5-9; synthetic: as many clips per digit as
    the test split has; images: ``image_test_fraction`` of the training images), so settings
    can be chosen without looking at the test data.

    Degraded setting (in the spirit of AV-MNIST): ``audio_snr`` mixes white Gaussian noise into
    every clip at that SNR in dB (:func:`mix_noise`, before the log-mel features);
    ``image_noise`` adds Gaussian pixel noise of that standard deviation to every image
    (:func:`corrupt_images`). Both sides are degraded, the noise drawn once, with ``seed``.

    Args:
        audio_dir: Folder of FSDD recordings; None uses the synthetic audio (``synthetic=True``
            in the result).
        seed: Seed of the image split, the pairing, the synthetic audio and the noise.
        n_mels: Mel bands of the log-mel features (8 kHz audio).
        n_fft: FFT size of the log-mel features.
        hop_length: Hop of the log-mel features, in samples.
        clip_samples: Clip length in samples (6000 = 0.75 s): centre-cropped or zero-padded.
        image_test_fraction: Share of each class's images kept for the test split.
        limit_per_class: Keep at most this many training pairs per class (for quick runs).
        test_pairings: Pair each test clip with this many test images (distinct where the
            class has enough), so the image side of the test set is sampled more widely.
        synthetic_per_class: Train and test clips per digit of the synthetic audio.
        test_audio_dir: Folder of FSDD recordings that are all test data (see above).
        test_speakers: Speakers of ``audio_dir`` whose recordings are the test data.
        validation: Hold out part of the training data as the test split (see above).
        audio_snr: SNR in dB of the noise mixed into the audio; None: clean audio.
        image_noise: Standard deviation of the pixel noise (images in [0, 1]); 0: clean.

    Returns:
        :class:`AVDigits` with ``train`` and ``test`` :class:`AVSplit` tensors.

    Raises:
        FileNotFoundError: ``audio_dir`` or ``test_audio_dir`` holds no FSDD recordings.
        ValueError: a bad setting, an unknown test speaker, or a split left without a digit
            (e.g. after unreadable recordings were skipped).
    """
    owner = "load_av_digits"
    for arg, value in (("test_pairings", test_pairings), ("limit_per_class", limit_per_class)):
        if value is not None:
            check_positive(value, owner=owner, arg=arg)
    check_positive(image_noise, owner=owner, arg="image_noise", allow_zero=True)
    if audio_snr is not None and (isinstance(audio_snr, bool) or not isinstance(audio_snr, (int, float))
                                  or not math.isfinite(audio_snr)):
        raise ValueError(f"{owner}: expected `audio_snr` to be a finite number of dB or None, "
                         f"got {audio_snr!r}.")
    if audio_dir is None and (test_audio_dir is not None or test_speakers is not None):
        raise ValueError(f"{owner}: `test_audio_dir` and `test_speakers` need FSDD recordings in "
                         f"`audio_dir`; the synthetic audio has no speakers.")
    if test_audio_dir is not None and test_speakers is not None:
        raise ValueError(f"{owner}: expected `test_audio_dir` or `test_speakers`, got both.")
    datasets = require("sklearn.datasets", feature="mmfuse.data.load_av_digits")
    digits = datasets.load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    image_labels = torch.tensor(digits.target)
    gen = torch.Generator().manual_seed(seed)

    speakers: list[str] = []
    if audio_dir is None:
        n_train, n_test = synthetic_per_class
        if limit_per_class is not None and not validation:
            n_train = min(n_train, limit_per_class)
        waves, labels = synthesize_spoken_digits(n_train + n_test, clip_samples=clip_samples,
                                                 seed=seed)
        rank = torch.arange(len(labels)) % (n_train + n_test)  # position within its class
        is_test = rank < n_test
        held_out = (rank >= n_test) & (rank < 2 * n_test)  # the validation clips
        synthetic, source = True, "synthetic spoken-digit-like audio"
    else:
        rec = _read_fsdd(audio_dir, clip_samples, owner)
        synthetic, source = False, f"FSDD recordings in {os.fspath(audio_dir)}"
        waves, labels, speakers, indices = rec
        if test_audio_dir is not None:
            test_rec = _read_fsdd(test_audio_dir, clip_samples, owner, "test_audio_dir")
            held = set(test_rec.speakers)
            keep = torch.tensor([s not in held for s in speakers], dtype=torch.bool)
            waves = torch.cat([waves[keep], test_rec.waves])
            labels = torch.cat([labels[keep], test_rec.labels])
            indices = torch.cat([indices[keep], test_rec.indices])
            speakers = [s for s, k in zip(speakers, keep.tolist()) if k] + test_rec.speakers
            is_test = torch.arange(len(labels)) >= int(keep.sum())
            source += f", tested on {os.fspath(test_audio_dir)}"
        elif test_speakers is not None:
            unknown = sorted(set(test_speakers) - set(speakers))
            if unknown or not test_speakers:
                raise ValueError(f"{owner}: expected `test_speakers` among the speakers of "
                                 f"`audio_dir` {sorted(set(speakers))}, got {list(test_speakers)}.")
            is_test = torch.tensor([s in test_speakers for s in speakers], dtype=torch.bool)
            if bool(is_test.all()):
                raise ValueError(f"{owner}: `test_speakers` {list(test_speakers)} leave no "
                                 f"speaker of `audio_dir` to train on.")
        else:
            is_test = indices < 5
        held_out = (indices >= 5) & (indices < 10)
    if validation:  # the test split is set aside; part of the training data takes its place
        keep = ~is_test
        waves, labels, is_test = waves[keep], labels[keep], held_out[keep]
        speakers = [s for s, k in zip(speakers, keep.tolist()) if k]

    if audio_snr is not None:
        noise_gen = torch.Generator().manual_seed(seed + _AUDIO_NOISE_SEED)
        waves = mix_noise(waves, float(audio_snr), generator=noise_gen)
    audio = log_mel_spectrogram(waves, SAMPLE_RATE, n_fft=n_fft, hop_length=hop_length,
                                n_mels=n_mels, eps=1e-6)  # (N, n_mels, frames)

    train_pool, test_pool = {}, {}
    for d in range(10):
        idx = (image_labels == d).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = max(1, round(image_test_fraction * len(idx)))
        test_pool[d], train_pool[d] = idx[:k], idx[k:]
        if validation:  # hold out part of the training images; the test images stay unused
            idx = train_pool[d]
            k = max(1, round(image_test_fraction * len(idx)))
            test_pool[d], train_pool[d] = idx[:k], idx[k:]

    image_gen = torch.Generator().manual_seed(seed + _IMAGE_NOISE_SEED)
    splits, side_speakers = [], []
    for test_side, pools in ((False, train_pool), (True, test_pool)):
        sel = (is_test == test_side).nonzero().flatten()
        if limit_per_class is not None and not test_side:
            keep_sel = [sel[labels[sel] == d][:limit_per_class] for d in range(10)]
            sel = torch.cat(keep_sel).sort().values
        side = "test" if test_side else "training"
        missing = [d for d in range(10) if not bool((labels[sel] == d).any())]
        if missing:
            raise ValueError(f"{owner}: expected clips of every digit in the {side} split, got "
                             f"none of {missing} ({source}).")
        side_speakers.append(tuple(sorted({speakers[i] for i in sel.tolist()})) if speakers
                             else ())
        if test_side:
            sel = sel.repeat(test_pairings)
        lab = labels[sel]
        img = images[_pair_images(lab, pools, gen)]
        if image_noise:
            img = corrupt_images(img, float(image_noise), generator=image_gen)
        splits.append(AVSplit(img, audio[sel], lab))
    return AVDigits(splits[0], splits[1], synthetic, source, *side_speakers)
