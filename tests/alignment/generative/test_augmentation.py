"""ConditioningAugmentation: reparameterised sample and KL against naive formulas."""

from __future__ import annotations

import pytest
import torch

from mmfuse import ShapeError
from mmfuse.alignment import ConditioningAugmentation
from mmfuse.functional import gaussian_kl


def test_augmentation_sample_and_kl() -> None:
    torch.manual_seed(0)
    ca = ConditioningAugmentation(6, 4).double()
    c = torch.randn(5, 6, dtype=torch.float64)
    z = torch.randn(5, 4, dtype=torch.float64)
    out = ca(c, z)
    mean, logvar = (c @ ca.proj.weight.T + ca.proj.bias).chunk(2, -1)
    torch.testing.assert_close(out.mean, mean)
    torch.testing.assert_close(out.logvar, logvar)
    torch.testing.assert_close(out.sample, mean + (0.5 * logvar).exp() * z)
    naive_kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(-1)
    torch.testing.assert_close(out.kl, naive_kl)
    torch.testing.assert_close(out.kl, gaussian_kl(mean, logvar))


def test_augmentation_noise_modes() -> None:
    torch.manual_seed(0)
    ca = ConditioningAugmentation(6, 4)
    c = torch.randn(3, 6)
    out = ca.eval()(c)
    torch.testing.assert_close(out.sample, out.mean)  # eval without noise: the mean
    ca.train()
    a, b = ca(c).sample, ca(c).sample
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, out.mean)


def test_augmentation_gradcheck_and_errors() -> None:
    torch.manual_seed(0)
    ca = ConditioningAugmentation(3, 2).double()
    c = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: ca(x, z).sample, (c,))
    assert torch.autograd.gradcheck(lambda x: ca(x, z).kl, (c,))
    with pytest.raises(ShapeError, match=r"ConditioningAugmentation: expected `cond` of shape \(B, D\) with D=3, got \(2, 4\)"):
        ca(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="ConditioningAugmentation: expected `out_dim` to be a positive int, got 0"):
        ConditioningAugmentation(3, 0)
