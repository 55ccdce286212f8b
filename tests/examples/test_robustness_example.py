"""Runs examples/robustness.py with its --quick flag."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_robustness_example_quick(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "robustness.py"), "--quick",
                           "--plot", str(tmp_path / "r.png")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for head in ("feature level", "decision level"):
        assert f"{head} (" in out
        assert (tmp_path / f"r-{head.replace(' ', '-')}.png").is_file()
    rows = re.findall(r"^\| (\w+) \| (\w+) \| ([\w+-]+) \| ([\d.-]+) \| ([\d.]+) \| ", out, re.M)
    assert len(rows) == 2 * 19, out  # clean, 2 absent, 2 x (2 noise + 2 dropout), 2 x 2 x 2 attacks
    clean = {float(score) for kind, *_, score in rows if kind == "clean"}
    assert min(clean) > 0.5, out  # both fused classifiers learn far beyond chance (0.1)
