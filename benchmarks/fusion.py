"""Time the fusion modules against minimal hand-written PyTorch versions of the same math.

Each mmfuse module runs forward + backward beside a baseline that computes the same math
with the same parameters and no validation or presence handling (every modality present).
Runs alternate between the two in one process; the table reports medians and their ratio,
and, at B=32, the share of the module's time spent in its input validators alone.

    OMP_NUM_THREADS=1 python benchmarks/fusion.py            # B in {1, 32, 1024}
    OMP_NUM_THREADS=1 python benchmarks/fusion.py --repeats 9 --batches 32
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mmfuse._checks import check_features, check_mask, check_tensor
from mmfuse.fusion import (
    AttentionFusion,
    BilinearFusion,
    ConcatFusion,
    CrossAttentionFusion,
    DataLevelFusion,
    DecisionFusion,
    FiLMFusion,
    GatedFusion,
    LowRankTensorFusion,
    TensorFusion,
)

DIMS = {"image": 512, "text": 256, "audio": 128}
SMALL = {"image": 32, "text": 16, "audio": 8}  # TensorFusion: prod(D_m + 1) = 5049
LENGTHS = {"image": 16, "text": 12, "audio": 8}
TOKEN_DIMS = {"image": 128, "text": 96, "audio": 64}
OUT = 256
CLASSES = 10
FRAMES, GRID, FREQ, STEPS = 8, 16, 32, 64  # DataLevelFusion: (B, 8, 3, 16, 16), (B, 32, 64)


# ----------------------------------------------------------------------------- baselines


def lin(x: Tensor, layer) -> Tensor:
    # F.linear, as the modules' nn.Linear: the ratio then measures the modules' own work, not
    # addmm against matmul-then-add (which differ by up to 2x on CPU for some shapes).
    return F.linear(x, layer.weight, layer.bias)


def base_concat(f: ConcatFusion, x: dict[str, Tensor]) -> Tensor:
    return lin(torch.cat([x[m] for m in DIMS], -1), f.proj)


def base_decision(f: DecisionFusion, p: dict[str, Tensor]) -> Tensor:
    w = torch.softmax(f.weight_logits, 0)  # (M,)
    return torch.einsum("m,mbc->bc", w, torch.stack([p[m] for m in f.modalities]))


def base_data_level(f: DataLevelFusion, frames: Tensor, frame_times: Tensor, spec: Tensor,
                    spec_times: Tensor) -> Tensor:
    idx = (frame_times[:, None] - spec_times[None, :]).abs().argmin(-1)  # (T,) nearest step
    audio = lin(spec[:, :, idx].transpose(1, 2), f.proj)  # (B, T, k)
    b, t, _, h, w = frames.shape
    grid = audio[..., None, None].expand(b, t, audio.shape[-1], h, w)
    return torch.cat([frames, grid], 2)  # (B, T, C + k, H, W)


def base_attention(f: AttentionFusion, x: dict[str, Tensor]) -> Tensor:
    v = torch.stack([lin(x[m], f.proj[m]) for m in DIMS], 1)
    a = torch.softmax(v @ f.score.weight[0], dim=1)
    return (a[..., None] * v).sum(1)


def base_gated(f: GatedFusion, x: dict[str, Tensor]) -> Tensor:
    h = torch.stack([torch.tanh(lin(x[m], f.proj[m])) for m in DIMS], 1)
    g = lin(torch.cat([x[m] for m in DIMS], -1), f.gate).view(-1, len(DIMS), f.out_dim)
    return (torch.softmax(g, 1) * h).sum(1)


def ones_cat(z: Tensor) -> Tensor:
    return torch.cat([torch.ones_like(z[:, :1]), z], 1)


def base_tensor(f: TensorFusion, x: dict[str, Tensor]) -> Tensor:
    a, b, c = (ones_cat(x[m]) for m in SMALL)
    t = torch.einsum("bi,bj,bk->bijk", a, b, c).flatten(1)
    return lin(t, f.linear)


def base_low_rank(f: LowRankTensorFusion, x: dict[str, Tensor]) -> Tensor:
    out = None
    for m in DIMS:
        part = torch.einsum("bi,rio->bro", ones_cat(x[m]), f.factor(m))
        out = part if out is None else out * part
    return torch.einsum("r,bro->bo", f.weights, out) + f.bias


def base_film(f: FiLMFusion, x: dict[str, Tensor]) -> Tensor:
    h = lin(x[f.target], f.proj)
    mod = sum(lin(x[m], f.cond[m]) for m in DIMS if m != f.target)
    gamma, beta = mod.chunk(2, -1)
    return (1 + gamma) * h + beta


def base_bilinear(f: BilinearFusion, x: dict[str, Tensor]) -> Tensor:
    joint = None
    for m in DIMS:
        p = lin(x[m], f.proj[m])
        joint = p if joint is None else joint * p
    pooled = joint.view(-1, f.out_dim, f.rank).sum(-1)
    s = pooled / ((pooled.abs() + f.eps).sqrt() + math.sqrt(f.eps))
    return F.normalize(s, dim=-1)


def base_cross(f: CrossAttentionFusion, x: dict[str, Tensor]) -> Tensor:
    names = list(TOKEN_DIMS)
    h = {m: lin(x[m], f.proj[m]) for m in names}
    for layer in f.layers:
        new = {}
        for m in names:
            blk = layer[m]
            ctx = torch.cat([h[n] for n in names if n != m], 1)
            b, nq, d = h[m].shape
            q = lin(F.layer_norm(h[m], (d,), blk.norm_q.weight, blk.norm_q.bias), blk.q)
            kv = lin(F.layer_norm(ctx, (d,), blk.norm_kv.weight, blk.norm_kv.bias), blk.kv)
            k, v = kv.chunk(2, -1)
            heads = blk.num_heads
            q, k, v = (t.view(b, -1, heads, d // heads).transpose(1, 2) for t in (q, k, v))
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, nq, d)
            y = h[m] + lin(a, blk.out)
            z = F.layer_norm(y, (d,), blk.norm_mlp.weight, blk.norm_mlp.bias)
            new[m] = y + lin(F.gelu(lin(z, blk.mlp_in)), blk.mlp_out)
        h = new
    pooled = torch.stack(
        [F.layer_norm(h[m], (f.out_dim,), f.norm[m].weight, f.norm[m].bias).mean(1)
         for m in names]
    ).mean(0)
    return lin(pooled, f.head)


# ----------------------------------------------------------------------------- timing


def step(fn: Callable[[], Tensor], params: list[Tensor]) -> float:
    for p in params:
        p.grad = None
    t0 = time.perf_counter()
    fn().sum().backward()
    return time.perf_counter() - t0


def paired(a: Callable[[], Tensor], b: Callable[[], Tensor], params: list[Tensor],
           repeats: int) -> tuple[float, float]:
    step(a, params), step(b, params)  # warm-up
    ta, tb = [], []
    for r in range(repeats):
        if r % 2:
            tb.append(step(b, params))
            ta.append(step(a, params))
        else:
            ta.append(step(a, params))
            tb.append(step(b, params))
    return statistics.median(ta), statistics.median(tb)


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cases(batch: int, gen: torch.Generator):
    """Yield (name, module, ours, theirs, checks): the two calls to time and the validators."""

    def feats(dims):
        return {m: torch.randn(batch, d, generator=gen) for m, d in dims.items()}

    def feature_case(name, module, x, base):
        return (name, module, lambda: module(x), lambda: base(module, x),
                lambda: check_features(x, module.dims, owner=module, allow_missing=True))

    x = feats(DIMS)
    xs = feats(SMALL)
    yield feature_case("ConcatFusion", ConcatFusion(DIMS, OUT), x, base_concat)
    yield feature_case("AttentionFusion", AttentionFusion(DIMS, OUT), x, base_attention)
    yield feature_case("GatedFusion", GatedFusion(DIMS, OUT), x, base_gated)
    yield feature_case("TensorFusion", TensorFusion(SMALL, 64), xs, base_tensor)
    yield feature_case("LowRankTensorFusion", LowRankTensorFusion(DIMS, OUT, 8), x, base_low_rank)
    yield feature_case("FiLMFusion", FiLMFusion(DIMS, OUT), x, base_film)
    yield feature_case("BilinearFusion", BilinearFusion(DIMS, OUT, 4), x, base_bilinear)

    toks = {m: torch.randn(batch, LENGTHS[m], d, generator=gen) for m, d in TOKEN_DIMS.items()}
    masks = {m: torch.ones(batch, n, dtype=torch.bool) for m, n in LENGTHS.items()}
    cross = CrossAttentionFusion(TOKEN_DIMS, 128, num_heads=4, depth=1)

    def cross_checks() -> None:
        check_features(toks, cross.dims, owner=cross, arg="tokens", layout="B N D",
                       allow_missing=True)
        for m in TOKEN_DIMS:
            check_mask(masks[m], owner=cross, arg=f"masks[{m!r}]", B=batch, N=LENGTHS[m])

    yield ("CrossAttentionFusion", cross, lambda: cross(toks, masks), lambda: base_cross(cross, toks),
           cross_checks)

    probs = {m: torch.softmax(torch.randn(batch, CLASSES, generator=gen), -1).requires_grad_()
             for m in ("text", "audio", "image")}
    decision = DecisionFusion(list(probs), CLASSES, learnable=True)
    yield ("DecisionFusion", decision, lambda: decision(probs),
           lambda: base_decision(decision, probs),
           lambda: check_features(probs, decision.dims, owner=decision, arg="predictions",
                                  layout="B C", allow_missing=True))

    frames = torch.rand(batch, FRAMES, 3, GRID, GRID, generator=gen)
    spec = torch.randn(batch, FREQ, STEPS, generator=gen)
    frame_t = torch.arange(FRAMES) / 8.0
    spec_t = torch.arange(STEPS) / 64.0
    data = DataLevelFusion(3, FREQ, audio="project", audio_channels=4)

    def data_checks() -> None:
        size = check_tensor(frames, "B T C H W", owner=data, arg="frames", C=3)
        check_tensor(spec, "B F S", owner=data, arg="spectrogram", B=size["B"], F=FREQ)

    yield ("DataLevelFusion", data, lambda: data(frames, frame_t, spec, spec_t),
           lambda: base_data_level(data, frames, frame_t, spec, spec_t), data_checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 1024])
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); forward + backward, "
          f"median of {args.repeats} paired runs (fewer at B=1024)\n")
    print("| module | B | mmfuse (ms) | minimal (ms) | ratio | validators at B=32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for batch in args.batches:
        repeats = args.repeats if batch < 1024 else max(5, args.repeats // 4)
        for name, module, ours, theirs, checks in cases(batch, gen):
            params = list(module.parameters())
            with torch.no_grad():
                torch.testing.assert_close(ours(), theirs(), rtol=1e-4, atol=1e-4)
            t_ours, t_base = paired(ours, theirs, params, repeats)
            share = ""
            if batch == 32:
                share = f"{100 * median_time(checks, repeats) / t_ours:.1f}%"
            print(f"| {name} | {batch} | {1e3 * t_ours:.3f} | {1e3 * t_base:.3f} | "
                  f"{t_ours / t_base:.2f} | {share} |", flush=True)


if __name__ == "__main__":
    main()
