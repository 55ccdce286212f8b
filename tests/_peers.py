"""Comparison loops shared by the peer tests and benchmarks/peers.py.

Each runs mmfuse and a peer package on the same inputs and returns or yields both results; the
tests bound the differences, the script measures them. The peers are imported only inside the
functions that call them (or reached through the objects passed in), so importing this module
needs none of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from mmfuse.alignment import DiffusionHead
from mmfuse.functional import ddpm_step, dpm_solver_2m_step, dynamic_threshold, predict_start

PREDICTION = {"epsilon": "eps", "v_prediction": "v"}  # diffusers' names -> mmfuse's
PRED = {v: k for k, v in PREDICTION.items()}  # mmfuse's names -> diffusers'


def excite(head: DiffusionHead, std: float = 0.3, seed: int = 0) -> DiffusionHead:
    """Random values in the zero-initialised layers, so the denoiser is not identically zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            if not bool(p.any()):
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return head


def learned_range_head(shape: tuple[int, ...] = (1, 4, 4), backbone: str = "mlp", *,
                       seed: int = 0, cond_dim: int = 5, **kw: Any) -> DiffusionHead:
    """A small ``DiffusionHead(variance_type="learned_range")``, excited, in eval mode."""
    torch.manual_seed(seed)
    kw = {"hidden_dim": 16, "num_blocks": 1, "num_steps": 100, "unet_channels": 8,
          "variance_type": "learned_range", **kw}
    return excite(DiffusionHead(shape, cond_dim, backbone=backbone, **kw), seed=seed).eval()


def torchmetrics_per_query(sim: torch.Tensor, rel: torch.Tensor, ks) -> dict[str, float]:
    """torchmetrics' functional retrieval metrics, one query (row) at a time, averaged over the
    queries with a relevant item (mmfuse's ``retrieval_metrics`` keys)."""
    from torchmetrics.functional import retrieval as tmr

    rows = [i for i in range(sim.shape[0]) if rel[i].any()]

    def mean(fn: Any, **kw: Any) -> float:
        return float(np.mean([float(fn(sim[i], rel[i], **kw)) for i in rows]))

    out = {"mrr": mean(tmr.retrieval_reciprocal_rank),
           "mAP": mean(tmr.retrieval_average_precision)}
    for k in ks:
        out[f"hit_rate@{k}"] = mean(tmr.retrieval_hit_rate, top_k=k)
        out[f"recall@{k}"] = mean(tmr.retrieval_recall, top_k=k)
        out[f"precision@{k}"] = mean(tmr.retrieval_precision, top_k=k)
        out[f"ndcg@{k}"] = mean(tmr.retrieval_normalized_dcg, top_k=k)
    return out


def torchmetrics_stateful(scores: torch.Tensor, relevant: torch.Tensor,
                          parts: list[slice]) -> dict[str, float]:
    """torchmetrics' stateful retrieval metrics at k = 5 (and MRR, mAP), updated with the
    query rows of each slice in ``parts`` in turn (grouped by ``indexes``), queries without a
    relevant item skipped (mmfuse's ``RetrievalMetrics`` keys)."""
    from torchmetrics import retrieval as tm

    index = torch.arange(scores.shape[0])[:, None].expand_as(scores)
    skip: dict[str, Any] = {"empty_target_action": "skip"}
    theirs = {"hit_rate@5": tm.RetrievalHitRate(top_k=5, **skip),
              "recall@5": tm.RetrievalRecall(top_k=5, **skip),
              "precision@5": tm.RetrievalPrecision(top_k=5, **skip),
              "ndcg@5": tm.RetrievalNormalizedDCG(top_k=5, **skip),
              "mrr": tm.RetrievalMRR(**skip), "mAP": tm.RetrievalMAP(**skip)}
    for metric in theirs.values():
        for rows in parts:
            metric.update(scores[rows].reshape(-1), relevant[rows].reshape(-1),
                          indexes=index[rows].reshape(-1))
    return {key: float(metric.compute()) for key, metric in theirs.items()}


def sklearn_classification_pairs(pred: torch.Tensor, target: torch.Tensor,
                                 num_classes: int) -> list[tuple[str, float, float]]:
    """(name, mmfuse's value, scikit-learn's) for accuracy, F1 macro / weighted / micro, and
    macro F1 over ``num_classes + 1`` classes (one never seen: zero_division=0)."""
    from sklearn import metrics as skm

    from mmfuse.metrics import accuracy, f1_score

    out = [("accuracy", accuracy(pred, target), float(skm.accuracy_score(target, pred)))]
    for avg in ("macro", "weighted", "micro"):
        out.append((avg, f1_score(pred, target, average=avg),
                    float(skm.f1_score(target, pred, average=avg, zero_division=0))))
    out.append(("unseen class", f1_score(pred, target, num_classes=num_classes + 1),
                float(skm.f1_score(target, pred, average="macro",
                                   labels=list(range(num_classes + 1)), zero_division=0))))
    return out


