"""Contract cases: DeepSetsFusion, NLGateFusion, LateFusion and AttentionFusion's default
out_dim."""

from __future__ import annotations

from torch import nn

from mmfuse.fusion import AttentionFusion, DeepSetsFusion, LateFusion, NLGateFusion

from ..registry import ContractCase, register
from .fusion_concat import feature_inputs

DIMS = {"image": 6, "text": 4, "audio": 3}
OUT = 8
C = 5


def _vector_case(id: str, build, out: int = OUT, **kw) -> None:
    register(ContractCase(
        id=id,
        build=build,
        inputs=feature_inputs(DIMS),
        out_shape=lambda b: (b, out),
        features_arg="features",
        presence_arg="present",
        empty_batch="empty",
        **kw,
    ))


for _reduce in ("sum", "mean", "max"):
    _vector_case(f"DeepSetsFusion-{_reduce}",
                 lambda _reduce=_reduce, **dd: DeepSetsFusion(DIMS, OUT, reduce=_reduce, **dd))
_vector_case("DeepSetsFusion-hidden-default-out", lambda **dd: DeepSetsFusion(DIMS, hidden=7, **dd),
             out=min(DIMS.values()))
_vector_case("AttentionFusion-default-out", lambda **dd: AttentionFusion(DIMS, **dd),
             out=min(DIMS.values()))
_vector_case("NLGateFusion", lambda **dd: NLGateFusion(DIMS, "image", 4, query_tokens=2,
                                                       key_tokens=3, **dd))
_vector_case("NLGateFusion-query-audio", lambda **dd: NLGateFusion(DIMS, "audio", 8, **dd))


def _late(**dd) -> LateFusion:
    models = {m: nn.Sequential(nn.Linear(d, 7, **dd), nn.GELU(), nn.Linear(7, C, **dd))
              for m, d in DIMS.items()}
    return LateFusion(models, C, dims=DIMS, learnable=True, **dd)


register(ContractCase(
    id="LateFusion",
    build=_late,
    inputs=lambda b, g: {"inputs": feature_inputs(DIMS)(b, g)["features"]},
    out_shape=lambda b: (b, C),
    features_arg="inputs",
    presence_arg="present",
    empty_batch="empty",
    precision="float32",  # DecisionFusion's probabilities
))
register(ContractCase(
    id="LateFusion-product",
    build=lambda **dd: LateFusion({m: nn.Linear(d, C, **dd) for m, d in DIMS.items()}, C,
                                  dims=DIMS, strategy="product", learn_temperature=True, **dd),
    inputs=lambda b, g: {"inputs": feature_inputs(DIMS)(b, g)["features"]},
    out_shape=lambda b: (b, C),
    features_arg="inputs",
    presence_arg="present",
    empty_batch="empty",
    precision="float32",  # DecisionFusion's probabilities
))
