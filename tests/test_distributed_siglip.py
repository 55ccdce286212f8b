"""SigLIPLoss(gather=True) on 2 and 3 gloo processes with uneven (and empty) batches, against
the single-process SigLIPLoss on the concatenated batch (float64, 1e-10 relative):

- ``grad_reduction="sum"``: the per-rank losses sum to the single-process loss, each rank's
  embeddings get the single-process gradient of their rows, and the scale's and the bias's
  gradients sum over ranks to the single-process ones;
- ``grad_reduction="mean"``: every rank returns the single-process loss, and the gradients
  averaged over ranks (what DDP does) are the single-process ones, and under
  DistributedDataParallel itself every parameter's gradient (encoders, scale, bias) is;

and inputs that disagree across ranks raising on every rank.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
import torch.distributed as dist

from mmfuse.alignment import SigLIPLoss, siglip_loss
from mmfuse.distributed import siglip_gathered
from test_distributed import assert_every_rank_raised, cached_world, init_rank, rel_diff

D = 5

# (name, sizes per rank, module kwargs, inputs: "pairs", "groups", "groups-weights", "bool")
CASES = [
    ("2-ranks", [3, 5], {}, "pairs"),
    ("2-ranks-tiled-mean", [5, 2], {"chunk_size": 2, "grad_reduction": "mean"}, "pairs"),
    ("2-ranks-auto-tiled", [700, 400], {}, "pairs"),  # 1100 global rows: tiled by default
    ("2-ranks-groups-weights-mean", [4, 3], {"grad_reduction": "mean", "max_scale": 20.0},
     "groups-weights"),
    ("3-ranks-groups-weights-tiled", [2, 4, 1], {"chunk_size": 2}, "groups-weights"),
    ("3-ranks-empty-middle", [3, 0, 4], {"normalize": False, "scale": 2.0}, "pairs"),
    ("3-ranks-empty-mean", [4, 3, 0], {"grad_reduction": "mean"}, "pairs"),
    ("3-ranks-empty-groups-tiled-mean", [3, 0, 4],
     {"chunk_size": 3, "grad_reduction": "mean"}, "groups-weights"),
    ("3-ranks-bool-weights", [2, 2, 3], {"chunk_size": 1}, "bool"),
]
ERRORS = ["matrix", "options", "reduction", "local", "all-empty"]


def global_inputs(n: int, kind: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"a": torch.randn(n, D, generator=g, dtype=torch.float64),
           "b": torch.randn(n, D, generator=g, dtype=torch.float64)}
    if kind.startswith("groups"):
        out["positives"] = torch.randint(0, 3, (n,), generator=g)
    if kind == "groups-weights":
        w = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
        w[1] = 0.0  # a removed sample
        out["weights"] = w
    elif kind == "bool":
        out["weights"] = torch.arange(n) % 3 != 1
    return out


def run_case(index: int, rank: int | None) -> dict[str, Any]:
    """One case on one rank (``rank=None``: one process on the concatenated batch)."""
    _, sizes, kwargs, kind = CASES[index]
    full = global_inputs(sum(sizes), kind, index)
    if rank is None:
        inputs = full
        kwargs = {k: v for k, v in kwargs.items() if k != "grad_reduction"}
    else:
        start = sum(sizes[:rank])
        inputs = {k: v[start:start + sizes[rank]] for k, v in full.items()}
    a, b = inputs["a"].clone().requires_grad_(), inputs["b"].clone().requires_grad_()
    m = SigLIPLoss(gather=rank is not None, dtype=torch.float64, **kwargs)
    loss = m(a, b, inputs.get("positives"), inputs.get("weights"))
    loss.backward()
    zero = lambda g, like: torch.zeros_like(like) if g is None else g  # noqa: E731
    return {"loss": loss.detach(), "a": zero(a.grad, a), "b": zero(b.grad, b),
            "scale": zero(m.logit_scale.grad, m.logit_scale),
            "bias": zero(m.logit_bias.grad, m.logit_bias)}


DDP_SIZES = {2: [5, 2], 3: [3, 0, 4]}


class Pair(torch.nn.Module):
    """Two linear encoders and the loss, wrapped in DDP together (scale and bias are
    parameters)."""

    def __init__(self, gather: bool) -> None:
        super().__init__()
        torch.manual_seed(0)  # the same parameters on every rank and in the single process
        self.image = torch.nn.Linear(4, D, dtype=torch.float64)
        self.audio = torch.nn.Linear(3, D, dtype=torch.float64)
        self.loss = SigLIPLoss(gather=gather, grad_reduction="mean" if gather else "sum",
                               dtype=torch.float64)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(self.image(x), self.audio(y))


def run_ddp(rank: int | None, sizes: list[int]) -> dict[str, torch.Tensor]:
    """Every parameter's gradient after one backward: under DistributedDataParallel (its
    average over ranks) with ``rank``, or one process on the whole batch with None."""
    g = torch.Generator().manual_seed(len(sizes))
    x = torch.randn(sum(sizes), 4, generator=g, dtype=torch.float64)
    y = torch.randn(sum(sizes), 3, generator=g, dtype=torch.float64)
    model: torch.nn.Module = Pair(gather=rank is not None)
    if rank is not None:
        start = sum(sizes[:rank])
        x, y = x[start:start + sizes[rank]], y[start:start + sizes[rank]]
        model = torch.nn.parallel.DistributedDataParallel(model)
    loss = model(x, y)
    loss.backward()
    named = model.module if rank is not None else model
    out = {k: p.grad.detach().clone() for k, p in named.named_parameters()}
    out["loss"] = loss.detach()
    return out


def run_error(rank: int, world: int, case: str) -> Any:
    g = torch.Generator().manual_seed(rank)
    a, b = torch.randn(3, D, generator=g), torch.randn(3, D, generator=g)
    if case == "matrix":  # a (B, B) positives matrix cannot name other ranks' columns
        return SigLIPLoss(gather=True)(a, b, torch.eye(3, dtype=torch.bool))
    if case == "options":  # only rank 1 passes weights
        return SigLIPLoss(gather=True)(a, b, weights=torch.ones(3) if rank == 1 else None)
    if case == "reduction":  # only the last rank asks for DDP's mean
        return SigLIPLoss(gather=True, grad_reduction="mean" if rank == world - 1 else "sum")(a, b)
    if case == "local":  # rank 0's own inputs disagree: it raises its error, the others follow
        return SigLIPLoss(gather=True)(a, torch.randn(3, D + 1) if rank == 0 else b)
    if case == "all-empty":
        return siglip_gathered(torch.zeros(0, D), torch.zeros(0, D), torch.tensor(10.0),
                               torch.tensor(-10.0))
    raise AssertionError(case)


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    init_rank(rank, world, port)
    results: dict[str, Any] = {}
    try:
        for i, (name, sizes, _, _) in enumerate(CASES):
            if len(sizes) == world:
                try:
                    results[name] = run_case(i, rank)
                except Exception as exc:  # kept for the test to show
                    results[name] = (type(exc).__name__, str(exc))
        try:
            results["ddp"] = run_ddp(rank, DDP_SIZES[world])
        except Exception as exc:
            results["ddp"] = (type(exc).__name__, str(exc))
        for case in ERRORS:
            try:
                run_error(rank, world, case)
                results[case] = None
            except Exception as exc:
                results[case] = (type(exc).__name__, str(exc))
    finally:
        torch.save(results, os.path.join(out_dir, f"{rank}.pt"))
        dist.destroy_process_group()


def run_world(world: int) -> list[dict[str, Any]]:
    return cached_world(worker, world)


@pytest.mark.slow  # ~20 s a world size: spawning processes that import torch
@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_gathered_siglip_equals_the_single_process_loss(index: int) -> None:
    name, sizes, kwargs, _ = CASES[index]
    world = len(sizes)
    ranks = [r[name] for r in run_world(world)]
    assert all(isinstance(r, dict) for r in ranks), ranks
    want = run_case(index, None)
    if kwargs.get("grad_reduction") == "mean":
        for r in ranks:  # every rank returns the global loss
            assert rel_diff(r["loss"], want["loss"]) < 1e-10
        loss, factor = None, world  # DDP divides the summed gradients by the world size
    else:
        loss, factor = sum(r["loss"] for r in ranks), 1
        assert rel_diff(loss, want["loss"]) < 1e-10
        assert sum(r["loss"] for r in ranks if r["a"].numel() == 0) == 0  # an empty rank's share
    for arg in ("scale", "bias"):
        got = sum(r[arg] for r in ranks) / factor
        assert want[arg].abs() > 1e-3 and rel_diff(got, want[arg]) < 1e-10, arg
    for arg in ("a", "b"):
        got = torch.cat([r[arg] for r in ranks]) / factor
        assert got.shape == want[arg].shape and rel_diff(got, want[arg]) < 1e-10, arg


@pytest.mark.slow
@pytest.mark.parametrize("world", sorted(DDP_SIZES))
def test_under_ddp_every_gradient_is_the_single_process_one(world: int) -> None:
    """DistributedDataParallel itself averages the gradients: both encoders, the scale and
    the bias end up with the single-process gradients, with no arithmetic in the loop."""
    want = run_ddp(None, DDP_SIZES[world])
    assert {"loss.logit_scale", "loss.logit_bias", "image.weight"} <= set(want)
    for r, res in enumerate(run_world(world)):
        assert isinstance(res["ddp"], dict), res["ddp"]
        for k, g in want.items():
            assert g.abs().max() > 1e-3 and rel_diff(res["ddp"][k], g) < 1e-10, (r, k)


SAME = {
    "options": ("ValueError", r"SigLIPLoss: expected the same options on every rank, got rank 0: "
                r"positives None, weights None; rank 1: positives None, weights a float tensor; "
                r"rank 2: positives None, weights None\."),
    "reduction": ("ValueError", r"SigLIPLoss: expected the same options on every rank, got rank "
                  r"0: positives None, weights None; rank 1: positives None, weights None; rank "
                  r"2: positives None, weights None, grad_reduction 'mean'\."),
    "all-empty": ("ValueError", r"siglip_gathered: expected at least one row of `a` and `b` "
                  r"across the ranks, got B=0 on every rank\."),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(SAME))
def test_disagreeing_ranks_all_raise_the_same_error(case: str) -> None:
    assert_every_rank_raised(run_world(3), case, *SAME[case])


@pytest.mark.slow
def test_a_positives_matrix_and_a_failing_rank_raise_on_every_rank() -> None:
    results = run_world(3)
    for res in results:
        assert res["matrix"] == ("ValueError", "SigLIPLoss: expected `positives` as (B,) group "
                                 "ids when gathering across ranks, got a matrix of shape (3, 3).")
    kind, message = results[0]["local"]
    assert kind == "ShapeError" and message.startswith("SigLIPLoss: expected `b` of shape")
    for res in results[1:]:
        assert res["local"] == ("ShapeError", "SigLIPLoss: rank 0 failed its input checks (see "
                                "that rank's error), so no rank gathers `b`.")


def test_grad_reduction_mean_needs_gather_and_a_known_choice() -> None:
    with pytest.raises(ValueError, match=r"^SigLIPLoss: expected gather=True with "
                                         r"grad_reduction='mean' .*got gather=False\.$"):
        SigLIPLoss(grad_reduction="mean")
    with pytest.raises(ValueError, match=r"SigLIPLoss: .*`grad_reduction`.*'sum', 'mean'"):
        SigLIPLoss(gather=True, grad_reduction="avg")
    with pytest.raises(ValueError, match=r"siglip_gathered: .*`grad_reduction`"):
        siglip_gathered(torch.randn(3, D), torch.randn(3, D), torch.tensor(10.0),
                        torch.tensor(-10.0), grad_reduction="avg")


def test_without_a_process_group_gather_changes_nothing() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, D, generator=g), torch.randn(6, D, generator=g)
    matrix = torch.rand(6, 6, generator=g) < 0.3  # any positives, as siglip_loss takes
    gathered = SigLIPLoss(gather=True, grad_reduction="mean")
    assert "gather=True, grad_reduction='mean'" in repr(gathered)
    assert "grad_reduction" not in repr(SigLIPLoss())
    assert torch.equal(gathered(a, b, matrix), SigLIPLoss()(a, b, matrix))
    want = siglip_loss(a, b, scale=3.0, bias=-1.0, positives=matrix)
    got = siglip_gathered(a, b, torch.tensor(3.0), torch.tensor(-1.0), positives=matrix)
    assert torch.equal(got, want)