def fake_model(x: torch.Tensor, t: int) -> torch.Tensor:
    """A smooth stand-in for a denoiser's output."""
    return torch.sin(3 * x + t / 100) * 1.5


def _x0(sched: Any, x: torch.Tensor, out: torch.Tensor, ab: float) -> torch.Tensor:
    """mmfuse's x0 from the model output, clipped or thresholded as the scheduler is set to."""
    cfg = sched.config
    x0, _ = predict_start(x.double(), out.double(), ab, PREDICTION[cfg.prediction_type])
    if cfg.thresholding:
        x0 = dynamic_threshold(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
    elif cfg.get("clip_sample", False):
        x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
    return x0


def ddpm_steps(sched: Any, x: torch.Tensor, g: torch.Generator,
               noise_seed: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
    """Steps a diffusers ``DDPMScheduler`` (timesteps set) from ``x`` and mmfuse's DDPM step
    beside it, from the same state each step. Learned-range variances are drawn from ``g``;
    the step noise of timestep t from seed ``t + noise_seed``, for both.

    Yields (mmfuse x0, diffusers x0, mmfuse x_{t-1}, diffusers x_{t-1}) in float32.
    """
    variance = sched.config.variance_type
    ab_all = sched.alphas_cumprod.double()
    for t in sched.timesteps.tolist():
        out = fake_model(x, t)
        v = torch.rand(x.shape, generator=g) * 2 - 1  # a learned-range output in [-1, 1]
        model_out = torch.cat([out, v], 1) if variance == "learned_range" else out
        want = sched.step(model_out, t, x, generator=torch.Generator().manual_seed(t + noise_seed))
        prev = sched.previous_timestep(t)
        ab, ab_prev = float(ab_all[t]), float(ab_all[prev]) if prev >= 0 else 1.0
        x0 = _x0(sched, x, out, ab)
        z = (torch.randn(x.shape, generator=torch.Generator().manual_seed(t + noise_seed)).double()
             if t > 0 else None)
        got = ddpm_step(x0, x.double(), ab, ab_prev, z, variance_type=variance,
                        predicted_variance=v.double() if variance == "learned_range" else None)
        yield x0.float(), want.pred_original_sample, got.float(), want.prev_sample
        x = want.prev_sample


def dpm_solver_steps(sched: Any, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Steps a diffusers DPM-Solver++(2M) scheduler (timesteps set) from ``x`` and mmfuse's
    ``dpm_solver_2m_step`` beside it, from the same state and history each step.

    Yields (mmfuse x_prev, diffusers x_prev) in float32.
    """
    ab_all = sched.alphas_cumprod.double()
    ts = sched.timesteps.tolist()
    history: tuple[Any, Any] = (None, None)
    for i, t in enumerate(ts):
        out = fake_model(x, t)
        want = sched.step(out, t, x).prev_sample
        ab = float(ab_all[t])
        ab_prev = float(ab_all[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        x0 = _x0(sched, x, out, ab)
        yield dpm_solver_2m_step(x.double(), x0, ab, ab_prev, *history).float(), want
        history = (x0, ab)
        x = want


def random_head(prediction: str, seed: int = 0) -> DiffusionHead:
    """A small DiffusionHead with random weights everywhere (away from AdaLN-zero's identity
    start, so the denoiser is not trivial)."""
    torch.manual_seed(seed)
    head = DiffusionHead(6, 4, hidden_dim=16, num_blocks=1, num_steps=100,
                         schedule="scaled_linear", beta_start=0.001, beta_end=0.03,
                         prediction=prediction).eval()
    for p in head.net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return head


def scheduler_loop(head: DiffusionHead, sched: Any, cond: torch.Tensor, noise: torch.Tensor,
                   generator: torch.Generator | None = None,
                   guidance_scale: float = 1.0) -> torch.Tensor:
    """Samples with a diffusers scheduler (timesteps set) around ``head``'s denoiser, from
    ``noise``; ``generator`` feeds the scheduler's step noise (DDPM). With guidance the
    prediction is uncond + scale (cond - uncond), ``head.null_cond`` as the unconditional
    input; a learned-range scheduler gets the conditional pass's variance values beside it."""
    x = noise.clone()
    draw = {} if generator is None else {"generator": generator}
    learned = sched.config.get("variance_type") == "learned_range"
    null = head.null_cond.expand(len(cond), -1)
    with torch.no_grad():
        for t in sched.timesteps.tolist():
            steps = torch.full((len(x),), t)
            out = head(x, steps, cond)
            if guidance_scale != 1.0:
                pred, rest = out.chunk(2, dim=1) if learned else (out, None)
                base = head(x, steps, null)
                base = base.chunk(2, dim=1)[0] if learned else base
                pred = base + guidance_scale * (pred - base)
                out = pred if rest is None else torch.cat([pred, rest], dim=1)
            x = sched.step(out, t, x, **draw).prev_sample
    return x
