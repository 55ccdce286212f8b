"""Runs examples/av_digits.py with its --quick flag."""

from __future__ import annotations

import importlib.util
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


def _example_module():
    spec = importlib.util.spec_from_file_location("av_digits_example",
                                                  ROOT / "examples" / "av_digits.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bad_flags_fail_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = _example_module()
    with pytest.raises(SystemExit) as exc:
        example.main(["--audio-dir", str(tmp_path / "missing")])
    assert exc.value.code == 2 and "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        example.main(["--fusions", "nope"])
    assert exc.value.code == 2 and "unknown fusion ['nope']" in capsys.readouterr().err


def test_registry_builds_what_this_installation_has() -> None:
    """Every registry entry either builds a model whose forward runs, or is reported absent."""
    import torch

    import mmfuse.fusion
    from mmfuse.data import AVSplit

    example = _example_module()
    batch = AVSplit(torch.rand(3, 1, 8, 8), torch.randn(3, 32, 47), torch.tensor([0, 1, 2]))
    for name, (cls_name, _) in example.FUSIONS.items():
        model = example.build(name, 32)
        if getattr(mmfuse.fusion, cls_name, None) is None:
            assert model is None
            continue
        log_p, _ = model(batch, {"audio": torch.tensor([True, False, True])})
        assert log_p.shape == (3, 10) and torch.isfinite(log_p).all()
    for name in example.DECISIONS:
        log_p, logits = example.build(name, 32)(batch, {"image": torch.tensor([False] * 3)})
        assert log_p.shape == (3, 10) and set(logits) == {"image", "audio"}
