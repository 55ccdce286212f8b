"""accuracy and f1_score against scikit-learn."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _peers import sklearn_classification_pairs
from mmfuse.metrics import accuracy, f1_score


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), c=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_match_sklearn(n, c, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, c, (n,), generator=g)
    p = torch.randint(0, c, (n,), generator=g)
    pairs = sklearn_classification_pairs(p, t, c)
    assert len(pairs) == 5
    for name, got, want in pairs:
        assert got == pytest.approx(want), name


def test_scores_are_argmaxed_and_errors():
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    target = torch.tensor([1, 1, 1])
    assert accuracy(scores, target) == pytest.approx(2 / 3)
    with pytest.raises(TypeError, match="integer class labels"):
        accuracy(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unknown `average` 'binary'"):
        f1_score(target, target, average="binary")


def test_num_classes_and_device_errors():
    p, t = torch.tensor([0, 1, 2, 1]), torch.tensor([0, 1, 1, 1])
    bad_values: list[Any] = [0, -1, True, 2.0]
    for bad in bad_values:
        with pytest.raises(ValueError, match="^f1_score: expected `num_classes` to be a positive "
                           "int or None, got "):
            f1_score(p, t, num_classes=bad)
    with pytest.raises(ValueError, match="^accuracy: expected `target` on meta like `pred`, got cpu"):
        accuracy(p.to("meta"), t)
    with pytest.raises(ValueError, match="^f1_score: expected `target` on meta like `pred`"):
        f1_score(p.to("meta"), t)


def test_meta_tensors_are_named() -> None:
    from mmfuse.metrics import accuracy, f1_score

    pred = torch.randn(4, 3, device="meta")
    target = torch.zeros(4, dtype=torch.long, device="meta")
    for fn in (accuracy, f1_score):
        with pytest.raises(ValueError, match=rf"^{fn.__name__}: expected `pred` with values"):
            fn(pred, target)
