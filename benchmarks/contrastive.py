"""Benchmark: tiled InfoNCE against the seed's naive loss and an open_clip-style loss.

Paired in one process, D=256, float32, 2 threads: the forward and backward of

- ``tiled``: :func:`mmfuse.functional.info_nce` on its tiled path (1024 x 1024 tiles);
- ``seed``: the source document's formulation, one (B, B) matmul and two cross-entropies;
- ``open_clip``: open_clip's ClipLoss formulation, written here: two matmuls
  (``s * a @ b.T`` and ``s * b @ a.T``) and two cross-entropies.

All three use the same already-normalised inputs, a scalar scale with a gradient, and the same
useful work, 6 * B^2 * D FLOPs (one forward and two backward matmuls). Time is the median over
repeats; peak memory is the growth of the resident set (VmHWM - VmRSS before the call) of a
fresh subprocess that runs one forward and backward; "% peak" is 6 B^2 D / time against the
float32 matmul rate measured in the same run with a large ``torch.mm``. A baseline whose logits
would not fit in the free memory is skipped and reported as such.

Run: ``python benchmarks/contrastive.py`` (``--quick`` for small sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mmfuse.functional import info_nce

IMPLS = ("tiled", "seed", "open_clip")


def loss_tiled(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, tile: int) -> torch.Tensor:
    return info_nce(a, b, temperature=scale.reciprocal(), normalize=False, chunk_size=tile)


def loss_seed(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, tile: int) -> torch.Tensor:
    sim = torch.matmul(a, b.T) / scale.reciprocal()  # [B, B]
    labels = torch.arange(len(a))
    return (F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels)) / 2


def loss_open_clip(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
                   tile: int) -> torch.Tensor:
    logits_per_image = scale * a @ b.T
    logits_per_text = scale * b @ a.T
    labels = torch.arange(len(a))
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "tiled": loss_tiled, "seed": loss_seed, "open_clip": loss_open_clip,
}


def inputs(batch: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(batch, dim, generator=g), dim=1)
    b = F.normalize(a + torch.randn(batch, dim, generator=g), dim=1)
    scale = torch.tensor(14.0)
    return a.requires_grad_(), b.requires_grad_(), scale.requires_grad_()


def step(impl: str, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, tile: int) -> float:
    a.grad = b.grad = scale.grad = None
    t0 = time.perf_counter()
    LOSSES[impl](a, b, scale, tile).backward()
    return time.perf_counter() - t0


def baseline_bytes(impl: str, batch: int) -> int:
    """A lower bound of what a dense baseline holds at its peak: several (B, B) float32s."""
    return 0 if impl == "tiled" else 4 * batch * batch * 4


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key)


def measure_memory_child(impl: str, batch: int, dim: int, threads: int, tile: int) -> None:
    """Run in a fresh process: print the peak RSS growth of one forward + backward."""
    torch.set_num_threads(threads)
    a, b, scale = inputs(batch, dim)
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
        f.write("5")
    LOSSES[impl](a, b, scale, tile).backward()
    print(json.dumps({"growth": _status("VmHWM") - before}))


def measure_memory(impl: str, batch: int, dim: int, threads: int, tile: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", impl, str(batch), str(dim), str(threads), str(tile)],
        check=True, capture_output=True, text=True, env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["growth"] / 2**20


def matmul_peak(n: int, repeats: int) -> float:
    """float32 GFLOP/s of a large square torch.mm: the best of ``repeats`` (a peak)."""
    x, y = torch.randn(n, n), torch.randn(n, n)
    torch.mm(x, y)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(x, y)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    p.add_argument("--sizes", type=int, nargs="*", default=None)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        impl, batch, dim, threads, tile = args.child
        measure_memory_child(impl, int(batch), int(dim), int(threads), int(tile))
        return
    torch.set_num_threads(args.threads)
    sizes = args.sizes or ([512, 1024, 2048] if args.quick else [1024, 4096, 16384, 32768])
    repeats = args.repeats or (1 if args.quick else 3)
    peak_n, peak_repeats = (1024, 3) if args.quick else (4096, 5)
    peak = matmul_peak(peak_n, peak_repeats)
    print(f"float32 torch.mm ({peak_n}^3) at the start: {peak:.1f} GFLOP/s ({args.threads} "
          f"threads); D={args.dim}, tile={args.tile}, median of {repeats} after a warm-up\n",
          flush=True)
    results: list[tuple[int, str, tuple[float, float] | None, tuple[float, float] | None]] = []
    for batch in sizes:
        a, b, scale = inputs(batch, args.dim)
        rows: dict[str, tuple[float, float] | None] = {}
        for impl in IMPLS:
            if baseline_bytes(impl, batch) > available_bytes() // 2:
                rows[impl] = None
                continue
            step(impl, a, b, scale, args.tile)  # warm-up
            t = statistics.median(step(impl, a, b, scale, args.tile) for _ in range(repeats))
            mem = measure_memory(impl, batch, args.dim, args.threads, args.tile)
            rows[impl] = (t, mem)
            print(f"  B={batch} {impl}: {t:.3f} s, {mem:.0f} MB", flush=True)
        for impl in IMPLS:
            results.append((batch, impl, rows[impl], rows["open_clip"]))
    # the peak again at the end: the best of both, so that "% of mm peak" is not inflated by a
    # slow moment at the start
    end_peak = matmul_peak(peak_n, peak_repeats)
    peak = max(peak, end_peak)
    print(f"float32 torch.mm at the end: {end_peak:.1f} GFLOP/s; peak used: {peak:.1f}\n")
    print("| B | loss | time (s) | time / open_clip | peak RSS growth (MB) | memory / open_clip "
          "| % of mm peak |")
    print("|---|---|---|---|---|---|---|")
    for batch, impl, row, ref in results:
        if row is None:
            need = baseline_bytes(impl, batch) / 2**30
            print(f"| {batch} | {impl} | skipped: needs > {need:.0f} GB | | | | |")
            continue
        t, mem = row
        t_ratio = f"{t / ref[0]:.2f}x" if ref else "-"
        m_ratio = f"{100 * mem / ref[1]:.1f}%" if ref and ref[1] > 0 else "-"
        eff = 100 * 6 * batch**2 * args.dim / t / 1e9 / peak
        print(f"| {batch} | {impl} | {t:.3f} | {t_ratio} | {mem:.0f} | {m_ratio} | {eff:.0f}% |")


if __name__ == "__main__":
    main()
