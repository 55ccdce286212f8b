"""BackboneAdapter: output selection, pooling, freezing."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from mmfuse import ShapeError
from mmfuse.encoders import BackboneAdapter


class _DictBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.lin(x)  # (B, N, 6)
        return OrderedDict(last_hidden_state=h, pooler_output=h[:, 0])


def test_selects_pools_and_projects() -> None:
    torch.manual_seed(0)
    bb = _DictBackbone()
    x = torch.randn(3, 5, 4)
    h = bb.lin(x)
    tokens = BackboneAdapter(bb, 6, output_key="last_hidden_state")
    torch.testing.assert_close(tokens(x), h)
    torch.testing.assert_close(BackboneAdapter(bb, 6, output_key="last_hidden_state",
                                               pool="mean")(x), h.mean(1))
    torch.testing.assert_close(BackboneAdapter(bb, 6, output_key="last_hidden_state",
                                               pool="first")(x), h[:, 0])
    proj = BackboneAdapter(bb, 6, output_key="pooler_output", out_dim=2)
    assert proj.proj is not None
    torch.testing.assert_close(proj(x), proj.proj(h[:, 0]))
    tup = BackboneAdapter(nn.LSTM(4, 6, batch_first=True), 6, pool="mean")
    assert tup(x).shape == (3, 6)  # LSTM returns (output, state): the first item is taken


def test_freeze_stops_gradients_and_keeps_eval_mode() -> None:
    bb = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
    enc = BackboneAdapter(bb, 6, out_dim=3, freeze=True).train()
    assert not bb.training
    before = bb[1].running_mean.clone()
    enc(torch.randn(8, 4) + 5.0).sum().backward()
    torch.testing.assert_close(bb[1].running_mean, before)
    assert all(p.grad is None and not p.requires_grad for p in bb.parameters())
    assert enc.proj is not None and enc.proj.weight.grad is not None


def test_errors() -> None:
    enc = BackboneAdapter(nn.Linear(4, 6), 5)
    with pytest.raises(ShapeError, match=r"BackboneAdapter: expected the backbone output of shape "
                                         r"\(B, \.\.\., D\) with D=5 \(the declared `feature_dim`\), "
                                         r"got \(2, 6\)"):
        enc(torch.randn(2, 4))
    with pytest.raises(TypeError, match=r"set `output_key`"):
        BackboneAdapter(_DictBackbone(), 6)(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match=r"expected `backbone` to be an nn.Module"):
        BackboneAdapter(lambda x: x, 6)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown `pool` 'max'"):
        BackboneAdapter(nn.Linear(4, 6), 6, pool="max")
