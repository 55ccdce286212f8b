"""all_gather_with_grad and InfoNCELoss(gather=True) with 2 and 3 gloo processes on the CPU,
uneven batches, against the single-process result on the concatenated batch."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmfuse.alignment import InfoNCELoss
from mmfuse.distributed import all_gather_with_grad, is_distributed

D = 6


def global_batch(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    a, b = torch.randn(n, D, generator=g), torch.randn(n, D, generator=g)
    ids = torch.randint(0, 3, (n,), generator=g)
    weights = torch.rand(n, generator=g) + 0.5
    weights[1] = 0.0  # a removed sample
    return a, b, ids, weights


def make_loss(config):
    return InfoNCELoss(temperature=0.2, gather=config["gather"], chunk_size=config["chunk"],
                       label_smoothing=config["eps"])


def worker(rank, world, init_file, out_dir, sizes, config):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        start = sum(sizes[:rank])
        shard = slice(start, start + sizes[rank])
        a, b, ids, w = global_batch(sizes, config["seed"])
        # the gather itself: values in rank order, gradients summed over ranks
        x = a[shard].clone().requires_grad_()
        gathered = all_gather_with_grad(x)
        ((rank + 1) * gathered * torch.arange(gathered.numel()).view_as(gathered)).sum().backward()
        # the loss
        la, lb = a[shard].clone().requires_grad_(), b[shard].clone().requires_grad_()
        loss_fn = make_loss(config)
        kw = {}
        if config["groups"]:
            kw = {"positives": ids[shard], "weights": w[shard]}
        loss = loss_fn(la, lb, **kw)
        loss.backward()
        torch.save({"gathered": gathered.detach(), "x_grad": x.grad, "loss": loss.detach(),
                    "a_grad": la.grad, "b_grad": lb.grad, "scale_grad": loss_fn.logit_scale.grad,
                    "is_distributed": is_distributed()},
                   os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ~10 s each: spawning processes that import torch
@pytest.mark.parametrize(("sizes", "config"), [
    ([3, 5], {"seed": 0, "groups": False, "chunk": "auto", "eps": 0.0}),
    ([2, 4, 1], {"seed": 1, "groups": True, "chunk": 2, "eps": 0.1}),
], ids=["2-ranks", "3-ranks-groups-tiled"])
def test_gathered_loss_equals_single_process(sizes, config):
    world = len(sizes)
    config = {**config, "gather": True}
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(worker, args=(world, init_file, tmp, sizes, config), nprocs=world, join=True)
        results = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(world)]
    a, b, ids, w = global_batch(sizes, config["seed"])
    # single process on the concatenated batch
    ga, gb = a.clone().requires_grad_(), b.clone().requires_grad_()
    loss_fn = make_loss(config)
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
        assert torch.allclose(res["x_grad"], weights_sum * position[shard])
        assert torch.allclose(res["a_grad"], ga.grad[shard], atol=1e-6, rtol=1e-5)
        assert torch.allclose(res["b_grad"], gb.grad[shard], atol=1e-6, rtol=1e-5)
    total = sum(res["loss"] for res in results)
    assert torch.allclose(total, loss.detach(), rtol=1e-5)
    scale_grad = sum(res["scale_grad"] for res in results)
    assert torch.allclose(scale_grad, loss_fn.logit_scale.grad, rtol=1e-5, atol=1e-7)


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
