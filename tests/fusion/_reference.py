"""Helpers shared by the feature-level fusion tests: inputs, random parameters, the fast path."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def random_features(
    dims: Mapping[str, int], batch: int, dtype: torch.dtype = torch.float64, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Standard normal (B, D_m) features per modality, reproducible from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, d, generator=g, dtype=dtype) for m, d in dims.items()}


def randomise(module: nn.Module) -> None:
    """Every parameter drawn from a standard normal (so zero-initialised ones matter too)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()


def assert_all_present_fast_path_equals_presence_path(
    f: nn.Module, dims: Mapping[str, int], batch: int = 3
) -> None:
    """``present=None`` skips the presence masking; all-True presence must give the same."""
    randomise(f)
    x = random_features(dims, batch, torch.float32)
    ones = {m: torch.ones(batch, dtype=torch.bool) for m in dims}
    torch.testing.assert_close(f(x), f(x, ones))
