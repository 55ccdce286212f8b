"""``mmfuse demo``: audio-visual digits, fused at every level, in about 30 s of CPU time.

Handwritten digit images (scikit-learn's ``load_digits``, 8x8) are paired by label with spoken
digits: the Free Spoken Digit Dataset recordings when ``--audio-dir`` points at them, else a
built-in **synthetic** set of spoken-digit-like sounds (not speech; said so in the output).
One run trains, jointly, a shared :class:`~mmfuse.encoders.ImageEncoder` and
:class:`~mmfuse.encoders.AudioEncoder` with

- a linear head per modality (single-modality accuracy),
- :class:`~mmfuse.fusion.DecisionFusion` of those heads' predictions (decision level),
- :class:`~mmfuse.fusion.AttentionFusion` of the two feature vectors, trained under
  :class:`~mmfuse.fusion.ModalityDropout` (feature level),
- :class:`~mmfuse.alignment.InfoNCELoss` between projections of the two features, every
  same-digit pair a positive (cross-modal retrieval),

and, beside them, a data-level classifier: :class:`~mmfuse.fusion.DataLevelFusion` puts the
image, shown as frames over the clip's duration, and the log-mel spectrogram on one timeline
before a small CNN. It prints a table of test accuracies (with each modality absent too) and
retrieval scores, and writes ``demo.png`` and ``results.json`` to ``--out``.

    mmfuse demo                                  # synthetic audio, about 30 s on one core
    mmfuse demo --audio-dir path/to/fsdd         # the real recordings (folder or its parent)
    mmfuse demo --quick --seed 1 --out /tmp/d    # a small run, seconds
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

if TYPE_CHECKING:  # torch and the models load only when the demo runs: `mmfuse --help` is quick
    import torch
    from torch import Tensor, nn

    from ..data import AVDigits, AVSplit
    from ..encoders import ImageEncoder
    from ..fusion import DecisionFusion

__all__ = ["add_arguments", "run"]

NAMES = ("image", "audio")
DIM = 32  # feature size of each encoder
HOP = 128  # spectrogram hop, samples (8 kHz audio: 16 ms steps)
FRAMES = 12  # data level: the image repeated as this many frames over the clip
AUDIO_CHANNELS = 6  # data level: learned projection of the mel bands per frame
DROP_P = 0.3  # ModalityDropout probability while training the fusions
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
_ROWS = (
    ("image only", "ImageEncoder + linear head"),
    ("audio only", "AudioEncoder + linear head"),
    ("data level", "DataLevelFusion + CNN"),
    ("feature level", "AttentionFusion"),
    ("decision level", "DecisionFusion"),
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's flags, on ``parser`` (the ``mmfuse demo`` subcommand)."""
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


def _build(n_mels: int, device: torch.device) -> nn.ModuleDict:
    """Every trainable part of the demo, by name."""
    from torch import nn

    from ..alignment import InfoNCELoss
    from ..encoders import AudioEncoder, ImageEncoder
    from ..fusion import AttentionFusion, DataLevelFusion, DecisionFusion

    data_channels = FRAMES * (1 + AUDIO_CHANNELS)
    return nn.ModuleDict({
        "image": ImageEncoder(1, DIM, width=16, depth=2),
        # 8x8 digits: keep where things are (the 4x4 token grid, flattened), not a mean over it
        "image_pool": nn.Sequential(nn.Flatten(), nn.Linear(16 * DIM, DIM)),
        "audio": AudioEncoder(DIM, n_mels=n_mels, width=16, depth=3),
        "head_image": nn.Linear(DIM, 10),
        "head_audio": nn.Linear(DIM, 10),
        "decision": DecisionFusion(list(NAMES), 10, strategy="weighted", inputs="logits",
                                   learnable=True),
        "attention": AttentionFusion({m: DIM for m in NAMES}, DIM, hidden=DIM),
        "head_attention": nn.Sequential(nn.GELU(), nn.Linear(DIM, 10)),
        "embed_image": nn.Linear(DIM, DIM),
        "embed_audio": nn.Linear(DIM, DIM),
        "infonce": InfoNCELoss(temperature=0.1),
        "data_level": DataLevelFusion(1, n_mels, align="linear", audio="project",
                                      audio_channels=AUDIO_CHANNELS, layout="b (t c) h w"),
        "head_data": nn.Sequential(  # (B, T * (1 + k), 8, 8) -> (B, 10)
            nn.Conv2d(data_channels, 48, 3, padding=1), nn.GELU(),
            nn.Conv2d(48, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)),
    }).to(device)


