"""The ``mmfuse demo`` subcommand: its flags, their checks, and one run from data to outputs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .model import HOP, build_model, standardise, timelines
from .report import format_table, plot, write_results
from .train import evaluate, fit

if TYPE_CHECKING:  # torch and the models load only when the demo runs: `mmfuse --help` is quick
    import torch

    from ..data import AVDigits

__all__ = ["DESCRIPTION", "add_arguments", "run"]

DEFAULT_OUT = Path("mmfuse-demo-output")


class _Size(NamedTuple):
    limit_per_class: int | None  # training pairs per digit (None: all)
    test_pairings: int  # test images paired with each test clip
    epochs: int


QUICK = _Size(limit_per_class=40, test_pairings=1, epochs=8)
FULL = _Size(limit_per_class=None, test_pairings=3, epochs=30)
DESCRIPTION = """\
Audio-visual digits: scikit-learn's handwritten digit images paired by label with spoken
digits (the FSDD recordings with --audio-dir, else built-in SYNTHETIC audio). Trains image and
audio encoders with fusion at the data, feature and decision levels and contrastive alignment,
prints test accuracies (also with each modality absent) and cross-modal retrieval R@1, and
writes demo.png and results.json to --out. No download, no GPU needed.
"""


def _positive_int(text: str) -> int:
    """``type=`` for flags that take a count.

    Example:
        >>> _positive_int("3")
        3
        >>> _positive_int("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a positive integer, got '0'
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's flags, on ``parser`` (the ``mmfuse demo`` subcommand).

    Example:
        >>> parser = argparse.ArgumentParser(prog="mmfuse demo")
        >>> add_arguments(parser)
        >>> args = parser.parse_args(["--quick", "--seed", "1"])
        >>> args.quick, args.seed, args.epochs, args.batch_size, str(args.out)
        (True, 1, None, 64, 'mmfuse-demo-output')
    """
    parser.add_argument("--audio-dir", type=Path, default=None, metavar="DIR",
                        help="FSDD recordings ({digit}_{speaker}_{index}.wav), the folder or its "
                             "parent; default: built-in synthetic audio (not speech)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help=f"output folder for demo.png and results.json (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed: same seed, same table (default 0)")
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help=f"training epochs (default {FULL.epochs}, {QUICK.epochs} "
                             "with --quick)")
    parser.add_argument("--batch-size", type=_positive_int, default=64, help="default 64")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    parser.add_argument("--threads", type=_positive_int, default=1,
                        help="CPU threads for PyTorch (default 1: the model is small, and on 2 "
                             "cores more threads were slower)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small run for tests: {QUICK.limit_per_class} training pairs per "
                             f"digit, {QUICK.epochs} epochs")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _device(spec: str, parser: argparse.ArgumentParser) -> torch.device:
    import torch

    try:
        device = torch.device(spec)
    except RuntimeError:
        parser.error(f"--device {spec!r} is not a torch device (e.g. cpu, cuda, cuda:0)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch has no CUDA support" if torch.version.cuda is None else "no GPU found"
            parser.error(f"--device {spec}: CUDA is not available ({why}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            parser.error(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        parser.error(f"--device {spec}: MPS is not available; use --device cpu")
    return device


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the demo with parsed ``args``; usage errors go through ``parser.error`` (exit 2)."""
    start = time.perf_counter()
    device = _device(args.device, parser)
    audio_dir: Path | None = args.audio_dir
    if audio_dir is not None and not audio_dir.is_dir():
        what = "is not a folder" if audio_dir.exists() else "does not exist"
        parser.error(f"--audio-dir {audio_dir} {what} (expected the FSDD recordings folder or "
                     f"its parent)")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} exists and is not a folder")
    try:
        from ..data import load_av_digits

        try:
            size = QUICK if args.quick else FULL
            data = load_av_digits(audio_dir, seed=args.seed,
                                  limit_per_class=size.limit_per_class,
                                  test_pairings=size.test_pairings, hop_length=HOP)
        except FileNotFoundError:
            parser.error(f"--audio-dir {audio_dir} holds no FSDD recordings "
                         f"({{digit}}_{{speaker}}_{{index}}.wav), nor does its recordings/ folder")
        except ValueError as exc:  # e.g. a recording at another sample rate
            parser.error(f"--audio-dir {audio_dir}: {exc}")
        return _run(args, data, device, start)
    except ImportError as exc:
        parser.exit(1, f"{parser.prog}: error: {exc}\n")


def _run(args: argparse.Namespace, data: AVDigits, device: torch.device, start: float) -> int:
    import torch

    torch.set_num_threads(args.threads)  # after the data: a usage error changes nothing
    size = QUICK if args.quick else FULL
    epochs = args.epochs or size.epochs
    train, test = (standardise(s)._replace(labels=s.labels.long()) for s in (data.train, data.test))
    train, test = (type(s)(*(t.to(device) for t in s)) for s in (train, test))
    n_mels, steps = train.audio.shape[1:]
    times = timelines(steps, device)  # (T,) frame times, (S,) step times
    audio = ("SYNTHETIC spoken-digit-like sounds, not speech (pass --audio-dir with the FSDD "
             "recordings for real audio)" if data.synthetic else data.source)
    print("mmfuse demo: audio-visual digits (sklearn handwritten digits + spoken digits)")
    print(f"audio: {audio}")
    print(f"train {len(train.labels)} pairs, test {len(test.labels)} pairs "
          f"({len(test.labels) // size.test_pairings} clips x {size.test_pairings} images); "
          f"{epochs} epochs, batch {args.batch_size}, seed {args.seed}, device {device}, "
          f"{torch.get_num_threads()} CPU thread(s)", flush=True)

    torch.manual_seed(args.seed)
    model = build_model(n_mels, device)
    losses = fit(model, train, times, epochs=epochs, batch_size=args.batch_size,
                 seed=args.seed, device=device, progress=not args.no_progress)
    res = evaluate(model, test, times, device)
    print()
    print("\n".join(format_table(res)))
    print("data level: the streams are merged before any encoder, so it has no missing-modality "
          "mode; chance = 10 %.")

    args.out.mkdir(parents=True, exist_ok=True)
    png, js = args.out / "demo.png", args.out / "results.json"
    source = "synthetic audio" if data.synthetic else "FSDD audio"
    plot(res, png, f"mmfuse demo: handwritten digits + {source}, seed {args.seed}")
    seconds = time.perf_counter() - start
    write_results(js, {
        "audio": "synthetic" if data.synthetic else data.source, "synthetic": data.synthetic,
        "seed": args.seed, "epochs": epochs, "batch_size": args.batch_size, "quick": args.quick,
        "device": str(device), "train_pairs": len(train.labels), "test_pairs": len(test.labels),
        "train_loss": losses, "seconds": round(seconds, 1),
    }, res)
    print(f"\nwrote {png} and {js}; {seconds:.0f} s in all")
    return 0
