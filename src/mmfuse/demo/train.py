"""Training and evaluation of the demo's model (:mod:`mmfuse.demo.model`).

:func:`fit` trains every part jointly, one summed loss, with the fusions under
:class:`~mmfuse.fusion.ModalityDropout`; :func:`evaluate` measures test accuracy with both
modalities and with each one absent, cross-modal retrieval, and what the fusions learned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from .model import NAMES, ROWS, forward

if TYPE_CHECKING:  # torch loads only when the demo runs: `mmfuse --help` is quick
    import torch
    from torch import Tensor, nn

    from ..data import AVSplit
    from ..fusion import DecisionFusion

__all__ = ["evaluate", "fit"]

DROP_P = 0.3  # ModalityDropout probability while training the fusions


def _autocast(device: torch.device, dtype: str | None) -> Any:
    """``torch.autocast`` on ``device`` in ``dtype`` ("bfloat16", "float16"), or a no-op."""
    import contextlib

    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def fit(model: nn.ModuleDict, data: AVSplit, times: tuple[Tensor, Tensor], *, epochs: int,
        batch_size: int, seed: int, device: torch.device, progress: bool,
        drop_p: float = DROP_P, autocast: str | None = None) -> list[float]:
    """Train ``model`` on ``data``; return the mean training loss of each epoch. The fusions
    see each modality dropped with probability ``drop_p`` (at least one kept per sample).

    ``autocast`` ("bfloat16" or "float16") runs the forward under ``torch.autocast`` (the
    parameters and the optimiser stay in float32; float16 adds a gradient scaler)."""
    import torch
    import torch.nn.functional as F

    from .._optional import require
    from ..fusion import ModalityDropout

    tqdm = require("tqdm", feature="mmfuse demo").tqdm
    order_gen = torch.Generator().manual_seed(seed)
    drop = ModalityDropout(drop_p, generator=torch.Generator(device=device).manual_seed(seed))
    n = len(data.labels)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3,
                                                total_steps=epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast == "float16")
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
                with _autocast(device, autocast):
                    out = forward(model, batch, times, present)
                y = batch.labels
                # losses in float32 (the policy of docs/conventions.md; the logits may be in the
                # autocast dtype, the decision level's log-probabilities and InfoNCE are float32)
                loss = (F.cross_entropy(out["image only"].float(), y)
                        + F.cross_entropy(out["audio only"].float(), y)
                        + F.cross_entropy(out["data level"].float(), y)
                        + F.cross_entropy(out["feature level"].float(), y)
                        + F.nll_loss(out["decision level"].float(), y))
                with _autocast(device, autocast):
                    loss = loss + model["infonce"](out["embed image"], out["embed audio"],
                                                   positives=y)
                opt.zero_grad()
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                total += float(loss.detach()) * len(idx)
                bar.update(1)
            losses.append(total / n)
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
    return losses


def evaluate(model: nn.ModuleDict, data: AVSplit, times: tuple[Tensor, Tensor],
             device: torch.device, *, autocast: str | None = None) -> dict[str, Any]:
    """Accuracies (both present, each absent), retrieval both ways, attention, similarities;
    the forward under ``torch.autocast`` in ``autocast`` ("bfloat16", "float16") if given."""
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
                with _autocast(device, autocast):
                    result = forward(model, batch, times, present)
                for key, value in result.items():
                    parts.setdefault(key, []).append(value.float().cpu())
            outs[cond] = {key: torch.cat(v) for key, v in parts.items()}
    labels = data.labels.cpu()
    acc: dict[str, dict[str, float | None]] = {}
    for row, _ in ROWS:
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
