"""examples/generate_digits.py --quick: label-conditioned generation is recognisable."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "generate_digits.py"

pytest.importorskip("sklearn")


@pytest.mark.slow
def test_quick_run_generates_the_conditioned_digits(tmp_path: Path) -> None:
    main = runpy.run_path(str(EXAMPLE))["main"]
    figure = tmp_path / "grid.png"
    results = main(["--quick", "--figure", str(figure), "--per-digit", "10"])
    assert results["real"]["accuracy"] > 0.9  # the independent classifier works on real digits
    # Chance is 10%; the quick run is far above it for both heads.
    assert results["diffusion"]["accuracy"] >= 0.6
    assert results["cvae"]["accuracy"] >= 0.6
    assert results["diffusion"]["retrieval"] == pytest.approx(results["diffusion"]["accuracy"], abs=0.05)
    assert figure.stat().st_size > 1000
