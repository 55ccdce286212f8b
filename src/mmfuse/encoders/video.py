"""A per-frame patch encoder for video: a grid of tokens per frame."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._checks import check_inputs, check_size, check_tensor
from ..errors import ShapeError

__all__ = ["VideoEncoder"]


class VideoEncoder(nn.Module):
    """Reference video encoder: non-overlapping patches of every frame embedded to D.

    Each frame is cut into ``patch_size`` x ``patch_size`` patches, embedded linearly (a strided
    convolution), normalised and refined by a residual MLP, giving the (B, T, H', W', D) token
    grid that :class:`mmfuse.alignment.SpatioTemporalAttention` takes. Frames are encoded
    independently; positions are left to the downstream module.

    Args:
        in_channels: Frame channels C.
        out_dim: Token size D.
        patch_size: Patch side P; H and W must be multiples of it.
        mlp_ratio: Hidden size of the MLP as a multiple of D.

    Shape:
        - video: (B, T, C, H, W)
        - output: (B, T, H / P, W / P, D)

    Example:
        >>> enc = VideoEncoder(3, 16, patch_size=4)
        >>> enc(torch.rand(2, 5, 3, 8, 12)).shape
        torch.Size([2, 5, 2, 3, 16])
    """

    def __init__(
        self,
        in_channels: int,
        out_dim: int,
        *,
        patch_size: int = 8,
        mlp_ratio: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        for arg, v in (("in_channels", in_channels), ("out_dim", out_dim),
                       ("patch_size", patch_size), ("mlp_ratio", mlp_ratio)):
            check_size(v, owner=self, arg=arg)
        self.in_channels, self.out_dim, self.patch_size = in_channels, out_dim, patch_size
        self.patch = nn.Conv2d(in_channels, out_dim, patch_size, stride=patch_size, **dd)
        self.norm = nn.LayerNorm(out_dim, **dd)
        self.mlp = nn.Sequential(nn.Linear(out_dim, mlp_ratio * out_dim, **dd), nn.GELU(),
                                 nn.Linear(mlp_ratio * out_dim, out_dim, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.LayerNorm)):
                m.reset_parameters()

    def forward(self, video: Tensor) -> Tensor:
        sizes = check_tensor(video, "B T C H W", owner=self, arg="video", C=self.in_channels)
        p = self.patch_size
        if sizes["H"] % p or sizes["W"] % p:
            raise ShapeError(
                f"VideoEncoder: expected `video` of shape (B, T, C, H, W) with H and W multiples "
                f"of patch_size={p}, got {tuple(video.shape)}."
            )
        check_inputs(self, {"video": video})
        b, t = sizes["B"], sizes["T"]
        x = self.patch(video.flatten(0, 1))  # (B*T, D, H', W')
        x = x.reshape(b, t, *x.shape[1:]).permute(0, 1, 3, 4, 2)  # (B, T, H', W', D)
        x = self.norm(x)
        return x + self.mlp(x)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_dim={self.out_dim}, "
                f"patch_size={self.patch_size}")
