"""Attention math behind mmfuse's alignment modules: masked scaled dot-product attention on the
fused kernels, divided (time then space) attention, separable 3-D positional encodings and
graph attention.

Masks are ``torch.bool`` with True = keep, like :func:`torch.nn.functional.scaled_dot_product_attention`
(the opposite of :class:`torch.nn.MultiheadAttention`'s ``key_padding_mask``). A query whose
keys are all masked, or a masked query, gets a zero output and a zero attention row, never NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._checks import (
    check_inputs,
    check_mask,
    check_probability,
    check_same_device,
    check_size,
    check_tensor,
)

__all__ = [
    "divided_attention",
    "graph_attention",
    "masked_attention",
    "sinusoidal_encoding_3d",
]


def _key_mask_for(key_mask: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """(B, N) keep-mask -> (SDPA mask (B, 1, 1, N) with all-masked rows kept, has_key (B,))."""
    if key_mask is None:
        return None, None
    has_key = key_mask.any(dim=-1)  # (B,)
    # A row with no key would give NaN (softmax over nothing): attend to everything instead
    # and zero the result afterwards, so values and gradients stay finite.
    safe = key_mask | ~has_key[:, None]  # (B, N)
    return safe[:, None, None, :], has_key


def masked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_mask: Tensor | None = None,
    query_mask: Tensor | None = None,
    *,
    dropout_p: float = 0.0,
    need_weights: bool = False,
    scale: float | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Multi-head scaled dot-product attention with key and query keep-masks.

    Without ``need_weights`` this calls :func:`F.scaled_dot_product_attention`, so PyTorch picks
    its fused kernel (flash attention on CPU and CUDA) whenever ``dropout_p`` is 0; the maps are
    never materialised. With ``need_weights`` the maps are computed explicitly (softmax in
    float32 or wider) and returned before dropout.

    Args:
        q: Queries.
        k: Keys.
        v: Values.
        key_mask: Bool keep-mask over keys, True = attend. None keeps all.
        query_mask: Bool keep-mask over queries; a masked query's output and map row are zero.
        dropout_p: Attention dropout probability (pass 0 in eval mode).
        need_weights: Also return the attention maps.
        scale: Score scale; default ``1 / sqrt(d)``.

    Shape:
        - q: (B, h, L, d); k: (B, h, N, d); v: (B, h, N, d_v)
        - key_mask: (B, N); query_mask: (B, L)
        - output: (B, h, L, d_v); weights: (B, h, L, N) or None

    Returns:
        ``(output, weights)``; rows whose keys are all masked, and masked queries, are zero.
    """
    owner = "masked_attention"
    n = check_tensor(q, "B h L d", owner=owner, arg="q")
    b, h = n["B"], n["h"]
    kn = check_tensor(k, "B h N d", owner=owner, arg="k", B=b, h=h, d=n["d"])
    check_tensor(v, "B h N e", owner=owner, arg="v", B=b, h=h, N=kn["N"])
    check_mask(key_mask, owner=owner, arg="key_mask", B=b, N=kn["N"], device=q.device)
    check_mask(query_mask, owner=owner, arg="query_mask", layout="B L", B=b, L=n["L"],
               device=q.device)
    check_inputs(None, {"q": q, "k": k, "v": v}, owner=owner)
    attn_mask, has_key = _key_mask_for(key_mask)
    weights: Tensor | None = None
    if need_weights:
        s = q.shape[-1] ** -0.5 if scale is None else scale
        acc = torch.promote_types(q.dtype, torch.float32)  # softmax in float32 or wider
        scores = torch.matmul(q, k.transpose(-2, -1)).to(acc) * s  # (B, h, L, N)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        probs = scores.softmax(dim=-1)  # (B, h, L, N)
        dropped = F.dropout(probs, p=dropout_p) if dropout_p > 0 else probs
        out = torch.matmul(dropped.to(v.dtype), v)  # (B, h, L, d_v)
        weights = probs.to(q.dtype)
    else:
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale
        )  # (B, h, L, d_v)
    keep: Tensor | None = None
    if has_key is not None:
        keep = has_key[:, None, None, None]  # (B, 1, 1, 1)
    if query_mask is not None:
        qm = query_mask[:, None, :, None]  # (B, 1, L, 1)
        keep = qm if keep is None else keep & qm
    if keep is not None:
        out = torch.where(keep, out, out.new_zeros(()))
        if weights is not None:
            weights = torch.where(keep, weights, weights.new_zeros(()))
    return out, weights


