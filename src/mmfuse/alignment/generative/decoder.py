"""A decoder from a condition vector to an image or a sequence, through modulated blocks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..._checks import check_choice, check_inputs, check_size, check_tensor, owner_name
from ._common import ModulatedConvBlock, norm_groups, target_shape

__all__ = ["ConditionalDecoder"]

MODULATIONS = ("adaln_zero", "film")


class ConditionalDecoder(nn.Module):
    """Decode a condition vector into an image (C, H, W) or a sequence (T, D).

    A linear stem maps the condition to a coarse grid of ``channels`` features, at
    ``(H, W) / 2^k`` for images or ``T / 2^k`` for sequences; then ``k`` stages each run
    ``blocks_per_stage`` residual blocks modulated by the condition and upsample by 2 (nearest,
    then a 3-wide convolution); a normalised 1x1 convolution gives the output channels.

    Every block is modulated by the condition, with FiLM or AdaLN-zero; the modulation
    projections start at zero, so each block starts as the identity and conditioning is
    learned from a stable start (the stem carries the condition at initialisation).

    Args:
        cond_dim: Size E of the condition vector.
        out_shape: ``(C, H, W)`` for images or ``(T, D)`` for sequences.
        channels: Feature channels of the blocks.
        num_upsamples: Number of x2 stages k; default the largest k <= 2 that divides the
            spatial sizes. ``H`` and ``W`` (or ``T``) must be divisible by ``2^k``.
        blocks_per_stage: Modulated blocks before each upsampling (and at the end).
        modulation: ``"adaln_zero"`` (shift, scale and gate) or ``"film"`` (scale and shift).

    Shape:
        - cond: (B, E)
        - output: (B, C, H, W) or (B, T, D)

    Example:
        >>> dec = ConditionalDecoder(16, (1, 8, 8), channels=32)
        >>> dec(torch.randn(2, 16)).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        cond_dim: int,
        out_shape: Sequence[int],
        *,
        channels: int = 64,
        num_upsamples: int | None = None,
        blocks_per_stage: int = 1,
        modulation: str = "adaln_zero",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        check_size(cond_dim, owner=self, arg="cond_dim")
        self.out_shape = target_shape(out_shape, owner=self, arg="out_shape", ranks=(2, 3))
        check_size(channels, owner=self, arg="channels")
        check_size(blocks_per_stage, owner=self, arg="blocks_per_stage")
        check_choice(modulation, MODULATIONS, owner=self, arg="modulation")
        self.image = len(self.out_shape) == 3
        spatial = list(self.out_shape[1:]) if self.image else [self.out_shape[0]]
        if num_upsamples is None:
            num_upsamples = 0
            while num_upsamples < 2 and all(s % 2 ** (num_upsamples + 1) == 0 for s in spatial):
                num_upsamples += 1
        check_size(num_upsamples, owner=self, arg="num_upsamples", allow_zero=True)
        if any(s % 2**num_upsamples for s in spatial):
            raise ValueError(
                f"{owner_name(self)}: expected spatial sizes {tuple(spatial)} of `out_shape` "
                f"divisible by 2**num_upsamples={2**num_upsamples}, got {self.out_shape}."
            )
        self.cond_dim, self.channels = int(cond_dim), int(channels)
        self.num_upsamples, self.modulation = int(num_upsamples), modulation
        self.base = tuple(s // 2**num_upsamples for s in spatial)
        n_base = 1
        for s in self.base:
            n_base *= s
        sd = len(spatial)
        conv = nn.Conv2d if sd == 2 else nn.Conv1d
        self.stem = nn.Linear(cond_dim, channels * n_base, **dd)
        self.blocks = nn.ModuleList(
            ModulatedConvBlock(channels, cond_dim, spatial_dims=sd, modulation=modulation, **dd)
            for _ in range((num_upsamples + 1) * blocks_per_stage)
        )
        self.ups = nn.ModuleList(
            conv(channels, channels, 3, padding=1, **dd) for _ in range(num_upsamples)
        )
        self.blocks_per_stage = int(blocks_per_stage)
        self.out_norm = nn.GroupNorm(norm_groups(channels), channels, **dd)
        out_channels = self.out_shape[0] if self.image else self.out_shape[1]
        self.head = conv(channels, out_channels, 1, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.stem.reset_parameters()
        for block in self.blocks:
            block.reset_parameters()  # type: ignore[operator]
        for up in self.ups:
            up.reset_parameters()  # type: ignore[operator]
        self.out_norm.reset_parameters()
        self.head.reset_parameters()

    def forward(self, cond: Tensor) -> Tensor:
        batch = check_tensor(cond, "B E", owner=self, arg="cond", E=self.cond_dim)["B"]
        check_inputs(self, {"cond": cond})
        h = self.stem(cond).reshape(batch, self.channels, *self.base)  # (B, ch, *base)
        k = 0
        for stage in range(self.num_upsamples + 1):
            for _ in range(self.blocks_per_stage):
                h = self.blocks[k](h, cond)
                k += 1
            if stage < self.num_upsamples:
                h = nn.functional.interpolate(h, scale_factor=2.0, mode="nearest")
                h = self.ups[stage](h)  # (B, ch, *2 spatial)
        out = self.head(nn.functional.silu(self.out_norm(h)))  # (B, C, H, W) or (B, D, T)
        return out if self.image else out.transpose(1, 2)  # (B, T, D) for sequences

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return (f"cond_dim={self.cond_dim}, out_shape={self.out_shape}, "
                f"channels={self.channels}, num_upsamples={self.num_upsamples}, "
                f"modulation={self.modulation!r}")
