"""Robustness of a multimodal model: missing, corrupted and adversarially perturbed modalities.

:func:`robustness` scores a model on a data set once clean and once per perturbation, and
returns a :class:`RobustnessTable` (one :class:`RobustnessRow` per perturbation, with the score
and its relative drop from the clean score); :func:`plot_robustness` draws it.

The protocol:

- **model**: ``model(inputs, present) -> outputs``, ``inputs`` a ``dict`` of (B, ...) modality
  tensors, ``present`` None or a ``dict`` of (B,) bool tensors (True = observed), the
  convention of every fusion module in :mod:`mmfuse.fusion`; ``outputs`` (B, ...) what the
  metric and the loss read (e.g. (B, C) logits). A ``nn.Module`` is put in eval mode for the
  run and restored after.
- **loader**: any iterable of batches, read several times (a list or a ``DataLoader``);
  ``batch_fn(batch) -> (inputs, labels)`` turns a batch into the modality dict and the labels.
  The default accepts an ``(inputs, labels)`` pair or a mapping with a ``"labels"`` entry
  beside the modality tensors.
- **metric**: ``metric(outputs, labels) -> float`` on the whole data set's outputs, higher is
  better (default :func:`~mmfuse.metrics.accuracy`).
- **loss_fn**: ``loss_fn(outputs, labels) -> Tensor``, what the attacks ascend (default
  cross-entropy on logits; for a model returning probabilities, give it their log).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_positive, check_probability, check_size
from .classification import accuracy

__all__ = [
    "Corruption",
    "RobustnessRow",
    "RobustnessTable",
    "fgsm",
    "pgd",
    "plot_robustness",
    "robustness",
]

Model = Callable[[dict[str, Tensor], "dict[str, Tensor] | None"], Tensor]


@dataclass(frozen=True)
class Corruption:
    """A user corruption: ``fn(x, severity, generator) -> x'`` for one modality's (B, ...)
    batch, run at each of ``severities`` on each of ``modalities`` (None = every modality)."""

    name: str
    fn: Callable[[Tensor, float, torch.Generator], Tensor]
    severities: Sequence[float]
    modalities: Sequence[str] | None = None


@dataclass(frozen=True)
class RobustnessRow:
    """One perturbation's result.

    Attributes:
        kind: ``"clean"``, ``"absent"``, ``"corrupted"`` or ``"adversarial"``.
        perturbation: ``"none"``, ``"absent"``, ``"gaussian"``, ``"dropout"``, ``"fgsm"``,
            ``"pgd"`` or a :class:`Corruption`'s name.
        modality: The perturbed modality (absent rows: the absent ones joined by ``+``; ``"-"``
            for the clean row).
        severity: Noise std or L-inf budget (in units of the modality's std unless
            ``relative=False``), dropout rate, or the corruption's severity; None for clean and
            absent rows.
        score: The metric under the perturbation.
        drop: ``(clean - score) / |clean|`` (NaN when the clean score is 0).
    """

    kind: str
    perturbation: str
    modality: str
    severity: float | None
    score: float
    drop: float


@dataclass
class RobustnessTable:
    """What :func:`robustness` returns: its rows, the clean score and the metric's name."""

    rows: list[RobustnessRow]
    clean: float
    metric: str = "score"
    scales: dict[str, float] = field(default_factory=dict)  # each modality's std

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def to_dicts(self) -> list[dict[str, Any]]:
        """The rows as plain dicts (for JSON or pandas)."""
        return [asdict(r) for r in self.rows]

    def to_markdown(self, digits: int = 3) -> str:
        """A Markdown table: perturbation, modality, severity, score, relative drop (%).

        Example:
            >>> t = RobustnessTable([RobustnessRow("clean", "none", "-", None, 0.9, 0.0)], 0.9)
            >>> print(t.to_markdown())
            | kind | perturbation | modality | severity | score | drop |
            |---|---|---|---|---|---|
            | clean | none | - | - | 0.900 | 0.0 % |
        """
        lines = [f"| kind | perturbation | modality | severity | {self.metric} | drop |",
                 "|---|---|---|---|---|---|"]
        for r in self.rows:
            sev = "-" if r.severity is None else f"{r.severity:g}"
            drop = "-" if math.isnan(r.drop) else f"{100 * r.drop:.1f} %"
            lines.append(f"| {r.kind} | {r.perturbation} | {r.modality} | {sev} | "
                         f"{r.score:.{digits}f} | {drop} |")
        return "\n".join(lines)


