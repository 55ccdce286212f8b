"""The ``mmfuse`` command line: options that need no subcommand."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mmfuse
from mmfuse.cli import main


def test_version_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"mmfuse {mmfuse.__version__}"


def test_version_from_the_command_line() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(mmfuse.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-m", "mmfuse", "--version"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"mmfuse {mmfuse.__version__}"


def test_no_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "required: command" in capsys.readouterr().err
