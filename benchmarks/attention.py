"""SpatioTemporalAttention's core (fused SDPA) against the naive einsum/softmax formulation.

Paired in one process, alternating the two per repeat: B=4 videos, L=32 text tokens,
D=256, 8 heads, (T, H, W) in {(8, 14, 14), (16, 14, 14), (32, 14, 14)}. For each size it
reports the median time of training (forward + backward) and inference (no_grad forward),
the extra memory of one inference (peak allocation above the inputs, from the profiler's
memory events, output included), and which kernel ran (torch.profiler). A second table times
the whole layer (projections included) the same way.

The "floor" columns bound what any exact kernel could reach on the machine that runs the
script: the core's matrix-multiply FLOPs (2 products forward, at least 4 more backward) at the
fp32 rate of a large square matmul measured in the same process, divided by the naive time.
A ratio target below its floor cannot be met by a faster kernel, only by a faster machine.

On CUDA (``--device cuda``, ``--dtype bfloat16`` for half precision) the times are taken
after a synchronisation and the extra memory is ``torch.cuda.max_memory_allocated`` above the
level before the inference.

Run:
    OMP_NUM_THREADS=1 python benchmarks/attention.py [--repeats 5] [--threads 1]
    python benchmarks/attention.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from mmfuse.alignment import SpatioTemporalAttention
from mmfuse.functional import masked_attention

B, L, D, HEADS = 4, 32, 256, 8
SIZES = [(8, 14, 14), (16, 14, 14), (32, 14, 14)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE, DTYPE = torch.device("cpu"), torch.float32  # set by main()


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def naive_core(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The formulation the source document sketches, made correct: explicit scores."""
    scores = torch.einsum("bhld,bhnd->bhln", q, k) * q.shape[-1] ** -0.5  # (B, h, L, N)
    return torch.einsum("bhln,bhnd->bhld", scores.softmax(dim=-1), v)  # (B, h, L, d)


