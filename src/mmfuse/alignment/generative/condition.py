"""One condition vector from class labels, style vectors and fused multimodal embeddings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..._checks import (
    check_dims,
    check_features,
    check_inputs,
    check_positive,
    check_presence,
    check_size,
    check_tensor,
    owner_name,
)
from ...errors import ShapeError
from ._common import check_labels, draw_uniform

__all__ = ["ConditionEmbedding"]

LABEL, STYLE = "label", "style"


class ConditionEmbedding(nn.Module):
    """Build one condition vector from any subset of: a class label, a style vector, and
    embeddings of other modalities (e.g. a fused multimodal feature).

    Each configured source is projected to ``out_dim``; the projections of the sources
    observed for a sample are summed and passed through a small MLP. A sample with no source
    observed gets the learned *null condition* instead of the sum, and so does a sample whose
    condition is dropped: in training mode each sample is dropped with probability
    ``cond_dropout``, which teaches a downstream head the unconditional model that
    classifier-free guidance needs. At sampling time, ``drop=torch.ones(B, dtype=torch.bool)``
    gives that unconditional vector.

    Presence uses the source names: ``"label"``, ``"style"`` and each modality of ``dims``
    (True = observed). A source not passed at all is absent for the whole batch; the output
    never depends on the values of absent sources.

    Args:
        out_dim: Size E of the condition vector.
        num_classes: Number of class labels, or None for no label source.
        style_dim: Size of the style vector, or None for no style source.
        dims: Feature size per embedding modality, e.g. ``{"fused": 256}``, or None.
        hidden_dim: Width of the MLP (default ``out_dim``).
        cond_dropout: Probability of dropping a sample's condition in training mode.

    Shape:
        - labels: (B,) integer in [0, num_classes); style: (B, S); features[m]: (B, D_m);
          present[name]: (B,) bool; drop: (B,) bool, True = use the null condition
        - output: (B, E)

    Example:
        >>> emb = ConditionEmbedding(16, num_classes=10, dims={"text": 8})
        >>> emb(labels=torch.tensor([3, 7]), features={"text": torch.randn(2, 8)}).shape
        torch.Size([2, 16])
    """

    def __init__(
        self,
        out_dim: int,
        *,
        num_classes: int | None = None,
        style_dim: int | None = None,
        dims: Mapping[str, int] | None = None,
        hidden_dim: int | None = None,
        cond_dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        check_size(out_dim, owner=self, arg="out_dim")
        for arg, value in (("num_classes", num_classes), ("style_dim", style_dim),
                           ("hidden_dim", hidden_dim)):
            if value is not None:
                check_size(value, owner=self, arg=arg)
        check_positive(cond_dropout, owner=self, arg="cond_dropout", allow_zero=True)
        if cond_dropout >= 1:
            raise ValueError(
                f"{owner_name(self)}: expected `cond_dropout` in [0, 1), got {cond_dropout!r}."
            )
        self.dims = check_dims(dims, owner=self) if dims is not None else {}
        reserved = [m for m in self.dims if m in (LABEL, STYLE)]
        if reserved:
            raise ValueError(
                f"{owner_name(self)}: expected `dims` names other than 'label' and 'style' "
                f"(the presence keys of those sources), got {list(self.dims)}."
            )
        if num_classes is None and style_dim is None and not self.dims:
            raise ValueError(
                f"{owner_name(self)}: expected at least one source (`num_classes`, `style_dim` "
                f"or `dims`), got none."
            )
        self.out_dim = int(out_dim)
        self.num_classes = num_classes
        self.style_dim = style_dim
        self.cond_dropout = float(cond_dropout)
        hidden = int(hidden_dim or out_dim)
        self.label_embed = nn.Embedding(num_classes, out_dim, **dd) if num_classes else None
        self.style_proj = nn.Linear(style_dim, out_dim, **dd) if style_dim else None
        self.proj = nn.ModuleDict({m: nn.Linear(d, out_dim, **dd) for m, d in self.dims.items()})
        self.null = nn.Parameter(torch.empty(out_dim, **dd))
        self.mlp = nn.Sequential(
            nn.Linear(out_dim, hidden, **dd), nn.SiLU(), nn.Linear(hidden, out_dim, **dd)
        )
        self.reset_parameters()

    @property
    def sources(self) -> list[str]:
        """Source names in the module's order: ``"label"``, ``"style"``, then ``dims``."""
        out = [LABEL] if self.label_embed is not None else []
        out += [STYLE] if self.style_proj is not None else []
        return out + list(self.dims)

    def reset_parameters(self) -> None:
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.weight, std=1.0)
        if self.style_proj is not None:
            self.style_proj.reset_parameters()
        for lin in self.proj.values():
            lin.reset_parameters()  # type: ignore[operator]
        nn.init.normal_(self.null, std=1.0)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()

    def forward(
        self,
        labels: Tensor | None = None,
        style: Tensor | None = None,
        features: Mapping[str, Tensor] | None = None,
        present: Mapping[str, Tensor] | None = None,
        drop: Tensor | None = None,
    ) -> Tensor:
        name = owner_name(self)
        given: dict[str, Tensor] = {}
        batch: int | None = None
        if labels is not None:
            if self.label_embed is None:
                raise TypeError(f"{name}: expected no `labels` (built without num_classes), "
                                f"got a {type(labels).__name__}.")
            batch = check_labels(labels, owner=self, arg="labels")
        if style is not None:
            if self.style_proj is None:
                raise TypeError(f"{name}: expected no `style` (built without style_dim), "
                                f"got a {type(style).__name__}.")
            sizes: dict[str, Any] = {"S": self.style_dim} | ({"B": batch} if batch is not None else {})
            batch = check_tensor(style, "B S", owner=self, arg="style", **sizes)["B"]
        if features is not None and not (isinstance(features, Mapping) and not features):
            if not self.dims:
                raise TypeError(f"{name}: expected no `features` (built without dims), "
                                f"got {type(features).__name__}.")
            fb = check_features(features, self.dims, owner=self, allow_missing=True)
            if batch is not None and fb != batch:
                raise ShapeError(
                    f"{name}: expected `features` with batch size {batch} like the other "
                    f"sources, got {fb}."
                )
            batch = fb
        if batch is None:
            raise TypeError(
                f"{name}: expected at least one of `labels`, `style`, `features`, got none."
            )
        check_inputs(self, {"style": style, "features": features})
        ref = self.null
        device = ref.device
        if labels is not None and labels.device.type == "meta" and device.type != "meta":
            raise ValueError(f"{name}: expected `labels` with values to embed on {device}, got a "
                             f"tensor on the meta device.")
        if labels is not None and self.label_embed is not None:
            given[LABEL] = self.label_embed(labels.to(device))
        if style is not None and self.style_proj is not None:
            given[STYLE] = self.style_proj(style)
        if features is not None:
            for m in self.dims:
                if m in features:
                    given[m] = self.proj[m](features[m])
        check_presence(present, self.sources, batch, owner=self, device=device)
        if drop is not None:
            check_tensor(drop, "B", owner=self, arg="drop", floating=False, B=batch)
        total = torch.zeros(batch, self.out_dim, device=device, dtype=ref.dtype)  # (B, E)
        any_seen = torch.zeros(batch, dtype=torch.bool, device=device)
        for s in self.sources:
            if s not in given:
                continue
            seen = present[s] if present is not None and s in present else \
                torch.ones(batch, dtype=torch.bool, device=device)
            total = total + torch.where(seen[:, None], given[s], 0.0)
            any_seen = any_seen | seen
        keep = any_seen
        if drop is not None:
            keep = keep & ~drop
        if self.training and self.cond_dropout > 0:
            keep = keep & (draw_uniform((batch,), device=device, generator=None)
                           >= self.cond_dropout)
        h = torch.where(keep[:, None], total, self.null.to(total.dtype))  # (B, E)
        return self.mlp(h)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return (f"out_dim={self.out_dim}, num_classes={self.num_classes}, "
                f"style_dim={self.style_dim}, dims={self.dims}, cond_dropout={self.cond_dropout}")