def _forward(model: nn.ModuleDict, batch: AVSplit, times: tuple[Tensor, Tensor],
             present: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Logits of every classifier (the decision level: log-probabilities), the attention
    weights and the two embeddings. ``present`` goes to both fusions: ModalityDropout's draw in
    training, a modality marked absent in evaluation."""
    tokens = cast("ImageEncoder", model["image"]).forward_tokens(batch.images)  # (B, 16, D)
    feats = {"image": model["image_pool"](tokens), "audio": model["audio"](batch.audio)}
    logits = {m: model[f"head_{m}"](feats[m]) for m in NAMES}
    fused = model["attention"](feats, present, return_weights=True)
    b, frame_times, spec_times = len(batch.labels), times[0], times[1]
    frames = batch.images[:, None].expand(b, FRAMES, *batch.images.shape[1:])  # (B, T, 1, 8, 8)
    spec = batch.audio  # (B, F, S), standardised per clip
    grid = model["data_level"](frames, frame_times, spec, spec_times)  # (B, T * (1 + k), 8, 8)
    return {
        "image only": logits["image"],
        "audio only": logits["audio"],
        "data level": model["head_data"](grid),
        "feature level": model["head_attention"](fused.fused),
        "decision level": model["decision"](logits, present).clamp_min(1e-8).log(),
        "attention weights": fused.weights,
        "embed image": model["embed_image"](feats["image"]),
        "embed audio": model["embed_audio"](feats["audio"]),
    }


def _standardise(split: AVSplit) -> AVSplit:
    """Each clip's log-mel spectrogram to zero mean and unit variance (for the data level)."""
    a = split.audio
    a = (a - a.mean(dim=(1, 2), keepdim=True)) / a.std(dim=(1, 2), keepdim=True).clamp_min(1e-5)
    return split._replace(audio=a)


def _train(model: nn.ModuleDict, data: AVSplit, times: tuple[Tensor, Tensor], *, epochs: int,
           batch_size: int, seed: int, device: torch.device, progress: bool) -> list[float]:
    import torch
    import torch.nn.functional as F

    from .._optional import require
    from ..fusion import ModalityDropout

    tqdm = require("tqdm", feature="mmfuse demo").tqdm
    order_gen = torch.Generator().manual_seed(seed)
    drop = ModalityDropout(DROP_P, generator=torch.Generator(device=device).manual_seed(seed))
    n = len(data.labels)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3,
                                                total_steps=epochs * steps_per_epoch)
    model.train()
    losses = []
    with tqdm(total=epochs * steps_per_epoch, desc="training", unit="step", disable=not progress,
              dynamic_ncols=True) as bar:
        for epoch in range(epochs):
            order = torch.randperm(n, generator=order_gen).to(device)
            total = 0.0
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                batch = type(data)(*(t[idx] for t in data))
                present = drop({m: torch.empty(len(idx), 0, device=device) for m in NAMES})
                out = _forward(model, batch, times, present)
                y = batch.labels
                loss = (F.cross_entropy(out["image only"], y) + F.cross_entropy(out["audio only"], y)
                        + F.cross_entropy(out["data level"], y)
                        + F.cross_entropy(out["feature level"], y)
                        + F.nll_loss(out["decision level"], y)
                        + model["infonce"](out["embed image"], out["embed audio"], positives=y))
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                bar.update(1)
            losses.append(total / n)
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
    return losses


