"""What the fuzz suite attacks: every contract case's module, and the public functions.

A target builds a callable (a module, or a function wrapped to take keyword arguments) and valid
keyword arguments for a batch size; the mutations in ``_mutate.py`` then corrupt those
arguments. ``names`` are the owners a boundary error from this target may name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import mmfuse.functional as Fn
from contract import checks
from contract.registry import ContractCase, Path, all_cases
from mmfuse.metrics import accuracy, f1_score, retrieval_metrics
from mmfuse.perception.transforms import resample

__all__ = ["Target", "all_targets", "module_target"]


@dataclass(frozen=True)
class Target:
    """One callable under attack.

    Attributes:
        id: Test id.
        build: ``build(dtype) -> callable(**kwargs)`` (a module built in ``dtype``, or a function).
        inputs: ``inputs(batch, generator) -> kwargs``, valid, float32 on the CPU.
        names: Owner names a boundary error may start with (``"AttentionFusion: ..."``).
        output: Picks the tensor to inspect out of the call's result (None: not a tensor).
        presence_arg / features_arg: Kwargs of presence and of the modality mapping, if any.
        masks: Token-mask path -> path of the tensor it masks (as in the contract registry).
        has_state: Whether the callable holds parameters or buffers (a device to compare with).
        opaque: Kwargs handed unchanged to the user's own code (a wrapped backbone), which
            validates them itself; they are not mutated.
    """

    id: str
    build: Callable[[torch.dtype], Callable[..., Any]]
    inputs: Callable[[int, torch.Generator], dict[str, Any]]
    names: frozenset[str]
    output: Callable[[Any], Tensor | None] = lambda out: out if isinstance(out, Tensor) else None
    features_arg: str | None = None
    presence_arg: str | None = None
    masks: dict[Path, Path] = field(default_factory=dict)
    has_state: bool = False
    opaque: frozenset[str] = frozenset()


def _module_names(module: nn.Module) -> frozenset[str]:
    return frozenset(type(m).__name__ for m in module.modules())


def module_target(case: ContractCase) -> Target:
    """A contract case as a fuzz target (the module built under the suite's fixed seed)."""
    probe = checks.build(case)
    has_state = any(True for _ in probe.parameters()) or any(True for _ in probe.buffers())

    def build(dtype: torch.dtype) -> nn.Module:
        return checks.build(case, dtype=dtype)

    return Target(
        id=case.id,
        build=build,
        inputs=case.inputs,
        names=_module_names(probe),
        output=case.output,
        features_arg=case.features_arg,
        presence_arg=case.presence_arg,
        masks=dict(case.masks),
        has_state=has_state,
        # BackboneAdapter passes `x` straight to the user's backbone (a plain nn.Linear here)
        opaque=frozenset({"x"}) if case.id.startswith("BackboneAdapter") else frozenset(),
    )


def _fn(name: str, fn: Callable[..., Any], inputs: Callable[[int, torch.Generator], dict],
        output: Callable[[Any], Tensor | None] | None = None, *, calls: tuple[str, ...] = ()
        ) -> Target:
    """A function target; ``calls`` names the public functions it validates through."""
    return Target(
        id=name,
        build=lambda dtype: fn,
        inputs=inputs,
        names=frozenset({name, *calls}),
        output=output or (lambda out: out if isinstance(out, Tensor) else None),
    )


def _randn(*shape: int, gen: torch.Generator) -> Tensor:
    return torch.randn(*shape, generator=gen)


def _function_targets() -> list[Target]:
    def attn(b: int, g: torch.Generator) -> dict:
        return {"q": _randn(b, 2, 3, 4, gen=g), "k": _randn(b, 2, 5, 4, gen=g),
                "v": _randn(b, 2, 5, 4, gen=g), "key_mask": torch.ones(b, 5, dtype=torch.bool)}

    def cross(b: int, g: torch.Generator) -> dict:
        return {"query": _randn(b, 2, 3, 4, gen=g), "key": _randn(b, 2, 5, 4, gen=g),
                "value": _randn(b, 2, 5, 4, gen=g), "key_mask": torch.ones(b, 5, dtype=torch.bool)}

    def wave(b: int, g: torch.Generator) -> dict:
        return {"waveform": _randn(b, 800, gen=g)}

    def pair(b: int, g: torch.Generator) -> dict:
        return {"a": _randn(b, 6, gen=g), "b": _randn(b, 6, gen=g),
                "weights": torch.rand(b, generator=g) + 0.1}

    def retrieval(b: int, g: torch.Generator) -> dict:
        return {"query": _randn(b, 6, gen=g), "gallery": _randn(b, 6, gen=g)}

    def labels(b: int, g: torch.Generator) -> dict:
        return {"pred": _randn(b, 4, gen=g), "target": torch.randint(0, 4, (b,), generator=g)}

    def noisy(b: int, g: torch.Generator) -> dict:
        return {"x0": _randn(b, 5, gen=g), "noise": _randn(b, 5, gen=g),
                "alpha_bar": torch.rand(b, generator=g) * 0.9 + 0.05}

    first = lambda out: out[0]  # noqa: E731 - masked_attention returns (out, weights)
    return [
        _fn("masked_attention", Fn.masked_attention, attn, first),
        _fn("masked_cross_attention", Fn.masked_cross_attention, cross),
        _fn("signed_sqrt", Fn.signed_sqrt, lambda b, g: {"x": _randn(b, 5, gen=g)}),
        _fn("spectrogram", Fn.spectrogram, wave),
        _fn("log_mel_spectrogram", lambda **kw: Fn.log_mel_spectrogram(sample_rate=8000, **kw),
            wave, calls=("spectrogram",)),
        _fn("mfcc", lambda **kw: Fn.mfcc(sample_rate=8000, **kw), wave,
            calls=("log_mel_spectrogram", "spectrogram")),
        _fn("resample", lambda **kw: resample(orig_freq=8000, new_freq=6000, **kw), wave),
        _fn("q_sample", Fn.q_sample, noisy),
        _fn("info_nce", Fn.info_nce, pair),
        _fn("siglip_loss", Fn.siglip_loss, pair),
        _fn("retrieval_metrics", retrieval_metrics, retrieval, lambda out: None),
        _fn("accuracy", accuracy, labels, lambda out: None),
        _fn("f1_score", f1_score, labels, lambda out: None),
    ]


def all_targets() -> list[Target]:
    """Every contract case's module, then the public functions."""
    return [module_target(c) for c in all_cases()] + _function_targets()
