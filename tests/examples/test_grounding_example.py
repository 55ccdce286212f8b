"""The grounding example, run with --quick: it trains and points well above chance."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_example():
    spec = importlib.util.spec_from_file_location("grounding_example", ROOT / "examples" /
                                                  "grounding.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_points_well_above_chance(tmp_path, capsys):
    example = load_example()
    out = tmp_path / "grounding.png"
    acc = example.main(["--quick", "--out", str(out)])
    printed = capsys.readouterr().out
    chance = float(printed.split("(chance ")[1].split(")")[0])
    assert chance < 0.15
    assert acc >= 3 * chance, printed  # well above a uniformly placed peak
    assert out.stat().st_size > 10_000


def test_videos_and_boxes_are_consistent():
    example = load_example()
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    v = example.make_videos(digits.images, digits.target, 20, 4, 3, rng)
    tokens, cells, boxes = example.queries(v, np.zeros(20, dtype=int))
    assert v.frames.shape == (20, 4, 32, 32) and tokens.shape == (20, 4)
    assert all(len(set(row)) == 3 for row in v.classes)  # distinct digits: unambiguous query
    assert (tokens[:, 3].numpy() - 3 == v.classes[:, 0]).all()
    for i in range(20):
        for t in range(4):  # the digit's ink lies in its frame box, inside the video box
            y, x = v.corners[i, 0, t]
            assert boxes[i, 0] <= y and y + 8 <= boxes[i, 2]
            assert boxes[i, 1] <= x and x + 8 <= boxes[i, 3]
            assert int(cells[i, t].sum()) == 4  # 8 px digit covers 2 x 2 cell centres
