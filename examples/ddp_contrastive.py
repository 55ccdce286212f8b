"""Contrastive training across processes with DistributedDataParallel and a gathered InfoNCE.

Two small MLP encoders learn to match the left and the right half of scikit-learn's handwritten
digit images (8x8; shipped with scikit-learn, nothing is downloaded): a pair is the two halves
of one image. The loss is ``InfoNCELoss(gather=True, grad_reduction="mean")``: every rank
gathers the embeddings of all ranks, so each anchor sees the whole global batch as negatives,
and ``grad_reduction="mean"`` makes DDP's gradient averaging give exactly the single-process
gradient on the concatenated batch. The training loop holds no arithmetic for the world size.

Each global batch (the same on every rank: one seeded permutation) is split across the ranks
in rank order with ``tensor_split``, so the ranks' batches concatenate to the single-process
batch; in the last, smaller batch the ranks hold different numbers of rows (one may hold none),
which the gathered loss handles. No sample is repeated or dropped (unlike ``DistributedSampler``,
which pads with repeats by default).

Run:
    torchrun --nproc_per_node 2 examples/ddp_contrastive.py    # gloo on CPU, NCCL on GPUs
    python examples/ddp_contrastive.py                         # one process, same result

``--save PATH`` writes the per-step losses and the final parameters (rank 0), which is how the
tests compare a 2-process run with a single-process one. See docs/scaling.md.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from mmfuse.alignment import InfoNCELoss
from mmfuse.metrics import retrieval_metrics


class Pair(nn.Module):
    """Two encoders and the loss; the loss's learnable temperature is a parameter of the pair,
    so DDP averages its gradient like the encoders'."""

    def __init__(self, dim: int = 32, hidden: int = 64, *, grad_reduction: str = "mean") -> None:
        super().__init__()
        self.left = nn.Sequential(nn.Linear(32, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.right = nn.Sequential(nn.Linear(32, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.loss = InfoNCELoss(temperature=0.1, gather=True, grad_reduction=grad_reduction)

    def forward(self, left: Tensor, right: Tensor) -> Tensor:
        return self.loss(self.left(left), self.right(right))


def digits_halves(seed: int, train_size: int | None) -> tuple[Tensor, ...]:
    """(train left, train right, test left, test right, test labels): image halves in [0, 1]."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images, dtype=torch.float32).view(-1, 8, 8) / 16.0  # (N, 8, 8)
    y = torch.tensor(labels)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    test = len(y) // 5
    left, right = x[:, :, :4].flatten(1), x[:, :, 4:].flatten(1)  # (N, 32) each
    n = len(y) - test if train_size is None else min(train_size, len(y) - test)
    return left[test:test + n], right[test:test + n], left[:test], right[:test], y[:test]


def setup() -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (rank, world size, device); one process
    without torchrun."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cpu")
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return dist.get_rank(), dist.get_world_size(), torch.device("cuda", local)
    dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), torch.device("cpu")


def train(args: argparse.Namespace) -> None:
    rank, world, device = setup()
    torch.set_num_threads(1)
    left, right, test_left, test_right, test_labels = digits_halves(args.seed, args.train_size)
    torch.manual_seed(args.seed)  # the same initial parameters on every rank
    model = Pair(grad_reduction=args.grad_reduction).to(device)
    net: nn.Module = DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    order_gen = torch.Generator().manual_seed(args.seed + 1)
    losses: list[float] = []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(len(left), generator=order_gen)  # the same on every rank
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size].tensor_split(world)[rank]  # this rank's rows
            loss = net(left[idx].to(device), right[idx].to(device))
            opt.zero_grad()
            loss.backward()  # DDP averages; grad_reduction="mean" makes that the full gradient
            opt.step()
            losses.append(float(loss.detach()))  # the global batch's loss, on every rank
        if rank == 0:
            print(f"epoch {epoch + 1}: loss {losses[-1]:.4f}", flush=True)
    if rank == 0:
        model.eval()
        with torch.no_grad():
            a, b = model.left(test_left.to(device)), model.right(test_right.to(device))
        r = retrieval_metrics(a.cpu(), b.cpu(), ks=(1, 5))  # the same image's other half
        print(f"{world} process(es), {args.epochs} epochs, {len(left)} training images: test "
              f"left -> right R@1 {r['R@1']:.3f}, R@5 {r['R@5']:.3f} "
              f"({len(test_labels)} candidates; {time.perf_counter() - start:.1f} s)")
        if args.save is not None:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            torch.save({"losses": losses, "state": state, "world": world}, args.save)
    if world > 1:
        # leave together, and let DDP's reducer drop its hold on the group first, so the group
        # is torn down here, on every rank at once, not while a peer still evaluates or at exit
        dist.barrier()
        del net
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch (all ranks)")
    parser.add_argument("--train-size", type=int, default=None, help="training images (all)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grad-reduction", choices=("mean", "sum"), default="mean",
                        help="InfoNCELoss(grad_reduction=...); 'mean' is right under DDP")
    parser.add_argument("--save", type=Path, default=None, help="write losses and parameters")
    train(parser.parse_args())


if __name__ == "__main__":
    main()
