"""A small CNN image encoder: pooled vectors and a grid of tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._checks import check_inputs, check_size, check_tensor
from ._layers import ConvBlock

__all__ = ["ImageEncoder"]


class ImageEncoder(nn.Module):
    """Reference image encoder: a few 3x3 conv blocks, each after the first halving the grid.

    ``forward`` gives one vector per image (the mean of the tokens); :meth:`forward_tokens` the
    (B, N, D) tokens of the final grid (N = H' x W', row-major), for token-level fusion or
    attention. GroupNorm keeps every image independent of the rest of the batch.

    Args:
        in_channels: Image channels C (1 for grey, 3 for RGB).
        out_dim: Feature size D.
        width: Channels of the conv blocks.
        depth: Number of conv blocks; the grid shrinks by 2 ** (depth - 1).

    Shape:
        - images: (B, C, H, W)
        - output: (B, D); tokens: (B, N, D) with N = ceil(H / 2**(depth-1)) * ceil(W / ...)

    Example:
        >>> enc = ImageEncoder(1, 32)
        >>> x = torch.rand(4, 1, 8, 8)
        >>> enc(x).shape, enc.forward_tokens(x).shape
        (torch.Size([4, 32]), torch.Size([4, 4, 32]))
    """

    def __init__(
        self,
        in_channels: int,
        out_dim: int,
        *,
        width: int = 32,
        depth: int = 3,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        for arg, v in (("in_channels", in_channels), ("out_dim", out_dim), ("width", width),
                       ("depth", depth)):
            check_size(v, owner=self, arg=arg)
        self.in_channels, self.out_dim, self.width, self.depth = in_channels, out_dim, width, depth
        self.blocks = nn.Sequential(*[
            ConvBlock(in_channels if i == 0 else width, width, 1 if i == 0 else 2, **dd)
            for i in range(depth)
        ])
        self.proj = nn.Conv2d(width, out_dim, 1, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.GroupNorm, nn.Linear)):
                m.reset_parameters()

    def forward_tokens(self, images: Tensor) -> Tensor:
        """(B, N, D) tokens of the final feature grid, row-major."""
        check_tensor(images, "B C H W", owner=self, arg="images", C=self.in_channels)
        check_inputs(self, {"images": images})
        grid = self.proj(self.blocks(images))  # (B, D, H', W')
        return grid.flatten(2).transpose(1, 2)  # (B, H'W', D)

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_tokens(images).mean(dim=1)  # (B, D)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_dim={self.out_dim}, width={self.width}, "
                f"depth={self.depth}")
