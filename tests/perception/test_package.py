"""The perception package's import rules: light to import, one-way dependencies."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import mmfuse.perception as perception

SRC = Path(perception.__file__).parent


def test_import_does_not_load_optional_backends() -> None:
    code = (
        "import sys, mmfuse.perception\n"
        "heavy = [m for m in ('cv2', 'sounddevice', 'soundfile', 'httpx') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC.parents[1]), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True, env=env)
    assert out.stdout.strip() == ""


def test_perception_imports_only_errors_checks_optional_precision_functional() -> None:
    allowed = {"errors", "_checks", "_optional", "_precision", "functional"}  # leaf helpers
    for path in SRC.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 2:  # from ..x import y
                target = (node.module or "").split(".")[0]
                assert target in allowed, f"{path.name} imports mmfuse.{target}"
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("mmfuse"), f"{path.name}: absolute {node.module}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] not in {"cv2", "sounddevice", "soundfile", "httpx",
                                                            "mmfuse"}, f"{path.name} imports {alias.name}"


def test_public_names() -> None:
    for name in perception.__all__:
        assert getattr(perception, name) is not None
    sample = perception.Sample(1, 2.0, {})
    assert (sample.data, sample.timestamp, sample.meta) == (1, 2.0, {})
    assert issubclass(perception.SourceTimeoutError, TimeoutError)
    assert issubclass(perception.DecodeError, ValueError)
    assert issubclass(perception.SourceError, OSError)
    a, b = perception.clock(), perception.clock()
    assert b >= a