def divided_attention(
    q_time: Tensor,
    k_time: Tensor,
    q_space: Tensor,
    k_space: Tensor,
    v: Tensor,
    key_mask: Tensor | None = None,
    query_mask: Tensor | None = None,
    *,
    dropout_p: float = 0.0,
    need_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Divided attention of queries over a (T, P) grid of keys: over time, then over space.

    Stage 1 (time): at each spatial position p, every query attends over the T frames with
    ``q_time . k_time``, giving a per-position value summary ``z_p`` and key summary
    ``kappa_p`` (the same weights applied to ``v`` and ``k_space``). Stage 2 (space): every
    query attends over the P positions with ``q_space . kappa_p`` and mixes the ``z_p``. The
    combined map ``a(t, p) = a_space(p) * a_time(t | p)`` sums to 1 over the kept keys. Both
    stages run on :func:`F.scaled_dot_product_attention`.

    A position whose frames are all masked drops out of stage 2; a query with no kept key, or
    a masked query, gets zeros.

    Shape:
        - q_time, q_space: (B, h, L, d); k_time, k_space: (B, h, T, P, d); v: (B, h, T, P, d_v)
        - key_mask: (B, T, P) bool, True = keep; query_mask: (B, L)
        - output: (B, h, L, d_v); weights: (B, h, L, T, P) or None
    """
    owner = "divided_attention"
    n = check_tensor(q_time, "B h L d", owner=owner, arg="q_time")
    b, h, d = n["B"], n["h"], n["d"]
    kn = check_tensor(k_time, "B h T P d", owner=owner, arg="k_time", B=b, h=h, d=d)
    check_tensor(q_space, "B h L d", owner=owner, arg="q_space", B=b, h=h, L=n["L"], d=d)
    t_, p_ = kn["T"], kn["P"]
    check_tensor(k_space, "B h T P d", owner=owner, arg="k_space", B=b, h=h, T=t_, P=p_, d=d)
    check_tensor(v, "B h T P e", owner=owner, arg="v", B=b, h=h, T=t_, P=p_)
    check_mask(key_mask, owner=owner, arg="key_mask", layout="B T P", B=b, T=t_, P=p_)
    check_mask(query_mask, owner=owner, arg="query_mask", layout="B L", B=b, L=n["L"])
    check_same_device(
        {"q_time": q_time, "k_time": k_time, "q_space": q_space, "k_space": k_space, "v": v,
         "key_mask": key_mask, "query_mask": query_mask},
        owner=owner,
    )
    check_probability(dropout_p, owner=owner, arg="dropout_p")
    return _divided_attention(q_time, k_time, q_space, k_space, v, key_mask, query_mask,
                              dropout_p, need_weights)


def _divided_attention(
    q_time: Tensor, k_time: Tensor, q_space: Tensor, k_space: Tensor, v: Tensor,
    key_mask: Tensor | None, query_mask: Tensor | None, dropout_p: float, need_weights: bool,
) -> tuple[Tensor, Tensor | None]:
    """:func:`divided_attention` without its own boundary checks (for callers that have
    checked); the inner :func:`masked_attention` calls still check their reshaped views."""
    b, h, t, p, d = k_time.shape
    n_q = q_time.shape[2]
    dv = v.shape[-1]

    def per_position(x: Tensor) -> Tensor:  # (B, h, T, P, e) -> (B*P, h, T, e)
        return x.permute(0, 3, 1, 2, 4).reshape(b * p, h, t, x.shape[-1])

    qt = q_time[:, None].expand(b, p, h, n_q, d).reshape(b * p, h, n_q, d)  # (B*P, h, L, d)
    kt, ks, vv = per_position(k_time), per_position(k_space), per_position(v)
    frame_mask = None
    pos_mask = None
    if key_mask is not None:
        frame_mask = key_mask.permute(0, 2, 1).reshape(b * p, t)  # (B*P, T)
        pos_mask = key_mask.any(dim=1)  # (B, P)
    # Stage 1: over time, per position; summaries of values and of space keys.
    z, w_time = masked_attention(qt, kt, vv, frame_mask, dropout_p=dropout_p,
                                 need_weights=need_weights)  # (B*P, h, L, d_v)
    kappa, _ = masked_attention(qt, kt, ks, frame_mask)  # (B*P, h, L, d)
    z = z.reshape(b, p, h, n_q, dv).permute(0, 2, 3, 1, 4)  # (B, h, L, P, d_v)
    kappa = kappa.reshape(b, p, h, n_q, d).permute(0, 2, 3, 1, 4)  # (B, h, L, P, d)
    # Stage 2: over space; each query has its own keys/values (its summaries), so it is a
    # batch of single-query attentions: (B, h, L) batches of 1 query over P keys.
    q2 = q_space.reshape(b * h * n_q, 1, 1, d)  # (B*h*L, 1, 1, d)
    k2 = kappa.reshape(b * h * n_q, 1, p, d)  # (B*h*L, 1, P, d)
    v2 = z.reshape(b * h * n_q, 1, p, dv)  # (B*h*L, 1, P, d_v)
    m2 = None if pos_mask is None else pos_mask[:, None, None, :].expand(b, h, n_q, p)
    out, w_space = masked_attention(
        q2, k2, v2, None if m2 is None else m2.reshape(b * h * n_q, p),
        dropout_p=dropout_p, need_weights=need_weights,
    )  # (B*h*L, 1, 1, d_v)
    out = out.reshape(b, h, n_q, dv)  # (B, h, L, d_v)
    weights: Tensor | None = None
    if w_time is not None and w_space is not None:
        a_time = w_time.reshape(b, p, h, n_q, t).permute(0, 2, 3, 4, 1)  # (B, h, L, T, P)
        a_space = w_space.reshape(b, h, n_q, 1, p)  # (B, h, L, 1, P)
        weights = a_time * a_space  # (B, h, L, T, P)
    if query_mask is not None:
        qm = query_mask[:, None, :, None]  # (B, 1, L, 1)
        out = torch.where(qm, out, out.new_zeros(()))
        if weights is not None:
            weights = torch.where(qm[..., None], weights, weights.new_zeros(()))
    return out, weights


def _sinusoid(n: int, dim: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(n, dim) sin/cos table of positions 0..n-1 (dim even), as in Vaswani et al. 2017."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]  # (n, 1)
    freq = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )  # (dim/2,)
    angles = pos * freq  # (n, dim/2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(n, dim).to(dtype)


def sinusoidal_encoding_3d(
    t: int, h: int, w: int, dim: int, *, device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Separable sinusoidal encoding of a (t, h, w) grid: channels split in three even groups
    for time, height and width (remaining channels zero), each a 1-D sin/cos table.

    Shape:
        - output: (t, h, w, dim)
    """
    owner = "sinusoidal_encoding_3d"
    check_size(dim, owner=owner, arg="dim")
    if not dtype.is_floating_point:
        raise TypeError(f"{owner}: expected a floating `dtype`, got {dtype}.")
    dev = torch.device("cpu") if device is None else device
    g = 2 * (dim // 6)
    out = torch.zeros(t, h, w, dim, device=dev, dtype=dtype)
    if g == 0:
        return out
    et = _sinusoid(t, g, device=dev, dtype=dtype)[:, None, None, :].expand(t, h, w, g)
    eh = _sinusoid(h, g, device=dev, dtype=dtype)[None, :, None, :].expand(t, h, w, g)
    ew = _sinusoid(w, g, device=dev, dtype=dtype)[None, None, :, :].expand(t, h, w, g)
    return torch.cat([et, eh, ew, out[..., 3 * g :]], dim=-1)  # (t, h, w, dim)


def graph_attention(
    x: Tensor,
    score_src: Tensor,
    score_dst: Tensor,
    adjacency: Tensor | None = None,
    edge_bias: Tensor | None = None,
    node_mask: Tensor | None = None,
    *,
    negative_slope: float = 0.2,
    dropout_p: float = 0.0,
    need_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """One multi-head graph attention step (GAT, Velickovic et al. 2018).

    Node i aggregates its neighbours j (``adjacency[i, j]`` True, self-loops always added) with
    ``alpha_ij = softmax_j(LeakyReLU(score_dst_i + score_src_j) + edge_bias_ij)``. Masked
    (missing) nodes are no one's neighbour and get a zero output and a zero attention row.

    Shape:
        - x: (B, h, K, d) projected node features; score_src, score_dst: (B, h, K)
        - adjacency: (K, K) or (B, K, K) bool, row i = the nodes i receives from
        - edge_bias: broadcastable to (B, h, K, K); node_mask: (B, K) bool, True = present
        - output: (B, h, K, d); weights: (B, h, K, K) or None
    """
    owner = "graph_attention"
    n = check_tensor(x, "B h K d", owner=owner, arg="x")
    b, h, k = n["B"], n["h"], n["K"]
    for arg, score in (("score_src", score_src), ("score_dst", score_dst)):
        check_tensor(score, "B h K", owner=owner, arg=arg, B=b, h=h, K=k)
    if adjacency is not None:
        batched = isinstance(adjacency, Tensor) and adjacency.dim() == 3
        check_mask(adjacency, owner=owner, arg="adjacency", layout="B K J" if batched else "K J",
                   device=x.device, B=b, K=k, J=k)
    check_mask(node_mask, owner=owner, arg="node_mask", layout="B K", device=x.device, B=b, K=k)
    e = F.leaky_relu(score_dst[..., :, None] + score_src[..., None, :], negative_slope)
    e = e.to(torch.promote_types(x.dtype, torch.float32))  # (B, h, K, K)
    if edge_bias is not None:
        e = e + edge_bias.to(e.dtype)
    eye = torch.eye(k, device=x.device).bool()  # ONNX Runtime has no boolean EyeLike
    allowed = torch.ones_like(eye) if adjacency is None else adjacency | eye  # (K, K) / (B, K, K)
    if allowed.dim() == 3:
        allowed = allowed[:, None]  # (B, 1, K, K)
    if node_mask is not None:
        allowed = allowed & node_mask[:, None, None, :]  # (B, 1, K, K)
    e = e.masked_fill(~allowed, float("-inf"))
    # Every present node keeps its self-loop; a masked node's row may be empty: keep it finite.
    e = torch.where(torch.isinf(e).all(dim=-1, keepdim=True), torch.zeros_like(e), e)
    alpha = e.softmax(dim=-1)  # (B, h, K, K)
    dropped = F.dropout(alpha, p=dropout_p) if dropout_p > 0 else alpha
    out = torch.matmul(dropped.to(x.dtype), x)  # (B, h, K, d)
    weights = alpha.to(x.dtype) if need_weights else None
    if node_mask is not None:
        keep = node_mask[:, None, :, None]  # (B, 1, K, 1)
        out = torch.where(keep, out, out.new_zeros(()))
        if weights is not None:
            weights = torch.where(keep, weights, weights.new_zeros(()))
    return out, weights
