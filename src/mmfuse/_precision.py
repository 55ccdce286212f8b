"""The mixed-precision policy, in one place (docs/conventions.md, "Mixed precision").

Under ``torch.autocast`` every module output is of one of three kinds:

- a *feature* (fused vectors, attention outputs and maps, encoder embeddings, generated
  targets): in the autocast dtype, what the module's matmuls produce (:func:`feature_output`
  undoes the promotion back to float32 by a residual or a bias added in float32);
- *data* (the perception transforms, :class:`~mmfuse.fusion.DataLevelFusion`, a
  :class:`~mmfuse.fusion.ConcatFusion` without projection): computed outside autocast, in the
  input's dtype, as a data pipeline would (:func:`outside_autocast`; a learned projection inside
  runs under autocast and is cast back);
- a *loss or probability* (losses, KL terms, probabilities, log-probabilities): computed and
  returned in float32, or float64 for float64 inputs (:func:`precise_output`).

Outside autocast every output has its inputs' dtype. Only the flags of ``torch.autocast`` are
read (no tensor values), so the helpers trace under ``torch.compile`` and ``torch.export``.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

__all__ = ["autocast_dtype", "feature_output", "outside_autocast", "precise_output"]

_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu", "xla")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast computes in on ``device``'s type, or None where it is off."""
    kind = device.type
    if kind in _AUTOCAST_DEVICES and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return None


def feature_output(x: Tensor) -> Tensor:
    """``x`` in the autocast dtype of its device when autocast is on there (a floating ``x``
    wider than it is cast down); else ``x`` unchanged."""
    dt = autocast_dtype(x.device)
    if dt is None or not x.is_floating_point() or x.dtype == torch.float64 or x.dtype == dt:
        return x
    return x.to(dt)


def precise_output(x: Tensor) -> Tensor:
    """``x`` in float32 when autocast is on for its device and ``x`` is narrower (float64
    kept); else ``x`` unchanged."""
    if autocast_dtype(x.device) is None or not x.is_floating_point():
        return x
    return x.to(torch.promote_types(x.dtype, torch.float32))


def outside_autocast(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """A context that turns autocast off on ``device``'s type if it is on (else does nothing)."""
    if autocast_dtype(device) is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)
