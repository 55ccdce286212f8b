"""Boundary checks of mmfuse.functional.fusion.modality_dropout (its sampling is tested through
ModalityDropout in tests/fusion/test_modality_dropout.py)."""

from __future__ import annotations

import pytest
import torch

from mmfuse import ShapeError
from mmfuse.functional import modality_dropout

OBS = torch.ones(4, 3, dtype=torch.bool)


def test_observed_must_be_a_bool_matrix() -> None:
    with pytest.raises(TypeError, match="^modality_dropout: expected `observed` to be a torch.bool"):
        modality_dropout(OBS.float(), 0.5)
    with pytest.raises(ShapeError, match=r"^modality_dropout: expected `observed` of shape "
                       r"\(B, M\), got \(3,\)\.$"):
        modality_dropout(OBS[0], 0.5)
    with pytest.raises(TypeError, match="expected `observed` to be a tensor of shape"):
        modality_dropout([[True]], 0.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), True])
def test_p_must_be_a_probability(p: float) -> None:
    with pytest.raises(ValueError, match=r"^modality_dropout: expected `p` in \[0, 1\], got "):
        modality_dropout(OBS, p)


@pytest.mark.parametrize("min_present", [-1, True, 1.5])
def test_min_present_must_be_a_non_negative_int(min_present: int) -> None:
    with pytest.raises(ValueError, match="^modality_dropout: expected `min_present` to be a "
                       "non-negative int, got "):
        modality_dropout(OBS, 0.5, min_present=min_present)


def test_empty_batch_and_certain_drop() -> None:
    assert modality_dropout(OBS[:0], 0.5).shape == (0, 3)
    assert not modality_dropout(OBS, 1.0, min_present=0).any()
