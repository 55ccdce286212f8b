"""Benchmark: tiled InfoNCE against the seed's naive loss and an open_clip-style loss.

Paired in one process, D=256 (``--dim``), float32 (``--dtype``), 2 threads (``--threads``): the
forward and backward of

- ``tiled``: :func:`mmfuse.functional.info_nce` on its tiled path (``--tile``, default
  ``"auto"``: the size the library picks from B, D and the thread count);
- ``seed``: the source document's formulation, one (B, B) matmul and two cross-entropies;
- ``open_clip``: open_clip's ClipLoss formulation, written here: two matmuls
  (``s * a @ b.T`` and ``s * b @ a.T``) and two cross-entropies.

All three use the same already-normalised inputs, a scalar scale with a gradient, and the same
useful work, 6 * B^2 * D FLOPs (one forward and two backward matmuls). Each repeat runs the
three in turn (after one warm-up each); times are medians, "time / open_clip" the median of
the per-repeat ratios. "% of mm peak" is 6 B^2 D / time against the float32 matmul rate
(the best large ``torch.mm`` measured at the start and the end of the same run, before any
background load). "% of paired mm" is the same ratio taken per repeat against a matmul probe
(the best of as many large ``torch.mm`` as each of the two peak measurements) run just
before that repeat, under the same load, then the
median: a shared machine's speed drifts by tens of percent within minutes, which the
start-and-end peak does not follow.

Memory (CPU): the peak growth of the resident set of a fresh subprocess over one forward and
backward (``/proc/self/status``: VmHWM after the step, the high-water mark reset through
``/proc/self/clear_refs`` once the inputs exist, minus VmRSS at that moment), given with and
without the bytes of the inputs' gradients (``loss memory`` = growth - gradients: what the
loss itself holds). CUDA: ``torch.cuda.max_memory_allocated`` over the step, the same way.
A baseline whose logits would not fit in half the free memory is skipped.

``--load N`` runs the comparison while N background processes each run a 2-thread
``torch.mm`` loop (started before the first timing, stopped after the last, killed on exit or
error, and each bounded by ``--load-seconds`` and by its parent's life). ``--sizes`` above
32768 (e.g. 131072) time ONE training step of the tiled loss only (in the memory subprocess:
time and memory from the same step) and compare it with the FLOP floor, 6 B^2 D at the
measured matmul rate.

Run: ``python benchmarks/contrastive.py`` (``--quick`` for small sizes; ``--load 2``;
``--sizes 131072``; ``--device cuda --dtype bfloat16``; ``--impls tiled open_clip`` to leave
out the slow seed formulation).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from mmfuse.functional import info_nce

IMPLS = ("tiled", "seed", "open_clip")
ONE_STEP_ABOVE = 32768  # larger sizes: one step of the tiled loss only
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def loss_tiled(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
               tile: int | str) -> torch.Tensor:
    return info_nce(a, b, temperature=scale.reciprocal(), normalize=False, chunk_size=tile)


def loss_seed(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
              tile: int | str) -> torch.Tensor:
    sim = torch.matmul(a, b.T) / scale.reciprocal()  # [B, B]
    labels = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels)) / 2


def loss_open_clip(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
                   tile: int | str) -> torch.Tensor:
    logits_per_image = scale * a @ b.T
    logits_per_text = scale * b @ a.T
    labels = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "tiled": loss_tiled, "seed": loss_seed, "open_clip": loss_open_clip,
}


def inputs(batch: int, dim: int, dtype: torch.dtype, device: str,
           seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(batch, dim, generator=g), dim=1)
    b = F.normalize(a + torch.randn(batch, dim, generator=g), dim=1)
    a, b = a.to(device, dtype), b.to(device, dtype)
    scale = torch.tensor(14.0, device=device)
    return a.requires_grad_(), b.requires_grad_(), scale.requires_grad_()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step(impl: str, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
         tile: int | str) -> float:
    a.grad = b.grad = scale.grad = None
    sync(str(a.device))
    t0 = time.perf_counter()
    LOSSES[impl](a, b, scale, tile).backward()
    sync(str(a.device))
    return time.perf_counter() - t0


def baseline_bytes(impl: str, batch: int, dtype: torch.dtype) -> int:
    """A lower bound of what a dense baseline holds at its peak: several (B, B) logits."""
    return 0 if impl == "tiled" else 4 * batch * batch * torch.finfo(dtype).bits // 8


def available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
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


def measure_child(impl: str, batch: int, dim: int, threads: int, tile: int | str, dtype: str,
                  device: str) -> None:
    """Run in a fresh process: one forward + backward; print its time and peak memory growth
    (and the bytes of the inputs' gradients, which the growth includes)."""
    torch.set_num_threads(threads)
    a, b, scale = inputs(batch, dim, DTYPES[dtype], device)
    grad_bytes = 2 * a.numel() * a.element_size()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the RSS now
            f.write("5")
    t0 = time.perf_counter()
    LOSSES[impl](a, b, scale, tile).backward()
    sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else _status("VmHWM")
    print(json.dumps({"growth": peak - before, "grads": grad_bytes, "seconds": seconds}))


def measure(impl: str, batch: int, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    child = [impl, str(batch), str(args.dim), str(args.threads), str(args.tile), args.dtype,
             args.device]
    out = subprocess.run([sys.executable, __file__, "--child", *child],
                         check=True, capture_output=True, text=True, env=env)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return {"growth": res["growth"] / 2**20, "loss": (res["growth"] - res["grads"]) / 2**20,
            "seconds": res["seconds"]}


def matmul_peak(n: int, repeats: int, dtype: torch.dtype, device: str) -> float:
    """GFLOP/s of a large square torch.mm in ``dtype``: the best of ``repeats`` (a peak)."""
    x = torch.randn(n, n, device=device).to(dtype)
    y = torch.randn(n, n, device=device).to(dtype)
    torch.mm(x, y)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(x, y)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9


# ----------------------------------------------------------------------------- background load


def burn(seconds: float, parent: int) -> None:
    """A background load: a 2-thread float32 matmul loop, until ``seconds`` have passed or the
    parent process is gone."""
    torch.set_num_threads(2)
    x, y = torch.randn(1024, 1024), torch.randn(1024, 1024)
    end = time.monotonic() + seconds
    while time.monotonic() < end and os.getppid() == parent:
        torch.mm(x, y)


@contextmanager
def background_load(n: int, seconds: float) -> Iterator[None]:
    """``n`` burn processes for the duration of the block; terminated on exit (also on error,
    on SIGTERM, and at interpreter exit should the block be left abnormally)."""
    procs: list[subprocess.Popen[bytes]] = []

    def stop() -> None:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    atexit.register(stop)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    try:
        for _ in range(n):
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--burn", str(seconds), str(os.getpid())], env=env))
        time.sleep(1.0 if n else 0.0)  # let them start their loops
        yield
    finally:
        stop()
        atexit.unregister(stop)
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- main


Row = tuple[int, str, float | None, float | None, dict[str, float] | None, float | None]


def compare(sizes: list[int], args: argparse.Namespace, repeats: int) -> list[Row]:
    """Time every formulation at every size, paired (each repeat runs them in turn)."""
    dtype = DTYPES[args.dtype]
    rows: list[Row] = []
    for batch in sizes:
        a, b, scale = inputs(batch, args.dim, dtype, args.device)
        impls = [i for i in args.impls
                 if baseline_bytes(i, batch, dtype) <= available_bytes(args.device) // 2]
        for impl in impls:
            step(impl, a, b, scale, args.tile)  # warm-up
        times: dict[str, list[float]] = {i: [] for i in impls}
        probe: list[float] = []  # GFLOP/s of the matmul probe run just before each repeat
        for _ in range(repeats):
            probe.append(matmul_peak(args.probe_n, args.probe_repeats, dtype, args.device))
            for impl in impls:
                times[impl].append(step(impl, a, b, scale, args.tile))
        for impl in args.impls:
            if impl not in impls:
                rows.append((batch, impl, None, None, None, None))
                continue
            t = statistics.median(times[impl])
            ratio = (statistics.median(x / y for x, y in zip(times[impl], times["open_clip"]))
                     if "open_clip" in impls else None)
            # the paired efficiency: each repeat's useful FLOP rate against the probe of the
            # same repeat, then the median (robust to the machine's speed drifting in a run)
            paired = statistics.median(6 * batch**2 * args.dim / x / 1e9 / r
                                       for x, r in zip(times[impl], probe))
            mem = None if args.no_memory else measure(impl, batch, args)
            rows.append((batch, impl, t, ratio, mem, paired))
            shown = "" if mem is None else f", {mem['growth']:.0f} MB"
            print(f"  B={batch} {impl}: {t:.3f} s{shown}", flush=True)
        del a, b, scale
    return rows


def table(rows: list[Row], args: argparse.Namespace, peak: float) -> None:
    dtype = DTYPES[args.dtype]
    mem_ref = {(b, i): m for b, i, _, _, m, _ in rows}
    print("\n| B | loss | time (s) | time / open_clip | peak growth (MB) | loss memory (MB) "
          "| memory / open_clip | % of mm peak | % of paired mm |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch, impl, t, ratio, mem, paired in rows:
        if t is None:
            need = baseline_bytes(impl, batch, dtype) / 2**30
            print(f"| {batch} | {impl} | skipped: needs > {need:.0f} GB | | | | | | |")
            continue
        ref = mem_ref.get((batch, "open_clip"))
        growth = "-" if mem is None else f"{mem['growth']:.0f}"
        loss_mem = "-" if mem is None else f"{mem['loss']:.0f}"
        m_ratio = (f"{100 * mem['growth'] / ref['growth']:.1f}%"
                   if mem is not None and ref and ref["growth"] > 0 else "-")
        t_ratio = "-" if ratio is None else f"{ratio:.2f}x"
        eff = 100 * 6 * batch**2 * args.dim / t / 1e9 / peak
        pe = "-" if paired is None else f"{100 * paired:.0f}%"
        print(f"| {batch} | {impl} | {t:.3f} | {t_ratio} | {growth} | {loss_mem} | {m_ratio} "
              f"| {eff:.0f}% | {pe} |")


def one_step(batch: int, args: argparse.Namespace, peak: float, before: float) -> None:
    """One exact training step of the tiled loss, timed and measured in a fresh process;
    ``before``: the matmul rate measured right before it."""
    print(f"B={batch}, D={args.dim}: one forward + backward of the tiled loss "
          f"(a fresh process; this takes a while)...", flush=True)
    mem = measure("tiled", batch, args)
    after = matmul_peak(args.probe_n, args.probe_repeats, DTYPES[args.dtype], args.device)
    flops = 6 * batch**2 * args.dim
    print(f"{args.dtype} torch.mm right after the step: {after:.1f} GFLOP/s; the floor uses "
          f"the best rate of the run, {max(peak, after):.1f}; time / floor at the rate right "
          f"before the step ({before:.1f}): {mem['seconds'] * before * 1e9 / flops:.2f}x, "
          f"right after: {mem['seconds'] * after * 1e9 / flops:.2f}x")
    peak = max(peak, after)
    floor = flops / (peak * 1e9)
    print("\n| B | time (s) | FLOP floor (s) | time / floor | % of mm peak | peak growth (MB) "
          "| loss memory (MB) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {batch} | {mem['seconds']:.1f} | {floor:.1f} | {mem['seconds'] / floor:.2f}x "
          f"| {100 * floor / mem['seconds']:.0f}% | {mem['growth']:.0f} | {mem['loss']:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    p.add_argument("--sizes", type=int, nargs="*", default=None)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tile", default="auto", help='"auto" or an int')
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--load", type=int, default=0,
                   help="background processes running 2-thread matmul loops meanwhile")
    p.add_argument("--load-seconds", type=float, default=3600.0,
                   help="upper bound on each background process's life")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS),
                   help="formulations to compare (default: all three)")
    p.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    p.add_argument("--burn", nargs=2, type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.burn:
        burn(args.burn[0], int(args.burn[1]))
        return
    if args.child:
        impl, batch, dim, threads, tile, dtype, device = args.child
        measure_child(impl, int(batch), int(dim), int(threads),
                      tile if tile == "auto" else int(tile), dtype, device)
        return
    args.tile = args.tile if args.tile == "auto" else int(args.tile)
    torch.set_num_threads(args.threads)
    sizes = args.sizes or ([512, 1024, 2048] if args.quick else [1024, 4096, 16384, 32768])
    repeats = args.repeats or (1 if args.quick else 3)
    peak_n, peak_repeats = (1024, 3) if args.quick else (4096, 5)
    args.probe_n, args.probe_repeats = peak_n, peak_repeats  # each probe as the peak
    dtype = DTYPES[args.dtype]
    peak = matmul_peak(peak_n, peak_repeats, dtype, args.device)
    print(f"torch {torch.__version__}, {args.device}, {args.dtype}, {args.threads} threads, "
          f"D={args.dim}, tile={args.tile}, median of {repeats} after a warm-up, "
          f"{args.load} background 2-thread matmul loop(s)")
    print(f"{args.dtype} torch.mm ({peak_n}^3) at the start: {peak:.1f} GFLOP/s\n", flush=True)
    small = [s for s in sizes if s <= ONE_STEP_ABOVE]
    rows: list[Row] = []
    if small:
        with background_load(args.load, args.load_seconds):
            rows = compare(small, args, repeats)
    # the peak again at the end (without the load): the best of both, so that "% of mm peak"
    # is not inflated by a slow moment at the start
    end_peak = matmul_peak(peak_n, peak_repeats, dtype, args.device)
    peak = max(peak, end_peak)
    print(f"\n{args.dtype} torch.mm at the end: {end_peak:.1f} GFLOP/s; peak used: {peak:.1f}")
    if rows:
        table(rows, args, peak)
    with background_load(args.load, args.load_seconds):
        for batch in (s for s in sizes if s > ONE_STEP_ABOVE):
            one_step(batch, args, peak, before=end_peak)


if __name__ == "__main__":
    main()
