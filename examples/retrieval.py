"""Cross-modal retrieval on real data: align spoken digits with handwritten digit images.

Images: scikit-learn's handwritten digits (8x8). Audio: the Free Spoken Digit Dataset (FSDD,
read from ``--audio-dir``, by default ``<repo>/../shared/data/fsdd``; without it, the synthetic
spoken-digit-like sounds of :func:`mmfuse.data.synthesize_spoken_digits`, which are not speech
and only let the script run anywhere). Every recording is paired with an
image of the same digit; two small encoders (an MLP on the pixels, an MLP on log-mel mean/std
statistics) are trained with InfoNCE where *every* pair of the same digit is a positive
(``positives=labels``), so same-digit items are never pushed apart as negatives.

Evaluation on held-out pairs (FSDD's test split: recordings 0-4 of each digit and speaker, with
held-out images): recall@1 and @5 in both directions, where a retrieved item counts as correct
when it shows or says the same digit.

Run: ``python examples/retrieval.py`` (``--quick`` for a run well under a minute).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmfuse.alignment import InfoNCELoss
from mmfuse.metrics import retrieval_metrics

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_AUDIO = ROOT.parent / "shared" / "data" / "fsdd"
SYNTHETIC_PER_CLASS = {False: (160, 40), True: (40, 10)}  # (train, test) clips per digit, by --quick
SAMPLE_RATE = 8000


# ----------------------------------------------------------------------------- audio features


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters on the HTK mel scale."""
    def hz_to_mel(f: float | torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + torch.as_tensor(f) / 700.0)

    def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(0.0)), float(hz_to_mel(sample_rate / 2)),
                                     n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0)


def log_mel_stats(wave: torch.Tensor, fbank: torch.Tensor, n_fft: int = 256,
                  hop: int = 80) -> torch.Tensor:
    """Mean and standard deviation over time of a log-mel spectrogram: (2 * n_mels,)."""
    if wave.numel() < n_fft:
        wave = F.pad(wave, (0, n_fft - wave.numel()))
    spec = torch.stft(wave, n_fft, hop_length=hop, window=torch.hann_window(n_fft),
                      return_complex=True).abs() ** 2  # (F, T)
    logmel = torch.log(fbank @ spec + 1e-6)  # (n_mels, T)
    return torch.cat([logmel.mean(1), logmel.std(1, unbiased=False)])


def load_fsdd(folder: Path, n_mels: int = 40) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features (N, 2 * n_mels), digit labels (N,), is_test (N,)) for every recording."""
    import soundfile as sf

    rec = folder / "recordings" if (folder / "recordings").is_dir() else folder
    files = sorted(rec.glob("*.wav"))
    if not files:
        raise FileNotFoundError(f"no FSDD recordings (*.wav) under {rec}")
    fbank = mel_filterbank(n_mels, 256, SAMPLE_RATE)
    feats, labels, test = [], [], []
    for path in files:
        digit, _speaker, index = path.stem.split("_")
        wave, sr = sf.read(path, dtype="float32")
        if sr != SAMPLE_RATE:
            raise ValueError(f"{path}: expected {SAMPLE_RATE} Hz, got {sr}")
        feats.append(log_mel_stats(torch.from_numpy(wave), fbank))
        labels.append(int(digit))
        test.append(int(index) < 5)  # FSDD convention: indices 0-4 are the test split
    return torch.stack(feats), torch.tensor(labels), torch.tensor(test)


def load_synthetic(n_train: int, n_test: int, seed: int,
                   n_mels: int = 40) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like :func:`load_fsdd` for synthetic spoken-digit-like sounds (not speech)."""
    from mmfuse.data import synthesize_spoken_digits

    waves, labels = synthesize_spoken_digits(n_train + n_test, seed=seed)  # (10 * n, S)
    fbank = mel_filterbank(n_mels, 256, SAMPLE_RATE)
    feats = torch.stack([log_mel_stats(w, fbank) for w in waves])
    test = (torch.arange(len(labels)) % (n_train + n_test)) >= n_train  # the last of each digit
    return feats, labels, test


# ----------------------------------------------------------------------------- data and model


def pair_by_digit(audio_labels: torch.Tensor, image_labels: torch.Tensor,
                  gen: torch.Generator) -> torch.Tensor:
    """For every recording, the index of an image of the same digit (cycling through them)."""
    out = torch.empty_like(audio_labels)
    for d in range(10):
        a_idx = (audio_labels == d).nonzero().squeeze(1)
        i_idx = (image_labels == d).nonzero().squeeze(1)
        i_idx = i_idx[torch.randperm(len(i_idx), generator=gen)]
        out[a_idx] = i_idx[torch.arange(len(a_idx)) % len(i_idx)]
    return out


