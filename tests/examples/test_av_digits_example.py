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


def _recordings(folder: Path, speakers: tuple[str, ...], indices: range) -> Path:
    """FSDD-named recordings: symlinks to the real ones where they are on disk, else synthetic
    8 kHz WAV files."""
    fsdd = Path(os.environ.get("MMFUSE_FSDD", ROOT.parent / "shared" / "data" / "fsdd"))
    folder.mkdir(parents=True)
    names = [f"{d}_{s}_{i}.wav" for d in range(10) for s in speakers for i in indices]
    if (fsdd / "recordings").is_dir():
        for name in names:
            (folder / name).symlink_to(fsdd / "recordings" / name)
        return folder
    import soundfile as sf

    from mmfuse.data import synthesize_spoken_digits

    waves, _ = synthesize_spoken_digits(len(speakers) * len(indices), clip_samples=4000, seed=5)
    for wave, name in zip(waves, names):
        sf.write(str(folder / name), wave.numpy(), 8000, subtype="PCM_16")
    return folder


def _speakers(out: str) -> list[tuple[str, str]]:
    """(train speakers, test speakers) of each split the example printed."""
    return re.findall(r"train speakers ([\w, ]+), test speakers ([\w, ]+);", out)


def test_test_audio_dir_and_degraded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = _example_module()
    train_dir = _recordings(tmp_path / "train", ("george", "theo"), range(3))
    test_dir = _recordings(tmp_path / "test", ("theo",), range(3, 5))
    assert example.main(["--audio-dir", str(train_dir), "--test-audio-dir", str(test_dir),
                         "--fusions", "concat", "--epochs", "1", "--quick",
                         "--degraded"]) == 0
    out = capsys.readouterr().out
    assert _speakers(out) == [("george", "theo")]
    assert "train 30 pairs, test 20 pairs" in out  # theo's 30 training-folder clips unused
    snr, noise = example.DEGRADED
    assert f"degraded: audio at {snr} dB SNR, image noise {noise}" in out
    rows = dict(re.findall(r"^\| (.+?) \| ([\d.]+) \|", out, flags=re.M))
    assert {"image only", "audio only", "concat", "concat + ModalityDropout"} <= set(rows)


def test_split_speaker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = _example_module()
    folder = _recordings(tmp_path / "rec", ("george", "jackson"), range(2))
    assert example.main(["--audio-dir", str(folder), "--split", "speaker", "--fusions",
                         "decision-weighted", "--epochs", "1", "--quick"]) == 0
    out = capsys.readouterr().out
    assert _speakers(out) == [("jackson", "george"), ("george", "jackson")]
    per_speaker = re.findall(r"^\| (image only) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$",
                             out, flags=re.M)
    assert len(per_speaker) == 1, out  # the per-speaker table: george, jackson, mean
    _, george, jackson, mean = per_speaker[0]
    assert float(mean) == pytest.approx((float(george) + float(jackson)) / 2, abs=0.06)
    assert "mean of 2 held-out speakers:" in out
    with pytest.raises(SystemExit) as exc:
        example.main(["--audio-dir", str(folder), "--test-audio-dir", str(folder),
                      "--split", "speaker"])
    assert exc.value.code == 2 and "two different test sets" in capsys.readouterr().err
