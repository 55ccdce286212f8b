"""Non-local gate fusion: one modality's tokens attend over the others'."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_size
from ..functional import fill_absent
from ..functional.fusion.sets import _nl_gate
from ._common import check_config, observe_zero_filled

__all__ = ["NLGateFusion"]


class NLGateFusion(nn.Module):
    """Non-local gate (Wang et al., 2020, appendix F4; MultiBench's ``NLgate``), M modalities.

    The ``query`` modality is mapped to ``query_tokens`` tokens of ``channels`` channels; every
    other modality to ``key_tokens`` key and value tokens. Each query token attends (softmax of
    the unscaled dot products) over the key tokens of the modalities present for that sample,
    and the output is ``flatten(q + attention @ v)``. The linear maps and their layouts are
    MultiBench's: ``q = W_q x_q`` viewed as (Q, C), ``k = W_k x_k`` as (C, K) and
    ``v = W_v x_k`` as (K, C), so its trained weights load directly; with more than two
    modalities each context modality has its own ``W_k``/``W_v`` and the key tokens of all of
    them are concatenated.

    Missing modalities: an absent context modality's tokens get attention weight 0 (its values
    are never read); with no context modality present the output is the flattened query. An
    absent query modality is replaced by a learned ``missing`` query (initialised at zero), so
    the output then depends only on the present context modalities. A sample with nothing
    present returns the ``missing`` query.

    Args:
        dims: Feature size per modality, e.g. ``{"image": 2048, "text": 768}`` (two or more).
        query: The modality whose tokens attend (one of ``dims``).
        channels: Channels C of every token.
        query_tokens: Number Q of query tokens.
        key_tokens: Number K of key/value tokens per context modality.

    Shape:
        - features[m]: (B, D_m); present[m]: (B,) bool, True = observed
        - output: (B, Q * C) (``out_dim``), query token-major

    Example:
        >>> f = NLGateFusion({"video": 8, "audio": 4}, "video", channels=3, query_tokens=2,
        ...                  key_tokens=5)
        >>> f({"video": torch.randn(2, 8), "audio": torch.randn(2, 4)}).shape
        torch.Size([2, 6])
    """

    def __init__(
        self,
        dims: Mapping[str, int],
        query: str,
        channels: int,
        *,
        query_tokens: int = 1,
        key_tokens: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        check_size(channels, owner=self, arg="channels")
        check_size(query_tokens, owner=self, arg="query_tokens")
        check_size(key_tokens, owner=self, arg="key_tokens")
        self.dims, self.out_dim = check_config(
            self, dims, query_tokens * channels, min_modalities=2,
            why=" (a query modality and at least one to attend over)")
        check_choice(query, list(self.dims), owner=self, arg="query")
        self.query, self.channels = query, channels
        self.query_tokens, self.key_tokens = query_tokens, key_tokens
        self.context = [m for m in self.dims if m != query]
        self.q = nn.Linear(self.dims[query], query_tokens * channels, **dd)
        self.k = nn.ModuleDict(
            {m: nn.Linear(self.dims[m], channels * key_tokens, **dd) for m in self.context})
        self.v = nn.ModuleDict(
            {m: nn.Linear(self.dims[m], key_tokens * channels, **dd) for m in self.context})
        self.missing = nn.Parameter(torch.empty(query_tokens * channels, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in [self.q, *self.k.values(), *self.v.values()]:
            layer.reset_parameters()  # type: ignore[operator]
        nn.init.zeros_(self.missing)

    def forward(
        self, features: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        obs, zs = observe_zero_filled(self, self.dims, features, present)
        z = dict(zip(self.dims, zs))
        names = list(self.dims)
        iq = names.index(self.query)
        q = self.q(z[self.query])  # (B, Q * C)
        if not obs.given[iq]:
            q = fill_absent(q, obs.observed[:, iq], self.missing)
        c, k = self.channels, self.key_tokens
        keys = torch.cat([self.k[m](z[m]).unflatten(-1, (c, k)) for m in self.context], dim=2)
        # keys: (B, C, K * M_context)
        values = torch.cat([self.v[m](z[m]).unflatten(-1, (k, c)) for m in self.context], dim=1)
        # values: (B, K * M_context, C)
        observed = None
        if not all(obs.given[names.index(m)] for m in self.context):
            cols = [names.index(m) for m in self.context]
            observed = obs.observed[:, cols].repeat_interleave(k, dim=1)  # (B, K * M_context)
        return _nl_gate(q.unflatten(-1, (self.query_tokens, c)), keys, values, observed)  # (B, Q * C)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return (f"dims={self.dims}, query={self.query!r}, channels={self.channels}, "
                f"query_tokens={self.query_tokens}, key_tokens={self.key_tokens}")
