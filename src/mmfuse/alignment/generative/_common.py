"""Helpers shared by the generative heads: target shapes, seeded noise, residual blocks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..._checks import check_tensor, owner_name

__all__ = [
    "MLPBlock",
    "ModulatedConvBlock",
    "check_labels",
    "check_target",
    "draw_normal",
    "draw_uniform",
    "norm_groups",
    "target_shape",
]

_LAYOUTS = {1: "B D", 2: "B T D", 3: "B C H W"}


def target_shape(shape: object, *, owner: object, arg: str = "target_shape",
                 ranks: Sequence[int] = (1, 2, 3)) -> tuple[int, ...]:
    """Validate a per-sample target shape: (D,) vectors, (T, D) sequences, (C, H, W) images."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    ok = isinstance(shape, Sequence) and len(shape) in ranks and all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape
    )
    if not ok:
        names = " or ".join("(" + ", ".join(_LAYOUTS[r].split()[1:]) + ")" for r in ranks)
        raise ValueError(
            f"{owner_name(owner)}: expected `{arg}` to be a tuple of positive ints {names}, "
            f"got {shape!r}."
        )
    return tuple(int(s) for s in cast(Sequence[int], shape))


def check_target(x: object, shape: tuple[int, ...], *, owner: object, arg: str,
                 batch: int | None = None) -> int:
    """Check ``x`` is a floating (B, *shape) tensor and return B."""
    layout = _LAYOUTS[len(shape)]
    sizes: dict[str, Any] = dict(zip(layout.split()[1:], shape))
    if batch is not None:
        sizes["B"] = batch
    return check_tensor(x, layout, owner=owner, arg=arg, **sizes)["B"]


def check_loss_batch(batch: int, *, owner: object, arg: str) -> None:
    """A loss averages over the batch: refuse B=0 (the mean of nothing is NaN)."""
    if batch == 0:
        raise ValueError(
            f"{owner_name(owner)}: expected at least one sample in `{arg}` to average the loss "
            f"over, got B=0."
        )


def check_labels(labels: object, *, owner: object, arg: str, batch: int | None = None,
                 what: str = "class indices") -> int:
    """An integer (B,) tensor (class indices, timesteps); returns B. Values are not read."""
    sizes: dict[str, Any] = {} if batch is None else {"B": batch}
    bound = check_tensor(labels, "B", owner=owner, arg=arg, floating=None, **sizes)
    dtype = cast(Tensor, labels).dtype
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise TypeError(
            f"{owner_name(owner)}: expected `{arg}` to be an integer tensor of {what}, "
            f"got {dtype}."
        )
    return bound["B"]


def draw_normal(shape: Sequence[int], *, device: torch.device, dtype: torch.dtype,
                generator: torch.Generator | None) -> Tensor:
    """Standard normal noise on ``device``/``dtype``. With a generator, the numbers are drawn on
    the generator's device in float32 and moved, so one seed gives one result on any device."""
    if generator is None:
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    z = torch.randn(tuple(shape), generator=generator, device=generator.device)
    return z.to(device=device, dtype=dtype)


def draw_uniform(shape: Sequence[int], *, device: torch.device,
                 generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) float32 numbers, drawn like :func:`draw_normal`."""
    if generator is None:
        return torch.rand(tuple(shape), device=device)
    return torch.rand(tuple(shape), generator=generator, device=generator.device).to(device)


def norm_groups(channels: int) -> int:
    """Groups for GroupNorm: up to 8, dividing the channels."""
    return math.gcd(channels, 8)


class ModulatedConvBlock(nn.Module):
    """A residual conv block modulated by a condition, zero-initialised to the identity.

    ``"adaln_zero"`` (DiT): ``(shift, scale, gate) = W c``;
    ``h + gate * f(norm(h) * (1 + scale) + shift)``. ``"film"`` (Perez et al.):
    ``(gamma, beta) = W c``; ``h + gamma * f(norm(h)) + beta``. ``W`` starts at zero, so at
    initialisation the block returns its input unchanged. ``f`` is two 3-wide convolutions.

    Shape: h: (B, C, *spatial) with one or two spatial dims; cond: (B, E); output like h.
    """

    def __init__(self, channels: int, cond_dim: int, *, spatial_dims: int, modulation: str,
                 **dd: Any) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv1d
        self.modulation = modulation
        self.norm = nn.GroupNorm(norm_groups(channels), channels, affine=False, **dd)
        self.conv1 = conv(channels, channels, 3, padding=1, **dd)
        self.conv2 = conv(channels, channels, 3, padding=1, **dd)
        self.mod = nn.Linear(cond_dim, (3 if modulation == "adaln_zero" else 2) * channels, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.conv1.reset_parameters()
        self.conv2.reset_parameters()
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        params = self.mod(nn.functional.silu(cond))
        params = params.reshape(params.shape + (1,) * (h.dim() - 2))  # (B, k C, 1[, 1])
        if self.modulation == "adaln_zero":
            shift, scale, gate = params.chunk(3, dim=1)  # (B, C, 1[, 1]) each
            return h + gate * self._branch(self.norm(h) * (1 + scale) + shift)
        gamma, beta = params.chunk(2, dim=1)
        return h + gamma * self._branch(self.norm(h)) + beta

    def _branch(self, y: Tensor) -> Tensor:
        return self.conv2(nn.functional.silu(self.conv1(nn.functional.silu(y))))


class MLPBlock(nn.Module):
    """A residual MLP block with AdaLN-zero modulation (DiT), identity at initialisation.

    Shape: h: (B, H); cond: (B, E); output (B, H).
    """

    def __init__(self, hidden: int, cond_dim: int, *, mult: int = 2, **dd: Any) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, **dd)
        self.fc1 = nn.Linear(hidden, mult * hidden, **dd)
        self.fc2 = nn.Linear(mult * hidden, hidden, **dd)
        self.mod = nn.Linear(cond_dim, 3 * hidden, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        shift, scale, gate = self.mod(nn.functional.silu(cond)).chunk(3, dim=-1)  # (B, H) each
        y = self.norm(h) * (1 + scale) + shift
        return h + gate * self.fc2(nn.functional.silu(self.fc1(y)))
