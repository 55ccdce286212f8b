"""What the demo shows: the printed table, ``demo.png`` and ``results.json``.

Each reads the dictionary :func:`mmfuse.demo.train.evaluate` returns.
"""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path
from typing import Any

from .model import ROWS

__all__ = ["format_table", "mean_results", "plot", "speaker_table", "write_results"]

_AVERAGED = ("accuracy", "retrieval", "attention_per_class", "decision_weights")


def _pct(v: float | None, sd: float | None = None) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if sd is None else f"{100 * v:.1f} ± {100 * sd:.1f}"


def _num(v: float, sd: float | None = None) -> str:
    return f"{v:.3f}" if sd is None else f"{v:.3f} ± {sd:.3f}"


def _zip_trees(trees: list[Any], stat: Any) -> Any:
    """Apply ``stat`` leaf-wise over trees of equal structure (dicts of numbers or None)."""
    if isinstance(trees[0], dict):
        return {k: _zip_trees([t[k] for t in trees], stat) for k in trees[0]}
    if trees[0] is None:
        return None
    return stat([float(t) for t in trees])


def mean_results(results: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The leaf-wise mean and sample standard deviation (0 for one run) of several runs'
    :func:`~mmfuse.demo.train.evaluate` results: accuracies, retrieval, attention per class
    and decision weights.

    Example:
        >>> runs = [{"accuracy": {"image only": {"both": a, "audio absent": None}}} for a in (.5, .75)]
        >>> mean, std = mean_results(runs)
        >>> mean["accuracy"]["image only"], round(std["accuracy"]["image only"]["both"], 4)
        ({'both': 0.625, 'audio absent': None}, 0.1768)
    """
    def sd(xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else 0.0

    keys = [k for k in _AVERAGED if k in results[0]]
    mean = {k: _zip_trees([r[k] for r in results], statistics.fmean) for k in keys}
    std = {k: _zip_trees([r[k] for r in results], sd) for k in keys}
    return mean, std


def format_table(res: dict[str, Any], std: dict[str, Any] | None = None) -> list[str]:
    """The markdown table of test accuracies and retrieval scores, line by line; with ``std``
    (as :func:`mean_results` returns), every cell reads ``mean ± std``.

    Example:
        >>> acc = {"both": 0.97, "audio absent": None, "image absent": None}
        >>> res = {"accuracy": {row: acc for row, _ in ROWS},
        ...        "retrieval": {"image -> audio": {"R@1": 0.9, "R@5": 1.0, "mAP": 0.85}}}
        >>> print("\\n".join(format_table(res)[2::4]))
        | image only (ImageEncoder + linear head) | 97.0 | - | - |
        | decision level (DecisionFusion) | 97.0 | - | - |
        | image -> audio | 0.900 | 1.000 | 0.850 |
    """
    lines = ["| model | test accuracy (%) | audio absent | image absent |",
             "| --- | ---: | ---: | ---: |"]
    for row, what in ROWS:
        a = res["accuracy"][row]
        d = std["accuracy"][row] if std else {}
        cells = [_pct(a[c], d.get(c)) for c in ("both", "audio absent", "image absent")]
        lines.append(f"| {row} ({what}) | {' | '.join(cells)} |")
    lines += ["", "| cross-modal retrieval (same digit = hit) | R@1 | R@5 | mAP |",
              "| --- | ---: | ---: | ---: |"]
    for name, r in res["retrieval"].items():
        d = std["retrieval"][name] if std else {}
        cells = [_num(r[k], d.get(k)) for k in ("R@1", "R@5", "mAP")]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def speaker_table(per_speaker: dict[str, dict[str, Any]]) -> list[str]:
    """Test accuracy (%) with both modalities, one row per held-out speaker, then their mean.

    Example:
        >>> res = {"accuracy": {row: {"both": 0.5} for row, _ in ROWS}}
        >>> print("\\n".join(speaker_table({"theo": res})[1:]))
        | --- | ---: | ---: | ---: | ---: | ---: |
        | theo | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 |
        | mean | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 |
    """
    rows = [row for row, _ in ROWS]
    lines = [f"| held-out speaker | {' | '.join(rows)} |",
             "| --- |" + " ---: |" * len(rows)]
    for name, res in [*per_speaker.items(),
                      ("mean", mean_results(list(per_speaker.values()))[0])]:
        lines.append(f"| {name} | "
                     + " | ".join(_pct(res["accuracy"][row]["both"]) for row in rows) + " |")
    return lines


def plot(res: dict[str, Any], path: Path, title: str) -> None:
    """``demo.png``: the cross-modal similarity matrix, the attention weights per digit and the
    accuracies with each modality absent, side by side."""
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
    rows = [row for row, _ in ROWS]
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


def write_results(path: Path, settings: dict[str, Any], res: dict[str, Any]) -> None:
    """``results.json``: the run's ``settings``, then ``res`` less the similarity matrix."""
    summary = {**settings, **{k: v for k, v in res.items() if not k.startswith("similarity")}}
    path.write_text(json.dumps(summary, indent=2) + "\n")
