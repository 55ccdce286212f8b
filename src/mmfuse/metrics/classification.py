"""Classification metrics: accuracy and F1 (the source's evaluation section)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_choice, check_has_values, check_same_device, check_tensor

__all__ = ["accuracy", "f1_score"]


def _labels(pred: Tensor, target: Tensor, *, owner: str) -> tuple[Tensor, Tensor]:
    """(predicted labels, target labels); ``pred`` may be (N,) labels or (N, C) scores."""
    if not isinstance(pred, Tensor) or pred.dim() not in (1, 2):
        check_tensor(pred, "N C", owner=owner, arg="pred", floating=None)
    n = pred.shape[0]
    check_tensor(target, "N", owner=owner, arg="target", floating=None, N=n)
    check_same_device({"pred": pred, "target": target}, owner=owner)
    check_has_values(pred, owner=owner, arg="pred")
    if pred.dim() == 2:
        pred = pred.argmax(1)
    if pred.is_floating_point() or target.is_floating_point():
        raise TypeError(
            f"{owner}: expected integer class labels in `pred` (or (N, C) scores) and `target`, "
            f"got {pred.dtype} and {target.dtype}."
        )
    if n == 0:
        raise ValueError(f"{owner}: expected at least one sample, got N=0.")
    return pred.long(), target.long()


def accuracy(pred: Tensor, target: Tensor) -> float:
    """Fraction of samples whose predicted class equals the target.

    Args:
        pred: (N,) predicted labels or (N, C) scores (argmax taken).
        target: (N,) integer labels.
    """
    p, t = _labels(pred, target, owner="accuracy")
    return (p == t).double().mean().item()


def f1_score(pred: Tensor, target: Tensor, *, num_classes: int | None = None,
             average: str = "macro") -> float:
    """F1 score, as ``sklearn.metrics.f1_score`` computes it.

    Args:
        pred: (N,) predicted labels or (N, C) scores (argmax taken).
        target: (N,) integer labels.
        num_classes: Classes 0..C-1 to average over; None: the labels seen in ``pred`` or
            ``target`` (scikit-learn's default). A class never predicted nor present scores 0.
        average: ``"macro"`` (unweighted mean over classes), ``"weighted"`` (by support) or
            ``"micro"`` (global counts; equals accuracy for single-label data).
    """
    check_choice(average, ("macro", "weighted", "micro"), owner="f1_score", arg="average")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(
            f"f1_score: expected `num_classes` to be a positive int or None, got {num_classes!r}."
        )
    p, t = _labels(pred, target, owner="f1_score")
    classes = torch.arange(num_classes, device=p.device) if num_classes is not None else torch.unique(torch.cat([p, t]))
    hit_p = p[:, None] == classes[None, :]  # (N, C)
    hit_t = t[:, None] == classes[None, :]
    tp = (hit_p & hit_t).sum(0).double()
    fp = (hit_p & ~hit_t).sum(0).double()
    fn = (~hit_p & hit_t).sum(0).double()
    if average == "micro":
        tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
    den = 2 * tp + fp + fn
    f1 = torch.where(den > 0, 2 * tp / den.clamp_min(1), 0.0)
    if average == "weighted":
        support = hit_t.sum(0).double()
        return (f1 * support).sum().item() / max(support.sum().item(), 1.0)
    return f1.mean().item()
