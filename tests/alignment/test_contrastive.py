"""InfoNCELoss and SigLIPLoss: the learnable scales, clamping, and agreement with the functions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmfuse.alignment import InfoNCELoss, SigLIPLoss, info_nce, siglip_loss


def clip_reference(a, b, scale):
    a, b = F.normalize(a.double(), dim=1), F.normalize(b.double(), dim=1)
    logits = scale * a @ b.T
    target = torch.arange(a.shape[0])
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def test_infonce_module_matches_reference_and_scale_gradient():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 6, generator=g), torch.randn(7, 6, generator=g)
    m = InfoNCELoss(temperature=0.1)
    assert torch.allclose(m.scale, torch.tensor(10.0))
    loss = m(a, b)
    loss.backward()
    log_s = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    ref = clip_reference(a, b, log_s.exp())
    ref.backward()
    assert torch.allclose(loss.double(), ref, rtol=1e-6)
    assert torch.allclose(m.logit_scale.grad.double(), log_s.grad, rtol=1e-5)
    assert torch.equal(loss, info_nce(a, b, temperature=m.scale.reciprocal()))


@pytest.mark.parametrize(("min_scale", "max_scale", "init_t", "want"), [
    (None, 100.0, 0.001, 100.0),    # max only (CLIP's configuration)
    (5.0, None, 1.0, 5.0),           # min only
    (2.0, 50.0, 0.01, 50.0),
])
def test_scale_is_clamped_functionally(min_scale, max_scale, init_t, want):
    m = InfoNCELoss(temperature=init_t, min_scale=min_scale, max_scale=max_scale)
    assert math.isclose(m.scale.item(), want, rel_tol=1e-5)
    before = m.logit_scale.detach().clone()
    m(torch.randn(4, 3), torch.randn(4, 3)).backward()
    assert torch.equal(m.logit_scale.detach(), before)  # the parameter itself is untouched
    clamped = want != 1.0 / init_t
    assert (m.logit_scale.grad == 0).item() == clamped


def test_a_learnable_scale_needs_a_bound():
    # TorchMultimodal's ContrastiveLossWithTemperature refuses both bounds None the same way
    with pytest.raises(ValueError, match=r"InfoNCELoss: expected `max_scale` or `min_scale` "
                                         r"with `learnable=True` .* got both None"):
        InfoNCELoss(min_scale=None, max_scale=None)
    fixed = InfoNCELoss(temperature=0.001, min_scale=None, max_scale=None, learnable=False)
    assert math.isclose(fixed.scale.item(), 1000.0, rel_tol=1e-5)  # unclamped


def test_reduction_and_negatives_reach_the_function():
    g = torch.Generator().manual_seed(2)
    a, b, n = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g), torch.randn(5, 4)
    ids = torch.tensor([0, 0, 0, 1, 1, 2])
    m = InfoNCELoss(temperature=0.1, reduction="pair")
    assert torch.equal(m(a, b, ids), info_nce(a, b, temperature=m.scale.reciprocal(),
                                              positives=ids, reduction="pair"))
    assert torch.equal(m(a, b, negatives=n),
                       info_nce(a, b, temperature=m.scale.reciprocal(), negatives=n))
    with pytest.raises(ValueError, match=r"InfoNCELoss: unknown `reduction` 'sum'"):
        InfoNCELoss(reduction="sum")


def test_fixed_scale_is_a_buffer_and_state_dict_round_trips():
    m = InfoNCELoss(temperature=0.2, learnable=False)
    assert list(m.parameters()) == [] and "logit_scale" in m.state_dict()
    s = SigLIPLoss(scale=3.0, bias=-2.0)
    s2 = SigLIPLoss()
    s2.load_state_dict(s.state_dict())
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    assert torch.equal(s2(a, b), s(a, b))
    assert "temperature=0.2" in repr(m) and "bias=-2.0" in repr(s)


def test_siglip_module_matches_function_and_trains_scale_and_bias():
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    m = SigLIPLoss(scale=10.0, bias=-10.0)
    loss = m(a, b)
    assert torch.allclose(loss, siglip_loss(a, b, scale=10.0, bias=-10.0))
    loss.backward()
    assert m.logit_scale.grad is not None and m.logit_bias.grad is not None
    assert m.logit_bias.grad.item() != 0.0


def test_modules_tiled_equal_dense():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(11, 5, generator=g), torch.randn(11, 5, generator=g)
    for cls in (InfoNCELoss, SigLIPLoss):
        dense, tiled = cls(), cls(chunk_size=4)
        assert torch.allclose(dense(a, b), tiled(a, b), rtol=1e-5)


def test_gather_without_process_group_changes_nothing():
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    ids = torch.tensor([0, 1, 0, 2, 1])
    assert torch.equal(InfoNCELoss(gather=True)(a, b, ids), InfoNCELoss()(a, b, ids))


def test_configuration_errors_fail_in_init():
    with pytest.raises(ValueError, match=r"InfoNCELoss: expected `min_scale` <= `max_scale`"):
        InfoNCELoss(min_scale=10.0, max_scale=5.0)
    with pytest.raises(ValueError, match=r"InfoNCELoss: expected `temperature` to be a positive"):
        InfoNCELoss(temperature=-1.0)
    with pytest.raises(ValueError, match=r"InfoNCELoss: unknown `direction` 'x'"):
        InfoNCELoss(direction="x")
    with pytest.raises(ValueError, match=r"SigLIPLoss: expected `chunk_size` to be a positive"):
        SigLIPLoss(chunk_size=-3)
    with pytest.raises(ValueError, match=r"InfoNCELoss: expected `label_smoothing` in \[0, 1\]"):
        InfoNCELoss(label_smoothing=2.0)


def test_empty_batch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"InfoNCELoss: expected `a` and `b` with at least one row"):
        InfoNCELoss()(torch.randn(0, 3), torch.randn(0, 3))
