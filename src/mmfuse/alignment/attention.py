"""Spatio-temporal attention: text queries attend over every T x H x W video token."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast, overload

import torch
from torch import Tensor, nn

from .._checks import (
    check_choice,
    check_heads,
    check_inputs,
    check_mask,
    check_probability,
    check_same_device,
    check_size,
    check_tensor,
    format_shape,
    owner_name,
)
from ..errors import ShapeError
from ..functional import masked_attention, sinusoidal_encoding_3d

__all__ = ["AttentionOutput", "SpatioTemporalAttention"]


class AttentionOutput(NamedTuple):
    """What an alignment attention module returns with ``return_attention=True``.

    Attributes:
        output: The module's usual output.
        attention: The attention maps, before dropout; rows of masked queries, and of queries
            with no kept key, are zero.
    """

    output: Tensor
    attention: Tensor


class _Inputs(NamedTuple):
    video: Tensor  # (B, T, H, W, Dv)
    text: Tensor  # (B, L, D)
    key_mask: Tensor | None  # (B, T, H, W) bool
    text_mask: Tensor | None  # (B, L) bool
    batched: bool


def _check_maybe_batched(
    x: object, layout: str, *, owner: object, arg: str, **sizes: int
) -> tuple[dict[str, int], bool]:
    """Check ``x`` against ``"B " + layout`` or, unbatched, ``layout``; return its named sizes
    and whether it is batched."""
    names = layout.split()
    if isinstance(x, Tensor) and x.dim() not in (len(names), len(names) + 1):
        fixed = ", ".join(f"{k}={v}" for k, v in sizes.items() if k in names)
        raise ShapeError(
            f"{owner_name(owner)}: expected `{arg}` of shape (B, {', '.join(names)}) or "
            f"({', '.join(names)}){' with ' + fixed if fixed else ''}, got {format_shape(x.shape)}."
        )
    batched = not isinstance(x, Tensor) or x.dim() == len(names) + 1
    bound = check_tensor(x, ("B " if batched else "") + layout, owner=owner, arg=arg,
                         **cast(Any, sizes))
    return bound, batched


def _check_video_text(
    owner: object,
    video: Any,
    text: Any,
    video_mask: Any,
    text_mask: Any,
    *,
    video_dim: int,
    dim: int,
) -> _Inputs:
    """Validate the spatio-temporal modules' inputs; return them batched, masks expanded."""
    sizes, batched = _check_maybe_batched(video, "T H W Dv", owner=owner, arg="video",
                                          Dv=video_dim)
    lead = "B " if batched else ""
    batch = {"B": sizes["B"]} if batched else {}
    if not batched and isinstance(text, Tensor) and text.dim() == 3:  # the video lost its batch
        raise ShapeError(
            f"{owner_name(owner)}: expected `video` of shape (B, T, H, W, Dv) with Dv={video_dim} "
            f"like the batched `text` of shape {format_shape(text.shape)}, "
            f"got {format_shape(video.shape)}."
        )
    check_tensor(text, lead + "L D", owner=owner, arg="text", **cast(Any, batch), D=dim)
    check_same_device({"video": video, "text": text}, owner=owner)
    t, h, w = sizes["T"], sizes["H"], sizes["W"]
    full = lead + "T H W"
    layout = full if isinstance(video_mask, Tensor) and video_mask.dim() == len(full.split()) else (
        lead + "T"
    )
    check_mask(video_mask, owner=owner, arg="video_mask", layout=layout, device=video.device,
               **batch, T=t, H=h, W=w)
    check_mask(text_mask, owner=owner, arg="text_mask", layout=lead + "L", device=video.device,
               **batch, L=text.shape[-2])
    if isinstance(owner, nn.Module):
        check_inputs(owner, {"video": video, "text": text})
    if not batched:  # add a batch of one: (1, T, H, W, Dv), (1, L, D), masks likewise
        video, text = video[None], text[None]
        video_mask = None if video_mask is None else video_mask[None]
        text_mask = None if text_mask is None else text_mask[None]
    key_mask = None
    if video_mask is not None:
        b = video.shape[0]
        key_mask = video_mask if video_mask.dim() == 4 else (
            video_mask[:, :, None, None].expand(b, t, h, w)
        )  # (B, T, H, W)
        # Masked tokens' values (even NaN or inf) never enter the arithmetic.
        video = torch.where(key_mask[..., None], video, video.new_zeros(()))
    if text_mask is not None:
        text = torch.where(text_mask[..., None], text, text.new_zeros(()))
    return _Inputs(video, text, key_mask, text_mask, batched)


