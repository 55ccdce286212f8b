"""Token-level fusion with a MulT-style cross-modal transformer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_heads, check_mask, check_probability, check_size
from ..errors import ModalityError
from ..functional import masked_cross_attention, masked_mean
from ._common import check_config, observe

__all__ = ["CrossAttentionFusion", "CrossAttentionFusionOutput"]


class CrossAttentionFusionOutput(NamedTuple):
    """What :class:`CrossAttentionFusion` returns with ``return_tokens=True``.

    Attributes:
        fused: (B, out_dim) pooled fused features.
        tokens: Per given modality, its final token states (B, N_m, out_dim), zero at masked
            tokens and for samples where the modality is absent.
    """

    fused: Tensor
    tokens: dict[str, Tensor]


class _CrossBlock(nn.Module):
    """Pre-norm cross-attention (queries: one modality; keys/values: the others) and an MLP."""

    def __init__(self, dim: int, num_heads: int, dropout: float, dd: dict[str, Any]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.norm_q = nn.LayerNorm(dim, **dd)
        self.norm_kv = nn.LayerNorm(dim, **dd)
        self.q = nn.Linear(dim, dim, **dd)
        self.kv = nn.Linear(dim, 2 * dim, **dd)
        self.out = nn.Linear(dim, dim, **dd)
        self.norm_mlp = nn.LayerNorm(dim, **dd)
        self.mlp_in = nn.Linear(dim, 4 * dim, **dd)
        self.mlp_out = nn.Linear(4 * dim, dim, **dd)

    def reset_parameters(self) -> None:
        for layer in self.children():
            layer.reset_parameters()  # type: ignore[operator]

    def forward(self, x: Tensor, context: Tensor | None, context_mask: Tensor | None) -> Tensor:
        p = self.dropout if self.training else 0.0
        if context is not None and context_mask is not None:
            q = self.q(self.norm_q(x)).unflatten(-1, (self.num_heads, -1))  # (B, Nq, H, d)
            q = q.transpose(1, 2)  # (B, H, Nq, d)
            kv = self.kv(self.norm_kv(context)).unflatten(-1, (2, self.num_heads, -1))
            # kv: (B, Nk, 2, H, d)
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, Nk, d) each
            a = masked_cross_attention(q, k, v, context_mask, dropout_p=p)  # (B, H, Nq, d)
            a = self.out(a.transpose(1, 2).flatten(2))  # (B, Nq, D)
            # A sample with no key to attend to gets no update (not even the output bias), as
            # if the context were not there.
            a = a.where(context_mask.any(dim=-1)[:, None, None], 0.0)
            x = x + F.dropout(a, p, self.training)
        h = self.mlp_out(F.dropout(F.gelu(self.mlp_in(self.norm_mlp(x))), p, self.training))
        return x + F.dropout(h, p, self.training)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward


class CrossAttentionFusion(nn.Module):
    """Cross-modal transformer over token sequences (MulT, Tsai et al., 2019), pooled.

    Every modality's tokens are projected to ``out_dim``. In each of ``depth`` layers, every
    modality's tokens attend (``num_heads`` heads, pre-norm, then an MLP, both residual) to the
    tokens of all the *other* modalities, concatenated, from the previous layer. The final
    states are layer-normalised, mean-pooled over each modality's kept tokens, averaged over
    the available modalities and linearly projected. Attention uses
    :func:`torch.nn.functional.scaled_dot_product_attention`. No positional encoding is added:
    add one to the tokens beforehand where order matters.

    Masks: ``masks[m]`` is (B, N_m) bool with **True = keep** (a valid token), as in
    ``scaled_dot_product_attention``; the opposite of ``nn.MultiheadAttention``'s
    ``key_padding_mask``. Masked tokens are never read: not as keys, not in the pooling.

    Missing modalities: an absent modality counts as fully masked for that sample. A query
    with no kept key among the other modalities gets no attention update (only its MLP). A
    modality with no kept token is left out of the average; a sample where no modality has a
    kept token gets the projection of a learned ``missing`` embedding (initialised at zero).
    Outputs are finite in every case (the all-masked rows that make
    ``scaled_dot_product_attention`` return NaN are guarded).

    Args:
        dims: Token feature size per modality, at least two, e.g. ``{"video": 512, "text": 768}``.
        out_dim: Model and output size D; divisible by ``num_heads``.
        num_heads: Attention heads.
        depth: Number of cross-modal layers.
        dropout: Dropout on attention weights and residual branches (training only).

    Shape:
        - tokens[m]: (B, N_m, D_m), lengths N_m may differ; masks[m]: (B, N_m) bool, True = keep;
          present[m]: (B,) bool, True = observed
        - output: (B, D); with ``return_tokens=True`` a :class:`CrossAttentionFusionOutput`

    Example:
        >>> f = CrossAttentionFusion({"video": 8, "text": 4}, out_dim=6, num_heads=2, depth=1)
        >>> tokens = {"video": torch.randn(2, 5, 8), "text": torch.randn(2, 3, 4)}
        >>> f(tokens, masks={"text": torch.tensor([[True, True, False]] * 2)}).shape
        torch.Size([2, 6])
    """

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        *,
        num_heads: int,
        depth: int,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        self.dims, self.out_dim = check_config(self, dims, out_dim, min_modalities=2)
        check_heads(out_dim, num_heads, owner=self, arg="out_dim")
        check_size(depth, owner=self, arg="depth")
        check_probability(dropout, owner=self, arg="dropout")
        self.num_heads = int(num_heads)
        self.depth = int(depth)
        self.dropout = float(dropout)
        self.proj = nn.ModuleDict({m: nn.Linear(d, out_dim, **dd) for m, d in self.dims.items()})
        self.layers = nn.ModuleList(
            nn.ModuleDict({m: _CrossBlock(out_dim, num_heads, self.dropout, dd) for m in self.dims})
            for _ in range(depth)
        )
        self.norm = nn.ModuleDict({m: nn.LayerNorm(out_dim, **dd) for m in self.dims})
        self.missing = nn.Parameter(torch.empty(out_dim, **dd))
        self.head = nn.Linear(out_dim, out_dim, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.reset_parameters()
        nn.init.zeros_(self.missing)

    def _check_masks(
        self, masks: object, tokens: Mapping[str, Tensor], batch: int, device: torch.device
    ) -> Mapping[str, Tensor]:
        if masks is None:
            return {}
        if not isinstance(masks, Mapping):
            raise TypeError(
                f"CrossAttentionFusion: expected `masks` to be a mapping from modality name to "
                f"a (B, N) bool tensor, got {type(masks).__name__}."
            )
        unknown = [k for k in masks if k not in self.dims]
        if unknown:
            raise ModalityError(
                f"CrossAttentionFusion: unknown modality {sorted(map(str, unknown))} in "
                f"`masks`; expected names from {list(self.dims)}, got {list(map(str, masks))}."
            )
        for m in self.dims:
            if m in masks and m in tokens:  # a mask for a left-out modality is ignored
                check_mask(masks[m], owner=self, arg=f"masks[{m!r}]", device=device,
                           B=batch, N=tokens[m].shape[1])
        return masks

    @overload
    def forward(self, tokens: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = ...,
                present: Mapping[str, Tensor] | None = ..., *,
                return_tokens: Literal[False] = ...) -> Tensor:
        ...

    @overload
    def forward(self, tokens: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = ...,
                present: Mapping[str, Tensor] | None = ..., *,
                return_tokens: Literal[True]) -> CrossAttentionFusionOutput:
        ...

    @overload
    def forward(self, tokens: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = ...,
                present: Mapping[str, Tensor] | None = ..., *,
                return_tokens: bool) -> Tensor | CrossAttentionFusionOutput:
        ...

    def forward(
        self,
        tokens: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        present: Mapping[str, Tensor] | None = None,
        *,
        return_tokens: bool = False,
    ) -> Tensor | CrossAttentionFusionOutput:
        batch, ref, observed, given = observe(self, self.dims, tokens, present, arg="tokens",
                                              layout="B N D")
        given_masks = self._check_masks(masks, tokens, batch, ref.device)
        names = [m for m in self.dims if m in tokens]
        keep: dict[str, Tensor] = {}
        x: dict[str, Tensor] = {}
        for j, m in enumerate(self.dims):
            if m not in tokens:
                continue
            t = tokens[m]
            k = observed[:, j : j + 1].expand(batch, t.shape[1])  # (B, N_m)
            if m in given_masks:
                k = k & given_masks[m]
            keep[m] = k
            if not given[j] or m in given_masks:
                t = t.where(k.unsqueeze(-1), 0.0)  # masked and absent tokens never read
            x[m] = self.proj[m](t)  # (B, N_m, D)
        for layer in self.layers:
            blocks = cast(nn.ModuleDict, layer)
            new: dict[str, Tensor] = {}
            for m in names:
                others = [n for n in names if n != m]
                # the other modalities' tokens, one sequence: (B, sum N_n, D) and (B, sum N_n)
                context = torch.cat([x[n] for n in others], dim=1) if others else None
                context_mask = torch.cat([keep[n] for n in others], dim=1) if others else None
                new[m] = blocks[m](x[m], context, context_mask)  # (B, N_m, D)
            x = new
        out_tokens: dict[str, Tensor] = {}
        total = ref.new_zeros(batch, self.out_dim)  # (B, D)
        count = ref.new_zeros(batch, 1)  # (B, 1)
        for m in names:
            states = self.norm[m](x[m]).where(keep[m].unsqueeze(-1), 0.0)  # (B, N_m, D)
            out_tokens[m] = states
            available = keep[m].any(dim=1, keepdim=True)  # (B, 1)
            total = total + masked_mean(states, keep[m]).where(available, 0.0)
            count = count + available.to(count.dtype)
        pooled = (total / count.clamp(min=1)).where(count > 0, self.missing.to(total.dtype))
        fused = self.head(pooled)  # (B, D)
        if return_tokens:
            return CrossAttentionFusionOutput(fused, out_tokens)
        return fused

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return (
            f"dims={self.dims}, out_dim={self.out_dim}, num_heads={self.num_heads}, "
            f"depth={self.depth}, dropout={self.dropout}"
        )
