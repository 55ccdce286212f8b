"""Benchmark: the tiled InfoNCE's tile body, piece by piece (the evidence behind its design).

One tile of the fast body (``mmfuse.functional.contrastive._tiled``) is four matmuls (the
forward's logits, the backward's recomputed logits and the two gradient products) plus a few
elementwise passes over a (tile, tile) buffer. This script times each piece on ONE thread (each
worker of the tiled loss runs single-threaded), at several tile sizes, alternating the variants
within every repeat (medians):

- the matmuls' GFLOP/s at each tile size, against the same thread's large square ``torch.mm``;
- the exponential: ``exp`` against ``exp2`` of the logits with ``log2 e`` folded in (the
  library's choice), and the relative errors of both against float64 ``exp`` over [-40, 40];
- the elementwise work of the forward (exponential, diagonal, row and column sums) and of the
  backward (exponential, ``* (a_i + b_j)``, diagonal) in eager mode as the library runs it,
  and, with ``--compile``, as one ``torch.compile``-fused kernel each (Inductor, C++);
- the elementwise share of a tile: elementwise / (elementwise + four matmuls);

then the whole loss (forward + backward, 2 threads by default) at ``--batch`` with each tile
size, paired, against a matmul probe run before each repeat ("% of paired mm", as in
``benchmarks/contrastive.py``).

Run: ``python benchmarks/contrastive_tiles.py`` (``--compile`` adds the fused variants, about a
minute of compilation; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mmfuse.functional import info_nce

LOG2E = 1.0 / math.log(2.0)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def paired(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each variant, the variants alternated within every repeat."""
    for fn in variants.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for k, fn in variants.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def mm_rate(n: int, repeats: int) -> float:
    x, y = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(x, y, out=out)
    best = min(timed(lambda: torch.mm(x, y, out=out)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def exp_errors() -> tuple[float, float]:
    """Max relative errors of float32 ``exp2(x * log2 e)`` and of float32 ``exp(x)`` against
    float64 ``exp(x)``, x in [-40, 40] (x itself rounded to float32 in both)."""
    x = torch.linspace(-40, 40, 1_000_001, dtype=torch.float64).float()
    want = x.double().exp()
    return tuple(float(((got.double() - want) / want).abs().max())  # type: ignore[return-value]
                 for got in (torch.exp2(x * LOG2E), x.exp()))


def fused_bodies() -> tuple[Callable[..., object], Callable[..., object]]:
    def fwd(lt: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.arange(lt.shape[0])[:, None]
        j = torch.arange(lt.shape[1])[None, :]
        e = torch.where(j - i == d, 0.0, torch.exp2(lt))
        return e.sum(1), e.sum(0)

    def bwd(lt: torch.Tensor, a: torch.Tensor, b: torch.Tensor, d: int,
            out: torch.Tensor) -> torch.Tensor:
        i = torch.arange(lt.shape[0])[:, None]
        j = torch.arange(lt.shape[1])[None, :]
        return out.copy_(torch.where(j - i == d, 0.0, torch.exp2(lt) * (a[:, None] + b[None, :])))

    return (torch.compile(fwd, dynamic=True, fullgraph=True),
            torch.compile(bwd, dynamic=True, fullgraph=True))


def tile_table(tiles: list[int], dim: int, repeats: int, compiled: bool) -> None:
    torch.set_num_threads(1)
    peak = mm_rate(2048, 3)
    e2, e1 = exp_errors()
    print(f"one thread: float32 torch.mm (2048^3) {peak:.1f} GFLOP/s; against float64 exp(x) on "
          f"[-40, 40], max relative error of float32 exp2(x log2 e) {e2:.1e}, of float32 exp(x) "
          f"{e1:.1e}\n")
    fused = fused_bodies() if compiled else None
    head = ("| tile | logits mm GFLOP/s | e @ k | e.T @ q | exp ms | exp2 ms | fwd eager ms "
            "| bwd eager ms |" + (" fwd fused ms | bwd fused ms |" if fused else "")
            + " elementwise share |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    g = torch.Generator().manual_seed(0)
    for t in tiles:
        print(tile_row(t, dim, repeats, fused, g), flush=True)


def tile_row(t: int, dim: int, repeats: int, fused: tuple[Callable[..., object], ...] | None,
             g: torch.Generator) -> str:
    """One row of the tile table: the pieces of a (t, t) tile, timed paired."""
    q = F.normalize(torch.randn(t, dim, generator=g), dim=1) * (14 * LOG2E)
    k = F.normalize(torch.randn(t, dim, generator=g), dim=1)
    lt = q @ k.t()
    e, ab, dq = torch.empty(t, t), torch.empty(t, t), torch.zeros(t, dim)
    a, b = torch.rand(t, generator=g), torch.rand(t, generator=g)
    acc_r, acc_c = torch.zeros(t, dtype=torch.float64), torch.zeros(t, dtype=torch.float64)

    def fwd_eager() -> None:
        e.copy_(lt).exp2_()
        e.diagonal().zero_()
        acc_r.add_(e.sum(1))
        acc_c.add_(e.sum(0))

    def bwd_eager() -> None:
        e.copy_(lt).exp2_()
        e.mul_(torch.add(a[:, None], b[None, :], out=ab))
        e.diagonal().zero_()

    variants: dict[str, Callable[[], object]] = {
        "mm": lambda: torch.mm(q, k.t(), out=e),
        "ek": lambda: dq.addmm_(e, k),
        "etq": lambda: dq.addmm_(e.t(), q),
        "exp": lambda: torch.exp(lt, out=e),
        "exp2": lambda: torch.exp2(lt, out=e),
        "copy": lambda: e.copy_(lt),
        "fwd": fwd_eager,
        "bwd": bwd_eager,
    }
    if fused:
        variants["fwd_fused"] = lambda: fused[0](lt, 0)
        variants["bwd_fused"] = lambda: fused[1](lt, a, b, 0, e)
    m = paired(variants, repeats)
    flops = 2 * t * t * dim
    # the eager bodies' copy from the saved logits stands in for the matmul's output
    fwd_ms, bwd_ms = (m["fwd"] - m["copy"]) * 1e3, (m["bwd"] - m["copy"]) * 1e3
    mats = (2 * m["mm"] + m["ek"] + m["etq"]) * 1e3
    share = (fwd_ms + bwd_ms) / (fwd_ms + bwd_ms + mats)
    row = (f"| {t} | {flops / m['mm'] / 1e9:.1f} | {flops / m['ek'] / 1e9:.1f} "
           f"| {flops / m['etq'] / 1e9:.1f} | {m['exp'] * 1e3:.3f} | {m['exp2'] * 1e3:.3f} "
           f"| {fwd_ms:.3f} | {bwd_ms:.3f} |")
    if fused:
        row += f" {m['fwd_fused'] * 1e3:.3f} | {m['bwd_fused'] * 1e3:.3f} |"
    return row + f" {100 * share:.1f}% |"


def loss_table(batch: int, dim: int, tiles: list[int], threads: int, repeats: int) -> None:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(batch, dim, generator=g), dim=1).requires_grad_()
    b = F.normalize(torch.randn(batch, dim, generator=g), dim=1).requires_grad_()
    scale = torch.tensor(14.0, requires_grad=True)

    def step(tile: int) -> None:
        a.grad = b.grad = scale.grad = None
        info_nce(a, b, temperature=scale.reciprocal(), normalize=False,
                 chunk_size=tile).backward()

    for t in tiles:
        step(t)
    times: dict[int, list[float]] = {t: [] for t in tiles}
    probes: list[float] = []
    for _ in range(repeats):
        probes.append(mm_rate(2048, 2))
        for t in tiles:
            times[t].append(timed(lambda t=t: step(t)))
    print(f"\nwhole loss, B={batch}, D={dim}, {threads} thread(s), median of {repeats}; probe "
          f"(2048^3 torch.mm before each repeat) median {statistics.median(probes):.1f} GFLOP/s")
    print("\n| tile | time (s) | % of paired mm |")
    print("|---|---|---|")
    for t in tiles:
        eff = statistics.median(6 * batch**2 * dim / x / 1e9 / r for x, r in zip(times[t], probes))
        print(f"| {t} | {statistics.median(times[t]):.3f} | {100 * eff:.0f}% |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiles", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--threads", type=int, default=2, help="threads of the whole-loss runs")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="add torch.compile-fused bodies")
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    args = p.parse_args()
    if args.quick:
        args.tiles, args.batch = [128, 256], 1024
    repeats = args.repeats or (3 if args.quick else 15)
    print(f"torch {torch.__version__}, float32, D={args.dim}")
    tile_table(args.tiles, args.dim, repeats, args.compile)
    loss_table(args.batch, args.dim, args.tiles, args.threads, max(3, repeats // 3))


if __name__ == "__main__":
    main()
