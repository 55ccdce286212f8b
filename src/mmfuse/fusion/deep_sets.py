"""Deep Sets fusion: a symmetric function of the present modalities."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_size
from ..functional import fill_absent
from ..functional.fusion.sets import SET_POOLS, _set_pool
from ._common import check_config, observe

__all__ = ["DeepSetsFusion"]


class DeepSetsFusion(nn.Module):
    """Fuse any number of modalities as a set: ``rho(pool_m phi_m(x_m))`` (Zaheer et al., 2017).

    Each modality is encoded by ``phi_m`` (``Linear(D_m, hidden)``, GELU), the encodings of the
    modalities *present* for a sample are pooled (sum, mean or feature-wise max) and ``rho``
    (``Linear, GELU, Linear``) maps the pooled vector to ``out_dim``. The pooling is symmetric,
    so the result does not depend on the modalities' order. With ``shared=True`` one ``phi``
    serves every modality (all ``dims`` equal): the module is then a function of the *set* of
    feature vectors, invariant to permuting the values among the modalities too.

    Missing modalities: an absent modality leaves the pool (its values are never read); the
    output for a subset of modalities equals the output of the same module given only that
    subset. A sample with no modality present pools the empty set (zeros, for every
    ``reduce``), so its output is the constant ``rho(0)``.

    Args:
        dims: Feature size per modality, e.g. ``{"image": 2048, "text": 768}``.
        out_dim: Output feature size D; None takes the smallest of ``dims`` (as TorchMultimodal's
            attention fusion does).
        hidden: Size of the per-modality encodings and of rho's hidden layer; None = ``out_dim``.
        reduce: ``"sum"`` (the paper's), ``"mean"`` or ``"max"`` over the present modalities.
        shared: One ``phi`` for every modality (needs equal ``dims``).

    Shape:
        - features[m]: (B, D_m); present[m]: (B,) bool, True = observed
        - output: (B, D)

    Example:
        >>> f = DeepSetsFusion({"image": 8, "text": 4, "audio": 6}, out_dim=5)
        >>> x = {"image": torch.randn(2, 8), "audio": torch.randn(2, 6)}  # text left out
        >>> f(x).shape
        torch.Size([2, 5])
    """

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int | None = None,
        *,
        hidden: int | None = None,
        reduce: str = "sum",
        shared: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        self.dims, self.out_dim = check_config(self, dims, out_dim, default_out_dim=True)
        self.hidden = self.out_dim if hidden is None else check_size(hidden, owner=self,
                                                                       arg="hidden")
        check_choice(reduce, SET_POOLS, owner=self, arg="reduce")
        self.reduce, self.shared = reduce, bool(shared)
        if shared and len(set(self.dims.values())) > 1:
            raise ValueError(
                f"DeepSetsFusion: `shared=True` needs every modality of one size, expected equal "
                f"`dims`, got {self.dims}."
            )
        first = next(iter(self.dims.values()))
        self.phi = nn.ModuleDict(
            {"shared": nn.Linear(first, self.hidden, **dd)} if shared else
            {m: nn.Linear(d, self.hidden, **dd) for m, d in self.dims.items()}
        )
        self.rho = nn.Sequential(nn.Linear(self.hidden, self.hidden, **dd), nn.GELU(),
                                 nn.Linear(self.hidden, self.out_dim, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in [*self.phi.values(), *self.rho]:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()

    def encode(self, name: str, x: Tensor) -> Tensor:
        """``phi`` of modality ``name``: (B, D_m) -> (B, hidden)."""
        return torch.nn.functional.gelu(self.phi["shared" if self.shared else name](x))

    def forward(
        self, features: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        obs = observe(self, self.dims, features, present)
        zero = obs.ref.new_zeros(())
        cols, encoded = [], []
        for j, m in enumerate(self.dims):
            if m not in features:  # left out: not encoded
                continue
            x = features[m] if obs.given[j] else fill_absent(features[m], obs.observed[:, j], zero)
            cols.append(j)  # absent rows are zeroed first: no NaN reaches a gradient
            encoded.append(self.encode(m, x))  # (B, H)
        stacked = torch.stack(encoded, dim=1)  # (B, M', H)
        observed = None if all(obs.given[j] for j in cols) else obs.observed[:, cols]  # (B, M')
        return self.rho(_set_pool(stacked, observed, self.reduce))  # (B, D)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return (f"dims={self.dims}, out_dim={self.out_dim}, hidden={self.hidden}, "
                f"reduce={self.reduce!r}, shared={self.shared}")
