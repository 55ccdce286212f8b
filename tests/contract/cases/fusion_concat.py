"""Contract cases: ConcatFusion."""

from __future__ import annotations

import torch

from mmfuse.fusion import ConcatFusion

from ..registry import ContractCase, register

DIMS = {"image": 6, "text": 4, "audio": 3}


def feature_inputs(dims: dict[str, int]):
    """inputs(batch, gen) for a module taking ``features`` of (B, D_m)."""

    def inputs(batch: int, gen: torch.Generator) -> dict:
        return {"features": {m: torch.randn(batch, d, generator=gen) for m, d in dims.items()}}

    return inputs


register(ContractCase(
    id="ConcatFusion",
    build=lambda **dd: ConcatFusion(DIMS, **dd),
    inputs=feature_inputs(DIMS),
    out_shape=lambda b: (b, sum(DIMS.values())),
    features_arg="features",
    presence_arg="present",
    empty_batch="empty",
    precision="data",  # a concatenation: no matmul, the inputs' dtype under autocast
))
register(ContractCase(
    id="ConcatFusion-proj",
    build=lambda **dd: ConcatFusion(DIMS, out_dim=5, **dd),
    inputs=feature_inputs(DIMS),
    out_shape=lambda b: (b, 5),
    features_arg="features",
    presence_arg="present",
    empty_batch="empty",
))
