"""StackGAN's conditioning augmentation: a Gaussian around the condition embedding."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from ..._checks import check_inputs, check_size, check_tensor
from ..._precision import feature_output, precise_output
from ...functional import gaussian_kl, reparameterize

__all__ = ["AugmentedCondition", "ConditioningAugmentation"]


class AugmentedCondition(NamedTuple):
    """Output of :class:`ConditioningAugmentation`.

    Attributes:
        sample: (B, E) the augmented condition ``mean + exp(logvar / 2) * noise``.
        mean: (B, E).
        logvar: (B, E) log-variance.
        kl: (B,) ``KL(N(mean, exp(logvar)) || N(0, I))`` per sample (float32 at least); add its
            batch mean, weighted (StackGAN uses 1 to 2), to the generator's loss.
    """

    sample: Tensor
    mean: Tensor
    logvar: Tensor
    kl: Tensor


class ConditioningAugmentation(nn.Module):
    """Conditioning augmentation (Zhang et al., StackGAN, 2017).

    A linear layer maps the condition embedding to a mean and a log-variance; the augmented
    condition is a reparameterised draw from that Gaussian, and the KL term to N(0, I) keeps
    the condition manifold smooth. Noise: the given ``noise`` if any; otherwise a fresh
    standard normal draw in training mode and none in eval mode (the sample is then the mean,
    so evaluation is deterministic, like dropout).

    Args:
        in_dim: Size of the incoming condition embedding.
        out_dim: Size E of the augmented condition.

    Shape:
        - cond: (B, in_dim); noise: (B, E)
        - output: :class:`AugmentedCondition` of (B, E) tensors and a (B,) KL

    Example:
        >>> ca = ConditioningAugmentation(32, 8)
        >>> ca(torch.randn(4, 32)).sample.shape
        torch.Size([4, 8])
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        check_size(in_dim, owner=self, arg="in_dim")
        check_size(out_dim, owner=self, arg="out_dim")
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.proj = nn.Linear(in_dim, 2 * out_dim, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.proj.reset_parameters()

    def forward(self, cond: Tensor, noise: Tensor | None = None) -> AugmentedCondition:
        batch = check_tensor(cond, "B D", owner=self, arg="cond", D=self.in_dim)["B"]
        if noise is not None:
            check_tensor(noise, "B E", owner=self, arg="noise", B=batch, E=self.out_dim)
        check_inputs(self, {"cond": cond, "noise": noise})
        mean, logvar = self.proj(cond).chunk(2, dim=-1)  # (B, E) each
        logvar = logvar.clamp(-30.0, 20.0)
        if noise is None and self.training:
            noise = torch.randn_like(mean)
        sample = mean if noise is None else reparameterize(mean, logvar, noise)
        kl = precise_output(gaussian_kl(mean, logvar))  # a KL term: float32 under autocast
        return AugmentedCondition(feature_output(sample), mean, logvar, kl)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}"
