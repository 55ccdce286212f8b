"""Runs examples/av_digits.py with its --quick flag."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_av_digits_quick() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "av_digits.py"), "--quick"],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "| model | test accuracy (%) | audio absent | image absent |" in out
    rows = dict(re.findall(r"^\| (.+?) \| ([\d.]+) \|", out, flags=re.M))
    for name in ("image only", "audio only", "concat", "concat + ModalityDropout",
                 "decision-weighted", "decision-weighted + ModalityDropout"):
        assert name in rows, f"missing row {name!r} in:\n{out}"
    # quick runs are short, but every model must learn far beyond chance (10 %)
    assert all(float(v) > 30.0 for v in rows.values()), out


def test_bad_flags_fail_clearly(tmp_path: Path) -> None:
    script = str(ROOT / "examples" / "av_digits.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, script, "--audio-dir", str(tmp_path / "missing")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "is not a folder" in proc.stderr
    proc = subprocess.run([sys.executable, script, "--fusions", "nope"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "unknown fusion ['nope']" in proc.stderr