class _PositionalEncoding3d(nn.Module):
    """Separable 3-D positional encoding of a (T, H, W) grid of tokens.

    ``"learned"``: three tables (time, height, width) summed, ``e_t[t] + e_h[h] + e_w[w]``,
    sized by ``max_grid``. ``"sinusoidal"``: channels split in three groups, each a fixed 1-D
    sin/cos table of one axis (no size limit, no parameters).

    Shape:
        - output of ``forward(t, h, w, like)``: (T, H, W, dim) in ``like``'s dtype and device
    """

    def __init__(
        self,
        kind: str,
        dim: int,
        *,
        max_grid: tuple[int, int, int] = (64, 32, 32),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_choice(kind, ("learned", "sinusoidal"), owner="SpatioTemporalAttention", arg="kind")
        for n in max_grid:
            check_size(n, owner="SpatioTemporalAttention", arg="max_grid")
        self.kind, self.dim, self.max_grid = kind, dim, tuple(int(n) for n in max_grid)
        self.tables = nn.ParameterList()
        if kind == "learned":
            self.tables.extend(
                nn.Parameter(torch.empty(n, dim, device=device, dtype=dtype))
                for n in self.max_grid
            )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for table in self.tables:
            nn.init.trunc_normal_(table, std=0.02)

    def forward(self, t: int, h: int, w: int, like: Tensor, *, owner: object) -> Tensor:
        if self.kind == "sinusoidal":
            return sinusoidal_encoding_3d(t, h, w, self.dim, device=like.device, dtype=like.dtype)
        mt, mh, mw = self.max_grid
        if t > mt or h > mh or w > mw:
            raise ShapeError(
                f"{owner_name(owner)}: expected `video` with (T, H, W) at most {(mt, mh, mw)} "
                f"for the learned positional encoding, got {(t, h, w)}."
            )
        et, eh, ew = self.tables[0], self.tables[1], self.tables[2]
        pos = et[:t, None, None, :] + eh[None, :h, None, :] + ew[None, None, :w, :]
        return pos.to(like.dtype)  # (T, H, W, dim)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return f"{self.kind!r}, dim={self.dim}, max_grid={self.max_grid}"


class _VideoTextAttention(nn.Module):
    """What the text-over-video attention modules share (private base).

    The configuration checks and attributes, the positional encoding, the input checks and the
    output's last steps (output projection, zeroed invalid rows, unbatching, maps). A subclass
    creates its projections (then ``self.pos = self._positional_encoding(...)``) and
    implements :meth:`_attend`.
    """

    pos: _PositionalEncoding3d | None
    out_proj: nn.Linear

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        video_dim: int | None,
        dropout: float,
        pos_encoding: str | None,
    ) -> None:
        super().__init__()
        check_heads(dim, num_heads, owner=self)
        if video_dim is not None:
            check_size(video_dim, owner=self, arg="video_dim")
        check_probability(dropout, owner=self, arg="dropout")
        if pos_encoding is not None:
            check_choice(pos_encoding, ("learned", "sinusoidal"), owner=self, arg="pos_encoding")
        self.dim, self.num_heads = int(dim), int(num_heads)
        self.video_dim = int(dim if video_dim is None else video_dim)
        self.head_dim = self.dim // self.num_heads
        self.dropout = float(dropout)
        self._warned_slow_path = False

    def _positional_encoding(
        self, kind: str | None, max_grid: tuple[int, int, int], dd: dict[str, Any]
    ) -> _PositionalEncoding3d | None:
        return None if kind is None else _PositionalEncoding3d(
            kind, self.video_dim, max_grid=max_grid, **dd
        )

    def _reset_projections(self, *layers: nn.Linear) -> None:
        for lin in layers:
            nn.init.xavier_uniform_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        if self.pos is not None:
            self.pos.reset_parameters()

    def _heads(self, x: Tensor) -> Tensor:  # (B, ..., D) -> (B, h, ..., d)
        x = x.unflatten(-1, (self.num_heads, self.head_dim))  # (B, ..., h, d)
        return x.movedim(x.dim() - 2, 1)  # a positive index: the ONNX exporters need one

    def _dropout_p(self, device: torch.device, *, fused: bool) -> float:
        """The attention dropout to apply; warns once (eager only) where, on the CPU, dropout
        rules out the fused kernel that would otherwise run (``fused``)."""
        p = self.dropout if self.training else 0.0
        if (p > 0 and device.type == "cpu" and fused and not self._warned_slow_path
                and not torch.compiler.is_compiling()):  # warnings do not trace: eager only
            self._warned_slow_path = True
            warnings.warn(
                f"{owner_name(self)}: attention dropout={p} in training rules out the fused "
                "flash-attention kernel on the CPU; PyTorch falls back to the slower math "
                "path (dropout=0 keeps the fused kernel).",
                stacklevel=4,
            )
        return p

    def _attend(
        self, tokens: Tensor, x: _Inputs, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        """The attention core: ``tokens`` (B, T, H, W, Dv), positions added, to the heads'
        outputs (B, heads, L, d) and, with ``need_weights``, maps (B, heads, L, T, H, W)."""
        raise NotImplementedError

    @overload
    def forward(self, video: Tensor, text: Tensor, *, video_mask: Tensor | None = ...,
                text_mask: Tensor | None = ..., return_attention: Literal[False] = ...) -> Tensor:
        ...

    @overload
    def forward(self, video: Tensor, text: Tensor, *, video_mask: Tensor | None = ...,
                text_mask: Tensor | None = ..., return_attention: Literal[True]
                ) -> AttentionOutput:
        ...

    @overload
    def forward(self, video: Tensor, text: Tensor, *, video_mask: Tensor | None = ...,
                text_mask: Tensor | None = ..., return_attention: bool
                ) -> Tensor | AttentionOutput:
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
        _, t, h, w, _ = x.video.shape
        tokens = x.video
        if self.pos is not None:
            tokens = tokens + self.pos(t, h, w, tokens, owner=self)  # (B, T, H, W, Dv)
        out, maps = self._attend(tokens, x, return_attention)  # (B, h, L, d)
        out = self.out_proj(out.transpose(1, 2).flatten(2))  # (B, L, D)
        out = _zero_invalid(out, x.key_mask, x.text_mask)
        if not x.batched:
            out = out[0]
        if not return_attention:
            return out
        maps = cast(Tensor, maps)  # (B, heads, L, T, H, W): need_weights was True
        return AttentionOutput(out, maps if x.batched else maps[0])

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, video_dim={self.video_dim}, "
            f"dropout={self.dropout}"
        )


