"""The contract suite's registry: every public module joins by registering a ContractCase.

A case is a small factory: how to build the module, how to make example inputs for a batch
size, and flags saying which kinds of input it takes (a modality mapping, presence, token
masks, plain tensors). The checks in ``checks.py`` run against every registered case.

Paths name a place in the forward kwargs: ``("tokens", "audio")`` is ``kwargs["tokens"]["audio"]``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["BadInput", "ContractCase", "all_cases", "register"]

Path = tuple[str, ...]


def primary(out: Any) -> Tensor:
    """The output tensor the checks compare: the tensor itself, or a tuple's first field."""
    return out if isinstance(out, Tensor) else out[0]


@dataclass(frozen=True)
class BadInput:
    """An input the module must reject with one of the library's errors.

    ``kwargs`` are the full forward kwargs; ``error`` the exception type expected; ``arg`` a
    substring the message must contain (the argument's name).
    """

    what: str
    kwargs: dict[str, Any]
    error: type[Exception]
    arg: str


@dataclass(frozen=True)
class ContractCase:
    """How the contract suite builds and feeds one module.

    Attributes:
        id: Test id, e.g. ``"ConcatFusion-proj"``.
        build: ``build(device=None, dtype=None) -> nn.Module``; called under a fixed seed.
        inputs: ``inputs(batch, generator) -> forward kwargs`` in float32 on the CPU. Every tensor
            whose first dimension is the batch is treated as batched.
        out_shape: ``out_shape(batch) -> shape`` of the primary output.
        features_arg: Kwarg holding the ``Mapping[str, Tensor]`` of modalities, or None.
        feature_layout: Layout of each modality tensor in ``features_arg``.
        presence_arg: Kwarg taking ``Mapping[str, BoolTensor(B)]``, or None.
        masks: Token masks, mask path -> path of the tensor it masks. The mask covers the
            leading dims of that tensor: (B, N) for (B, N, D), (B, T) for (B, T, H, W, D).
        tensor_args: Kwargs that are plain (B, ..., D) floating tensors, validated generically.
        output: Picks the primary tensor out of the forward's return value.
        valid_output: ``valid_output(kwargs) -> bool mask`` broadcastable to the output, where
            mask invariance is compared (e.g. only unmasked queries); None compares everything.
        empty_batch: "error" (B=0 raises a library error) or "empty" (returns an empty output).
        grad_exempt: Parameter name prefixes allowed to get no gradient (documented per case).
        batch_independent: Rows computed alone equal rows computed together (eval mode).
        bad_inputs: Extra module-specific inputs to reject, from the valid kwargs of batch 3.
        bf16: Whether bfloat16 is supported.
        precision: The kind of output under ``torch.autocast`` (docs/conventions.md, "Mixed
            precision"): ``"feature"`` (in the autocast dtype), ``"data"`` (computed outside
            autocast, in the inputs' dtype) or ``"float32"`` (losses and probabilities). None:
            ``"float32"`` for a scalar output (a loss), else ``"feature"``.
        float32_fields: Fields of a NamedTuple output that are losses, KL terms or
            probabilities (float32 under autocast); the other fields follow ``precision``.
    """

    id: str
    build: Callable[..., nn.Module]
    inputs: Callable[[int, torch.Generator], dict[str, Any]]
    out_shape: Callable[[int], Sequence[int]]
    features_arg: str | None = None
    feature_layout: str = "B D"
    presence_arg: str | None = None
    masks: Mapping[Path, Path] = field(default_factory=dict)
    tensor_args: Sequence[str] = ()
    output: Callable[[Any], Tensor] = primary
    valid_output: Callable[[dict[str, Any]], Tensor] | None = None
    empty_batch: str = "error"
    grad_exempt: Sequence[str] = ()
    batch_independent: bool = True
    bad_inputs: Callable[[dict[str, Any]], list[BadInput]] | None = None
    bf16: bool = True
    precision: str | None = None
    float32_fields: Sequence[str] = ()

    def precision_kind(self) -> str:
        """``precision``, or its default: ``"float32"`` for a scalar output, else ``"feature"``."""
        if self.precision is not None:
            return self.precision
        return "float32" if tuple(self.out_shape(1)) == () else "feature"


_REGISTRY: dict[str, ContractCase] = {}


def register(case: ContractCase) -> ContractCase:
    """Add a case to the suite; ids must be unique."""
    if case.id in _REGISTRY:
        raise ValueError(f"contract case {case.id!r} registered twice")
    if case.empty_batch not in ("error", "empty"):
        raise ValueError(f"{case.id}: empty_batch must be 'error' or 'empty'")
    if case.precision not in (None, "feature", "data", "float32"):
        raise ValueError(f"{case.id}: precision must be None, 'feature', 'data' or 'float32'")
    _REGISTRY[case.id] = case
    return case


def all_cases() -> list[ContractCase]:
    """Import every module under ``contract/cases`` (which register) and return the cases."""
    from . import cases

    for info in pkgutil.iter_modules(cases.__path__):
        importlib.import_module(f"{cases.__name__}.{info.name}")
    return sorted(_REGISTRY.values(), key=lambda c: c.id)
