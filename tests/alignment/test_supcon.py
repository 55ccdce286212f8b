"""SupConLoss: agreement with supcon_loss, the temperature as buffer or clamped parameter,
configuration errors, torch.compile, state_dict."""

from __future__ import annotations

import math

import pytest
import torch

from mmfuse.alignment import SupConLoss, supcon_loss


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 2, 5, generator=g), torch.tensor([0, 1, 0, 2, 1, 1])


def test_module_matches_the_function_and_the_temperature_is_a_buffer():
    x, y = _data()
    m = SupConLoss(temperature=0.2, variant="in")
    assert list(m.parameters()) == [] and "logit_scale" in m.state_dict()
    assert math.isclose(m.scale.item(), 5.0, rel_tol=1e-6)
    assert torch.equal(m(x, y), supcon_loss(x, y, temperature=m.scale.reciprocal(),
                                            variant="in"))
    w = torch.tensor([1.0, 0.0, 2.0, 1.0, 1.0, 0.5])
    assert torch.equal(m(x, y, w), supcon_loss(x, y, temperature=m.scale.reciprocal(),
                                               variant="in", weights=w))


def test_learnable_temperature_gets_the_reference_gradient():
    x, y = _data(1)
    m = SupConLoss(temperature=0.1, learnable=True)
    m(x, y).backward()
    log_s = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    supcon_loss(x.double(), y, temperature=log_s.exp().reciprocal()).backward()
    assert torch.allclose(m.logit_scale.grad.double(), log_s.grad, rtol=1e-5)
    # clamped at max_scale: no gradient, the parameter untouched
    c = SupConLoss(temperature=0.001, learnable=True, max_scale=50.0)
    c(x, y).backward()
    assert c.logit_scale.grad.item() == 0.0 and math.isclose(c.scale.item(), 50.0, rel_tol=1e-6)


def test_tiled_module_equals_dense_and_state_dict_round_trips():
    x, y = _data(2)
    dense, tiled = SupConLoss(), SupConLoss(chunk_size=3)
    assert torch.allclose(dense(x, y), tiled(x, y), rtol=1e-5)
    other = SupConLoss(temperature=0.5)
    other.load_state_dict(dense.state_dict())
    assert torch.equal(other(x, y), dense(x, y))
    assert "variant='out'" in repr(dense) and "chunk_size=3" in repr(tiled)


def test_compiled_equals_eager():
    x, y = _data(3)
    m = SupConLoss(learnable=True)
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(x, y), m(x, y), rtol=1e-6)


def test_gather_without_process_group_changes_nothing():
    x, y = _data(4)
    assert torch.equal(SupConLoss(gather=True)(x, y), SupConLoss()(x, y))


def test_configuration_errors_fail_in_init():
    with pytest.raises(ValueError, match=r"SupConLoss: expected `max_scale` or `min_scale` with "
                                         r"`learnable=True`"):
        SupConLoss(learnable=True, max_scale=None)
    with pytest.raises(ValueError, match=r"SupConLoss: unknown `variant` 'x'; expected one of "
                                         r"\['out', 'in'\]\."):
        SupConLoss(variant="x")
    with pytest.raises(ValueError, match=r"SupConLoss: `reduction='pair'` averages a per-pair"):
        SupConLoss(variant="in", reduction="pair")
    with pytest.raises(ValueError, match=r"SupConLoss: expected `temperature` to be a positive"):
        SupConLoss(temperature=0.0)
    with pytest.raises(ValueError, match=r"SupConLoss: expected `chunk_size` to be a positive"):
        SupConLoss(chunk_size=0)
