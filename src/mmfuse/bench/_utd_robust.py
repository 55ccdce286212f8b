"""UTD-MHAD robustness: a trained fusion run end to end on the sensor tensors, through
:func:`mmfuse.metrics.robustness` (sensors absent, corrupted, adversarially perturbed).

The benchmark trains its fusion heads on frozen encoder features; here the frozen encoders and
the trained head are wrapped into one model, ``model(inputs, present) -> logits``, whose inputs
are the benchmark's input tensors (standardised inertial samples (B, T, 6); skeleton joint
positions and velocities (B, T, 20, 6); depth segment maps (B, 8, 2, 30, 40)), so corruptions
and attack gradients reach them. Each sensor's padding mask rides along in ``inputs`` as
``"mask:<sensor>"`` and is never perturbed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ModalityError
from ..metrics.robustness import RobustnessRow, RobustnessTable, plot_robustness, robustness
from ._utd_prep import SENSORS, Split, make_batch

__all__ = ["DROPOUT_AXES", "GRID", "QUICK_GRID", "ROBUST_DEFAULT", "EndToEnd", "evaluate", "mean_std",
           "plot_tables", "summarise_robustness", "table"]

#: Models evaluated by ``--robustness`` without names (those of them that were trained).
ROBUST_DEFAULT = ("low_rank+dropout", "attention+dropout", "decision_product")
#: Severities: noise std and L-inf budgets in units of each sensor's std over the test set.
GRID: dict[str, Any] = {"noise": (0.5, 1.0, 2.0), "dropout": (0.25, 0.5),
                        "epsilons": (0.05, 0.1, 0.25), "pgd_steps": 10}
#: ``--quick``: one severity each, and a zero budget (an attack that must change nothing).
QUICK_GRID: dict[str, Any] = {"noise": (1.0,), "dropout": (0.5,), "epsilons": (0.0, 0.1),
                              "pgd_steps": 2}
#: Dropout drops whole time steps (inertial samples, skeleton frames with every joint) and
#: whole depth segments (both maps).
DROPOUT_AXES = {"inertial": (1,), "skeleton": (1,), "depth": (1,)}


class EndToEnd(nn.Module):
    """Frozen sensor encoders and a trained fusion, from the sensor tensors to class scores:
    ``head(tokens, masks, present) -> scores`` (a ``FusionHead``, or a ``ProductHead``, the
    product of experts of the single-sensor models)."""

    def __init__(self, encoders: Mapping[str, nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.sensors = tuple(encoders)
        fused = tuple(getattr(head, "sensors", self.sensors))
        if set(fused) != set(self.sensors):
            raise ModalityError(f"EndToEnd: expected the fusion's sensors to be those of "
                                f"`encoders` {list(self.sensors)}, got {list(fused)}.")
        self.encoders = nn.ModuleDict(dict(encoders))
        self.head = head

    def forward(self, inputs: Mapping[str, Tensor],
                present: Mapping[str, Tensor] | None = None) -> Tensor:
        missing = [k for m in self.sensors for k in (m, f"mask:{m}") if k not in inputs]
        if missing:
            raise ModalityError(f"EndToEnd: `inputs` lacks {missing}; expected each sensor of "
                                f"{list(self.sensors)} and its 'mask:<sensor>', got "
                                f"{sorted(inputs)}.")
        tokens, masks = {}, {}
        for m in self.sensors:
            tokens[m], masks[m] = self.encoders[m](inputs[m], inputs[f"mask:{m}"])
        return self.head(tokens, masks, None if present is None else dict(present))


def batches(split: Split, size: int = 128) -> list[tuple[dict[str, Tensor], Tensor]]:
    """The split in order, in batches of ``size`` as the benchmark tests it, with masks."""
    out = []
    for idx in torch.arange(split["label"].shape[0]).split(size):
        b = make_batch(split, idx, SENSORS, augment=False)
        inputs = {**b["x"], **{f"mask:{m}": b["mask"][m] for m in SENSORS}}
        out.append((inputs, b["label"]))
    return out


def evaluate(model: nn.Module, test: Split, *, grid: Mapping[str, Any], seed: int
             ) -> dict[str, Any]:
    """:func:`~mmfuse.metrics.robustness` of ``model`` on ``test``: every absent subset,
    Gaussian noise and time-step dropout per sensor, FGSM and PGD per sensor.
    -> ``{"rows": [row dicts], "scales": {sensor: std}, "clean": accuracy}``."""
    model.eval()  # and left so: robustness restores the mode it finds
    tab = robustness(model, batches(test), modalities=SENSORS, noise=grid["noise"],
                     dropout=grid["dropout"], dropout_axes=DROPOUT_AXES,
                     epsilons=grid["epsilons"], pgd_steps=grid["pgd_steps"], seed=seed,
                     metric_name="accuracy")
    return {"rows": tab.to_dicts(), "scales": {m: tab.scales[m] for m in SENSORS},
            "clean": tab.clean}


def _key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return row["kind"], row["perturbation"], row["modality"], row["severity"]


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and population std over seeds (NaN values, e.g. a drop with a zero clean score,
    left out; all NaN: NaN)."""
    t = torch.tensor(values, dtype=torch.float64)
    ok = t[~t.isnan()]
    if ok.numel() == 0:
        return {"mean": math.nan, "std": math.nan}
    return {"mean": float(ok.mean()),
            "std": float(ok.std(unbiased=False)) if ok.numel() > 1 else 0.0}