def _evaluate(model: nn.ModuleDict, data: AVSplit, times: tuple[Tensor, Tensor],
              device: torch.device) -> dict[str, Any]:
    """Accuracies (both present, each absent), retrieval both ways, attention, similarities."""
    import torch

    from ..metrics import accuracy, retrieval_metrics

    model.eval()
    n = len(data.labels)
    outs: dict[str, dict[str, Tensor]] = {}
    with torch.no_grad():
        for cond, absent in (("both", None), ("audio absent", "audio"), ("image absent", "image")):
            parts: dict[str, list[Tensor]] = {}
            for i in range(0, n, 512):
                batch = type(data)(*(t[i : i + 512] for t in data))
                present = None if absent is None else {
                    absent: torch.zeros(len(batch.labels), dtype=torch.bool, device=device)}
                for key, value in _forward(model, batch, times, present).items():
                    parts.setdefault(key, []).append(value.float().cpu())
            outs[cond] = {key: torch.cat(v) for key, v in parts.items()}
    labels = data.labels.cpu()
    acc: dict[str, dict[str, float | None]] = {}
    for row, _ in _ROWS:
        fusion = row in ("feature level", "decision level")
        acc[row] = {cond: accuracy(outs[cond][row], labels) if fusion or cond == "both" else None
                    for cond in outs}
    img, aud = outs["both"]["embed image"], outs["both"]["embed audio"]
    retrieval = {}
    for name, q, g in (("image -> audio", img, aud), ("audio -> image", aud, img)):
        r = retrieval_metrics(q, g, ks=(1, 5), positives=labels)
        retrieval[name] = {k: r[k] for k in ("R@1", "R@5", "mAP")}
    weights = outs["both"]["attention weights"]  # (N, 2), in NAMES order
    per_class = {d: {m: float(weights[labels == d, j].mean()) for j, m in enumerate(NAMES)}
                 for d in range(10)}
    # similarity matrix: the first 10 test pairs of each digit, sorted by digit
    pick = torch.cat([(labels == d).nonzero().flatten()[:10] for d in range(10)])
    a = torch.nn.functional.normalize(img[pick], dim=1)
    b = torch.nn.functional.normalize(aud[pick], dim=1)
    decision = cast("DecisionFusion", model["decision"])
    learned = dict(zip(NAMES, decision.weights().detach().cpu().tolist()))
    return {"accuracy": acc, "retrieval": retrieval, "attention_per_class": per_class,
            "decision_weights": learned,
            "similarity": (a @ b.T).tolist(), "similarity_labels": labels[pick].tolist()}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _table(res: dict[str, Any]) -> list[str]:
    lines = ["| model | test accuracy (%) | audio absent | image absent |",
             "| --- | ---: | ---: | ---: |"]
    for row, what in _ROWS:
        a = res["accuracy"][row]
        lines.append(f"| {row} ({what}) | {_pct(a['both'])} | {_pct(a['audio absent'])} | "
                     f"{_pct(a['image absent'])} |")
    lines += ["", "| cross-modal retrieval (same digit = hit) | R@1 | R@5 | mAP |",
              "| --- | ---: | ---: | ---: |"]
    for name, r in res["retrieval"].items():
        lines.append(f"| {name} | {r['R@1']:.3f} | {r['R@5']:.3f} | {r['mAP']:.3f} |")
    return lines