def _default_batch(batch: Any) -> tuple[dict[str, Tensor], Tensor]:
    if isinstance(batch, Mapping) and "labels" in batch:
        return {k: v for k, v in batch.items() if k != "labels"}, batch["labels"]
    if isinstance(batch, Sequence) and len(batch) == 2 and isinstance(batch[0], Mapping):
        return dict(batch[0]), batch[1]
    raise TypeError(
        "robustness: expected each batch to be an (inputs, labels) pair or a mapping with a "
        f"'labels' entry (or pass `batch_fn`), got {type(batch).__name__}."
    )


def fgsm(model: Model, inputs: Mapping[str, Tensor], labels: Tensor, modality: str,
         epsilon: float, *, loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
         present: dict[str, Tensor] | None = None) -> Tensor:
    """Fast gradient sign method (Goodfellow et al., 2015) on one modality:
    ``x + epsilon * sign(grad_x loss(model(inputs), labels))``; the other modalities fixed.

    Shape:
        - inputs[m]: (B, ...); labels: what ``loss_fn`` takes
        - output: like ``inputs[modality]``, within ``epsilon`` of it in L-inf
    """
    x = inputs[modality].detach()
    grad = _input_grad(model, inputs, labels, modality, x, loss_fn, present)
    return (x + epsilon * grad.sign()).detach()


def pgd(model: Model, inputs: Mapping[str, Tensor], labels: Tensor, modality: str,
        epsilon: float, *, steps: int = 10, step_size: float | None = None,
        random_start: bool = True, generator: torch.Generator | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
        present: dict[str, Tensor] | None = None) -> Tensor:
    """Projected gradient descent (Madry et al., 2018) on one modality: ``steps`` signed
    gradient ascent steps of ``step_size`` (default ``2.5 * epsilon / steps``) on the loss,
    each projected back into the L-inf ball of radius ``epsilon`` around the input, from a
    uniform random start in the ball (``random_start``).

    Shape:
        - inputs[m]: (B, ...); labels: what ``loss_fn`` takes
        - output: like ``inputs[modality]``, within ``epsilon`` of it in L-inf
    """
    check_size(steps, owner="pgd", arg="steps")
    alpha = 2.5 * epsilon / steps if step_size is None else step_size
    x0 = inputs[modality].detach()
    x = x0
    if random_start:
        noise = torch.rand(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        x = x0 + (2 * noise - 1) * epsilon
    for _ in range(steps):
        grad = _input_grad(model, inputs, labels, modality, x, loss_fn, present)
        x = x + alpha * grad.sign()
        x = torch.minimum(torch.maximum(x, x0 - epsilon), x0 + epsilon).detach()
    return x


def _input_grad(model: Model, inputs: Mapping[str, Tensor], labels: Tensor, modality: str,
                x: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor],
                present: dict[str, Tensor] | None) -> Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(model({**inputs, modality: x}, present), labels)
        (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad  # unused: the model ignores it


def _dropout(x: Tensor, rate: float, axes: Sequence[int], gen: torch.Generator) -> Tensor:
    """Zero ``rate`` of the positions spanned by ``axes`` (and the batch), shared over the rest."""
    shape = [s if d == 0 or d in axes else 1 for d, s in enumerate(x.shape)]
    keep = torch.rand(shape, generator=gen) >= rate
    return x * keep.to(x.device, x.dtype)


def _gaussian(std: float) -> Callable[[Tensor, torch.Generator], Tensor]:
    def fn(t: Tensor, g: torch.Generator) -> Tensor:
        return t + torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device) * std
    return fn


def _dropping(rate: float, axes: Sequence[int]) -> Callable[[Tensor, torch.Generator], Tensor]:
    def fn(t: Tensor, g: torch.Generator) -> Tensor:
        return _dropout(t, rate, axes or tuple(range(1, t.dim())), g)
    return fn


def _custom(f: Callable[[Tensor, float, torch.Generator], Tensor],
            severity: float) -> Callable[[Tensor, torch.Generator], Tensor]:
    def fn(t: Tensor, g: torch.Generator) -> Tensor:
        return f(t, severity, g)
    return fn


