"""Deployment: int8 dynamic quantization and magnitude pruning, on PyTorch's own tools.

- :func:`quantize_dynamic`: every ``nn.Linear`` of a model (in any mmfuse module, and
  :class:`~mmfuse.fusion.LowRankTensorFusion`'s factors, which are linear layers) to int8
  weights with activations quantized on the fly, through
  ``torch.ao.quantization.quantize_dynamic``. CPU inference only; no gradients.
- :func:`prune`: zero the smallest-magnitude weights of the linear and convolution layers
  (L1 unstructured, over the whole model or layer by layer) with ``torch.nn.utils.prune``,
  made permanent unless asked otherwise (to fine-tune with the zeros held, then
  :func:`make_permanent`).
- :func:`sparsity`: the fraction of those weights that are zero.

``torch.ao.quantization`` warns that it is deprecated in favour of the separate ``torchao``
package; it is the quantization that ships with torch 2.13, and :func:`quantize_dynamic`
silences those two warnings. ``benchmarks/deploy.py`` measures size, latency and accuracy of
every variant on the demo model (docs: ``docs/deploy.md``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import prune as _prune

__all__ = ["PRUNABLE", "Int8WeightConv", "make_permanent", "prune", "quantize_dynamic",
           "sparsity"]

PRUNABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""The layer types :func:`prune` and :func:`sparsity` consider by default (their ``weight``)."""

_QDTYPES = {torch.qint8: "torch.qint8", torch.float16: "torch.float16"}


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_FNS = (F.conv1d, F.conv2d, F.conv3d)


class Int8WeightConv(nn.Module):
    """A convolution whose weight is stored in int8 with one float32 scale per output
    channel (symmetric, ``scale = max|w| / 127``), dequantized at each call; activations
    stay float. What :func:`quantize_dynamic` puts in place of ``nn.Conv1d/2d/3d``: a quarter
    of the weight storage, with the relative weight error bounded by 1/254 per channel.

    Shape: like the convolution it replaces.
    """

    weight_int8: Tensor
    weight_scale: Tensor

    def __init__(self, conv: nn.Conv1d | nn.Conv2d | nn.Conv3d) -> None:
        super().__init__()
        if not isinstance(conv, _CONVS):
            raise TypeError(f"Int8WeightConv: expected `conv` to be an nn.Conv1d, Conv2d or "
                            f"Conv3d, got {type(conv).__name__}.")
        w = conv.weight.detach().float()
        scale = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True).clamp_min(1e-12) / 127
        self.register_buffer("weight_int8", (w / scale).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("weight_scale", scale)
        self.bias = (None if conv.bias is None
                     else nn.Parameter(conv.bias.detach().clone(), requires_grad=False))
        self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.groups
        self.padding = conv.padding
        self.padding_mode = conv.padding_mode
        self.pad = tuple(conv._reversed_padding_repeated_twice)
        self.conv_fn = _CONV_FNS[w.dim() - 3]

    def forward(self, x: Tensor) -> Tensor:
        w = (self.weight_int8.to(self.weight_scale.dtype) * self.weight_scale).to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.padding_mode != "zeros":
            x = F.pad(x, self.pad, mode=self.padding_mode)
            return self.conv_fn(x, w, bias, self.stride, 0, self.dilation, self.groups)
        return self.conv_fn(x, w, bias, self.stride, self.padding, self.dilation, self.groups)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        out_ch, in_ch = self.weight_int8.shape[:2]
        return (f"{in_ch * self.groups}, {out_ch}, kernel_size={tuple(self.weight_int8.shape[2:])}"
                f", stride={self.stride}, int8 weights")


def _swap_convs(model: nn.Module) -> nn.Module:
    if isinstance(model, _CONVS):
        return Int8WeightConv(model)
    for name, child in model.named_children():
        setattr(model, name, _swap_convs(child))
    return model


def _check_model(model: object, owner: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{owner}: expected `model` to be an nn.Module, got "
                        f"{type(model).__name__}.")


def quantize_dynamic(model: nn.Module, dtype: torch.dtype = torch.qint8, *,
                     per_channel: bool = True, convs: bool = True,
                     inplace: bool = False) -> nn.Module:
    """Quantize every ``nn.Linear`` of ``model`` dynamically (weights int8, activations
    quantized per batch at run time), for CPU inference.

    The PyTorch-native path, ``torch.ao.quantization.quantize_dynamic``: each ``nn.Linear``
    becomes a ``torch.ao.nn.quantized.dynamic.Linear`` (its bias stays float). Weights are
    quantized per output channel by default (``per_channel=False``: one scale per tensor).
    Activation scales are computed per call, so a sample's result can depend slightly on the
    batch it comes in. The result runs in eval mode on the CPU and has no gradients.

    Convolutions (with ``convs=True``, int8 only) get int8 *weights* only: each becomes an
    :class:`Int8WeightConv` (per-output-channel scales, dequantized at each call, float
    activations). torch's dynamic ``Conv2d``, which also quantizes activations, is not used:
    torch warns that its accuracy is poor, and on mmfuse's encoders it was (relative error 0.2
    to 0.5). Norms, embeddings and other parameters stay float32.

    Args:
        model: Any module; mmfuse modules keep their forward (checks included).
        dtype: ``torch.qint8`` (int8 weights) or ``torch.float16`` (half-precision weights).
        per_channel: One scale per output row (int8 only).
        convs: Store convolution weights in int8 too (int8 only; see above).
        inplace: Change ``model`` itself instead of a copy.

    Returns:
        The quantized model (``model`` itself when ``inplace``).

    Example:
        >>> from mmfuse.fusion import LowRankTensorFusion
        >>> f = LowRankTensorFusion({"image": 8, "text": 4}, out_dim=6, rank=3)
        >>> q = quantize_dynamic(f)
        >>> type(q.factors["image"]).__name__, q({"image": torch.randn(2, 8)}).shape
        ('Linear', torch.Size([2, 6]))
        >>> type(q.factors["image"]).__module__
        'torch.ao.nn.quantized.dynamic.modules.linear'
    """
    _check_model(model, "quantize_dynamic")
    if dtype not in _QDTYPES:
        raise ValueError(f"quantize_dynamic: expected `dtype` to be one of "
                         f"{', '.join(_QDTYPES.values())}, got {dtype}.")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\."
                                r"quantize_per_channel", category=UserWarning)
        from torch.ao import quantization as tq

        if dtype == torch.float16:
            qconfig = tq.float16_dynamic_qconfig
        elif per_channel:
            qconfig = tq.per_channel_dynamic_qconfig
        else:
            qconfig = tq.default_dynamic_qconfig
        out = tq.quantize_dynamic(model, {nn.Linear: qconfig}, dtype=dtype, inplace=inplace)
    if convs and dtype == torch.qint8:
        out = _swap_convs(out)
    return out


