"""Robustness of the demo's fused classifiers: modalities missing, corrupted and attacked.

Trains the model of ``mmfuse demo`` (handwritten digit images paired by label with spoken
digits, FSDD from ``--audio-dir``, by default ``<repo>/../shared/data/fsdd``; without it the
demo's synthetic audio) and runs :func:`mmfuse.metrics.robustness` on the test split for the
feature-level (:class:`~mmfuse.fusion.AttentionFusion`) and the decision-level
(:class:`~mmfuse.fusion.DecisionFusion`) classifiers: each modality absent (through
``present``), Gaussian noise and dropout (image pixels, spectrogram time steps) at a few
severities, and FGSM / PGD within an L-inf budget on one modality at a time. Noise stds and
budgets are in units of each modality's standard deviation over the test set.

Run: ``python examples/robustness.py`` (about 1.5 min of CPU on one core; ``--quick`` well
under a minute). ``--plot robustness.png`` draws the table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import Tensor

from mmfuse.data import AVSplit, load_av_digits
from mmfuse.demo.model import HOP, build_model, forward, standardise, timelines
from mmfuse.demo.train import fit
from mmfuse.metrics import plot_robustness, robustness

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_AUDIO = ROOT.parent / "shared" / "data" / "fsdd"
HEADS = ("feature level", "decision level")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio-dir", type=Path, default=DEFAULT_AUDIO,
                        help="FSDD recordings (default: ../shared/data/fsdd beside the repo; "
                             "synthetic audio when it does not exist)")
    parser.add_argument("--quick", action="store_true", help="small data, few epochs")
    parser.add_argument("--epochs", type=int, default=None, help="default 15 (8 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=None, help="write a bar chart here")
    args = parser.parse_args(argv)
    start, cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    audio_dir = args.audio_dir if args.audio_dir.is_dir() else None
    data = load_av_digits(audio_dir, seed=args.seed, limit_per_class=40 if args.quick else None,
                          test_pairings=1, hop_length=HOP)
    train, test = (standardise(s)._replace(labels=s.labels.long()) for s in (data.train, data.test))
    device = torch.device("cpu")
    times = timelines(train.audio.shape[2], device)
    model = build_model(train.audio.shape[1], device)
    epochs = args.epochs or (8 if args.quick else 15)
    fit(model, train, times, epochs=epochs, batch_size=64, seed=args.seed, device=device,
        progress=False)
    source = "synthetic audio" if data.synthetic else "FSDD"
    print(f"audio-visual digits ({source}): train {len(train.labels)} pairs, test "
          f"{len(test.labels)} pairs, {epochs} epochs, seed {args.seed}")
    weights = model["decision"].weights().tolist()  # type: ignore[operator]
    print("decision-level learned weights: "
          + ", ".join(f"{m} {w:.2f}" for m, w in zip(("image", "audio"), weights)))

    batches = [({"image": test.images[i : i + 256], "audio": test.audio[i : i + 256]},
                test.labels[i : i + 256]) for i in range(0, len(test.labels), 256)]
    for head in HEADS:
        def classify(inputs: dict[str, Tensor], present: dict[str, Tensor] | None,
                     head: str = head) -> Tensor:
            batch = AVSplit(inputs["image"], inputs["audio"],
                            torch.zeros(inputs["image"].shape[0], dtype=torch.long))
            return forward(model, batch, times, present)[head]

        table = robustness(classify, batches, noise=(0.5, 1.0), dropout=(0.25, 0.5),
                           dropout_axes={"image": (2, 3), "audio": (2,)},
                           epsilons=(0.1, 0.25), pgd_steps=5, seed=args.seed)
        print(f"\n{head} ({'AttentionFusion' if head == 'feature level' else 'DecisionFusion'})"
              f", test accuracy:")
        print(table.to_markdown())
        if args.plot is not None:
            path = args.plot.with_name(f"{args.plot.stem}-{head.replace(' ', '-')}"
                                       f"{args.plot.suffix}")
            plot_robustness(table, path, title=f"{head}: {source}")
            print(f"wrote {path}")
    print(f"\n{time.perf_counter() - start:.0f} s in all ({time.process_time() - cpu:.0f} s of CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
