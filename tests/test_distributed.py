"""all_gather_with_grad and InfoNCELoss(gather=True) with 2 and 3 gloo processes on 127.0.0.1:
uneven and empty batches against the single-process result on the concatenated batch, and
inputs that disagree across ranks raising the same error on every rank (no abort, no hang).

Each world size is one spawn (processes that import torch are slow to start); the ranks run
every scenario in turn, catching what each raises, so a later scenario also shows the process
group survived the earlier errors.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmfuse.alignment import InfoNCELoss
from mmfuse.distributed import all_gather_with_grad, info_nce_gathered, is_distributed
from mmfuse.errors import ShapeError

D = 6
JOIN_TIMEOUT = 240.0  # seconds for a whole spawn; the gloo collectives time out after 60 s

# (name, sizes per rank, config): the loss scenarios, run on the world of len(sizes) ranks
LOSS_CASES = [
    ("2-ranks", [3, 5], {"seed": 0, "groups": False, "chunk": "auto", "eps": 0.0}),
    ("2-ranks-empty-first", [0, 4], {"seed": 3, "groups": False, "chunk": "auto", "eps": 0.0}),
    ("3-ranks-groups-tiled", [2, 4, 1], {"seed": 1, "groups": True, "chunk": 2, "eps": 0.1}),
    ("3-ranks-empty-middle", [3, 0, 2], {"seed": 2, "groups": False, "chunk": "auto", "eps": 0.0}),
    ("3-ranks-empty-groups", [2, 3, 0], {"seed": 4, "groups": True, "chunk": 2, "eps": 0.0}),
    # grad_reduction="mean" (for DDP): every rank returns the global loss, its gradients are
    # world_size x its share's, so their mean over ranks is the single-process gradient
    ("2-ranks-mean", [3, 5], {"seed": 5, "groups": False, "chunk": "auto", "eps": 0.0,
                              "reduction": "mean"}),
    ("3-ranks-empty-groups-mean", [4, 0, 3], {"seed": 6, "groups": True, "chunk": 2, "eps": 0.1,
                                              "reduction": "mean"}),
]
ERROR_CASES = ["size", "dtype", "loss-size", "local", "options", "reduction", "all-empty"]


def global_batch(sizes: list[int], seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    a, b = torch.randn(n, D, generator=g), torch.randn(n, D, generator=g)
    ids = torch.randint(0, 3, (n,), generator=g)
    weights = torch.rand(n, generator=g) + 0.5
    weights[1] = 0.0  # a removed sample
    return a, b, ids, weights


def make_loss(config: dict[str, Any]) -> InfoNCELoss:
    return InfoNCELoss(temperature=0.2, gather=True, chunk_size=config["chunk"],
                       label_smoothing=config["eps"],
                       grad_reduction=config.get("reduction", "sum"))


def run_loss_case(rank: int, sizes: list[int], config: dict[str, Any]) -> dict[str, Any]:
    start = sum(sizes[:rank])
    shard = slice(start, start + sizes[rank])
    a, b, ids, w = global_batch(sizes, config["seed"])
    # the gather itself: values in rank order, gradients summed over ranks; an empty rank's
    # input need not require gradients, it joins the backward all the same
    x = a[shard].clone()
    if sizes[rank]:
        x.requires_grad_()
    gathered = all_gather_with_grad(x)
    ((rank + 1) * gathered * torch.arange(gathered.numel()).view_as(gathered)).sum().backward()
    # the loss
    la, lb = a[shard].clone().requires_grad_(), b[shard].clone().requires_grad_()
    loss_fn = make_loss(config)
    kw = {"positives": ids[shard], "weights": w[shard]} if config["groups"] else {}
    loss = loss_fn(la, lb, **kw)
    loss.backward()
    return {"gathered": gathered.detach(), "x_grad": x.grad, "loss": loss.detach(),
            "a_grad": la.grad, "b_grad": lb.grad, "scale_grad": loss_fn.logit_scale.grad,
            "is_distributed": is_distributed()}


def run_error_case(rank: int, world: int, case: str) -> Any:
    g = torch.Generator().manual_seed(rank)
    if case == "size":  # rank 1 sends a different embedding size
        return all_gather_with_grad(torch.randn(2 + rank, 5 if rank == 1 else D, generator=g))
    if case == "dtype":  # the last rank sends float64
        dtype = torch.float64 if rank == world - 1 else torch.float32
        return all_gather_with_grad(torch.randn(3, D, generator=g, dtype=dtype))
    if case == "loss-size":
        d = 5 if rank == 1 else D
        a, b = torch.randn(3, d, generator=g), torch.randn(3, d, generator=g)
        return InfoNCELoss(gather=True)(a, b)
    if case == "local":  # rank 0's own inputs disagree: it raises its error, the others follow
        a = torch.randn(3, D, generator=g)
        b = torch.randn(3, D + 1 if rank == 0 else D, generator=g)
        return InfoNCELoss(gather=True)(a, b)
    if case == "options":  # only rank 1 passes weights
        a, b = torch.randn(3, D, generator=g), torch.randn(3, D, generator=g)
        return InfoNCELoss(gather=True)(a, b, weights=torch.ones(3) if rank == 1 else None)
    if case == "reduction":  # only rank 1 asks for DDP's mean reduction
        a, b = torch.randn(3, D, generator=g), torch.randn(3, D, generator=g)
        return InfoNCELoss(gather=True, grad_reduction="mean" if rank == 1 else "sum")(a, b)
    if case == "all-empty":
        return info_nce_gathered(torch.zeros(0, D), torch.zeros(0, D), torch.tensor(5.0))
    raise AssertionError(case)


def init_rank(rank: int, world: int, port: int) -> None:
    """Join the gloo group on 127.0.0.1 (one thread per rank, collectives time out at 60 s)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    init_rank(rank, world, port)
    results: dict[str, Any] = {}
    try:
        for name, sizes, config in LOSS_CASES:
            if len(sizes) == world:
                results[name] = run_loss_case(rank, sizes, config)
        for case in ERROR_CASES:
            try:
                run_error_case(rank, world, case)
                results[case] = None
            except Exception as exc:
                results[case] = (type(exc).__name__, str(exc))
        # the group still works after the errors: one more gather, in order
        results["after"] = all_gather_with_grad(torch.full((1, 2), float(rank)))
    finally:
        torch.save(results, os.path.join(out_dir, f"{rank}.pt"))
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_RUNS: dict[tuple[str, int], list[dict[str, Any]]] = {}


