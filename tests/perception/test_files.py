"""AudioFileLoader against real WAV, FLAC and OGG files written by soundfile."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfuse.perception import AudioFileLoader, DecodeError, SourceError, clock
from perception._support import WAV_RATE

sf = pytest.importorskip("soundfile")


@pytest.mark.parametrize("block_size", [1000, 4096, 32000])
def test_wav_blocks_reassemble_the_file(wav_file: Path, wav_signal: np.ndarray, block_size: int,
                                        no_leaks: None) -> None:
    with AudioFileLoader(wav_file, block_size=block_size, start=5.0) as audio:
        samples = list(audio)
        assert (audio.sample_rate, audio.channels, audio.frames) == (WAV_RATE, 2, len(wav_signal))
    assert audio.closed
    total = len(wav_signal)
    assert len(samples) == -(-total // block_size)
    for k, (block, t, meta) in enumerate(samples):
        assert block.dtype == torch.float32 and block.shape[0] == 2
        assert block.shape[1] == min(block_size, total - k * block_size)  # last block shorter
        assert meta["offset"] == k * block_size
        assert t == pytest.approx(5.0 + k * block_size / WAV_RATE)
        assert meta["media_time"] == pytest.approx(k * block_size / WAV_RATE)
        assert meta["sample_rate"] == WAV_RATE and meta["frames"] == total
    whole = torch.cat([s.data for s in samples], dim=1)  # (C, S)
    np.testing.assert_array_equal(whole.numpy(), wav_signal.T)


def test_whole_file_mode(wav_file: Path, wav_signal: np.ndarray) -> None:
    t0 = clock()
    with AudioFileLoader(wav_file) as audio:
        samples = list(audio)
    assert len(samples) == 1
    data, t, meta = samples[0]
    assert data.shape == (2, len(wav_signal))
    np.testing.assert_array_equal(data.numpy(), wav_signal.T)
    assert t0 <= t <= clock() and meta["offset"] == 0


@pytest.mark.parametrize(("ext", "subtype", "tol"), [("flac", "PCM_16", 1e-4), ("ogg", "VORBIS", 0.05)])
def test_flac_and_ogg(tmp_path: Path, wav_signal: np.ndarray, ext: str, subtype: str, tol: float) -> None:
    path = tmp_path / f"tone.{ext}"
    sf.write(str(path), wav_signal, WAV_RATE, subtype=subtype)
    want, _ = sf.read(str(path), dtype="float32", always_2d=True)
    with AudioFileLoader(path, block_size=3000) as audio:
        got = torch.cat([b for b, _, _ in audio], dim=1)
    np.testing.assert_array_equal(got.numpy(), want.T)  # same decoder, same samples
    n = min(len(want), len(wav_signal))
    assert np.abs(want[:n] - wav_signal[:n]).max() < tol  # and close to what was written


def test_missing_file(tmp_path: Path, no_leaks: None) -> None:
    with pytest.raises(FileNotFoundError, match=r"audio file not found: .*nope\.wav"):
        AudioFileLoader(tmp_path / "nope.wav")


@pytest.mark.parametrize("content", [b"this is a text file, not audio\n" * 40, b"RIFF\x10\x00\x00\x00WAVEjunk"],
                         ids=["text", "corrupt-header"])
def test_undecodable_file(tmp_path: Path, content: bytes, no_leaks: None) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=r"cannot decode .*bad\.wav.* as audio"):
        AudioFileLoader(path)


def test_bad_block_size(wav_file: Path) -> None:
    with pytest.raises(ValueError, match="`block_size` to be a positive"):
        AudioFileLoader(wav_file, block_size=0)


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_non_regular_files_are_refused_at_once(tmp_path: Path, kind: str, no_leaks: None,
                                               no_fd_leaks: None) -> None:
    if kind == "fifo":
        path = tmp_path / "stream.wav"
        os.mkfifo(path)  # soundfile would block opening it until a writer comes
        what = "a FIFO"
    elif kind == "directory":
        path, what = tmp_path, "a directory"
    else:
        path, what = Path("/dev/zero"), "a character device"  # would never end
    with pytest.raises(SourceError, match=rf"^AudioFileLoader: {re.escape(repr(str(path)))} is not "
                                          rf"a regular file \({what}\); expected an audio file\.$"):
        AudioFileLoader(path)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"block_size": 1.5}, TypeError, "`block_size` to be an int, got 1.5"),
    ({"block_size": True}, TypeError, "`block_size` to be an int, got True"),
    ({"start": "now"}, TypeError, "`start` to be a number or None, got 'now'"),
    ({"start": float("nan")}, ValueError, "`start` to be finite, got nan"),
])
def test_bad_argument_types(wav_file: Path, kwargs: dict[str, object], error: type[Exception],
                            match: str) -> None:
    with pytest.raises(error, match=rf"^AudioFileLoader: expected {re.escape(match)}\.$"):
        AudioFileLoader(wav_file, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^AudioFileLoader: expected `path` to be a str or path, got int\.$"):
        AudioFileLoader(3)  # type: ignore[arg-type]
