"""Contract cases: the feature-level fusion modules and ModalityDropout."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mmfuse.fusion import (
    AttentionFusion,
    BilinearFusion,
    CrossAttentionFusion,
    FiLMFusion,
    GatedFusion,
    LowRankTensorFusion,
    ModalityDropout,
    TensorFusion,
)

from ..registry import ContractCase, register
from .fusion_concat import feature_inputs

DIMS = {"image": 6, "text": 4, "audio": 3}
LENGTHS = {"image": 5, "text": 3, "audio": 4}
OUT = 8


def _vector_case(id: str, build, **kw) -> None:
    register(ContractCase(
        id=id,
        build=build,
        inputs=feature_inputs(DIMS),
        out_shape=lambda b: (b, OUT),
        features_arg="features",
        presence_arg="present",
        empty_batch="empty",
        **kw,
    ))


_vector_case("AttentionFusion", lambda **dd: AttentionFusion(DIMS, OUT, **dd))
_vector_case("AttentionFusion-hidden", lambda **dd: AttentionFusion(DIMS, OUT, hidden=5, **dd))
_vector_case("GatedFusion", lambda **dd: GatedFusion(DIMS, OUT, **dd))
_vector_case("TensorFusion", lambda **dd: TensorFusion(DIMS, OUT, **dd))
_vector_case("LowRankTensorFusion", lambda **dd: LowRankTensorFusion(DIMS, OUT, 3, **dd))
_vector_case("FiLMFusion", lambda **dd: FiLMFusion(DIMS, OUT, **dd))
_vector_case("FiLMFusion-target-text", lambda **dd: FiLMFusion(DIMS, OUT, target="text", **dd))
_vector_case("BilinearFusion", lambda **dd: BilinearFusion(DIMS, OUT, 3, **dd))


# AttentionFusionOutput's weights checked alongside the fused features.
register(ContractCase(
    id="AttentionFusion-return-weights",
    build=lambda **dd: AttentionFusion(DIMS, OUT, **dd),
    inputs=lambda b, g: {**feature_inputs(DIMS)(b, g), "return_weights": True},
    out_shape=lambda b: (b, OUT + len(DIMS)),
    output=lambda out: torch.cat([out.fused, out.weights], dim=-1),
    features_arg="features",
    presence_arg="present",
    empty_batch="empty",
))


def token_inputs(batch: int, gen: torch.Generator) -> dict:
    return {
        "tokens": {m: torch.randn(batch, LENGTHS[m], d, generator=gen) for m, d in DIMS.items()},
        "masks": {m: torch.ones(batch, n, dtype=torch.bool) for m, n in LENGTHS.items()},
    }


for depth in (1, 2):
    register(ContractCase(
        id=f"CrossAttentionFusion-depth{depth}",
        build=lambda depth=depth, **dd: CrossAttentionFusion(
            DIMS, OUT, num_heads=2, depth=depth, **dd
        ),
        inputs=token_inputs,
        out_shape=lambda b: (b, OUT),
        features_arg="tokens",
        feature_layout="B N D",
        presence_arg="present",
        masks={("masks", m): ("tokens", m) for m in DIMS},
        empty_batch="empty",
    ))

def _flat_tokens(out, m: str) -> Tensor:
    """A modality's returned token states, flattened; zeros (as documented for an absent
    modality) when it was left out of the input."""
    if m in out.tokens:
        return out.tokens[m].flatten(1)
    return out.fused.new_zeros(out.fused.shape[0], LENGTHS[m] * OUT)


register(ContractCase(
    id="CrossAttentionFusion-return-tokens",
    build=lambda **dd: CrossAttentionFusion(DIMS, OUT, num_heads=4, depth=1, **dd),
    inputs=lambda b, g: {**token_inputs(b, g), "return_tokens": True},
    out_shape=lambda b: (b, OUT + sum(LENGTHS.values()) * OUT),
    output=lambda out: torch.cat([out.fused, *(_flat_tokens(out, m) for m in DIMS)], dim=-1),
    features_arg="tokens",
    feature_layout="B N D",
    presence_arg="present",
    masks={("masks", m): ("tokens", m) for m in DIMS},
    empty_batch="empty",
))


class _DropThenFuse(nn.Module):
    """ModalityDropout feeding AttentionFusion, as it is used.

    ModalityDropout returns a presence mapping (bool), not features, so it joins the suite
    through this pair: in eval mode it must be the identity (every eval check then holds the
    pair to AttentionFusion's results, compiled included) and in training the gradient check
    runs under random absence. Its own input validation is pinned in
    tests/fusion/test_modality_dropout.py (the generated bad inputs would expect this
    wrapper's name in the messages, so the case declares no features argument).
    """

    def __init__(self, **dd) -> None:
        super().__init__()
        self.drop = ModalityDropout(0.5)
        self.fuse = AttentionFusion(DIMS, OUT, **dd)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        return self.fuse(features, self.drop(features))


register(ContractCase(
    id="ModalityDropout+AttentionFusion",
    build=lambda **dd: _DropThenFuse(**dd),
    inputs=feature_inputs(DIMS),
    out_shape=lambda b: (b, OUT),
    empty_batch="empty",
))