def rel_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest difference relative to the largest magnitude of ``want``."""
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def assert_every_rank_raised(results: list[dict[str, Any]], case: str, kind: str,
                             pattern: str) -> None:
    """Every rank's result for ``case`` is an error of type name ``kind`` whose message matches
    ``pattern`` in full."""
    for r, res in enumerate(results):
        assert res[case] is not None, f"rank {r} did not raise"
        assert res[case][0] == kind and re.fullmatch(pattern, res[case][1]), (r, res[case])


def spawn_world(target: Any, world: int) -> list[dict[str, Any]]:
    """Run ``target(rank, world, port, out_dir)`` on ``world`` gloo ranks; each rank's results
    (saved to ``out_dir/{rank}.pt``), in rank order."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.start_processes(target, args=(world, free_port(), tmp), nprocs=world,
                                 join=False, start_method="spawn")
        deadline = time.monotonic() + JOIN_TIMEOUT
        try:
            while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
                if time.monotonic() > deadline:
                    raise AssertionError(f"{world} ranks did not finish in {JOIN_TIMEOUT} s")
        finally:
            for p in ctx.processes:  # stop what is left, by PID
                if p.is_alive():
                    p.kill()
                    p.join(5)
        return [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(world)]


def cached_world(target: Any, world: int) -> list[dict[str, Any]]:
    """:func:`spawn_world` once per test session for each worker and world size."""
    key = (f"{target.__module__}.{target.__qualname__}", world)
    if key not in _RUNS:
        _RUNS[key] = spawn_world(target, world)
    return _RUNS[key]


