"""mmfuse.functional.fusion.fill_absent: behaviour and boundary checks."""

from __future__ import annotations

import pytest
import torch

from mmfuse import ShapeError
from mmfuse.functional import fill_absent


def test_fill_absent_replaces_only_absent_rows_even_nan() -> None:
    x = torch.randn(3, 2, 4)
    x[1] = float("nan")
    obs = torch.tensor([True, False, True])
    fill = torch.arange(4.0)
    out = fill_absent(x, obs, fill)
    for i in range(3):
        torch.testing.assert_close(out[i], x[i] if obs[i] else fill.expand(2, 4))


def test_fill_absent_errors() -> None:
    x = torch.randn(3, 4)
    with pytest.raises(TypeError, match="^fill_absent: expected `observed` to be a torch.bool"):
        fill_absent(x, torch.ones(3), torch.zeros(4))
    with pytest.raises(ShapeError, match=r"^fill_absent: expected `observed` of shape \(B,\) with "
                       r"B=3, got \(4,\)\.$"):
        fill_absent(x, torch.ones(4, dtype=torch.bool), torch.zeros(4))
    with pytest.raises(TypeError, match=r"^fill_absent: expected `x` to be a tensor of shape \(B, \.\.\.\)"):
        fill_absent(None, torch.ones(3, dtype=torch.bool), torch.zeros(4))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="^fill_absent: expected `fill` to be a tensor"):
        fill_absent(x, torch.ones(3, dtype=torch.bool), 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^fill_absent: expected `observed` on cpu like `x`, got meta"):
        fill_absent(x, torch.ones(3, dtype=torch.bool, device="meta"), torch.zeros(4))