def robustness(
    model: Model,
    loader: Iterable[Any],
    metric: Callable[[Tensor, Tensor], float] = accuracy,
    *,
    batch_fn: Callable[[Any], tuple[Mapping[str, Tensor], Tensor]] | None = None,
    modalities: Sequence[str] | None = None,
    absent: bool = True,
    noise: Sequence[float] = (0.5, 1.0, 2.0),
    dropout: Sequence[float] = (0.25, 0.5),
    dropout_axes: Mapping[str, Sequence[int]] | None = None,
    corruptions: Sequence[Corruption] = (),
    epsilons: Sequence[float] = (0.05, 0.1),
    attacks: Sequence[str] = ("fgsm", "pgd"),
    pgd_steps: int = 10,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    relative: bool = True,
    metric_name: str | None = None,
    seed: int = 0,
) -> RobustnessTable:
    """Score ``model`` clean, with modalities absent, corrupted and adversarially perturbed.

    Rows, in order: clean; every non-empty proper subset of the modalities marked absent
    through ``present`` (``2^M - 2`` rows); per modality, Gaussian noise of each std in
    ``noise``, dropout of each rate in ``dropout``, each of ``corruptions`` at its severities;
    per modality, each attack in ``attacks`` at each L-inf budget in ``epsilons`` (FGSM and
    PGD on ``loss_fn``, the other modalities left clean). With ``relative=True`` the noise std
    and the budgets are in units of the modality's standard deviation over the data set (so one
    number means as much for pixels as for a spectrogram); with ``relative=False`` they are
    absolute. No clipping to a data range is applied.

    Dropout zeroes a random fraction of the positions spanned by ``dropout_axes[m]`` (axes of
    the (B, ...) tensor, e.g. ``(2, 3)``: pixels of a (B, C, H, W) image, ``(2,)``: time steps
    of a (B, F, S) spectrogram), each position dropped across the other axes together; the
    default is every non-batch axis (elementwise).

    Random draws come from generators seeded with ``seed``: same seed, same table.

    Args:
        model: ``model(inputs, present) -> outputs`` (see the module's protocol).
        loader: Iterable of batches, read once per row.
        metric: ``metric(outputs, labels) -> float`` over the data set, higher is better.
        batch_fn: ``batch -> (inputs, labels)``; default: see the module's protocol.
        modalities: Modalities to perturb (default: those of the first batch).
        metric_name: The score column's title (default the metric's ``__name__``).

    Example:
        >>> w = torch.tensor([[1.0, -1.0]])
        >>> model = lambda x, present: x["a"] @ w + 0 * x["b"].sum(1, keepdim=True)
        >>> data = [({"a": torch.randn(8, 1), "b": torch.randn(8, 3)}, torch.zeros(8).long())]
        >>> t = robustness(model, data, noise=(), dropout=(), epsilons=(0.1,))
        >>> [r.perturbation for r in t][:3], len(t)
        (['none', 'absent', 'absent'], 7)
    """
    for rate in dropout:
        check_probability(rate, owner="robustness", arg="dropout", closed=True)
    for value in (*noise, *epsilons):
        check_positive(value, owner="robustness", arg="noise/epsilons", allow_zero=True)
    bad = [a for a in attacks if a not in ("fgsm", "pgd")]
    if bad:
        raise ValueError(f"robustness: unknown `attacks` {bad}; expected names from "
                         f"['fgsm', 'pgd'].")
    to_pair = _default_batch if batch_fn is None else batch_fn
    module = model if isinstance(model, nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
    name = metric_name if metric_name is not None else str(getattr(metric, "__name__", "score"))
    try:
        return _run(model, loader, metric, to_pair, modalities, absent, noise, dropout,
                    dropout_axes or {}, corruptions, epsilons, attacks, pgd_steps, loss_fn,
                    relative, name, seed)
    finally:
        if module is not None and was_training:
            module.train()


def _run(model: Model, loader: Iterable[Any], metric: Callable[[Tensor, Tensor], float],
         to_pair: Callable[[Any], tuple[Mapping[str, Tensor], Tensor]],
         modalities: Sequence[str] | None, absent: bool, noise: Sequence[float],
         dropout: Sequence[float], dropout_axes: Mapping[str, Sequence[int]],
         corruptions: Sequence[Corruption], epsilons: Sequence[float], attacks: Sequence[str],
         pgd_steps: int, loss_fn: Callable[[Tensor, Tensor], Tensor], relative: bool,
         metric_name: str, seed: int) -> RobustnessTable:
    # clean pass: the score, the modality names and each modality's std
    outs, labels = [], []
    total: dict[str, list[float]] = {}  # m -> [count, sum, sum of squares]
    with torch.no_grad():
        for batch in loader:
            inputs, y = to_pair(batch)
            for m, x in inputs.items():
                acc = total.setdefault(m, [0.0, 0.0, 0.0])
                xd = x.detach().double()
                acc[0] += xd.numel()
                acc[1] += float(xd.sum())
                acc[2] += float((xd * xd).sum())
            outs.append(model(dict(inputs), None).detach().cpu())
            labels.append(y.detach().cpu())
    if not outs:
        raise ValueError("robustness: expected `loader` to yield at least one batch, got none.")
    all_labels = torch.cat(labels)
    clean = float(metric(torch.cat(outs), all_labels))
    names = list(modalities) if modalities is not None else list(total)
    scales = {m: math.sqrt(max(s2 / n - (s / n) ** 2, 0.0)) for m, (n, s, s2) in total.items()}

    def drop(score: float) -> float:
        return (clean - score) / abs(clean) if clean != 0 else math.nan

    rows = [RobustnessRow("clean", "none", "-", None, clean, 0.0)]

    def score(perturb: Callable[[dict[str, Tensor], Tensor, torch.Generator],
                                tuple[dict[str, Tensor], dict[str, Tensor] | None]]) -> float:
        gen = torch.Generator().manual_seed(seed)
        outs = []
        for batch in loader:
            inputs, y = to_pair(batch)
            x, present = perturb(dict(inputs), y, gen)
            with torch.no_grad():
                outs.append(model(x, present).detach().cpu())
        return float(metric(torch.cat(outs), all_labels))

    def add(kind: str, what: str, modality: str, severity: float | None, value: float) -> None:
        rows.append(RobustnessRow(kind, what, modality, severity, value, drop(value)))

    if absent:
        for k in range(1, len(names)):
            for subset in itertools.combinations(names, k):
                def mark(x, y, gen, subset=subset):  # type: ignore[no-untyped-def]
                    b = y.shape[0]
                    device = next(iter(x.values())).device
                    return x, {m: torch.zeros(b, dtype=torch.bool, device=device) for m in subset}
                add("absent", "absent", "+".join(subset), None, score(mark))

    def corrupt(m: str, fn: Callable[[Tensor, torch.Generator], Tensor]) -> Callable[..., Any]:
        def perturb(x, y, gen):  # type: ignore[no-untyped-def]
            return {**x, m: fn(x[m], gen)}, None
        return perturb

    for m in names:
        unit = scales[m] if relative else 1.0
        for s in noise:
            add("corrupted", "gaussian", m, s, score(corrupt(m, _gaussian(s * unit))))
        axes = tuple(dropout_axes.get(m, ()))
        for rate in dropout:
            add("corrupted", "dropout", m, rate, score(corrupt(m, _dropping(rate, axes))))
        for c in corruptions:
            if c.modalities is not None and m not in c.modalities:
                continue
            for s in c.severities:
                add("corrupted", c.name, m, s, score(corrupt(m, _custom(c.fn, s))))
    for m in names:
        unit = scales[m] if relative else 1.0
        for attack in attacks:
            for eps in epsilons:
                def adv(x, y, gen, m=m, e=eps * unit, attack=attack):  # type: ignore[no-untyped-def]
                    if attack == "fgsm":
                        xa = fgsm(model, x, y, m, e, loss_fn=loss_fn)
                    else:
                        xa = pgd(model, x, y, m, e, steps=pgd_steps, generator=gen,
                                 loss_fn=loss_fn)
                    return {**x, m: xa}, None
                add("adversarial", attack, m, eps, score(adv))
    return RobustnessTable(rows, clean, metric_name, scales)


def plot_robustness(table: RobustnessTable, path: str | Path | None = None, *,
                    title: str | None = None) -> Any:
    """A horizontal bar chart of every row's score, the clean score as a line; saved to
    ``path`` when given. Needs matplotlib (``pip install "mmfuse[demo]"``).

    Returns:
        The matplotlib ``Figure``.
    """
    from .._optional import require

    figure = require("matplotlib.figure", feature="mmfuse.metrics.plot_robustness")
    colors = {"clean": "#444444", "absent": "#d62728", "corrupted": "#1f77b4",
              "adversarial": "#ff7f0e"}
    rows = table.rows
    fig = figure.Figure(figsize=(7, 0.28 * len(rows) + 1.2))
    ax = fig.add_subplot()
    labels = [r.perturbation + (f" {r.severity:g}" if r.severity is not None else "")
              + ("" if r.modality == "-" else f" ({r.modality})") for r in rows]
    ax.barh(range(len(rows)), [r.score for r in rows],
            color=[colors.get(r.kind, "#7f7f7f") for r in rows])
    ax.axvline(table.clean, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(table.metric)
    ax.set_title(title or "robustness", fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