def run_world(world: int) -> list[dict[str, Any]]:
    """Every rank's results of this module's worker on ``world`` ranks, in rank order."""
    return cached_world(worker, world)


@pytest.mark.slow  # ~20 s a world size: spawning processes that import torch
@pytest.mark.parametrize(("name", "sizes", "config"), LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
def test_gathered_loss_equals_single_process(name: str, sizes: list[int],
                                             config: dict[str, Any]) -> None:
    world = len(sizes)
    mean = config.get("reduction") == "mean"
    results = [r[name] for r in run_world(world)]
    a, b, ids, w = global_batch(sizes, config["seed"])
    # single process on the concatenated batch
    ga, gb = a.clone().requires_grad_(), b.clone().requires_grad_()
    loss_fn = InfoNCELoss(temperature=0.2, chunk_size=config["chunk"],
                          label_smoothing=config["eps"])
    kw = {"positives": ids, "weights": w} if config["groups"] else {}
    loss = loss_fn(ga, gb, **kw)
    loss.backward()
    weights_sum = sum(range(1, world + 1))
    position = torch.arange(a.numel()).view_as(a).float()
    start = 0
    for r, res in enumerate(results):
        assert res["is_distributed"]
        shard = slice(start, start + sizes[r])
        start += sizes[r]
        assert torch.equal(res["gathered"], a)  # rank order, padding stripped
        if sizes[r]:
            assert torch.allclose(res["x_grad"], weights_sum * position[shard])
        else:
            assert res["x_grad"] is None  # its input did not require gradients
            assert res["a_grad"].shape == (0, D)
            if mean:
                assert torch.allclose(res["loss"], loss.detach(), rtol=1e-5)
            else:
                assert res["loss"] == 0
        # "mean": the gradients are world_size x the share's, averaged over ranks by DDP
        factor = world if mean else 1
        assert torch.allclose(res["a_grad"], factor * ga.grad[shard], atol=1e-6, rtol=1e-5)
        assert torch.allclose(res["b_grad"], factor * gb.grad[shard], atol=1e-6, rtol=1e-5)
        if mean:  # every rank returns the global loss
            assert torch.allclose(res["loss"], loss.detach(), rtol=1e-5)
    if mean:
        scale_grad = sum(res["scale_grad"] for res in results) / world  # DDP's average
    else:
        total = sum(res["loss"] for res in results)
        assert torch.allclose(total, loss.detach(), rtol=1e-5)
        scale_grad = sum(res["scale_grad"] for res in results)
    assert torch.allclose(scale_grad, loss_fn.logit_scale.grad, rtol=1e-5, atol=1e-7)


SAME = {
    "size": ("ShapeError", r"all_gather_with_grad: expected `x` with the same trailing shape and "
             r"dtype on every rank \(all_gather_with_grad\), got rank 0: \(2, 6\) float32, rank 1: "
             r"\(3, 5\) float32, rank 2: \(4, 6\) float32\."),
    "dtype": ("ShapeError", r"all_gather_with_grad: expected `x` with the same trailing shape "
              r"and dtype on every rank \(all_gather_with_grad\), got rank 0: \(3, 6\) float32, "
              r"rank 1: \(3, 6\) float32, rank 2: \(3, 6\) float64\."),
    "loss-size": ("ShapeError", r"InfoNCELoss: expected `a` with the same trailing shape and "
                  r"dtype on every rank \(all_gather_with_grad\), got rank 0: \(3, 6\) float32, "
                  r"rank 1: \(3, 5\) float32, rank 2: \(3, 6\) float32\."),
    "options": ("ValueError", r"InfoNCELoss: expected the same options on every rank, got rank 0: "
                r"positives None, weights None, direction 'both', negatives None; rank 1: positives None, weights "
                r"a float tensor, direction 'both', negatives None; rank 2: positives None, weights None, "
                r"direction 'both', negatives None\."),
    "reduction": ("ValueError", r"InfoNCELoss: expected the same options on every rank, got rank "
                  r"0: positives None, weights None, direction 'both', negatives None; rank 1: "
                  r"positives None, weights None, direction 'both', negatives None, grad_reduction "
                  r"'mean'; rank 2: positives None, weights None, direction 'both', negatives "
                  r"None\."),
    "all-empty": ("ValueError", r"info_nce_gathered: expected at least one row of `a` and `b` "
                  r"across the ranks, got B=0 on every rank\."),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(SAME))
def test_disagreeing_ranks_all_raise_the_same_error(case: str) -> None:
    assert_every_rank_raised(run_world(3), case, *SAME[case])
    assert issubclass(ShapeError, ValueError)


@pytest.mark.slow
def test_a_rank_whose_own_inputs_fail_stops_every_rank() -> None:
    results = run_world(3)
    kind, message = results[0]["local"]
    assert kind == "ShapeError" and message.startswith("InfoNCELoss: expected `b` of shape")
    for res in results[1:]:
        assert res["local"] == ("ShapeError", "InfoNCELoss: rank 0 failed its input checks (see "
                                "that rank's error), so no rank gathers `a`.")


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_the_group_survives_the_errors(world: int) -> None:
    for res in run_world(world):
        want = torch.arange(world, dtype=torch.float32).repeat_interleave(2).view(world, 2)
        assert torch.equal(res["after"], want)


def test_without_process_group_gather_is_identity():
    x = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(x) is x
    assert not is_distributed()


def test_without_a_process_group_checks_and_returns_the_input() -> None:
    x = torch.randn(3, 4)
    assert all_gather_with_grad(x) is x
    for bad, got in ((None, "NoneType"), ([1.0], "list"), (torch.tensor(1.0), "a 0-d tensor")):
        with pytest.raises(TypeError, match=rf"^all_gather_with_grad: expected `x` to be a tensor "
                           rf"of shape \(B, \.\.\.\), got {got}\.$"):
            all_gather_with_grad(bad)  # type: ignore[arg-type]


def test_without_a_process_group_the_gathered_loss_is_info_nce() -> None:
    from mmfuse.alignment import info_nce

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, D, generator=g), torch.randn(5, D, generator=g)
    scale = torch.tensor(5.0)
    assert torch.allclose(info_nce_gathered(a, b, scale), info_nce(a, b, temperature=0.2))
    with pytest.raises(ValueError, match=r"at least one row \(B >= 1\)"):
        info_nce_gathered(torch.zeros(0, D), torch.zeros(0, D), scale)


def test_grad_reduction_mean_needs_gather_and_a_known_choice() -> None:
    with pytest.raises(ValueError, match=r"^InfoNCELoss: expected gather=True with "
                                         r"grad_reduction='mean' .*got gather=False\.$"):
        InfoNCELoss(grad_reduction="mean")
    with pytest.raises(ValueError, match=r"InfoNCELoss: .*`grad_reduction`.*'sum', 'mean'"):
        InfoNCELoss(gather=True, grad_reduction="avg")
    with pytest.raises(ValueError, match=r"info_nce_gathered: .*`grad_reduction`"):
        info_nce_gathered(torch.randn(3, D), torch.randn(3, D), torch.tensor(5.0),
                          grad_reduction="avg")


def test_without_a_process_group_grad_reduction_changes_nothing() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, D, generator=g), torch.randn(5, D, generator=g)
    mean = InfoNCELoss(gather=True, grad_reduction="mean")
    assert "grad_reduction='mean'" in repr(mean)
    assert torch.equal(mean(a, b), InfoNCELoss()(a, b))
