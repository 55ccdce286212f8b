"""ModalityGraphAttention against a naive float64 loop over nodes, heads and edges."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmfuse import ShapeError
from mmfuse.alignment import ModalityGraphAttention


def naive_reference(m: ModalityGraphAttention, nodes, node_mask=None, adjacency=None):
    """Loops over samples, layers, heads, receivers i and senders j. adjacency: (B, K, K) or
    None (fully connected). Returns output (B, K, D) and last-layer maps (B, h, K, K)."""
    sd = {k: v.detach().double() for k, v in m.state_dict().items()}
    x = nodes.double().clone()
    b, k, dm = x.shape
    heads, hd = m.num_heads, dm // m.num_heads
    present = torch.ones(b, k, dtype=torch.bool) if node_mask is None else node_mask
    graph = torch.ones(b, k, k, dtype=torch.bool) if adjacency is None else adjacency
    bias = sd.get("edge_logits", torch.zeros(k, k, dtype=torch.float64))
    maps = torch.zeros(b, heads, k, k, dtype=torch.float64)
    for layer in range(m.num_layers):
        pre = f"layers.{layer}."
        new = x.clone()
        for s in range(b):
            hx = x[s] @ sd[pre + "proj.weight"].T  # (K, D)
            agg = torch.zeros(k, dm, dtype=torch.float64)
            for a in range(heads):
                sl = slice(a * hd, (a + 1) * hd)
                src = sd[pre + "att_src"][a]
                dst = sd[pre + "att_dst"][a]
                for i in range(k):
                    if not present[s, i]:
                        continue
                    scores = []
                    for j in range(k):
                        edge = (graph[s, i, j] or i == j) and present[s, j]
                        e = float(dst @ hx[i, sl] + src @ hx[j, sl])
                        e = e if e > 0 else m.negative_slope * e
                        scores.append(e + float(bias[i, j]) if edge else -math.inf)
                    w = torch.softmax(torch.tensor(scores, dtype=torch.float64), dim=0)
                    maps[s, a, i] = w
                    agg[i, sl] = w @ hx[:, sl]
            upd = F.elu(agg) @ sd[pre + "out_proj.weight"].T + sd[pre + "out_proj.bias"]
            new[s] = x[s] + upd
        x = new
    return x * present[..., None], maps


def make(b=2, k=4, d=8, seed=0):
    return torch.randn(b, k, d, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


RING = torch.tensor([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]], dtype=torch.bool)


@pytest.mark.parametrize("layers", [1, 2])
def test_matches_naive_loop(layers):
    torch.manual_seed(0)
    m = ModalityGraphAttention(8, 2, num_layers=layers).double()
    nodes = make(b=3)
    want, maps = naive_reference(m, nodes)
    res = m(nodes, return_attention=True)
    torch.testing.assert_close(res.output, want)
    torch.testing.assert_close(res.attention, maps)
    torch.testing.assert_close(res.attention.sum(-1), torch.ones(3, 2, 4, dtype=torch.float64))


def test_fixed_per_call_and_learned_adjacency_match_naive_loop():
    torch.manual_seed(1)
    m = ModalityGraphAttention(8, 2, num_layers=2, adjacency=RING, learn_adjacency=True).double()
    with torch.no_grad():
        m.edge_logits.normal_()  # make the learned edge logits matter
    nodes = make(b=2)
    per_call = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(2)) > 0.3
    res = m(nodes, adjacency=per_call, return_attention=True)
    want, maps = naive_reference(m, nodes, adjacency=RING[None] & per_call)
    torch.testing.assert_close(res.output, want)
    torch.testing.assert_close(res.attention, maps)
    off_graph = ~((RING[None] & per_call) | torch.eye(4, dtype=torch.bool))
    assert bool((res.attention[off_graph[:, None].expand_as(res.attention)] == 0).all())


def test_missing_nodes_change_nothing_and_all_missing_is_zero():
    torch.manual_seed(2)
    m = ModalityGraphAttention(8, 2, num_layers=2).double()
    nodes = make(b=3)
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    want, maps = naive_reference(m, nodes, node_mask=mask)
    res = m(nodes, node_mask=mask, return_attention=True)
    torch.testing.assert_close(res.output, want)
    torch.testing.assert_close(res.attention, maps * mask[:, None, :, None])
    noisy = nodes.where(mask[..., None], torch.full_like(nodes, float("nan")))
    torch.testing.assert_close(m(noisy, node_mask=mask), res.output)
    assert bool((res.output[1] == 0).all())
    # A missing node equals the graph without it.
    torch.testing.assert_close(res.output[0, [0, 2, 3]], m(nodes[0, [0, 2, 3]]))


def test_batched_equals_unbatched_and_gradients():
    torch.manual_seed(3)
    m = ModalityGraphAttention(8, 4, num_nodes=4, learn_adjacency=True)
    nodes = make(b=3).float()
    mask = torch.rand(3, 4) > 0.3
    full = m(nodes, node_mask=mask)
    for i in range(3):
        torch.testing.assert_close(m(nodes[i], node_mask=mask[i]), full[i])
    full.pow(2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name


def test_gradcheck_float64():
    torch.manual_seed(4)
    m = ModalityGraphAttention(4, 2, adjacency=RING[:3, :3]).double()
    nodes = make(b=1, k=3, d=4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: m(x, node_mask=torch.tensor([[1, 1, 0]]).bool()),
                                    (nodes,))


def test_errors():
    m = ModalityGraphAttention(8, 2, num_nodes=4)
    with pytest.raises(ShapeError, match=r"ModalityGraphAttention: expected `nodes` of shape "
                       r"\(B, K, D\) with K=4, D=8, got \(2, 3, 8\)"):
        m(make(b=2, k=3).float())
    with pytest.raises(ShapeError, match=r"expected `adjacency` of shape \(K, J\) with K=4, J=4"):
        m(make().float(), adjacency=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"expected `num_nodes` \(or `adjacency`\) with "
                       r"learn_adjacency=True, got neither"):
        ModalityGraphAttention(8, 2, learn_adjacency=True)
    with pytest.raises(TypeError, match=r"expected `adjacency` to be a torch.bool tensor"):
        ModalityGraphAttention(8, 2, adjacency=torch.ones(3, 3))
