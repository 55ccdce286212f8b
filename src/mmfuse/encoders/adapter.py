"""Wrap any backbone nn.Module as an encoder with a declared output size."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_inputs, check_size, format_shape
from ..errors import ShapeError

__all__ = ["BackboneAdapter"]


class BackboneAdapter(nn.Module):
    """Use a backbone of your own (timm, torchvision, Hugging Face, ...) as an mmfuse encoder.

    The adapter calls the backbone, picks its feature tensor, checks the declared size, pools
    tokens if asked, and optionally projects to a new size:

    - the backbone may return a tensor, a tuple/list (its first item is taken) or a mapping /
      model-output object (``output_key`` names the field, e.g. ``"pooler_output"`` or
      ``"last_hidden_state"``);
    - ``pool="mean"`` averages (B, N, D) tokens to (B, D); ``"first"`` takes token 0 (a CLS
      token); ``"none"`` returns what the backbone gives;
    - ``freeze=True`` stops gradients into the backbone (its parameters get
      ``requires_grad=False``) and keeps it in eval mode (BatchNorm statistics and dropout
      frozen) even when the adapter is put in training mode.

    Args:
        backbone: Any ``nn.Module``.
        feature_dim: The backbone's feature size (last dimension of its output).
        out_dim: If given, a linear projection to this size.
        freeze: Freeze the backbone.
        pool: ``"none"``, ``"mean"`` or ``"first"``.
        output_key: Field of a mapping / model-output return value.

    Shape:
        - input: whatever the backbone takes
        - output: (B, D) or (B, N, D) (``pool="none"`` on tokens), D = ``out_dim`` if given,
          else ``feature_dim``

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        >>> enc = BackboneAdapter(net, 10, out_dim=4, freeze=True)
        >>> enc(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        out_dim: int | None = None,
        freeze: bool = False,
        pool: str = "none",
        output_key: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        if not isinstance(backbone, nn.Module):
            raise TypeError(
                f"BackboneAdapter: expected `backbone` to be an nn.Module, got "
                f"{type(backbone).__name__}."
            )
        check_size(feature_dim, owner=self, arg="feature_dim")
        if out_dim is not None:
            check_size(out_dim, owner=self, arg="out_dim")
        check_choice(pool, ("none", "mean", "first"), owner=self, arg="pool")
        self.backbone = backbone.to(**{k: v for k, v in dd.items() if v is not None})
        self.feature_dim = int(feature_dim)
        self.out_dim = int(out_dim) if out_dim is not None else self.feature_dim
        self.freeze, self.pool, self.output_key = freeze, pool, output_key
        self.proj = nn.Linear(feature_dim, out_dim, **dd) if out_dim is not None else None
        if freeze:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            self.backbone.eval()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Resets the projection only; the backbone keeps its (pretrained) weights."""
        if self.proj is not None:
            self.proj.reset_parameters()

    def train(self, mode: bool = True) -> BackboneAdapter:
        super().train(mode)
        if self.freeze:
            self.backbone.eval()
        return self

    def _select(self, out: Any) -> Any:
        if self.output_key is not None:
            if isinstance(out, Mapping):
                return out[self.output_key]
            return getattr(out, self.output_key)
        if isinstance(out, (tuple, list)):
            return out[0]
        return out

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Tensor:
        check_inputs(self.backbone, {"x": x}, owner=self)  # a tensor input: the backbone's dtype
        if self.freeze:
            with torch.no_grad():
                out = self.backbone(x, *args, **kwargs)
        else:
            out = self.backbone(x, *args, **kwargs)
        feats = self._select(out)
        if not isinstance(feats, Tensor):
            raise TypeError(
                f"BackboneAdapter: expected the backbone output to be a tensor (..., D) with "
                f"D={self.feature_dim}, got {type(feats).__name__}; set `output_key`."
            )
        if feats.dim() < 2 or feats.shape[-1] != self.feature_dim:
            raise ShapeError(
                f"BackboneAdapter: expected the backbone output of shape (B, ..., D) with "
                f"D={self.feature_dim} (the declared `feature_dim`), got {format_shape(feats.shape)}."
            )
        if self.pool == "mean" and feats.dim() > 2:
            feats = feats.flatten(1, -2).mean(dim=1)  # (B, D)
        elif self.pool == "first" and feats.dim() > 2:
            feats = feats.flatten(1, -2)[:, 0]  # (B, D)
        if self.proj is None:
            return feats
        check_inputs(self.proj, {"backbone output": feats}, owner=self)
        return self.proj(feats)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return (f"feature_dim={self.feature_dim}, out_dim={self.out_dim}, freeze={self.freeze}, "
                f"pool={self.pool!r}")
