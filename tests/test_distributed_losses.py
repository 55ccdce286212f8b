"""SupConLoss(gather=True) and InfoNCELoss(gather=True) with explicit negatives or
``reduction="pair"``, on 3 gloo processes with uneven and empty batches: the per-rank losses,
the embeddings' gradients and the temperature's gradient sum to the single-process ones on the
concatenated batch (float64, 1e-10 relative)."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
import torch.distributed as dist

from mmfuse.alignment import InfoNCELoss, SupConLoss
from test_distributed import cached_world, init_rank, rel_diff

D = 5
SIZES = [3, 0, 4]  # rank 1 holds an empty batch

# (name, module kwargs, what the inputs are)
CASES = [
    ("supcon-labels-tiled", {"temperature": 0.2, "chunk_size": 2}, "labels"),
    ("supcon-views-in", {"variant": "in"}, "views"),
    ("supcon-pair-weights", {"reduction": "pair"}, "labels-weights"),
    ("infonce-pair", {"reduction": "pair", "temperature": 0.2}, "groups"),
    ("infonce-shared-negatives-tiled", {"chunk_size": 2}, "shared"),
    ("infonce-own-negatives", {"label_smoothing": 0.1}, "own"),
    # grad_reduction="mean" (DDP): every rank returns the global loss, gradients world x share's
    ("supcon-labels-mean", {"grad_reduction": "mean", "chunk_size": 2}, "labels"),
    ("infonce-shared-negatives-mean", {"grad_reduction": "mean"}, "shared"),
]


def global_inputs(kind: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = sum(SIZES)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    labels = torch.tensor([0, 1, 0, 2, 1, 1, 0])
    if kind.startswith("labels"):
        out = {"features": r(n, D), "labels": labels}
        if kind == "labels-weights":
            out["weights"] = torch.tensor([1.0, 0.0, 2.0, 1.0, 0.5, 1.0, 1.0])
        return out
    if kind == "views":
        return {"features": r(n, 2, D)}
    out = {"a": r(n, D), "b": r(n, D)}
    if kind == "groups":
        out["positives"] = labels
    elif kind == "shared":  # per rank: 2, 1 and 3 negatives
        out["negatives"] = r(6, D)
    else:
        out["negatives"] = r(n, 3, D)
    return out


def shard(x: torch.Tensor, rank: int, name: str, kind: str) -> torch.Tensor:
    if name == "negatives" and kind == "shared":
        bounds = [0, 2, 3, 6]
        return x[bounds[rank]:bounds[rank + 1]]
    start = sum(SIZES[:rank])
    return x[start:start + SIZES[rank]]


def build(name: str, kwargs: dict[str, Any], gather: bool) -> torch.nn.Module:
    cls = SupConLoss if name.startswith("supcon") else InfoNCELoss
    return cls(learnable=True, gather=gather, dtype=torch.float64, **kwargs)


def run_case(index: int, rank: int | None) -> dict[str, Any]:
    """One case on one rank (``rank=None``: the single-process run on the whole batch)."""
    name, kwargs, kind = CASES[index]
    full = global_inputs(kind, index)
    inputs = full if rank is None else {k: shard(v, rank, k, kind) for k, v in full.items()}
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()
              if v.is_floating_point() and k != "weights"}
    if rank is None:
        kwargs = {k: v for k, v in kwargs.items() if k != "grad_reduction"}
    m = build(name, kwargs, gather=rank is not None)
    loss = m(**{**inputs, **leaves})
    loss.backward()
    # an empty rank's leaves and scale may get no gradient at all: zeros
    zero = lambda g, like: torch.zeros_like(like) if g is None else g  # noqa: E731
    return {"loss": loss.detach(), "scale_grad": zero(m.logit_scale.grad, m.logit_scale),
            "grads": {k: zero(v.grad, v) for k, v in leaves.items()}}


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    init_rank(rank, world, port)
    results: dict[str, Any] = {}
    try:
        for i, (name, _, _) in enumerate(CASES):
            try:
                results[name] = run_case(i, rank)
            except Exception as exc:  # kept for the test to show
                results[name] = (type(exc).__name__, str(exc))
    finally:
        torch.save(results, os.path.join(out_dir, f"{rank}.pt"))
        dist.destroy_process_group()


@pytest.mark.slow  # ~20 s: spawning processes that import torch
@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_gathered_shares_sum_to_the_single_process_loss(index: int) -> None:
    name = CASES[index][0]
    ranks = [r[name] for r in cached_world(worker, len(SIZES))]
    assert all(isinstance(r, dict) for r in ranks), ranks
    want = run_case(index, None)
    if CASES[index][1].get("grad_reduction") == "mean":
        # every rank: the global loss; DDP's mean of the gradients is the single-process one
        for r in ranks:
            assert rel_diff(r["loss"], want["loss"]) < 1e-10
        world = len(ranks)
        assert rel_diff(sum(r["scale_grad"] for r in ranks) / world, want["scale_grad"]) < 1e-10
        for arg, g in want["grads"].items():
            got = torch.cat([r["grads"][arg] for r in ranks]) / world
            assert got.shape == g.shape and rel_diff(got, g) < 1e-10, arg
        return
    assert rel_diff(sum(r["loss"] for r in ranks), want["loss"]) < 1e-10
    assert rel_diff(sum(r["scale_grad"] for r in ranks), want["scale_grad"]) < 1e-10
    for arg, g in want["grads"].items():
        got = torch.cat([r["grads"][arg] for r in ranks])
        assert got.shape == g.shape and rel_diff(got, g) < 1e-10, arg
