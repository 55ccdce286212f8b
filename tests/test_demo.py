"""``mmfuse demo``: quick runs in a subprocess (table, picture, JSON, repeatability, real FSDD
audio where it is on disk) and the command-line errors, in process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from mmfuse.cli import main

ROOT = Path(__file__).resolve().parents[1]
# the recordings beside the repository (../shared/data/fsdd), or where MMFUSE_FSDD says
FSDD = Path(os.environ.get("MMFUSE_FSDD", ROOT.parent / "shared" / "data" / "fsdd"))
ROWS = ("image only", "audio only", "data level", "feature level", "decision level")
FUSED = ("feature level", "decision level")  # the rows with a missing-modality mode
ACC_ROW = re.compile(r"^\| (.+?) \(.+\) \| ([\d.]+|-) \| ([\d.]+|-) \| ([\d.]+|-) \|$", re.M)
RET_ROW = re.compile(r"^\| (image -> audio|audio -> image) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$",
                     re.M)


class Run(NamedTuple):
    out: str
    folder: Path


def _demo(out: Path, *flags: str) -> Run:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "mmfuse", "demo", "--quick", "--no-progress", "--out", str(out),
         *flags], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return Run(proc.stdout, out)


def _table(out: str) -> list[str]:
    """The printed table lines (accuracy and retrieval), in order."""
    return [line for line in out.splitlines() if line.startswith("|")]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _demo(tmp_path_factory.mktemp("demo") / "out", "--seed", "0")


@pytest.mark.slow
def test_quick_run_prints_the_table_and_learns(quick: Run) -> None:
    assert "SYNTHETIC" in quick.out  # the built-in audio says what it is
    assert "| model | test accuracy (%) | audio absent | image absent |" in quick.out
    acc = {m[0]: m[1:] for m in ACC_ROW.findall(quick.out)}
    assert list(acc) == list(ROWS), quick.out
    for row, (both, no_audio, no_image) in acc.items():
        assert float(both) > 30.0, f"{row}: {both} % (chance 10 %)\n{quick.out}"
        if row in FUSED:  # with one modality gone, fusion still beats chance
            assert float(no_audio) > 20.0 and float(no_image) > 20.0, quick.out
        else:
            assert no_audio == no_image == "-"
    ret = {m[0]: [float(v) for v in m[1:]] for m in RET_ROW.findall(quick.out)}
    assert set(ret) == {"image -> audio", "audio -> image"}, quick.out
    for r1, r5, mean_ap in ret.values():
        assert 0.3 < r1 <= r5 <= 1.0 and mean_ap > 0.2, quick.out


@pytest.mark.slow
def test_quick_run_writes_picture_and_json(quick: Run) -> None:
    png = quick.folder / "demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    res = json.loads((quick.folder / "results.json").read_text())
    assert res["synthetic"] is True and res["seed"] == 0 and res["quick"] is True
    # the JSON holds the printed numbers
    acc = {m[0]: m[1:] for m in ACC_ROW.findall(quick.out)}
    for row in ROWS:
        assert f"{100 * res['accuracy'][row]['both']:.1f}" == acc[row][0]
    r1 = {m[0]: m[1] for m in RET_ROW.findall(quick.out)}
    for direction, value in r1.items():
        assert f"{res['retrieval'][direction]['R@1']:.3f}" == value
    # attention weights: image + audio = 1 for every digit (both present)
    for d in range(10):
        w = res["attention_per_class"][str(d)]
        assert w["image"] + w["audio"] == pytest.approx(1.0, abs=1e-5)
        assert 0.0 < w["image"] < 1.0
    assert sum(res["decision_weights"].values()) == pytest.approx(1.0, abs=1e-5)
    losses = res["train_loss"]
    assert len(losses) == res["epochs"] and losses[-1] < losses[0]


@pytest.mark.slow
def test_same_seed_same_table(quick: Run, tmp_path: Path) -> None:
    again = _demo(tmp_path / "again", "--seed", "0")
    assert _table(again.out) == _table(quick.out)
    first = json.loads((quick.folder / "results.json").read_text())
    second = json.loads((again.folder / "results.json").read_text())
    for key in ("accuracy", "retrieval", "attention_per_class", "train_loss"):
        assert first[key] == second[key]


@pytest.mark.slow
@pytest.mark.skipif(not FSDD.is_dir(), reason=f"FSDD recordings not found at {FSDD}")
def test_quick_run_on_real_fsdd(tmp_path: Path) -> None:
    run = _demo(tmp_path / "fsdd", "--audio-dir", str(FSDD))
    assert "SYNTHETIC" not in run.out and f"FSDD recordings in {FSDD}" in run.out
    acc = {m[0]: m[1:] for m in ACC_ROW.findall(run.out)}
    assert list(acc) == list(ROWS), run.out
    assert all(float(both) > 30.0 for both, _, _ in acc.values()), run.out
    res = json.loads((tmp_path / "fsdd" / "results.json").read_text())
    assert res["synthetic"] is False and res["test_pairs"] == 200  # FSDD's test split


@pytest.mark.slow
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_quick_run_on_cuda(tmp_path: Path) -> None:
    run = _demo(tmp_path / "cuda", "--device", "cuda", "--epochs", "4")
    assert "device cuda" in run.out and len(ACC_ROW.findall(run.out)) == len(ROWS)


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``mmfuse demo argv`` in process; expect a usage error (exit 2), return its line."""
    with pytest.raises(SystemExit) as exc:
        main(["demo", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_missing_audio_dir_is_a_clear_error(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-folder"
    line = _error(capsys, "--audio-dir", str(missing), "--out", str(tmp_path / "o"))
    assert line == (f"mmfuse demo: error: --audio-dir {missing} does not exist (expected the "
                    f"FSDD recordings folder or its parent)")
    assert not (tmp_path / "o").exists()  # nothing written, nothing trained


def test_audio_dir_without_recordings_is_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.wav").write_bytes(b"")  # not an FSDD name
    line = _error(capsys, "--audio-dir", str(tmp_path))
    assert line.startswith(f"mmfuse demo: error: --audio-dir {tmp_path} holds no FSDD recordings")
    line = _error(capsys, "--audio-dir", str(tmp_path / "notes.wav"))
    assert line.startswith(f"mmfuse demo: error: --audio-dir {tmp_path / 'notes.wav'} is not a "
                           f"folder")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    line = _error(capsys, "--device", "cuda")
    assert line.startswith("mmfuse demo: error: --device cuda: CUDA is not available")
    assert line.endswith("use --device cpu")


@pytest.mark.parametrize(("argv", "message"), [
    (["--device", "gpu0"], "--device 'gpu0' is not a torch device"),
    (["--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
    (["--batch-size", "x"], "argument --batch-size: expected a positive integer, got 'x'"),
    (["--threads", "-1"], "argument --threads: expected a positive integer, got '-1'"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_bad_flags_are_clear_errors(argv: list[str], message: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert message in _error(capsys, *argv)


def test_out_must_be_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert _error(capsys, "--out", str(target)) == (
        f"mmfuse demo: error: --out {target} exists and is not a folder")


def test_help_names_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--audio-dir", "--out", "--seed", "--epochs", "--batch-size", "--device",
                 "--threads", "--quick", "--test-audio-dir", "--split", "--seeds", "--audio-snr",
                 "--image-noise", "--degraded", "--validation", "--modality-dropout",
                 "--autocast"):
        assert flag in text
    assert "SYNTHETIC" in text


# --- speaker-independent splits, the degraded setting, unreadable recordings ---------------------


def _recordings(folder: Path, speakers: tuple[str, ...], indices: range) -> Path:
    """A folder of FSDD-named recordings: symlinks to the real ones where they are on disk, else
    8 kHz WAV files of the synthetic audio (so these tests also run without FSDD)."""
    folder.mkdir(parents=True)
    names = [f"{d}_{s}_{i}.wav" for d in range(10) for s in speakers for i in indices]
    if (FSDD / "recordings").is_dir():
        for name in names:
            (folder / name).symlink_to(FSDD / "recordings" / name)
        return folder
    import soundfile as sf

    from mmfuse.data import synthesize_spoken_digits

    waves, _ = synthesize_spoken_digits(len(speakers) * len(indices), clip_samples=4000, seed=5)
    for wave, name in zip(waves, names):  # both ordered by digit
        sf.write(str(folder / name), wave.numpy(), 8000, subtype="PCM_16")
    return folder


@pytest.fixture
def in_process(capsys: pytest.CaptureFixture[str]):
    """Run ``mmfuse demo --quick --epochs 1`` in this process; return (stdout, stderr, JSON)."""
    threads = torch.get_num_threads()

    def go(out: Path, *argv: str) -> tuple[str, str, dict]:
        code = main(["demo", "--quick", "--epochs", "1", "--no-progress", "--out", str(out),
                     *argv])
        text = capsys.readouterr()
        assert code == 0, text.out + text.err
        return text.out, text.err, json.loads((out / "results.json").read_text())

    yield go
    torch.set_num_threads(threads)


def test_bf16_autocast_trains_like_float32(tmp_path: Path, in_process) -> None:
    """``--autocast bf16`` runs the forward in bfloat16 (the losses differ from float32's in
    the low bits) and trains as float32 does: same losses within 1 %, accuracies within 5
    points after one epoch of the quick run (docs/demo.md has the full runs' figures)."""
    out32, _, f32 = in_process(tmp_path / "f32")
    out16, _, bf16 = in_process(tmp_path / "bf16", "--autocast", "bf16")
    assert f32["autocast"] == "off" and bf16["autocast"] == "bf16"
    assert "bf16 autocast" in out16 and "bf16 autocast" not in out32
    assert bf16["train_loss"] != f32["train_loss"]  # bfloat16 arithmetic really ran
    assert bf16["train_loss"] == pytest.approx(f32["train_loss"], rel=0.01)
    for row in ROWS:
        a, b = f32["accuracy"][row]["both"], bf16["accuracy"][row]["both"]
        assert abs(a - b) <= 0.05, (row, a, b)


def test_unreadable_recording_is_skipped_with_one_warning(tmp_path: Path, in_process) -> None:
    folder = _recordings(tmp_path / "rec", ("george", "jackson"), range(7))
    (folder / "5_george_7.wav").write_bytes(b"this is not a WAV file" * 50)
    out, err, res = in_process(tmp_path / "o", "--audio-dir", str(folder))
    warning = [line for line in err.splitlines() if line]
    assert len(warning) == 1 and "Traceback" not in err, err
    assert warning[0].startswith("mmfuse demo: warning: load_av_digits: skipped 1 unreadable "
                                 "recording(s) of 141 in ")
    assert "'5_george_7.wav'" in warning[0]
    assert res["warnings"] == [warning[0].removeprefix("mmfuse demo: warning: ")]
    assert res["test_pairs"] == 2 * 10 * 5 and res["train_pairs"] == 2 * 10 * 2  # 140 read
    assert len(ACC_ROW.findall(out)) == len(ROWS)


def test_too_few_readable_recordings_is_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "garbage"
    folder.mkdir()
    for d in range(3):
        (folder / f"{d}_bob_0.wav").write_bytes(b"\x00" * 64)
    line = _error(capsys, "--audio-dir", str(folder), "--out", str(tmp_path / "o"))
    assert line.startswith("mmfuse demo: error: load_av_digits: none of the 3 FSDD recordings in ")
    folder = _recordings(tmp_path / "rec", ("theo",), range(6))
    for i in range(5, 6):  # digit 7's only training recording is unreadable
        (folder / f"7_theo_{i}.wav").unlink()
        (folder / f"7_theo_{i}.wav").write_bytes(b"junk")
    line = _error(capsys, "--audio-dir", str(folder), "--out", str(tmp_path / "o"))
    assert line.startswith("mmfuse demo: error: load_av_digits: expected clips of every digit in "
                           "the training split, got none of [7]")
    assert not (tmp_path / "o").exists()


def test_test_audio_dir_tests_only_on_its_speakers_degraded(tmp_path: Path, in_process) -> None:
    train_dir = _recordings(tmp_path / "train", ("george", "jackson", "theo"), range(3))
    test_dir = _recordings(tmp_path / "test", ("theo",), range(3, 6))
    out, _, res = in_process(tmp_path / "o", "--audio-dir", str(train_dir), "--test-audio-dir",
                             str(test_dir), "--audio-snr", "0", "--image-noise", "0.5")
    assert "train speakers george, jackson, test speakers theo" in out
    assert "degraded: audio noise at 0.0 dB SNR, image noise std 0.5" in out
    assert res["train_speakers"] == ["george", "jackson"] and res["test_speakers"] == ["theo"]
    assert res["train_pairs"] == 60 and res["test_pairs"] == 30  # theo's 30 never in training
    assert res["split"] == "test-audio-dir" and res["test_audio_dir"] == str(test_dir)
    assert res["audio_snr"] == 0.0 and res["image_noise"] == 0.5
    for key in ("accuracy", "retrieval", "train_loss", "attention_per_class", "decision_weights",
                "seed", "epochs", "synthetic", "audio"):
        assert key in res


def test_split_speaker_leaves_each_speaker_out(tmp_path: Path, in_process) -> None:
    folder = _recordings(tmp_path / "rec", ("george", "jackson"), range(3))
    out, _, res = in_process(tmp_path / "o", "--audio-dir", str(folder), "--split", "speaker",
                             "--seeds", "2")
    runs = res["runs"]
    assert [(r["seed"], r["test_speakers"]) for r in runs] == [
        (0, ["george"]), (0, ["jackson"]), (1, ["george"]), (1, ["jackson"])]
    for r in runs:
        assert not set(r["train_speakers"]) & set(r["test_speakers"])
        assert set(r["train_speakers"]) | set(r["test_speakers"]) == {"george", "jackson"}
        assert r["train_pairs"] == 30 and r["test_pairs"] == 30
    assert set(res["per_speaker"]) == {"george", "jackson"} and res["seeds"] == [0, 1]
    # the table: the mean over held-out speakers, then over seeds; the std over seeds
    for row in ROWS:
        per_seed = [sum(r["accuracy"][row]["both"] for r in runs[2 * k: 2 * k + 2]) / 2
                    for k in range(2)]
        assert res["accuracy"][row]["both"] == pytest.approx(sum(per_seed) / 2)
        spread = abs(per_seed[0] - per_seed[1]) / 2 ** 0.5
        assert res["accuracy_std"][row]["both"] == pytest.approx(spread)
        george = [r["accuracy"][row]["both"] for r in runs if r["test_speakers"] == ["george"]]
        assert res["per_speaker"]["george"]["accuracy"][row]["both"] == pytest.approx(
            sum(george) / 2)
    assert "| held-out speaker | image only | audio only |" in out
    assert re.search(r"^\| jackson \| [\d.]+ \|", out, re.M) and "± " in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--test-audio-dir", "."], "--test-audio-dir needs --audio-dir"),
    (["--split", "speaker"], "--split speaker needs --audio-dir"),
    (["--audio-dir", ".", "--test-audio-dir", ".", "--split", "speaker"],
     "--test-audio-dir and --split speaker are two different test sets; give one"),
    (["--audio-snr", "nan"], "argument --audio-snr: expected a finite number, got 'nan'"),
    (["--image-noise", "-1"], "argument --image-noise: expected a number >= 0, got '-1'"),
    (["--modality-dropout", "1"],
     "argument --modality-dropout: expected a probability in [0, 1), got '1'"),
    (["--split", "words"], "argument --split: invalid choice: 'words'"),
])
def test_bad_split_and_degradation_flags(argv: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert message in _error(capsys, *argv)


def test_split_speaker_needs_two_speakers(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder = _recordings(tmp_path / "rec", ("theo",), range(1))
    assert _error(capsys, "--audio-dir", str(folder), "--split", "speaker") == (
        f"mmfuse demo: error: --split speaker needs recordings of at least 2 speakers in "
        f"--audio-dir {folder}, got ['theo']")
    missing = tmp_path / "nope"
    assert _error(capsys, "--audio-dir", str(folder), "--test-audio-dir", str(missing)) == (
        f"mmfuse demo: error: --test-audio-dir {missing} does not exist (expected the FSDD "
        f"recordings folder or its parent)")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _error(capsys, "--audio-dir", str(folder), "--test-audio-dir", str(empty)).startswith(
        f"mmfuse demo: error: --test-audio-dir {empty} holds no FSDD recordings")


RESULTS_PAGE = ROOT / "docs" / "results-av-digits.md"


def _page_commands() -> list[list[str]]:
    """The ``mmfuse demo`` commands of the results page's code blocks, as argument lists."""
    import shlex

    blocks = re.findall(r"```bash\n(.*?)```", RESULTS_PAGE.read_text(), flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    commands = [shlex.split(line) for line in lines if line]
    for argv in commands:
        assert argv[:2] == ["mmfuse", "demo"], f"not an mmfuse demo command: {argv}"
    return [argv[2:] for argv in commands]


@pytest.mark.slow
def test_results_page_commands_run(tmp_path: Path, in_process) -> None:
    """Every command on docs/results-av-digits.md runs, shortened: --quick, one epoch, one seed,
    two speakers' recordings in place of FSDD."""
    commands = _page_commands()
    assert len(commands) >= 3
    folder = _recordings(tmp_path / "rec", ("george", "jackson"), range(11))
    held_out = _recordings(tmp_path / "held-out", ("theo",), range(2))
    for k, argv in enumerate(commands):
        argv = list(argv)
        argv[argv.index("--audio-dir") + 1] = str(folder)
        if "--test-audio-dir" in argv:
            argv[argv.index("--test-audio-dir") + 1] = str(held_out)
        if "--seeds" in argv:
            argv[argv.index("--seeds") + 1] = "1"
        if "--out" in argv:
            del argv[argv.index("--out"): argv.index("--out") + 2]
        out, _, res = in_process(tmp_path / f"o{k}", *argv)
        assert res["accuracy"]["feature level"]["both"] is not None, out
