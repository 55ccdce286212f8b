"""Divided spatio-temporal attention: text queries attend over time, then over space."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..functional.attention.spatiotemporal import _divided_attention
from .attention import _Inputs, _VideoTextAttention

__all__ = ["FactorizedSpatioTemporalAttention"]


class FactorizedSpatioTemporalAttention(_VideoTextAttention):
    """Divided attention of text tokens over a video, time first then space (TimeSformer style).

    Stage 1 (time): at each spatial position (h, w), every text token attends over the T frames
    with its own time query and keys, summarising that position's values (and its space keys)
    along time. Stage 2 (space): every text token attends over the H*W position summaries with
    its space query. The implied map over the video is
    ``a(t, h, w) = a_space(h, w) * a_time(t | h, w)``: it sums to 1 like the joint map, but
    factorises into *where* and *when*; each softmax runs over T or H*W entries instead of
    T*H*W, so a long video's evidence at one position is chosen frame by frame instead of being
    spread over every frame at once.

    Cost against :class:`SpatioTemporalAttention` (joint, N = T*H*W tokens, L queries, width
    D): text-query cross-attention is already linear in N, so dividing it does not lower the
    order. Projections cost ``3 N Dv D`` here against ``2 N Dv D`` (one more key projection);
    the attention core costs ``3 L N D`` (time scores, value and key summaries) plus
    ``2 L H W D`` for the space stage, against ``2 L N D``; memory holds the (B, L, H*W, D)
    summaries (twice), against O(B L D) for the joint fused kernel. Both stages run on
    ``F.scaled_dot_product_attention``. Choose it for the factorised maps and per-position
    temporal selection, not for speed.

    Masks are bool with True = keep (the opposite of ``nn.MultiheadAttention``'s
    ``key_padding_mask``). A position whose frames are all masked drops out of the space
    stage; a text token with no kept key, and a masked text token, get zeros.

    Args:
        dim: Text feature size D (queries and output).
        num_heads: Number of heads; must divide ``dim``.
        video_dim: Video feature size Dv; default ``dim``.
        dropout: Attention dropout probability (training only), applied in both stages.
        pos_encoding: None, ``"learned"`` or ``"sinusoidal"`` separable 3-D encoding added to
            the video tokens.
        max_grid: Largest (T, H, W) of the learned positional encoding.
        bias: Whether the projections have biases.

    Shape:
        - video: (B, T, H, W, Dv) or (T, H, W, Dv); text: (B, L, D) or (L, D)
        - video_mask: (B, T) or (B, T, H, W); text_mask: (B, L)
        - output: (B, L, D) (unbatched: (L, D)); with ``return_attention=True`` an
          :class:`AttentionOutput` whose ``attention`` is (B, heads, L, T, H, W)

    Example:
        >>> attn = FactorizedSpatioTemporalAttention(16, 4, video_dim=8)
        >>> attn(torch.randn(2, 3, 4, 4, 8), torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        video_dim: int | None = None,
        dropout: float = 0.0,
        pos_encoding: str | None = None,
        max_grid: tuple[int, int, int] = (64, 32, 32),
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(dim, num_heads, video_dim=video_dim, dropout=dropout,
                         pos_encoding=pos_encoding)
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        self.q_time = nn.Linear(self.dim, self.dim, bias=bias, **dd)
        self.k_time = nn.Linear(self.video_dim, self.dim, bias=bias, **dd)
        self.q_space = nn.Linear(self.dim, self.dim, bias=bias, **dd)
        self.k_space = nn.Linear(self.video_dim, self.dim, bias=bias, **dd)
        self.v_proj = nn.Linear(self.video_dim, self.dim, bias=bias, **dd)
        self.out_proj = nn.Linear(self.dim, self.dim, bias=bias, **dd)
        self.pos = self._positional_encoding(pos_encoding, max_grid, dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._reset_projections(self.q_time, self.k_time, self.q_space, self.k_space,
                                self.v_proj, self.out_proj)

    def _attend(
        self, tokens: Tensor, x: _Inputs, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        b, t, h, w, _ = tokens.shape
        tokens = tokens.reshape(b, t, h * w, self.video_dim)  # (B, T, P, Dv)
        key_mask = None if x.key_mask is None else x.key_mask.reshape(b, t, h * w)  # (B, T, P)
        out, maps = _divided_attention(  # inputs checked by the base class
            self._heads(self.q_time(x.text)),  # (B, h, L, d)
            self._heads(self.k_time(tokens)),  # (B, h, T, P, d)
            self._heads(self.q_space(x.text)),  # (B, h, L, d)
            self._heads(self.k_space(tokens)),  # (B, h, T, P, d)
            self._heads(self.v_proj(tokens)),  # (B, h, T, P, d)
            key_mask, x.text_mask,
            self._dropout_p(tokens.device, fused=True),
            need_weights,
        )  # (B, h, L, d); maps (B, h, L, T, P)
        return out, None if maps is None else maps.unflatten(-1, (h, w))  # (B, h, L, T, H, W)