def _plot(res: dict[str, Any], path: Path, title: str) -> None:
    from .._optional import require

    matplotlib = require("matplotlib", feature="mmfuse demo")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", feature="mmfuse demo")

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [1, 1.1, 1.4]})
    ax = axes[0]
    sim, lab = res["similarity"], res["similarity_labels"]
    im = ax.imshow(sim, cmap="viridis", vmin=-1, vmax=1)
    edges = [i - 0.5 for i in range(1, len(lab)) if lab[i] != lab[i - 1]]
    for e in edges:
        ax.axhline(e, color="white", lw=0.4)
        ax.axvline(e, color="white", lw=0.4)
    starts = [0, *[int(e + 0.5) for e in edges], len(lab)]
    mids = [(s + t - 1) / 2 for s, t in itertools.pairwise(starts)]
    ax.set_xticks(mids, [str(lab[s]) for s in starts[:-1]])
    ax.set_yticks(mids, [str(lab[s]) for s in starts[:-1]])
    ax.set_xlabel("audio (test, sorted by digit)")
    ax.set_ylabel("image (test, sorted by digit)")
    ax.set_title("cosine similarity after InfoNCE alignment")
    fig.colorbar(im, ax=ax, fraction=0.046)

    ax = axes[1]
    digits = list(range(10))
    w_img = [res["attention_per_class"][d]["image"] for d in digits]
    w_aud = [res["attention_per_class"][d]["audio"] for d in digits]
    ax.bar(digits, w_img, label="image", color="tab:blue")
    ax.bar(digits, w_aud, bottom=w_img, label="audio", color="tab:orange")
    ax.set_xticks(digits)
    ax.set_xlabel("digit")
    ax.set_ylabel("mean attention weight")
    ax.set_ylim(0, 1)
    ax.set_title("AttentionFusion weights per class (both present)")
    ax.legend(loc="lower right")

    ax = axes[2]
    rows = [row for row, _ in _ROWS]
    conds = ("both", "audio absent", "image absent")
    width = 0.27
    for k, cond in enumerate(conds):
        xs, ys = [], []
        for i, row in enumerate(rows):
            v = res["accuracy"][row][cond]
            if v is not None:  # rows without absent variants get one centred bar
                n_bars = sum(res["accuracy"][row][c] is not None for c in conds)
                xs.append(i + (k - (n_bars - 1) / 2) * width)
                ys.append(100 * v)
        bars = ax.bar(xs, ys, width, label=cond, color=("tab:blue", "tab:orange", "tab:green")[k])
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.axhline(10, color="grey", ls="--", lw=0.8, label="chance")
    ax.set_xticks(range(len(rows)), [r.replace(" ", "\n", 1) for r in rows])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 108)
    ax.set_title("test accuracy by model and missing modality")
    ax.legend(loc="lower left", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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

    from ..data.av_digits import SAMPLE_RATE

    torch.set_num_threads(args.threads)  # after the data: a usage error changes nothing
    size = QUICK if args.quick else FULL
    epochs = args.epochs or size.epochs
    train, test = (_standardise(s)._replace(labels=s.labels.long()) for s in (data.train, data.test))
    train, test = (type(s)(*(t.to(device) for t in s)) for s in (train, test))
    n_mels, steps = train.audio.shape[1:]
    clip = steps * HOP / SAMPLE_RATE  # seconds covered by the spectrogram
    times = ((torch.arange(FRAMES, device=device) + 0.5) * clip / FRAMES,  # (T,) frame times
             torch.arange(steps, device=device) * HOP / SAMPLE_RATE)  # (S,) step times
    audio = ("SYNTHETIC spoken-digit-like sounds, not speech (pass --audio-dir with the FSDD "
             "recordings for real audio)" if data.synthetic else data.source)
    print("mmfuse demo: audio-visual digits (sklearn handwritten digits + spoken digits)")
    print(f"audio: {audio}")
    print(f"train {len(train.labels)} pairs, test {len(test.labels)} pairs "
          f"({len(test.labels) // size.test_pairings} clips x {size.test_pairings} images); "
          f"{epochs} epochs, batch {args.batch_size}, seed {args.seed}, device {device}, "
          f"{torch.get_num_threads()} CPU thread(s)", flush=True)

    torch.manual_seed(args.seed)
    model = _build(n_mels, device)
    losses = _train(model, train, times, epochs=epochs, batch_size=args.batch_size,
                    seed=args.seed, device=device, progress=not args.no_progress)
    res = _evaluate(model, test, times, device)
    print()
    print("\n".join(_table(res)))
    print("data level: the streams are merged before any encoder, so it has no missing-modality "
          "mode; chance = 10 %.")

    args.out.mkdir(parents=True, exist_ok=True)
    png, js = args.out / "demo.png", args.out / "results.json"
    source = "synthetic audio" if data.synthetic else "FSDD audio"
    _plot(res, png, f"mmfuse demo: handwritten digits + {source}, seed {args.seed}")
    seconds = time.perf_counter() - start
    summary = {
        "audio": "synthetic" if data.synthetic else data.source, "synthetic": data.synthetic,
        "seed": args.seed, "epochs": epochs, "batch_size": args.batch_size, "quick": args.quick,
        "device": str(device), "train_pairs": len(train.labels), "test_pairs": len(test.labels),
        "train_loss": losses, "seconds": round(seconds, 1),
        **{k: v for k, v in res.items() if not k.startswith("similarity")},
    }
    js.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {png} and {js}; {seconds:.0f} s in all")
    return 0
