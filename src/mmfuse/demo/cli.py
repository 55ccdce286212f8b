"""The ``mmfuse demo`` subcommand: its flags, their checks, and one run from data to outputs."""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from .model import HOP, ROWS, build_model, standardise, timelines
from .report import format_table, mean_results, plot, speaker_table, write_results
from .train import DROP_P, evaluate, fit

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


class _Degraded(NamedTuple):
    audio_snr: float  # dB
    image_noise: float  # pixel noise std, pixels in [0, 1]


#: --autocast: the dtype autocast computes in (None: float32 throughout)
AUTOCAST = {"off": None, "bf16": "bfloat16", "fp16": "float16"}

DEGRADED = _Degraded(audio_snr=-9.0, image_noise=0.45)  # chosen with --validation (results page)
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


def _finite_float(text: str) -> float:
    """``type=`` for a finite number, e.g. an SNR in dB."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    """``type=`` for a finite number >= 0."""
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _probability(text: str) -> float:
    """``type=`` for a probability in [0, 1)."""
    value = _finite_float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text!r}")
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
    parser.add_argument("--autocast", choices=("off", "bf16", "fp16"), default="off",
                        help="train and evaluate under torch.autocast in bfloat16 or float16 "
                             "(fp16 with a gradient scaler); default off (float32)")
    group = parser.add_argument_group("splits and repeats")
    group.add_argument("--test-audio-dir", type=Path, default=None, metavar="DIR",
                       help="FSDD recordings that are all test data; training uses the "
                            "--audio-dir speakers that are not among them (speaker-independent)")
    group.add_argument("--split", choices=("fsdd", "speaker"), default="fsdd",
                       help="fsdd: FSDD's split (recordings 0-4 of every digit and speaker are "
                            "the test set); speaker: leave-one-speaker-out over --audio-dir, one "
                            "training per held-out speaker, reported per speaker and as the mean")
    group.add_argument("--seeds", type=_positive_int, default=1, metavar="N",
                       help="repeat with seeds --seed ... --seed + N - 1 and report the mean and "
                            "standard deviation (default 1)")
    group.add_argument("--validation", action="store_true",
                       help="leave the test split unused: hold out part of the training data "
                            "(FSDD recordings 5-9, a quarter of the training images) and test on "
                            "it, for choosing settings")
    group = parser.add_argument_group("degraded setting (AV-MNIST style)")
    group.add_argument("--audio-snr", type=_finite_float, default=None, metavar="DB",
                       help="mix white noise into every clip at this SNR in dB (default: clean)")
    group.add_argument("--image-noise", type=_non_negative_float, default=None, metavar="S",
                       help="add Gaussian pixel noise of standard deviation S to every image "
                            "(pixels in [0, 1]; default 0: clean)")
    group.add_argument("--degraded", action="store_true",
                       help=f"shorthand for --audio-snr {DEGRADED.audio_snr:g} --image-noise "
                            f"{DEGRADED.image_noise:g} (chosen with --validation on FSDD), "
                            "where each modality alone is far from perfect")
    group.add_argument("--modality-dropout", type=_probability, default=DROP_P, metavar="P",
                       help=f"ModalityDropout probability for the fusions in training "
                            f"(default {DROP_P})")


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


def _check_folder(parser: argparse.ArgumentParser, flag: str, folder: Path | None) -> None:
    if folder is not None and not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        parser.error(f"{flag} {folder} {what} (expected the FSDD recordings folder or its parent)")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the demo with parsed ``args``; usage errors go through ``parser.error`` (exit 2)."""
    start = time.perf_counter()
    device = _device(args.device, parser)
    audio_dir: Path | None = args.audio_dir
    _check_folder(parser, "--audio-dir", audio_dir)
    _check_folder(parser, "--test-audio-dir", args.test_audio_dir)
    if audio_dir is None and (args.test_audio_dir is not None or args.split == "speaker"):
        flag = "--test-audio-dir" if args.test_audio_dir is not None else "--split speaker"
        parser.error(f"{flag} needs --audio-dir (FSDD recordings; the synthetic audio has no "
                     f"speakers)")
    if args.test_audio_dir is not None and args.split == "speaker":
        parser.error("--test-audio-dir and --split speaker are two different test sets; give one")
    if args.degraded:
        if args.audio_snr is None:
            args.audio_snr = DEGRADED.audio_snr
        if args.image_noise is None:
            args.image_noise = DEGRADED.image_noise
    out: Path = args.out
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} exists and is not a folder")
    try:
        from ..data import fsdd_speakers

        folds: list[str | None] = [None]
        if args.split == "speaker":
            try:
                folds = list(fsdd_speakers(audio_dir))  # type: ignore[arg-type]
            except FileNotFoundError:
                _no_recordings(parser, "--audio-dir", audio_dir)
            if len(folds) < 2:
                parser.error(f"--split speaker needs recordings of at least 2 speakers in "
                             f"--audio-dir {audio_dir}, got {folds}")
        runs: list[_Run] = []
        warned: list[str] = []
        seeds = list(range(args.seed, args.seed + args.seeds))
        for seed in seeds:
            for fold in folds:
                data = _load(args, parser, seed, fold, warned)
                runs.append(_train_one(args, data, device, seed, fold, verbose=not runs))
                if len(seeds) * len(folds) > 1:
                    where = f", held-out speaker {fold}" if fold is not None else ""
                    print(f"seed {seed}{where}: {_brief(runs[-1].res)}", flush=True)
        return _report(args, runs, folds, seeds, warned, device, start)
    except ImportError as exc:
        parser.exit(1, f"{parser.prog}: error: {exc}\n")


