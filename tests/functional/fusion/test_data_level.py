"""Boundary checks of mmfuse.functional.fusion.data_level (the alignment math is tested through
DataLevelFusion in tests/fusion/test_data_level.py)."""

from __future__ import annotations

import pytest
import torch

from mmfuse import ShapeError
from mmfuse.functional import align_to_times, spectrogram_to_grid, time_overlap

VALUES = torch.randn(2, 3, 5)  # (B, F, S)
TIMES = torch.arange(5.0).expand(2, 5)
QUERY = torch.linspace(0, 4, 7).expand(2, 7)


def test_align_to_times_matches_a_loop_and_checks_sizes() -> None:
    out = align_to_times(VALUES, TIMES, QUERY)
    for i, tq in enumerate(QUERY[0].tolist()):
        j = min(range(5), key=lambda s: (abs(s - tq), s))  # nearest, earlier on a tie
        torch.testing.assert_close(out[:, i], VALUES[:, :, j])
    with pytest.raises(ShapeError, match=r"^align_to_times: expected `times` of shape \(B, S\) "
                       r"with B=2, S=5, got \(2, 4\)\.$"):
        align_to_times(VALUES, TIMES[:, :4], QUERY)
    with pytest.raises(ShapeError, match=r"^align_to_times: expected `values` of shape \(B, F, S\)"):
        align_to_times(VALUES[0], TIMES, QUERY)
    with pytest.raises(ShapeError, match=r"expected `query` of shape \(B, T\) with B=2, got \(1, 7\)"):
        align_to_times(VALUES, TIMES, QUERY[:1])
    with pytest.raises(ValueError, match="^align_to_times: expected at least one time step"):
        align_to_times(VALUES[..., :0], TIMES[:, :0], QUERY)
    with pytest.raises(ValueError, match="^align_to_times: expected `times` on cpu like `values`"):
        align_to_times(VALUES, TIMES.to("meta"), QUERY)


def test_grid_and_overlap_checks() -> None:
    with pytest.raises(ShapeError, match=r"^spectrogram_to_grid: expected `aligned` of shape \(B, T, K\)"):
        spectrogram_to_grid(torch.randn(4, 6), 3, 4)
    for mode in ("broadcast", "resize"):
        with pytest.raises(ValueError, match="^spectrogram_to_grid: expected `height` to be a positive"):
            spectrogram_to_grid(torch.randn(2, 4, 6), 0, 4, mode)
    with pytest.raises(ShapeError, match=r"^time_overlap: expected `b` of shape \(B, S\) with B=2"):
        time_overlap(TIMES, TIMES[:1])
    with pytest.raises(ValueError, match="^time_overlap: expected at least one time in `a` and in `b`"):
        time_overlap(TIMES[:, :0], TIMES)
    assert time_overlap(TIMES, TIMES + 4).tolist() == [True, True]
    assert time_overlap(TIMES, TIMES + 4.5).tolist() == [False, False]
