"""Contract cases: DecisionFusion and DataLevelFusion."""

from __future__ import annotations

import torch

from mmfuse import ShapeError
from mmfuse.fusion import DataLevelFusion, DecisionFusion

from ..registry import BadInput, ContractCase, register

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
        precision="float32",  # probabilities
    ))


# ----------------------------------------------------------------------------- DataLevelFusion
# Times are multiples of 1/8 s so that they are exact in bfloat16 too.
T, S, CH, FB, H, W = 4, 9, 3, 5, 3, 2


def data_level_inputs(batch: int, gen: torch.Generator) -> dict:
    offset = torch.randint(0, 3, (batch, 1), generator=gen) * 0.125
    return {
        "frames": torch.randn(batch, T, CH, H, W, generator=gen),
        "frame_times": torch.arange(T) * 0.25 + offset,  # (B, T)
        "spectrogram": torch.randn(batch, FB, S, generator=gen),
        "spectrogram_times": (torch.arange(S) * 0.125).expand(batch, S).clone(),  # (B, S)
    }


def data_level_bad_inputs(kwargs: dict) -> list[BadInput]:
    fr, st = kwargs["frames"], kwargs["spectrogram_times"]
    ft = kwargs["frame_times"]
    return [
        BadInput("frames wrong channels", {**kwargs, "frames": torch.cat([fr, fr[:, :, :1]], 2)},
                 ShapeError, "frames"),
        BadInput("frames wrong rank", {**kwargs, "frames": fr[:, 0]}, ShapeError, "frames"),
        BadInput("spectrogram batch mismatch",
                 {**kwargs, "spectrogram": torch.cat([kwargs["spectrogram"]] * 2)}, ShapeError,
                 "spectrogram"),
        BadInput("frame_times length", {**kwargs, "frame_times": ft[:, :-1]}, ShapeError,
                 "frame_times"),
        BadInput("spectrogram_times integer", {**kwargs, "spectrogram_times": st.long()},
                 TypeError, "spectrogram_times"),
        BadInput("unsorted frame_times", {**kwargs, "frame_times": ft.flip(-1)}, ValueError,
                 "frame_times"),
        BadInput("no overlap", {**kwargs, "frame_times": ft + 100.0}, ValueError,
                 "spectrogram_times"),
    ]


# Only the "project" mode has parameters, which the suite's gradient check needs; "broadcast" and
# "resize" (parameter-free) get the same checks in tests/fusion/test_data_level.py.
_DATA = {
    "nearest-project": (dict(audio="project", audio_channels=2), CH + 2, "b t c h w"),
    "linear-project-bhwct": (dict(align="linear", audio="project", audio_channels=2,
                                  layout="b h w c t"), CH + 2, "b h w c t"),
}


def _data_shape(c: int, layout: str):
    def shape(b: int) -> tuple[int, ...]:
        sizes = {"b": b, "t": T, "c": c, "h": H, "w": W}
        return tuple(sizes[a] for a in layout.split())

    return shape


for _name, (_kw, _c, _layout) in _DATA.items():
    register(ContractCase(
        id=f"DataLevelFusion-{_name}",
        build=lambda _kw=_kw, **dd: DataLevelFusion(CH, FB, **_kw, **dd),
        inputs=data_level_inputs,
        out_shape=_data_shape(_c, _layout),
        tensor_args=["spectrogram"],
        bad_inputs=data_level_bad_inputs,
        empty_batch="empty",
        precision="data",
    ))