def summarise_robustness(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of each robustness row's accuracy and relative drop, for every
    model evaluated in every seed. -> ``{model: {"rows": [...], "scales": {...}}}``."""
    out: dict[str, Any] = {}
    for name in per_seed[0]:
        runs = [r[name].get("robustness") for r in per_seed]
        if any(run is None for run in runs):
            continue
        keys = [_key(row) for row in runs[0]["rows"]]
        for run in runs[1:]:
            if [_key(row) for row in run["rows"]] != keys:
                raise ValueError(f"robustness of {name}: the seeds' runs have different rows; "
                                 "combine runs made with the same settings.")
        rows = []
        for i, (kind, what, modality, severity) in enumerate(keys):
            rows.append({"kind": kind, "perturbation": what, "modality": modality,
                         "severity": severity,
                         "score": mean_std([run["rows"][i]["score"] for run in runs]),
                         "drop": mean_std([run["rows"][i]["drop"] for run in runs])})
        scales = {m: mean_std([run["scales"][m] for run in runs])["mean"]
                  for m in SENSORS if all(m in run["scales"] for run in runs)}
        out[name] = {"rows": rows, "scales": scales}
    return out


def _pm(d: Mapping[str, float]) -> str:
    return "-" if math.isnan(d["mean"]) else f"{100 * d['mean']:.1f} ± {100 * d['std']:.1f}"


def table(robust: Mapping[str, Any]) -> str:
    """A markdown table: one row per perturbation, accuracy (%) and relative drop (%) of each
    evaluated model, mean ± std over seeds."""
    names = list(robust)
    if not names:
        return ""
    head = "| kind | perturbation | sensor | severity | " + " | ".join(
        f"{n} acc (%) | {n} drop (%)" for n in names) + " |"
    lines = [head, "|---" * (4 + 2 * len(names)) + "|"]
    for i, row in enumerate(robust[names[0]]["rows"]):
        sev = "-" if row["severity"] is None else f"{row['severity']:g}"
        cells = [row["kind"], row["perturbation"], row["modality"], sev]
        for n in names:
            r = robust[n]["rows"][i]
            drop = "-" if r["kind"] == "clean" else _pm(r["drop"])
            cells += [_pm(r["score"]), drop]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_tables(robust: Mapping[str, Any], out: Path, *, seeds: Sequence[int],
                dpi: int = 80) -> list[Path]:
    """One :func:`~mmfuse.metrics.plot_robustness` bar chart per model (mean accuracy over
    seeds), ``out/robustness-<model>.png``."""
    paths = []
    for name, res in robust.items():
        rows = [RobustnessRow(r["kind"], r["perturbation"], r["modality"], r["severity"],
                              r["score"]["mean"], r["drop"]["mean"]) for r in res["rows"]]
        tab = RobustnessTable(rows, rows[0].score, "test accuracy (mean over seeds)",
                              dict(res["scales"]))
        fig = plot_robustness(tab, title=f"UTD-MHAD {name}, seeds {list(seeds)}; noise std "
                                         "and budgets in sensor stds")
        path = out / f"robustness-{name.replace('+', '-')}.png"
        fig.savefig(path, dpi=dpi)
        paths.append(path)
    return paths