def _no_recordings(parser: argparse.ArgumentParser, flag: str, folder: Path | None) -> NoReturn:
    parser.error(f"{flag} {folder} holds no FSDD recordings "
                 f"({{digit}}_{{speaker}}_{{index}}.wav), nor does its recordings/ folder")


def _load(args: argparse.Namespace, parser: argparse.ArgumentParser, seed: int,
          fold: str | None, warned: list[str]) -> AVDigits:
    """The data of one run; usage errors (no recordings, too few readable) exit with one line."""
    from ..data import load_av_digits

    size = QUICK if args.quick else FULL
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            data = load_av_digits(
                args.audio_dir, seed=seed, limit_per_class=size.limit_per_class,
                test_pairings=size.test_pairings, hop_length=HOP,
                test_audio_dir=args.test_audio_dir,
                test_speakers=None if fold is None else [fold], validation=args.validation,
                audio_snr=args.audio_snr, image_noise=args.image_noise or 0.0)
        except FileNotFoundError as exc:
            if "`test_audio_dir`" in str(exc):
                _no_recordings(parser, "--test-audio-dir", args.test_audio_dir)
            _no_recordings(parser, "--audio-dir", args.audio_dir)
        except ValueError as exc:  # another sample rate, nothing readable, a digit missing
            parser.error(str(exc))
    for w in caught:
        text = str(w.message)
        if text not in warned:  # once per run of the demo, not once per fold and seed
            warned.append(text)
            print(f"{parser.prog}: warning: {text}", file=sys.stderr, flush=True)
    return data


class _Run(NamedTuple):
    seed: int
    fold: str | None  # the held-out speaker of --split speaker
    data: AVDigits
    losses: list[float]
    res: dict[str, Any]
    epochs: int


def _train_one(args: argparse.Namespace, data: AVDigits, device: torch.device, seed: int,
               fold: str | None, *, verbose: bool) -> _Run:
    import torch

    torch.set_num_threads(args.threads)  # after the data: a usage error changes nothing
    size = QUICK if args.quick else FULL
    epochs = args.epochs or size.epochs
    train, test = (standardise(s)._replace(labels=s.labels.long()) for s in (data.train, data.test))
    train, test = (type(s)(*(t.to(device) for t in s)) for s in (train, test))
    n_mels, steps = train.audio.shape[1:]
    times = timelines(steps, device)  # (T,) frame times, (S,) step times
    if verbose:
        audio = ("SYNTHETIC spoken-digit-like sounds, not speech (pass --audio-dir with the FSDD "
                 "recordings for real audio)" if data.synthetic else data.source)
        print("mmfuse demo: audio-visual digits (sklearn handwritten digits + spoken digits)")
        print(f"audio: {audio}")
        if args.audio_snr is not None or args.image_noise:
            print(f"degraded: audio noise at {args.audio_snr} dB SNR, image noise std "
                  f"{args.image_noise or 0.0}")
        if args.validation:
            print("validation: the test split is not used; tested on held-out training data")
    pairs = (f"train {len(train.labels)} pairs, test {len(test.labels)} pairs "
             f"({len(test.labels) // size.test_pairings} clips x {size.test_pairings} images)")
    if data.test_speakers and (fold is not None or args.test_audio_dir is not None):
        pairs += (f"; train speakers {', '.join(data.train_speakers)}, test speakers "
                  f"{', '.join(data.test_speakers)}")
    precision = "" if args.autocast == "off" else f", {args.autocast} autocast"
    print(f"{pairs}; {epochs} epochs, batch {args.batch_size}, seed {seed}, device {device}"
          f"{precision}, {torch.get_num_threads()} CPU thread(s)", flush=True)

    amp = AUTOCAST[args.autocast]
    torch.manual_seed(seed)
    model = build_model(n_mels, device)
    losses = fit(model, train, times, epochs=epochs, batch_size=args.batch_size, seed=seed,
                 device=device, progress=not args.no_progress, drop_p=args.modality_dropout,
                 autocast=amp)
    return _Run(seed, fold, data, losses, evaluate(model, test, times, device, autocast=amp),
                epochs)


