"""benchmarks/gpu.sh: its dry run checks the GPU plan on any machine (no GPU work)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(*args: str, python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": python, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=240)


def test_dry_run_prints_and_validates_the_plan(tmp_path: Path) -> None:
    run = _run("--dry-run", str(tmp_path / "out"))
    assert run.returncode == 0, run.stdout + run.stderr
    for step in ("cuda-tests", "contrastive-float32", "contrastive-bfloat16",
                 "attention-float32", "attention-bfloat16", "demo-cuda"):
        assert f"plan: {step} (limit" in run.stdout
    assert "-m pytest -m cuda" in run.stdout and "--device cuda" in run.stdout
    limits = int(run.stdout.split("time limits add up to ")[1].split()[0])
    assert 0 < limits <= 480  # 8 minutes
    collected = int(run.stdout.split("cuda tests collected: ")[1].split()[0])
    assert collected > 0
    assert "dry run: plan OK" in run.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []  # nothing was run


def test_dry_run_fails_on_a_broken_plan(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    run = _run("--dry-run", str(tmp_path / "out"), python=str(fake))
    assert run.returncode == 1 and "dry run: plan BROKEN" in run.stderr


def test_usage_errors() -> None:
    run = _run()
    assert run.returncode == 2 and "usage: bash benchmarks/gpu.sh" in run.stderr
    run = _run("--nope", "x")
    assert run.returncode == 2 and "unknown option --nope" in run.stderr
