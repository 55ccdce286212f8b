"""Table and picture of a UTD-MHAD benchmark result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._optional import require
from ..data.utd_mhad import ACTIONS

__all__ = ["plot", "table"]


def _pm(d: dict[str, float]) -> str:
    return f"{100 * d['mean']:5.1f} ± {100 * d['std']:.1f}"


def table(result: dict[str, Any]) -> str:
    """A markdown table: each model's accuracy (%) clean and with each sensor (pair) absent."""
    acc = result["accuracy"]
    patterns = list(next(iter(acc.values()))["absent"])
    head = "| model | clean | " + " | ".join(f"no {p}" for p in patterns) + " |"
    rows = [head, "|---" * (len(patterns) + 2) + "|"]
    for name, a in acc.items():
        cells = [_pm(a)] + [_pm(a["absent"][p]) for p in patterns]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot(result: dict[str, Any], path: str | Path) -> None:
    """Accuracy per model with error bars, accuracy with each sensor absent, and the
    confusion matrix of the best fusion (summed over seeds)."""
    matplotlib = require("matplotlib", feature="mmfuse bench utd-mhad")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", feature="mmfuse bench utd-mhad")
    import numpy as np

    acc = result["accuracy"]
    names = list(acc)
    fig, axes = plt.subplots(1, 3, figsize=(19, 6.5), gridspec_kw={"width_ratios": [1.1, 1.3, 1]})
    ax = axes[0]
    means = [100 * acc[n]["mean"] for n in names]
    stds = [100 * acc[n]["std"] for n in names]
    ax.barh(range(len(names)), means, xerr=stds, color="tab:blue", capsize=3)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(min(means) - 10, 100)
    ax.set_xlabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(f"UTD-MHAD {result['protocol']}, seeds {result['seeds']}")
    ax = axes[1]
    sensors = ["inertial", "skeleton", "depth"]
    width = 0.8 / (len(sensors) + 1)
    for j, pat in enumerate([None, *sensors]):
        vals = [100 * (acc[n]["mean"] if pat is None else acc[n]["absent"][pat]["mean"])
                for n in names]
        ax.barh(np.arange(len(names)) + j * width, vals, height=width,
                label="all sensors" if pat is None else f"{pat} absent")
    ax.set_yticks(np.arange(len(names)) + 0.4 - width / 2, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy (%) with a sensor absent at test time")
    ax.legend(fontsize=8, loc="lower left")
    ax = axes[2]
    conf = np.array(result["confusion"], dtype=float)
    conf = conf / conf.sum(1, keepdims=True).clip(min=1)
    ax.imshow(conf, cmap="Blues", vmin=0, vmax=1)
    ax.set_title(f"confusion of {result['best_fusion']} (rows: true)")
    ax.set_xticks(range(27), [str(i + 1) for i in range(27)], fontsize=6)
    ax.set_yticks(range(27), [f"{i + 1} {a[:18]}" for i, a in enumerate(ACTIONS)], fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