def _brief(res: dict[str, Any]) -> str:
    acc = res["accuracy"]
    return ", ".join(f"{row} {100 * acc[row]['both']:.1f}" for row, _ in ROWS)


def _report(args: argparse.Namespace, runs: list[_Run], folds: list[str | None],
            seeds: list[int], warned: list[str], device: torch.device, start: float) -> int:
    first = runs[0]
    size = QUICK if args.quick else FULL
    if len(runs) == 1:
        res, std = first.res, None
    else:  # mean over folds within a seed, then mean and std over seeds
        per_seed = [mean_results([r.res for r in runs if r.seed == s])[0] for s in seeds]
        res, std = mean_results(per_seed)
        if len(seeds) == 1:
            std = None
        res = {**res, "similarity": first.res["similarity"],
               "similarity_labels": first.res["similarity_labels"]}
    print()
    per_speaker: dict[str, Any] = {}
    if folds != [None]:
        per_speaker = {str(f): mean_results([r.res for r in runs if r.fold == f])[0]
                       for f in folds}
        print(f"held-out speaker (leave-one-speaker-out), test accuracy (%), mean of "
              f"{len(seeds)} seed(s):")
        print("\n".join(speaker_table(per_speaker)))
        print()
    if std is not None or folds != [None]:
        what = f"mean of {len(folds)} held-out speakers" if folds != [None] else "mean"
        print(f"{what}" + (f" (± std over {len(seeds)} seeds)" if std is not None else "") + ":")
    print("\n".join(format_table(res, std)))
    print("data level: the streams are merged before any encoder, so it has no missing-modality "
          "mode; chance = 10 %.")

    args.out.mkdir(parents=True, exist_ok=True)
    png, js = args.out / "demo.png", args.out / "results.json"
    data = first.data
    source = "synthetic audio" if data.synthetic else "FSDD audio"
    runs_note = f", mean of {len(runs)} runs" if len(runs) > 1 else ""
    plot(res, png, f"mmfuse demo: handwritten digits + {source}, seed {args.seed}{runs_note}")
    seconds = time.perf_counter() - start
    losses = [statistics.fmean(r.losses[e] for r in runs) for e in range(first.epochs)]
    split = ("test-audio-dir" if args.test_audio_dir is not None else args.split)
    settings = {
        "audio": "synthetic" if data.synthetic else data.source, "synthetic": data.synthetic,
        "seed": args.seed, "epochs": first.epochs, "batch_size": args.batch_size,
        "quick": args.quick, "device": str(device), "autocast": args.autocast,
        "train_pairs": round(statistics.fmean(len(r.data.train.labels) for r in runs)),
        "test_pairs": round(statistics.fmean(len(r.data.test.labels) for r in runs)),
        "train_loss": losses, "seconds": round(seconds, 1),
        "seeds": seeds, "split": split, "validation": args.validation,
        "test_audio_dir": None if args.test_audio_dir is None else str(args.test_audio_dir),
        "audio_snr": args.audio_snr, "image_noise": args.image_noise or 0.0,
        "modality_dropout": args.modality_dropout, "test_pairings": size.test_pairings,
        "train_speakers": sorted({s for r in runs for s in r.data.train_speakers}),
        "test_speakers": sorted({s for r in runs for s in r.data.test_speakers}),
    }
    extra: dict[str, Any] = {"warnings": warned}
    if std is not None:
        extra |= {"accuracy_std": std["accuracy"], "retrieval_std": std["retrieval"]}
    if per_speaker:
        extra["per_speaker"] = {f: {k: v[k] for k in ("accuracy", "retrieval")}
                                for f, v in per_speaker.items()}
    if len(runs) > 1:
        extra["runs"] = [{"seed": r.seed, "train_speakers": list(r.data.train_speakers),
                          "test_speakers": list(r.data.test_speakers),
                          "train_pairs": len(r.data.train.labels),
                          "test_pairs": len(r.data.test.labels),
                          "accuracy": r.res["accuracy"], "retrieval": r.res["retrieval"],
                          "decision_weights": r.res["decision_weights"]} for r in runs]
    write_results(js, {**settings, **extra}, res)
    print(f"\nwrote {png} and {js}; {seconds:.0f} s in all")
    return 0
