"""Run examples/retrieval.py with --quick on the real digits and FSDD recordings, and without
FSDD on synthetic audio."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FSDD = ROOT.parent / "shared" / "data" / "fsdd"


@pytest.mark.slow
@pytest.mark.skipif(not (FSDD / "recordings").is_dir(), reason=f"FSDD not found at {FSDD}")
def test_retrieval_example_quick_learns_the_digits():
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "retrieval.py"), "--quick"],
                         capture_output=True, text=True, env=env, timeout=240, check=True).stdout
    rows = re.findall(r"\| (image -> audio|audio -> image) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|",
                      out)
    assert len(rows) == 2, out
    chance = float(re.search(r"R@1 by chance = ([\d.]+)", out).group(1))
    assert chance == pytest.approx(0.1, abs=0.02)
    for _direction, r1, r5, _map in rows:
        assert float(r1) > 5 * chance  # far above chance on held-out pairs
        assert float(r5) >= float(r1)


@pytest.mark.slow
def test_retrieval_example_quick_without_fsdd_falls_back_to_synthetic_audio(tmp_path: Path) -> None:
    # a copy of the script outside the repository: its default FSDD folder does not exist there
    script = tmp_path / "examples" / "retrieval.py"
    script.parent.mkdir()
    script.write_text((ROOT / "examples" / "retrieval.py").read_text())
    assert not (tmp_path.parent / "shared" / "data" / "fsdd").exists()
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True,
                         env=env, timeout=240, check=True, cwd=tmp_path).stdout
    assert "audio: synthetic spoken-digit-like audio (SYNTHETIC: not speech)" in out
    rows = re.findall(r"\| (image -> audio|audio -> image) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|",
                      out)
    assert len(rows) == 2, out
    chance = float(re.search(r"R@1 by chance = ([\d.]+)", out).group(1))
    for _direction, r1, r5, _map in rows:
        assert float(r1) > 3 * chance  # the synthetic digits are learnable too
        assert float(r5) >= float(r1)


def test_retrieval_example_refuses_a_missing_audio_dir(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "retrieval.py"), "--audio-dir",
                        str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "--audio-dir" in r.stderr and "is not a folder (FSDD recordings expected)" in r.stderr
