"""Divided spatio-temporal attention: text queries attend over time, then over space."""

from __future__ import annotations

import warnings
from typing import Any, Literal, cast, overload

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_positive, owner_name
from ..functional import divided_attention
from .attention import AttentionOutput, _check_video_text, _PositionalEncoding3d, _zero_invalid

__all__ = ["FactorizedSpatioTemporalAttention"]


class FactorizedSpatioTemporalAttention(nn.Module):
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
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        check_positive(dim, owner=self, arg="dim")
        check_positive(num_heads, owner=self, arg="num_heads")
        if dim % num_heads:
            raise ValueError(
                f"{owner_name(self)}: expected `num_heads` to divide dim={dim}, got {num_heads}."
            )
        if video_dim is not None:
            check_positive(video_dim, owner=self, arg="video_dim")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{owner_name(self)}: expected `dropout` in [0, 1), got {dropout!r}.")
        if pos_encoding is not None:
            check_choice(pos_encoding, ("learned", "sinusoidal"), owner=self, arg="pos_encoding")
        self.dim, self.num_heads = int(dim), int(num_heads)
        self.video_dim = int(dim if video_dim is None else video_dim)
        self.head_dim = self.dim // self.num_heads
        self.dropout = float(dropout)
        self.q_time = nn.Linear(self.dim, self.dim, bias=bias, **dd)
        self.k_time = nn.Linear(self.video_dim, self.dim, bias=bias, **dd)
        self.q_space = nn.Linear(self.dim, self.dim, bias=bias, **dd)
        self.k_space = nn.Linear(self.video_dim, self.dim, bias=bias, **dd)
        self.v_proj = nn.Linear(self.video_dim, self.dim, bias=bias, **dd)
        self.out_proj = nn.Linear(self.dim, self.dim, bias=bias, **dd)
        self.pos = (
            None if pos_encoding is None
            else _PositionalEncoding3d(pos_encoding, self.video_dim, max_grid=max_grid, **dd)
        )
        self._warned_slow_path = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.q_time, self.k_time, self.q_space, self.k_space, self.v_proj,
                    self.out_proj):
            nn.init.xavier_uniform_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        if self.pos is not None:
            self.pos.reset_parameters()

    def _heads(self, x: Tensor) -> Tensor:  # (B, ..., D) -> (B, h, ..., d)
        return x.unflatten(-1, (self.num_heads, self.head_dim)).movedim(-2, 1)

    @overload
    def forward(self, video: Tensor, text: Tensor, *, video_mask: Tensor | None = ...,
                text_mask: Tensor | None = ..., return_attention: Literal[False] = ...) -> Tensor:
        ...

    @overload
    def forward(self, video: Tensor, text: Tensor, *, video_mask: Tensor | None = ...,
                text_mask: Tensor | None = ..., return_attention: Literal[True]
                ) -> AttentionOutput:
        ...

    def forward(
        self,
        video: Tensor,
        text: Tensor,
        *,
        video_mask: Tensor | None = None,
        text_mask: Tensor | None = None,
        return_attention: bool = False,
    ) -> Tensor | AttentionOutput:
        x = _check_video_text(self, video, text, video_mask, text_mask,
                             video_dim=self.video_dim, dim=self.dim)
        b, t, h, w, _ = x.video.shape
        tokens = x.video
        if self.pos is not None:
            tokens = tokens + self.pos(t, h, w, tokens, owner=self)  # (B, T, H, W, Dv)
        tokens = tokens.reshape(b, t, h * w, self.video_dim)  # (B, T, P, Dv)
        key_mask = None if x.key_mask is None else x.key_mask.reshape(b, t, h * w)  # (B, T, P)
        p = self.dropout if self.training else 0.0
        if (p > 0 and tokens.device.type == "cpu" and not self._warned_slow_path
                and not torch.compiler.is_compiling()):  # warnings do not trace: eager only
            self._warned_slow_path = True
            warnings.warn(
                f"{owner_name(self)}: attention dropout={p} in training rules out the fused "
                "flash-attention kernel on the CPU; PyTorch falls back to the slower math path.",
                stacklevel=2,
            )
        out, maps = divided_attention(
            self._heads(self.q_time(x.text)),  # (B, h, L, d)
            self._heads(self.k_time(tokens)),  # (B, h, T, P, d)
            self._heads(self.q_space(x.text)),  # (B, h, L, d)
            self._heads(self.k_space(tokens)),  # (B, h, T, P, d)
            self._heads(self.v_proj(tokens)),  # (B, h, T, P, d)
            key_mask, x.text_mask, dropout_p=p, need_weights=return_attention,
        )  # (B, h, L, d)
        out = self.out_proj(out.transpose(1, 2).flatten(2))  # (B, L, D)
        out = _zero_invalid(out, key_mask, x.text_mask)
        if not x.batched:
            out = out[0]
        if not return_attention:
            return out
        maps = cast(Tensor, maps).unflatten(-1, (h, w))  # (B, heads, L, T, H, W)
        return AttentionOutput(out, maps if x.batched else maps[0])

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, video_dim={self.video_dim}, "
            f"dropout={self.dropout}"
        )
