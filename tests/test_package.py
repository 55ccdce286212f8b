"""Package-level behaviour: version, light import, optional-dependency errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mmfuse
from mmfuse._optional import require


def test_version_and_errors_exported() -> None:
    assert isinstance(mmfuse.__version__, str) and mmfuse.__version__.count(".") == 2
    assert mmfuse.ShapeError.__module__ == "mmfuse.errors"
    assert issubclass(mmfuse.ModalityError, ValueError)


def test_import_is_light() -> None:
    code = (
        "import sys, mmfuse, mmfuse.fusion, mmfuse.functional;"
        "heavy = [m for m in ('cv2', 'sounddevice', 'soundfile', 'httpx', 'sklearn',"
        " 'matplotlib') if m in sys.modules]; print(heavy)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(mmfuse.__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env)
    assert out.stdout.strip() == "[]"


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mmfuse.nope


@pytest.mark.parametrize(("module", "extra", "package"), [
    ("cv2", "vision", "opencv-python-headless"),
    ("sounddevice", "audio", "sounddevice"),
    ("httpx", "api", "httpx"),
    ("sklearn", "demo", "scikit-learn"),
])
def test_missing_extra_names_the_pip_install(monkeypatch: pytest.MonkeyPatch, module: str,
                                             extra: str, package: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=rf"needs the optional dependency '{package}'.*"
                                          rf'pip install "mmfuse\[{extra}\]"'):
        require(module, feature="mmfuse.test")
