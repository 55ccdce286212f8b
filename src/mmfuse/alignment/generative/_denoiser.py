"""The denoiser networks behind DiffusionHead (internal): a residual MLP and a small UNet.

Both map a noisy target and an embedding (timestep + condition) to an output of the target's
shape, every block modulated by the embedding with AdaLN-zero, and the output layer at zero,
so an untrained denoiser predicts zero and each block starts as the identity.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._common import MLPBlock, ModulatedConvBlock, norm_groups

__all__ = ["MLPDenoiser", "UNetDenoiser", "default_levels"]


def default_levels(spatial: tuple[int, ...], most: int = 2) -> int:
    """The largest k <= ``most`` such that 2^k divides every spatial size."""
    k = 0
    while k < most and all(s % 2 ** (k + 1) == 0 for s in spatial):
        k += 1
    return k


class MLPDenoiser(nn.Module):
    """Residual MLP over the flattened target (any target shape; small targets).

    Shape: x: (B, *target); emb: (B, H); output (B, out_factor * S0, *rest) for a target
    (S0, *rest) (like x with the default ``out_factor=1``).
    """

    def __init__(self, target_shape: tuple[int, ...], hidden: int, num_blocks: int,
                 out_factor: int = 1, **dd: Any) -> None:
        super().__init__()
        numel = 1
        for s in target_shape:
            numel *= s
        self.numel = numel
        self.out_shape = (out_factor * target_shape[0], *target_shape[1:])
        self.inp = nn.Linear(numel, hidden, **dd)
        self.blocks = nn.ModuleList(MLPBlock(hidden, hidden, **dd) for _ in range(num_blocks))
        self.out_norm = nn.LayerNorm(hidden, elementwise_affine=False, **dd)
        self.out_mod = nn.Linear(hidden, 2 * hidden, **dd)
        self.out = nn.Linear(hidden, out_factor * numel, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.inp.reset_parameters()
        for block in self.blocks:
            block.reset_parameters()  # type: ignore[operator]
        for layer in (self.out_mod, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        batch = x.shape[0]
        h = self.inp(x.reshape(batch, self.numel))  # (B, H)
        for block in self.blocks:
            h = block(h, emb)
        shift, scale = self.out_mod(nn.functional.silu(emb)).chunk(2, dim=-1)  # (B, H) each
        h = self.out_norm(h) * (1 + scale) + shift
        return self.out(h).reshape(batch, *self.out_shape)  # (B, *out_shape)


class UNetDenoiser(nn.Module):
    """A small UNet over images (C, H, W) or sequences (T, D) (convolving along T).

    ``levels`` stride-2 downsamplings, each preceded by ``num_blocks`` modulated residual
    blocks whose output is kept as a skip; a middle block; then nearest x2 upsampling, a
    convolution, the skip added, and the same number of blocks per level. Constant width.

    Shape: x: (B, C, H, W) or (B, T, D); emb: (B, H_emb); output (B, out_factor * C, H, W)
    or (B, out_factor * T, D), the factors' blocks one after another along dim 1 (like x with
    the default ``out_factor=1``), as :class:`MLPDenoiser`'s.
    """

    def __init__(self, target_shape: tuple[int, ...], channels: int, emb_dim: int,
                 num_blocks: int, levels: int, out_factor: int = 1, **dd: Any) -> None:
        super().__init__()
        self.image = len(target_shape) == 3
        self.out_factor = out_factor
        sd = 2 if self.image else 1
        in_ch = target_shape[0] if self.image else target_shape[1]
        conv = nn.Conv2d if sd == 2 else nn.Conv1d
        self.levels, self.num_blocks = levels, num_blocks

        def block() -> ModulatedConvBlock:
            return ModulatedConvBlock(channels, emb_dim, spatial_dims=sd,
                                      modulation="adaln_zero", **dd)

        self.inp = conv(in_ch, channels, 3, padding=1, **dd)
        self.down_blocks = nn.ModuleList(block() for _ in range(levels * num_blocks))
        self.downs = nn.ModuleList(
            conv(channels, channels, 3, stride=2, padding=1, **dd) for _ in range(levels)
        )
        self.mid = block()
        self.ups = nn.ModuleList(conv(channels, channels, 3, padding=1, **dd)
                                 for _ in range(levels))
        self.up_blocks = nn.ModuleList(block() for _ in range(levels * num_blocks))
        self.out_norm = nn.GroupNorm(norm_groups(channels), channels, affine=False, **dd)
        self.out_mod = nn.Linear(emb_dim, 2 * channels, **dd)
        self.out = conv(channels, out_factor * in_ch, 3, padding=1, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in (self.inp, *self.downs, *self.ups, self.mid, *self.down_blocks,
                  *self.up_blocks):
            m.reset_parameters()  # type: ignore[operator]
        for layer in (self.out_mod, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)  # type: ignore[arg-type]

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.inp(x if self.image else x.transpose(1, 2))  # (B, ch, H, W) or (B, ch, T)
        skips = []
        for level in range(self.levels):
            for k in range(self.num_blocks):
                h = self.down_blocks[level * self.num_blocks + k](h, emb)
            skips.append(h)
            h = self.downs[level](h)  # half resolution
        h = self.mid(h, emb)
        for level in range(self.levels):
            h = nn.functional.interpolate(h, scale_factor=2.0, mode="nearest")
            h = self.ups[level](h) + skips[self.levels - 1 - level]
            for k in range(self.num_blocks):
                h = self.up_blocks[level * self.num_blocks + k](h, emb)
        shift, scale = self.out_mod(nn.functional.silu(emb)).chunk(2, dim=-1)  # (B, ch) each
        shape = shift.shape + (1,) * (h.dim() - 2)
        h = self.out_norm(h) * (1 + scale.reshape(shape)) + shift.reshape(shape)
        out = self.out(nn.functional.silu(h))  # (B, f C, H, W) or (B, f D, T)
        if self.image:
            return out
        out = out.transpose(1, 2)  # (B, T, f D)
        if self.out_factor == 1:
            return out
        return torch.cat(out.chunk(self.out_factor, dim=-1), dim=1)  # (B, f T, D)
