"""Audio-visual digits: every fusion strategy on real images paired with real spoken digits.

Pairs scikit-learn's handwritten digit images with spoken digits (the FSDD recordings from
``--audio-dir``, by default ``<repo>/../shared/data/fsdd``; without them, a synthetic
spoken-digit-like set, said so in the output), one label per pair. Trains small encoders
(``mmfuse.encoders``) with each fusion strategy and prints test accuracy: image only, audio only,
each fusion with both modalities, and each fusion with the audio or the image absent at test
time, trained with and without ``ModalityDropout``.

    python examples/av_digits.py                 # full run (a few minutes on 2 CPU cores)
    python examples/av_digits.py --quick         # < 1 minute: less data, fewer epochs
    python examples/av_digits.py --fusions concat,decision-weighted
    python examples/av_digits.py --split speaker              # leave-one-speaker-out
    python examples/av_digits.py --test-audio-dir DIR         # test on unheard speakers
    python examples/av_digits.py --degraded                   # noisy audio and images

Fusion modules are found by name in ``mmfuse.fusion``; those not in this installation are
skipped, so the script runs with whichever are present. Add one to ``FUSIONS`` to compare it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mmfuse.fusion
from mmfuse.data import AVDigits, AVSplit, fsdd_speakers, load_av_digits
from mmfuse.demo.cli import DEGRADED
from mmfuse.encoders import AudioEncoder, ImageEncoder

NAMES = ("image", "audio")
DIM = 32  # feature size of each encoder
DEFAULT_AUDIO_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fsdd"

# name -> (class name in mmfuse.fusion, factory(cls, dims, out_dim)). Feature-level fusions share
# the signature Name(dims, out_dim, ...) and forward(features, present=None) -> (B, out_dim).
FUSIONS: dict[str, tuple[str, Callable[[Any, dict[str, int], int], nn.Module]]] = {
    "concat": ("ConcatFusion", lambda cls, dims, out: cls(dims, out)),
    "attention": ("AttentionFusion", lambda cls, dims, out: cls(dims, out)),
    "gated": ("GatedFusion", lambda cls, dims, out: cls(dims, out)),
    "tensor": ("TensorFusion", lambda cls, dims, out: cls(dims, out)),
    "low_rank_tensor": ("LowRankTensorFusion", lambda cls, dims, out: cls(dims, out, rank=4)),
    "bilinear": ("BilinearFusion", lambda cls, dims, out: cls(dims, out, rank=4)),
    "film": ("FiLMFusion", lambda cls, dims, out: cls(dims, out, target="image")),
}
# late fusion: one classifier per modality, merged by DecisionFusion (learned weights, logits)
DECISIONS = {"decision-weighted": "weighted", "decision-product": "product"}


def random_presence(batch: int, p: float, gen: torch.Generator) -> dict[str, Tensor]:
    """Fallback for ModalityDropout: drop each modality with probability p, keep at least one."""
    drop = torch.rand(batch, len(NAMES), generator=gen) < p
    all_gone = drop.all(dim=1)
    keep = torch.randint(0, len(NAMES), (batch,), generator=gen)
    drop[all_gone, keep[all_gone]] = False
    return {m: ~drop[:, j] for j, m in enumerate(NAMES)}


class Model(nn.Module):
    """Image and audio encoders, then a fusion ('feature'), or a classifier each ('decision')."""

    def __init__(self, kind: str, fusion: nn.Module | None, n_mels: int) -> None:
        super().__init__()
        self.kind = kind
        self.image = ImageEncoder(1, DIM, width=16, depth=2)
        self.audio = AudioEncoder(DIM, n_mels=n_mels, width=16, depth=3)
        self.fusion = fusion
        if kind == "feature":
            self.head = nn.Sequential(nn.GELU(), nn.Linear(getattr(fusion, "out_dim", DIM), 10))
        else:
            self.heads = nn.ModuleDict({m: nn.Linear(DIM, 10) for m in NAMES})

    def features(self, batch: AVSplit) -> dict[str, Tensor]:
        return {"image": self.image(batch.images), "audio": self.audio(batch.audio)}

    def forward(self, batch: AVSplit, present: Mapping[str, Tensor] | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """Log-probabilities (B, 10) of the fused prediction, and per-modality logits."""
        if self.kind == "image":
            return self.heads["image"](self.image(batch.images)).log_softmax(-1), {}
        if self.kind == "audio":
            return self.heads["audio"](self.audio(batch.audio)).log_softmax(-1), {}
        feats = self.features(batch)
        if self.fusion is None:
            raise RuntimeError(f"model kind {self.kind!r} needs a fusion module")
        if self.kind == "feature":
            return self.head(self.fusion(feats, present)).log_softmax(-1), {}
        logits = {m: self.heads[m](feats[m]) for m in NAMES}
        probs = self.fusion(logits, present)  # DecisionFusion: (B, 10) probabilities
        return probs.clamp_min(1e-8).log(), logits


def build(name: str, n_mels: int) -> Model | None:
    dims = {m: DIM for m in NAMES}
    if name in ("image", "audio"):
        return Model(name, None, n_mels)
    if name in DECISIONS:
        fusion = mmfuse.fusion.DecisionFusion(list(NAMES), 10, strategy=DECISIONS[name],
                                              inputs="logits", learnable=True)
        return Model("decision", fusion, n_mels)
    cls_name, factory = FUSIONS[name]
    cls = getattr(mmfuse.fusion, cls_name, None)
    if cls is None:
        return None
    return Model("feature", factory(cls, dims, 64), n_mels)


def batches(split: AVSplit, size: int, gen: torch.Generator | None) -> list[AVSplit]:
    n = len(split.labels)
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    return [AVSplit(*(t[order[i : i + size]] for t in split)) for i in range(0, n, size)]


def train(model: Model, data: AVSplit, *, epochs: int, dropout: float, seed: int,
          device: torch.device) -> None:
    gen = torch.Generator().manual_seed(seed)
    drop_cls = getattr(mmfuse.fusion, "ModalityDropout", None)
    drop = drop_cls(dropout, generator=gen) if (drop_cls is not None and dropout > 0) else None
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(data.labels) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for b in batches(data, 64, gen):
            b = AVSplit(*(t.to(device) for t in b))
            present = None
            if dropout > 0 and model.kind in ("feature", "decision"):
                if drop is not None:  # the library's ModalityDropout, CPU generator
                    feats = {m: torch.empty(len(b.labels), 1) for m in NAMES}
                    present = {m: p.to(device) for m, p in drop(feats).items()}
                else:
                    present = {m: p.to(device) for m, p in
                               random_presence(len(b.labels), dropout, gen).items()}
            log_p, logits = model(b, present)
            loss = F.nll_loss(log_p, b.labels)
            for lg in logits.values():  # decision level: each expert also learns alone
                loss = loss + F.cross_entropy(lg, b.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


@torch.no_grad()
def accuracy(model: Model, data: AVSplit, absent: str | None, device: torch.device) -> float:
    model.eval()
    correct = 0
    for b in batches(data, 256, None):
        b = AVSplit(*(t.to(device) for t in b))
        present = None
        if absent is not None:
            present = {absent: torch.zeros(len(b.labels), dtype=torch.bool, device=device)}
        log_p, _ = model(b, present)
        correct += int((log_p.argmax(-1) == b.labels).sum())
    return correct / len(data.labels)


Row = tuple[str, float, float | None, float | None]  # label, both, audio absent, image absent


def run_fold(data: AVDigits, names: list[str], args: argparse.Namespace, epochs: int,
             pairings: int, device: torch.device, start: float
             ) -> list[Row]:
    """Train and test every model on one split; rows of (label, both, audio absent, image absent)."""
    n_mels = data.train.audio.shape[1]
    speakers = ""
    if data.test_speakers and (args.split == "speaker" or args.test_audio_dir is not None):
        speakers = (f"; train speakers {', '.join(data.train_speakers)}, test speakers "
                    f"{', '.join(data.test_speakers)}")
    degraded = ""
    if args.audio_snr is not None or args.image_noise:
        degraded = f"; degraded: audio at {args.audio_snr} dB SNR, image noise {args.image_noise}"
    print(f"audio: {data.source}{' (SYNTHETIC: not speech)' if data.synthetic else ''}; "
          f"train {len(data.train.labels)} pairs, test {len(data.test.labels)} pairs "
          f"({pairings} images per test clip){speakers}{degraded}; "
          f"{epochs} epochs; ModalityDropout "
          f"{'from mmfuse.fusion' if hasattr(mmfuse.fusion, 'ModalityDropout') else 'local fallback'}"
          f" p={args.dropout}", flush=True)

    rows: list[Row] = []
    for name in ["image", "audio", *names]:
        for dropout in ([0.0] if name in ("image", "audio") else [0.0, args.dropout]):
            torch.manual_seed(args.seed)
            model = build(name, n_mels)
            if model is None:
                print(f"skip {name}: {FUSIONS[name][0]} is not in this mmfuse.fusion")
                break
            model.to(device)
            train(model, data.train, epochs=epochs, dropout=dropout, seed=args.seed, device=device)
            both = accuracy(model, data.test, None, device)
            label = name if dropout == 0 else f"{name} + ModalityDropout"
            if name in ("image", "audio"):
                rows.append((f"{name} only", both, None, None))
            else:
                rows.append((label, both, accuracy(model, data.test, "audio", device),
                             accuracy(model, data.test, "image", device)))
            print(f"  {label}: {both:.3f}  ({time.perf_counter() - start:.0f} s)", flush=True)
    return rows


def mean_rows(per_fold: list[list[Row]]) -> list[Row]:
    """Each row's accuracies averaged over folds (the same models in the same order)."""
    def mean(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return sum(present) / len(present) if present else None

    out: list[Row] = []
    for k, (label, *_) in enumerate(per_fold[0]):
        both = sum(f[k][1] for f in per_fold) / len(per_fold)
        out.append((label, both, mean([f[k][2] for f in per_fold]),
                    mean([f[k][3] for f in per_fold])))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio-dir", type=Path, default=None,
                        help=f"FSDD recordings (default {DEFAULT_AUDIO_DIR} if it exists, "
                             "else synthetic audio)")
    parser.add_argument("--synthetic", action="store_true", help="use the synthetic audio")
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dropout", type=float, default=0.5,
                        help="ModalityDropout probability for the '+ dropout' rows")
    parser.add_argument("--fusions", default=None,
                        help="comma-separated subset of: " + ", ".join([*FUSIONS, *DECISIONS]))
    parser.add_argument("--test-pairings", type=int, default=None,
                        help="test images paired with each test clip (default 5; 1 with --quick)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--test-audio-dir", type=Path, default=None,
                        help="FSDD recordings that are all test data; training uses the "
                             "--audio-dir speakers not among them")
    parser.add_argument("--split", choices=("fsdd", "speaker"), default="fsdd",
                        help="fsdd: FSDD's split (recordings 0-4 test); speaker: "
                             "leave-one-speaker-out, the table per speaker and the mean")
    parser.add_argument("--audio-snr", type=float, default=None, metavar="DB",
                        help="mix white noise into the audio at this SNR in dB")
    parser.add_argument("--image-noise", type=float, default=0.0, metavar="S",
                        help="Gaussian pixel noise of standard deviation S (pixels in [0, 1])")
    parser.add_argument("--degraded", action="store_true",
                        help=f"--audio-snr {DEGRADED.audio_snr:g} --image-noise "
                             f"{DEGRADED.image_noise:g} (the demo's degraded setting)")
    args = parser.parse_args(argv)

    audio_dir = args.audio_dir
    if args.synthetic:
        audio_dir = None
    elif audio_dir is None and DEFAULT_AUDIO_DIR.is_dir():
        audio_dir = DEFAULT_AUDIO_DIR
    elif audio_dir is not None and not audio_dir.is_dir():
        parser.error(f"--audio-dir {audio_dir} is not a folder (FSDD recordings expected)")
    if args.test_audio_dir is not None and not args.test_audio_dir.is_dir():
        parser.error(f"--test-audio-dir {args.test_audio_dir} is not a folder (FSDD recordings "
                     f"expected)")
    if audio_dir is None and (args.test_audio_dir is not None or args.split == "speaker"):
        parser.error("--test-audio-dir and --split speaker need FSDD recordings (--audio-dir)")
    if args.test_audio_dir is not None and args.split == "speaker":
        parser.error("--test-audio-dir and --split speaker are two different test sets; give one")
    if args.degraded:
        args.audio_snr = DEGRADED.audio_snr if args.audio_snr is None else args.audio_snr
        args.image_noise = args.image_noise or DEGRADED.image_noise
    if args.image_noise < 0:
        parser.error(f"--image-noise: expected a number >= 0, got {args.image_noise}")
    names = [*FUSIONS, *DECISIONS] if args.fusions is None else args.fusions.split(",")
    unknown = [n for n in names if n not in FUSIONS and n not in DECISIONS]
    if unknown:
        parser.error(f"unknown fusion {unknown}; choose from {[*FUSIONS, *DECISIONS]}")
    if args.quick and args.fusions is None:
        names = ["concat", "decision-weighted"]
    epochs = args.epochs or (8 if args.quick else 15)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    pairings = args.test_pairings or (1 if args.quick else 5)
    start = time.perf_counter()
    folds: list[str | None] = [None]
    if args.split == "speaker":
        folds = list(fsdd_speakers(audio_dir))  # type: ignore[arg-type]
        if len(folds) < 2:
            parser.error(f"--split speaker needs at least 2 speakers in {audio_dir}, got {folds}")
    per_fold: list[list[Row]] = []
    for fold in folds:
        try:
            data = load_av_digits(audio_dir, seed=args.seed,
                                  limit_per_class=60 if args.quick else None,
                                  test_pairings=pairings, test_audio_dir=args.test_audio_dir,
                                  test_speakers=None if fold is None else [fold],
                                  audio_snr=args.audio_snr, image_noise=args.image_noise)
        except (FileNotFoundError, ValueError) as exc:
            parser.error(str(exc))
        per_fold.append(run_fold(data, names, args, epochs, pairings, device, start))
    rows = mean_rows(per_fold)  # one fold: its own table
    if len(folds) > 1:
        print("\ntest accuracy (%) per held-out speaker, both modalities:")
        print("| model | " + " | ".join(str(f) for f in folds) + " | mean |")
        print("| --- |" + " ---: |" * (len(folds) + 1))
        for k, (label, both, _, _) in enumerate(rows):
            cells = [f"{100 * fold_rows[k][1]:.1f}" for fold_rows in per_fold]
            print(f"| {label} | {' | '.join(cells)} | {100 * both:.1f} |")
        print(f"\nmean of {len(folds)} held-out speakers:")

    def pct(v: float | None) -> str:
        return "" if v is None else f"{100 * v:.1f}"

    print("\n| model | test accuracy (%) | audio absent | image absent |")
    print("| --- | ---: | ---: | ---: |")
    for label, both, no_audio, no_image in rows:
        print(f"| {label} | {pct(both)} | {pct(no_audio)} | {pct(no_image)} |")
    single = {label: both for label, both, _, _ in rows if label.endswith(" only")}
    fused = [(both, label) for label, both, _, _ in rows if not label.endswith(" only")]
    if single and fused:
        best_single = max(single.values())
        best, best_label = max(fused)
        print(f"\nbest fusion {best_label}: {100 * best:.1f} % vs best single modality "
              f"{100 * best_single:.1f} %")
        for label, _, no_audio, no_image in rows:
            if label.endswith("ModalityDropout") and no_audio is not None and no_image is not None:
                print(f"{label}: audio absent {100 * no_audio:.1f} % (image only "
                      f"{100 * single.get('image only', 0):.1f} %), image absent "
                      f"{100 * no_image:.1f} % (audio only {100 * single.get('audio only', 0):.1f} %)")
    print(f"\n{time.perf_counter() - start:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
