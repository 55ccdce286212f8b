"""LateFusion: equals DecisionFusion over the per-modality models' predictions, absent
modalities handled as the subset, any input kind, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fusion._reference import random_features
from mmfuse import ModalityError, ShapeError
from mmfuse.fusion import DecisionFusion, LateFusion

DIMS = {"image": 5, "text": 3, "audio": 4}
C = 4


def models(dtype=torch.float64) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {m: nn.Sequential(nn.Linear(d, 6, dtype=dtype), nn.Tanh(), nn.Linear(6, C, dtype=dtype))
            for m, d in DIMS.items()}


@pytest.mark.parametrize("strategy", ["weighted", "product", "soft_vote", "hard_vote", "max"])
def test_equals_decision_fusion_of_the_models(strategy: str) -> None:
    ms = models()
    weights = {"image": 0.5, "text": 0.3, "audio": 0.2}
    kw = {} if strategy in ("soft_vote", "max") else {"weights": weights}
    f = LateFusion(ms, C, dims=DIMS, strategy=strategy, **kw, dtype=torch.float64)
    ref = DecisionFusion(list(DIMS), C, strategy=strategy, inputs="logits", **kw,
                         dtype=torch.float64)
    x = random_features(DIMS, 6)
    g = torch.Generator().manual_seed(1)
    present = {m: torch.rand(6, generator=g) > 0.3 for m in DIMS}
    want = ref({m: ms[m](x[m]) for m in DIMS}, present)
    torch.testing.assert_close(f(x, present), want)


def test_absent_equals_the_model_on_the_present_subset() -> None:
    f = LateFusion(models(), C, dims=DIMS, weights={"image": 2.0, "text": 1.0, "audio": 1.0},
                   dtype=torch.float64)
    x = random_features(DIMS, 4)
    present = {"image": torch.tensor([True, False, True, False]),
               "text": torch.tensor([False, True, True, False]),
               "audio": torch.tensor([True, True, False, False])}
    out = f(x, present)
    for i in range(3):
        subset = {m: x[m][i : i + 1] for m in DIMS if bool(present[m][i])}
        torch.testing.assert_close(out[i : i + 1], f(subset))
    torch.testing.assert_close(out[3], torch.full((C,), 1 / C, dtype=torch.float64))


def test_absent_values_reach_neither_output_nor_gradient() -> None:
    f = LateFusion(models(torch.float32), C, dims=DIMS, learnable=True)
    x = random_features(DIMS, 3, dtype=torch.float32)
    x["text"][1] = float("nan")
    out = f(x, {"text": torch.tensor([True, False, True])})
    assert torch.isfinite(out).all()
    out[:, 0].sum().backward()
    for name, p in f.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


class _BagOfWords(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(50, C)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids)


def test_any_input_kind_without_dims() -> None:
    torch.manual_seed(0)
    image = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, C))
    f = LateFusion({"image": image, "text": _BagOfWords()}, C)
    x = {"image": torch.randn(5, 2, 3, 3), "text": torch.randint(0, 50, (5, 7))}
    out = f(x, {"text": torch.tensor([True, True, False, True, True])})
    assert out.shape == (5, C)
    torch.testing.assert_close(out[2], torch.softmax(image(x["image"][2:3]), -1)[0])
    with pytest.raises(ShapeError, match=r"LateFusion: batch sizes disagree in `inputs`: "
                                         r"expected `inputs\['text'\]` of shape \(B, \.\.\.\) "
                                         r"with B=5 like `inputs\['image'\]`, got \(4, 7\)"):
        f({"image": x["image"], "text": x["text"][:4]})
    with pytest.raises(ModalityError, match=r"LateFusion: expected `inputs` to hold modalities "
                                            r"from \['image', 'text'\], got \['depth'\]"):
        f({"depth": x["image"]})


def test_model_output_and_config_errors() -> None:
    f = LateFusion({"a": nn.Linear(3, 5), "b": nn.Linear(2, C)}, C, dims={"a": 3, "b": 2})
    with pytest.raises(ShapeError, match=r"LateFusion: expected `models\['a'\] output` of shape "
                                         r"\(B, C\) with B=2, C=4, got \(2, 5\)"):
        f({"a": torch.randn(2, 3), "b": torch.randn(2, 2)})
    with pytest.raises(ModalityError, match=r"LateFusion: expected `dims` to name the modalities "
                                            r"of `models` in their order, \['a', 'b'\], got "
                                            r"\['b', 'a'\]"):
        LateFusion({"a": nn.Linear(3, C), "b": nn.Linear(2, C)}, C, dims={"b": 2, "a": 3})
    with pytest.raises(TypeError, match=r"LateFusion: expected `models\['a'\]` to be an "
                                        r"nn.Module, got function"):
        LateFusion({"a": lambda x: x}, C)  # type: ignore[dict-item]


def test_exports_with_a_dynamic_batch() -> None:
    f = LateFusion(models(torch.float32), C, dims=DIMS).eval()
    x = random_features(DIMS, 4, dtype=torch.float32)
    present = {m: torch.tensor([True, False, True, True]) for m in DIMS}
    batch = torch.export.Dim("B", min=2, max=64)
    ep = torch.export.export(f, (), {"inputs": x, "present": present}, dynamic_shapes={
        "inputs": {m: {0: batch} for m in DIMS}, "present": {m: {0: batch} for m in DIMS}})
    x7 = random_features(DIMS, 7, dtype=torch.float32, seed=3)
    p7 = {m: torch.rand(7, generator=torch.Generator().manual_seed(4)) > 0.5 for m in DIMS}
    torch.testing.assert_close(ep.module()(inputs=x7, present=p7), f(x7, p7))