def encoder(d_in: int, d_out: int, hidden: int = 256) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(0.1),
                         nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, d_out))


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--audio-dir", type=Path, default=None,
                   help=f"FSDD recordings (default {DEFAULT_AUDIO} if it exists, else "
                        "synthetic audio)")
    p.add_argument("--synthetic", action="store_true",
                   help="use synthetic spoken-digit-like audio (not speech) instead of FSDD")
    p.add_argument("--quick", action="store_true", help="fewer epochs (runs well under 1 min)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dim", type=int, default=64, help="size of the shared embedding")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--positives", choices=("digit", "pair"), default="digit",
                   help="digit: every same-digit pair is a positive (default); pair: only the "
                        "paired item, other same-digit items count as negatives (ablation)")
    args = p.parse_args()
    audio_dir = args.audio_dir
    if args.synthetic:
        audio_dir = None
    elif audio_dir is None and (DEFAULT_AUDIO / "recordings").is_dir():
        audio_dir = DEFAULT_AUDIO
    elif audio_dir is not None and not audio_dir.is_dir():
        p.error(f"--audio-dir {audio_dir} is not a folder (FSDD recordings expected)")
    epochs = args.epochs or (15 if args.quick else 60)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()

    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # (1797, 64)
    image_labels = torch.tensor(digits.target)
    perm = torch.randperm(len(images), generator=gen)
    n_test_img = len(images) // 5
    img_test_idx, img_train_idx = perm[:n_test_img], perm[n_test_img:]

    if audio_dir is None:
        audio, audio_labels, audio_test = load_synthetic(*SYNTHETIC_PER_CLASS[args.quick], args.seed)
        source = "synthetic spoken-digit-like audio (SYNTHETIC: not speech)"
    else:
        audio, audio_labels, audio_test = load_fsdd(audio_dir)
        source = f"FSDD recordings in {audio_dir}"
    print(f"audio: {source}")
    print(f"loaded {len(images)} images and {len(audio)} recordings in {time.time() - t0:.1f}s")

    # pairs: train recordings with train images, test recordings with held-out images
    tr, te = ~audio_test, audio_test
    pair_tr = img_train_idx[pair_by_digit(audio_labels[tr], image_labels[img_train_idx], gen)]
    pair_te = img_test_idx[pair_by_digit(audio_labels[te], image_labels[img_test_idx], gen)]
    aud_tr, aud_te = standardize(audio[tr], audio[te])
    img_tr, img_te = images[pair_tr], images[pair_te]
    lab_tr, lab_te = audio_labels[tr], audio_labels[te]

    image_enc, audio_enc = encoder(64, args.dim), encoder(aud_tr.shape[1], args.dim)
    loss_fn = InfoNCELoss(temperature=0.1, max_scale=100.0)
    params = [*image_enc.parameters(), *audio_enc.parameters(), *loss_fn.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    steps = epochs * math.ceil(len(aud_tr) / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    for epoch in range(epochs):
        image_enc.train()
        audio_enc.train()
        order = torch.randperm(len(aud_tr), generator=gen)
        total = 0.0
        for start in range(0, len(order), args.batch_size):
            idx = order[start : start + args.batch_size]
            # multiple positives: every same-digit pair in the batch is a positive
            positives = lab_tr[idx] if args.positives == "digit" else None
            loss = loss_fn(image_enc(img_tr[idx]), audio_enc(aud_tr[idx]), positives=positives)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if epoch == 0 or (epoch + 1) % max(1, epochs // 5) == 0:
            print(f"epoch {epoch + 1:3d}/{epochs}: loss {total / len(order):.3f}, "
                  f"scale {loss_fn.scale.item():.1f}")

    image_enc.eval()
    audio_enc.eval()
    with torch.no_grad():
        zi, za = image_enc(img_te), audio_enc(aud_te)
    ks = (1, 5)
    i2a = retrieval_metrics(zi, za, ks=ks, positives=lab_te)
    a2i = retrieval_metrics(za, zi, ks=ks, positives=lab_te)
    chance = float(np.mean([(lab_te == d).float().mean().item() for d in lab_te.tolist()]))
    split = "synthetic test clips" if audio_dir is None else "FSDD test split"
    print(f"\nheld-out pairs: {len(lab_te)} ({split}, held-out images); "
          f"a match = same digit; R@1 by chance = {chance:.3f}")
    print("| direction | R@1 | R@5 | mAP |")
    print("|---|---|---|---|")
    for name, m in (("image -> audio", i2a), ("audio -> image", a2i)):
        print(f"| {name} | {m['R@1']:.3f} | {m['R@5']:.3f} | {m['mAP']:.3f} |")
    print(f"\ntotal time {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
