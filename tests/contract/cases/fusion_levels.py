"""Contract cases: DecisionFusion and DataLevelFusion."""

from __future__ import annotations

import torch

from mmfuse.fusion import DecisionFusion

from ..registry import ContractCase, register

NAMES = ["text", "audio", "image"]
C = 4


def prediction_inputs(logits: bool):
    def inputs(batch: int, gen: torch.Generator) -> dict:
        preds = {m: torch.randn(batch, C, generator=gen) * 2 for m in NAMES}
        if not logits:
            preds = {m: p.softmax(-1) for m, p in preds.items()}
        return {"predictions": preds}

    return inputs


# The suite's gradient check needs a parameter, so every case learns something: weights where
# the strategy uses them, else logit temperatures. Parameter-free configurations (fixed weights
# on probabilities) are covered in tests/fusion/test_decision_level.py.
_TEMPS = {"text": 2.0, "audio": 0.5, "image": 1.0}
_DECISION = {
    "weighted": dict(strategy="weighted", learnable=True,
                     weights={"text": 0.6, "audio": 0.3, "image": 0.1}),
    "weighted-logits": dict(strategy="weighted", inputs="logits", temperature=_TEMPS,
                            learn_temperature=True, weights={"text": 3.0, "audio": 1.0,
                                                             "image": 1.0}),
    "product": dict(strategy="product", learnable=True,
                    weights={"text": 2.0, "audio": 1.0, "image": 1.0}),
    "product-logits": dict(strategy="product", inputs="logits", learnable=True,
                           temperature=_TEMPS, learn_temperature=True),
    "soft_vote": dict(strategy="soft_vote", inputs="logits", learn_temperature=True),
    "hard_vote": dict(strategy="hard_vote", learnable=True),
    "max": dict(strategy="max", inputs="logits", temperature=_TEMPS, learn_temperature=True),
}

for _name, _kw in _DECISION.items():
    register(ContractCase(
        id=f"DecisionFusion-{_name}",
        build=lambda _kw=_kw, **dd: DecisionFusion(NAMES, C, **_kw, **dd),
        inputs=prediction_inputs(_kw.get("inputs") == "logits"),
        out_shape=lambda b: (b, C),
        features_arg="predictions",
        feature_layout="B C",
        presence_arg="present",
        empty_batch="empty",
    ))