def fused_core(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return masked_attention(q, k, v)[0]


def naive_layer(m: SpatioTemporalAttention, video: Tensor, text: Tensor) -> Tensor:
    """The module's own projections around the naive core."""
    b, t, h, w, dv = video.shape
    tokens = video.reshape(b, t * h * w, dv)
    q = m._heads(m.q_proj(text))
    k, v = m._heads(m.k_proj(tokens)), m._heads(m.v_proj(tokens))
    return m.out_proj(naive_core(q, k, v).transpose(1, 2).flatten(2))


def median_time(fn: Callable[[], object]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def paired(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(median_time(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def extra_memory(fn: Callable[[], object]) -> float:
    """Peak bytes allocated above the level before ``fn`` ran (no_grad), in MiB."""
    if DEVICE.type == "cuda":
        sync()
        before = torch.cuda.memory_allocated(DEVICE)
        torch.cuda.reset_peak_memory_stats(DEVICE)
        with torch.no_grad():
            fn()
        sync()
        return (torch.cuda.max_memory_allocated(DEVICE) - before) / 2**20
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = [e for e in json.load(f)["traceEvents"] if e.get("name") == "[memory]"]
    level = peak = 0
    for e in sorted(events, key=lambda e: e["ts"]):
        level += e["args"]["Bytes"]
        peak = max(peak, level)
    return peak / 2**20


def kernels(fn: Callable[[], Tensor]) -> list[str]:
    """Attention kernels that ran in a forward + backward."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]
                 if torch.cuda.is_available() else [ProfilerActivity.CPU]) as prof:
        fn().sum().backward()
    names = {e.key for e in prof.key_averages()}
    return sorted(n for n in names if "attention" in n.lower() and "aten::scaled" not in n)


def gemm_rate(repeats: int, size: int = 2048) -> float:
    """FLOP/s of one large square matmul here (the benchmark's device and dtype): an upper
    bound on attention's matmuls."""
    a = torch.randn(size, size, device=DEVICE, dtype=DTYPE)
    b = torch.randn(size, size, device=DEVICE, dtype=DTYPE)
    return 2 * size**3 / paired({"mm": lambda: a @ b}, repeats)["mm"]


def core_row(t: int, h: int, w: int, repeats: int, rate: float) -> tuple[str, list[str]]:
    n, d = t * h * w, D // HEADS
    product = 2 * B * HEADS * L * n * d  # FLOPs of one (B, h, L, N) matmul
    floor_infer = 2 * product / rate  # scores and weighted sum
    floor_train = 6 * product / rate  # + dV, dP, dQ, dK (a flash kernel recomputes a 7th)
    dd = {"device": DEVICE, "dtype": DTYPE}
    q = torch.randn(B, HEADS, L, d, **dd, requires_grad=True)
    k = torch.randn(B, HEADS, n, d, **dd, requires_grad=True)
    v = torch.randn(B, HEADS, n, d, **dd, requires_grad=True)

    def train(core: Callable[..., Tensor]) -> Callable[[], None]:
        def step() -> None:
            core(q, k, v).sum().backward()
            q.grad = k.grad = v.grad = None
        return step

    def infer(core: Callable[..., Tensor]) -> Callable[[], Tensor]:
        def step() -> Tensor:
            with torch.no_grad():
                return core(q, k, v)
        return step

    tr = paired({"naive": train(naive_core), "fused": train(fused_core)}, repeats)
    inf = paired({"naive": infer(naive_core), "fused": infer(fused_core)}, repeats)
    mem = {"naive": extra_memory(infer(naive_core)), "fused": extra_memory(infer(fused_core))}
    row = (f"| ({t}, {h}, {w}) | {n} | {tr['naive'] * 1e3:.1f} | {tr['fused'] * 1e3:.1f} "
           f"| {tr['fused'] / tr['naive']:.2f} | {inf['naive'] * 1e3:.1f} "
           f"| {inf['fused'] * 1e3:.1f} | {inf['fused'] / inf['naive']:.2f} "
           f"| {floor_train / tr['naive']:.2f} | {floor_infer / inf['naive']:.2f} "
           f"| {mem['naive']:.1f} | {mem['fused']:.2f} |")
    return row, kernels(lambda: fused_core(q, k, v))


def layer_row(m: SpatioTemporalAttention, t: int, h: int, w: int, repeats: int) -> str:
    video = torch.randn(B, t, h, w, D, device=DEVICE, dtype=DTYPE)
    text = torch.randn(B, L, D, device=DEVICE, dtype=DTYPE)

    def naive_fn() -> Tensor:
        return naive_layer(m, video, text)

    def module_fn() -> Tensor:
        return m(video, text)

    def train(fn: Callable[[], Tensor]) -> Callable[[], None]:
        def step() -> None:
            fn().sum().backward()
            m.zero_grad(set_to_none=True)
        return step

    def infer(fn: Callable[[], Tensor]) -> Callable[[], Tensor]:
        def step() -> Tensor:
            with torch.no_grad():
                return fn()
        return step

    tr = paired({"naive": train(naive_fn), "fused": train(module_fn)}, repeats)
    inf = paired({"naive": infer(naive_fn), "fused": infer(module_fn)}, repeats)
    return (f"| ({t}, {h}, {w}) | {tr['naive'] * 1e3:.1f} | {tr['fused'] * 1e3:.1f} "
            f"| {tr['fused'] / tr['naive']:.2f} | {inf['naive'] * 1e3:.1f} "
            f"| {inf['fused'] * 1e3:.1f} | {inf['fused'] / inf['naive']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-layer", action="store_true", help="only the attention core")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    args = parser.parse_args()
    global DEVICE, DTYPE
    DEVICE, DTYPE = torch.device(args.device), DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.dtype}, "
          f"{DEVICE}, "
          f"B={B}, L={L}, D={D}, heads={HEADS}, median of {args.repeats}\n")
    rate = gemm_rate(args.repeats)
    print(f"{args.dtype} matmul rate (2048^3, median of {args.repeats}): "
          f"{rate / 1e9:.0f} GFLOP/s\n")
    print("Attention core (q, k, v given):\n")
    print("| (T, H, W) | N | train naive ms | train fused ms | ratio | infer naive ms "
          "| infer fused ms | ratio | train floor | infer floor | infer extra MiB naive "
          "| fused |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    kernel_names: list[str] = []
    for t, h, w in SIZES:
        row, kernel_names = core_row(t, h, w, args.repeats, rate)
        print(row, flush=True)
    print(f"\nkernels in the fused forward + backward: {', '.join(kernel_names)}\n")
    if args.skip_layer:
        return
    print("Whole layer (projections included; video Dv = D), median of "
          f"{max(1, args.repeats // 2)}:\n")
    print("| (T, H, W) | train naive ms | train module ms | ratio | infer naive ms "
          "| infer module ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    m = SpatioTemporalAttention(D, HEADS, device=DEVICE, dtype=DTYPE)
    for t, h, w in SIZES:
        print(layer_row(m, t, h, w, max(1, args.repeats // 2)), flush=True)


if __name__ == "__main__":
    main()