def _targets(model: nn.Module, modules: Sequence[type[nn.Module]] | type[nn.Module],
             owner: str) -> list[tuple[nn.Module, str]]:
    kinds = tuple(modules) if isinstance(modules, Sequence) else (modules,)
    targets = [(m, "weight") for m in model.modules() if isinstance(m, kinds)
               and isinstance(getattr(m, "weight", None), torch.Tensor)]
    if not targets:
        names = ", ".join(k.__name__ for k in kinds)
        raise ValueError(f"{owner}: expected `model` to hold a layer of type {names} with a "
                         f"weight tensor, found none.")
    return targets


def prune(model: nn.Module, amount: float, *, scope: str = "global",
          modules: Sequence[type[nn.Module]] | type[nn.Module] = PRUNABLE,
          permanent: bool = True) -> nn.Module:
    """Zero the ``amount`` fraction of smallest-magnitude weights of ``model``'s linear and
    convolution layers (L1 unstructured pruning, ``torch.nn.utils.prune``), in place.

    ``scope="global"`` ranks the weights of all those layers together (one threshold for
    the model); ``"layer"`` prunes each layer by ``amount``. Biases, norms and other
    parameters are left alone. With ``permanent=True`` the zeros are written into the
    weights and the pruning hooks removed, so the model is a plain model again (state_dict
    keys unchanged); with ``False`` the hooks stay (``weight = weight_orig * weight_mask``),
    so fine-tuning keeps the pruned weights at zero; call :func:`make_permanent` after.
    A layer already pruned is pruned further (the masks compose).

    Dense storage does not shrink: a pruned model saves to the same size (it compresses
    better). Run it before :func:`quantize_dynamic`, not after (quantized layers are not
    pruned).

    Args:
        model: The model, changed in place.
        amount: Fraction of the weights to zero, in [0, 1].
        scope: ``"global"`` or ``"layer"``.
        modules: The layer types whose ``weight`` is pruned (default :data:`PRUNABLE`).
        permanent: Remove the pruning hooks after (see above).

    Returns:
        ``model``.

    Example:
        >>> from mmfuse.fusion import GatedFusion
        >>> f = prune(GatedFusion({"image": 16, "text": 8}, out_dim=8), 0.5)
        >>> round(sparsity(f), 2)
        0.5
    """
    _check_model(model, "prune")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount <= 1:
        raise ValueError(f"prune: expected `amount` to be a fraction in [0, 1], got {amount!r}.")
    if scope not in ("global", "layer"):
        raise ValueError(f"prune: expected `scope` to be one of 'global', 'layer', got {scope!r}.")
    targets = _targets(model, modules, "prune")
    if scope == "global":
        _prune.global_unstructured(targets, pruning_method=_prune.L1Unstructured,
                                   amount=float(amount))
    else:
        for module, name in targets:
            _prune.l1_unstructured(module, name, amount=float(amount))
    if permanent:
        make_permanent(model)
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Write every pruning mask of ``model`` into its weights and remove the hooks, in place
    (``torch.nn.utils.prune.remove`` on each pruned tensor); a model with none is unchanged.

    Returns:
        ``model``.
    """
    _check_model(model, "make_permanent")
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, _prune.BasePruningMethod):
                _prune.remove(module, getattr(hook, "_tensor_name"))  # noqa: B009
    return model


def sparsity(model: nn.Module, *,
             modules: Sequence[type[nn.Module]] | type[nn.Module] = PRUNABLE) -> float:
    """The fraction of zeros among the weights of ``model``'s layers of type ``modules``
    (default: the linear and convolution layers :func:`prune` reaches), pruning hooks or not.

    Example:
        >>> sparsity(torch.nn.Linear(4, 4))
        0.0
    """
    _check_model(model, "sparsity")
    zeros = total = 0
    with torch.no_grad():
        for module, name in _targets(model, modules, "sparsity"):
            w = getattr(module, name)
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / total