class SpatioTemporalAttention(_VideoTextAttention):
    """Text tokens attend over all T x H x W video tokens (multi-head cross-attention).

    The source document's module, corrected: each of the L text tokens is a query over the
    N = T*H*W visual tokens, with per-head ``1/sqrt(d)`` scaling. It runs on
    :func:`torch.nn.functional.scaled_dot_product_attention`, so the fused flash-attention
    kernel (CPU and CUDA) does the work and the (L, N) maps are never stored, unless
    ``return_attention=True`` (the maps are then computed explicitly) or attention dropout is
    active in training on the CPU (PyTorch's fused CPU kernel has no dropout; a warning says
    so once per module).

    Masks are bool with True = keep, like ``F.scaled_dot_product_attention`` (the opposite of
    ``nn.MultiheadAttention``'s ``key_padding_mask``). A text token whose visual keys are all
    masked, and a masked text token, get a zero output (and a zero map row), never NaN; masked
    values never enter the arithmetic (even NaN or inf there changes nothing).

    Args:
        dim: Text feature size D (queries and output).
        num_heads: Number of heads; must divide ``dim``.
        video_dim: Video feature size Dv; default ``dim``.
        dropout: Attention dropout probability (training only).
        pos_encoding: None, ``"learned"`` or ``"sinusoidal"``: a separable 3-D positional
            encoding over (t, h, w) added to the video tokens before the key/value projections.
        max_grid: Largest (T, H, W) of the learned positional encoding.
        bias: Whether the projections have biases.

    Shape:
        - video: (B, T, H, W, Dv) or unbatched (T, H, W, Dv)
        - text: (B, L, D) or unbatched (L, D)
        - video_mask: (B, T) for padded frames or (B, T, H, W); text_mask: (B, L); unbatched
          without the B
        - output: (B, L, D) (unbatched: (L, D)); with ``return_attention=True`` an
          :class:`AttentionOutput` whose ``attention`` is (B, heads, L, T, H, W)

    Example:
        >>> attn = SpatioTemporalAttention(16, 4, video_dim=8)
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
        self.q_proj = nn.Linear(self.dim, self.dim, bias=bias, **dd)
        self.k_proj = nn.Linear(self.video_dim, self.dim, bias=bias, **dd)
        self.v_proj = nn.Linear(self.video_dim, self.dim, bias=bias, **dd)
        self.out_proj = nn.Linear(self.dim, self.dim, bias=bias, **dd)
        self.pos = self._positional_encoding(pos_encoding, max_grid, dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._reset_projections(self.q_proj, self.k_proj, self.v_proj, self.out_proj)

    def _attend(
        self, tokens: Tensor, x: _Inputs, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        b, t, h, w, _ = tokens.shape
        tokens = tokens.reshape(b, t * h * w, self.video_dim)  # (B, N, Dv)
        q = self._heads(self.q_proj(x.text))  # (B, h, L, d)
        k = self._heads(self.k_proj(tokens))  # (B, h, N, d)
        v = self._heads(self.v_proj(tokens))  # (B, h, N, d)
        key_mask = None if x.key_mask is None else x.key_mask.reshape(b, t * h * w)  # (B, N)
        out, maps = masked_attention(
            q, k, v, key_mask, x.text_mask,
            dropout_p=self._dropout_p(q.device, fused=not need_weights),
            need_weights=need_weights,
        )  # (B, h, L, d); maps (B, h, L, N)
        return out, None if maps is None else maps.unflatten(-1, (t, h, w))  # (B, h, L, T, H, W)


def _zero_invalid(out: Tensor, key_mask: Tensor | None, text_mask: Tensor | None) -> Tensor:
    """Zero the (B, L, D) rows of masked queries and of queries with no kept key."""
    keep: Tensor | None = None
    if key_mask is not None:
        keep = key_mask.flatten(1).any(dim=-1)[:, None]  # (B, 1)
    if text_mask is not None:
        keep = text_mask if keep is None else keep & text_mask  # (B, L)
    if keep is None:
        return out
    return torch.where(keep[..., None], out, out.new_zeros(()))
