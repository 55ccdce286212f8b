"""Graph attention over modality (or token) nodes: GAT-style dynamic alignment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, cast, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import (
    check_heads,
    check_inputs,
    check_mask,
    check_positive,
    check_probability,
    check_size,
    check_tensor,
    owner_name,
)
from .._precision import feature_output
from ..functional import graph_attention
from .attention import AttentionOutput, _check_maybe_batched

__all__ = ["ModalityGraphAttention"]


class _GATLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, bias: bool, dd: dict[str, Any]) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.proj = nn.Linear(dim, dim, bias=False, **dd)
        self.att_src = nn.Parameter(torch.empty(num_heads, self.head_dim, **dd))
        self.att_dst = nn.Parameter(torch.empty(num_heads, self.head_dim, **dd))
        self.out_proj = nn.Linear(dim, dim, bias=bias, **dd)

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.xavier_uniform_(self.att_src)
        nn.init.xavier_uniform_(self.att_dst)
        self.out_proj.reset_parameters()


class ModalityGraphAttention(nn.Module):
    """Multi-head graph attention (GAT, Velickovic et al. 2018) over K nodes, with residuals.

    Nodes are modality embeddings (one per modality) or tokens. Each layer projects the nodes
    per head, scores every edge ``j -> i`` with ``LeakyReLU(a_dst . W x_i + a_src . W x_j)``
    (plus a learned edge logit when ``learn_adjacency``), normalises over i's neighbours
    (self-loop always included) and updates ``x_i <- x_i + W_o ELU(concat_h sum_j alpha_ij W x_j)``.

    The graph: fully connected by default; a fixed bool ``adjacency`` (K, K) given at
    construction (row i = the nodes i receives from); and/or one per call in ``forward``
    (combined with the fixed one by AND). ``learn_adjacency=True`` adds a learned (K, K) edge
    logit (initialised at 0, so it starts as the plain graph) to every score: a soft, learned
    graph.

    Missing nodes: ``node_mask`` (B, K) bool, True = present (the opposite of
    ``nn.MultiheadAttention``'s ``key_padding_mask``). A missing node is no one's neighbour,
    its values change nothing, and its output is zero; a sample with every node missing gives
    zeros.

    Args:
        dim: Node feature size D.
        num_heads: Number of heads; must divide ``dim``.
        num_layers: Number of graph attention layers.
        num_nodes: K; required with ``learn_adjacency``, checked against inputs when given.
        adjacency: Optional fixed (K, K) bool adjacency.
        learn_adjacency: Learn an additive (K, K) edge logit.
        dropout: Attention dropout probability (training only).
        negative_slope: LeakyReLU slope of the edge scores.
        bias: Whether the output projections have biases.

    Shape:
        - nodes: (B, K, D) or unbatched (K, D); node_mask: (B, K); adjacency: (K, K) or (B, K, K)
        - output: (B, K, D); with ``return_attention=True`` an :class:`AttentionOutput` whose
          ``attention`` holds the last layer's maps (B, heads, K, K), row i over sources j

    Example:
        >>> gat = ModalityGraphAttention(16, 4)
        >>> gat(torch.randn(2, 3, 16)).shape
        torch.Size([2, 3, 16])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        num_layers: int = 1,
        num_nodes: int | None = None,
        adjacency: Tensor | None = None,
        learn_adjacency: bool = False,
        dropout: float = 0.0,
        negative_slope: float = 0.2,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        check_heads(dim, num_heads, owner=self)
        check_size(num_layers, owner=self, arg="num_layers")
        check_positive(negative_slope, owner=self, arg="negative_slope", allow_zero=True)
        check_probability(dropout, owner=self, arg="dropout")
        if adjacency is not None:
            check_tensor(adjacency, "K K", owner=self, arg="adjacency", floating=False,
                         **({} if num_nodes is None else {"K": num_nodes}))
            num_nodes = adjacency.shape[0]
        if num_nodes is not None:
            check_size(num_nodes, owner=self, arg="num_nodes")
        if learn_adjacency and num_nodes is None:
            raise ValueError(
                f"{owner_name(self)}: expected `num_nodes` (or `adjacency`) with "
                "learn_adjacency=True, got neither."
            )
        self.dim, self.num_heads, self.num_layers = int(dim), int(num_heads), int(num_layers)
        self.num_nodes = None if num_nodes is None else int(num_nodes)
        self.dropout, self.negative_slope = float(dropout), float(negative_slope)
        self.adjacency: Tensor | None
        self.register_buffer(
            "adjacency",
            None if adjacency is None else adjacency.to(device=device, dtype=torch.bool).clone(),
            persistent=False,
        )
        self.edge_logits = (
            nn.Parameter(torch.empty(int(num_nodes), int(num_nodes), **dd))
            if learn_adjacency and num_nodes is not None else None
        )
        self.layers = nn.ModuleList(
            _GATLayer(self.dim, self.num_heads, bias, dd) for _ in range(self.num_layers)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()  # type: ignore[operator]
        if self.edge_logits is not None:
            nn.init.zeros_(self.edge_logits)

    @overload
    def forward(self, nodes: Tensor, *, node_mask: Tensor | None = ...,
                adjacency: Tensor | None = ..., return_attention: Literal[False] = ...) -> Tensor:
        ...

    @overload
    def forward(self, nodes: Tensor, *, node_mask: Tensor | None = ...,
                adjacency: Tensor | None = ..., return_attention: Literal[True]
                ) -> AttentionOutput:
        ...

    @overload
    def forward(self, nodes: Tensor, *, node_mask: Tensor | None = ...,
                adjacency: Tensor | None = ..., return_attention: bool
                ) -> Tensor | AttentionOutput:
        ...

    def forward(
        self,
        nodes: Tensor,
        *,
        node_mask: Tensor | None = None,
        adjacency: Tensor | None = None,
        return_attention: bool = False,
    ) -> Tensor | AttentionOutput:
        fixed = {} if self.num_nodes is None else {"K": self.num_nodes}
        sizes, batched = _check_maybe_batched(nodes, "K D", owner=self, arg="nodes",
                                              **cast(Any, fixed), D=self.dim)
        lead = "B " if batched else ""
        batch = {"B": sizes["B"]} if batched else {}
        k = sizes["K"]
        check_mask(node_mask, owner=self, arg="node_mask", layout=lead + "K", device=nodes.device,
                   **batch, K=k)
        if isinstance(adjacency, Tensor) and adjacency.dim() == 3 and batched:
            check_mask(adjacency, owner=self, arg="adjacency", layout="B K J",
                       device=nodes.device, **batch, K=k, J=k)
        else:
            check_mask(adjacency, owner=self, arg="adjacency", layout="K J", device=nodes.device,
                       K=k, J=k)
        check_inputs(self, {"nodes": nodes})
        x = nodes if batched else nodes[None]  # (B, K, D)
        mask = node_mask if node_mask is None or batched else node_mask[None]  # (B, K)
        if mask is not None:  # missing nodes' values (even NaN) never enter the arithmetic
            x = torch.where(mask[..., None], x, x.new_zeros(()))
        graph = self.adjacency
        if adjacency is not None:
            graph = adjacency if graph is None else graph & adjacency  # (K, K) or (B, K, K)
        bias = self.edge_logits  # (K, K) or None
        p = self.dropout if self.training else 0.0
        maps: Tensor | None = None
        for i, module in enumerate(self.layers):
            layer = cast(_GATLayer, module)
            need = return_attention and i == self.num_layers - 1
            hx = layer.proj(x).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # (B, h, K, d)
            src = (hx * layer.att_src[:, None, :]).sum(-1)  # (B, h, K)
            dst = (hx * layer.att_dst[:, None, :]).sum(-1)  # (B, h, K)
            agg, maps = graph_attention(hx, src, dst, graph, bias, mask,
                                        negative_slope=self.negative_slope, dropout_p=p,
                                        need_weights=need)  # (B, h, K, d)
            x = x + layer.out_proj(F.elu(agg.transpose(1, 2).flatten(2)))  # (B, K, D)
        if mask is not None:
            x = torch.where(mask[..., None], x, x.new_zeros(()))
        # the residual adds the float32 input back: features follow autocast
        x = feature_output(x)
        out = x if batched else x[0]
        if not return_attention:
            return out
        maps = feature_output(cast(Tensor, maps))  # set by the last layer (need_weights)
        return AttentionOutput(out, maps if batched else maps[0])

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, num_layers={self.num_layers}, "
            f"num_nodes={self.num_nodes}, learn_adjacency={self.edge_logits is not None}"
        )
