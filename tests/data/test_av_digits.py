"""load_av_digits: pairing by label, split hygiene, FSDD's split convention, synthetic fallback."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from mmfuse.data import (
    corrupt_images,
    load_av_digits,
    load_fsdd,
    mix_noise,
    synthesize_spoken_digits,
)
from mmfuse.functional import log_mel_spectrogram

# the recordings beside the repository (../shared/data/fsdd), or where MMFUSE_FSDD says
FSDD = Path(os.environ.get("MMFUSE_FSDD",
                           Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fsdd"))


def _digit_table() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images, dtype=torch.float32).reshape(-1, 64) / 16.0, torch.tensor(d.target)


def _image_ids(images: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index in load_digits of each image (exact match)."""
    dist = torch.cdist(images.reshape(-1, 64), table)  # (N, 1797)
    ids = dist.argmin(1)
    assert bool((dist.min(1).values == 0).all()), "an image is not one of load_digits' images"
    return ids


@pytest.fixture(scope="module")
def synthetic():
    return load_av_digits(None, seed=3, limit_per_class=15, synthetic_per_class=(30, 6),
                          test_pairings=2)


def test_synthetic_shapes_and_flag(synthetic) -> None:
    assert synthetic.synthetic and "synthetic" in synthetic.source
    tr, te = synthetic.train, synthetic.test
    assert tr.images.shape == (150, 1, 8, 8) and te.images.shape == (120, 1, 8, 8)
    assert tr.audio.shape[:2] == (150, 32) and te.audio.shape[:2] == (120, 32)
    assert tr.labels.bincount().tolist() == [15] * 10
    assert te.labels.bincount().tolist() == [12] * 10
    assert 0.0 <= float(tr.images.min()) and float(tr.images.max()) <= 1.0
    assert torch.isfinite(tr.audio).all()


def test_pairs_share_labels_and_test_images_are_unseen(synthetic) -> None:
    table, targets = _digit_table()
    train_ids = _image_ids(synthetic.train.images, table)
    test_ids = _image_ids(synthetic.test.images, table)
    assert torch.equal(targets[train_ids], synthetic.train.labels)
    assert torch.equal(targets[test_ids], synthetic.test.labels)
    assert not set(train_ids.tolist()) & set(test_ids.tolist())
    # the two pairings of one test clip use different images
    half = len(test_ids) // 2
    assert bool((test_ids[:half] != test_ids[half:]).all())
    torch.testing.assert_close(synthetic.test.audio[:half], synthetic.test.audio[half:])


def test_seeded_and_repeatable() -> None:
    a = load_av_digits(None, seed=1, limit_per_class=3, synthetic_per_class=(3, 1))
    b = load_av_digits(None, seed=1, limit_per_class=3, synthetic_per_class=(3, 1))
    c = load_av_digits(None, seed=2, limit_per_class=3, synthetic_per_class=(3, 1))
    for x, y in zip(a.train, b.train):
        assert torch.equal(x, y)
    assert not torch.equal(a.train.audio, c.train.audio)


def test_synthetic_audio_carries_the_label() -> None:
    """A nearest-centroid classifier on time-averaged log-mel beats chance (10 %) by far."""
    waves, labels = synthesize_spoken_digits(24, seed=0)
    feats = log_mel_spectrogram(waves, 8000, n_fft=256, hop_length=128, n_mels=32,
                                eps=1e-6).mean(-1)  # (N, 32)
    feats = (feats - feats.mean(1, keepdim=True)) / feats.std(1, keepdim=True)
    train = torch.arange(len(labels)) % 24 >= 6
    centroids = torch.stack([feats[train & (labels == d)].mean(0) for d in range(10)])
    pred = torch.cdist(feats[~train], centroids).argmin(1)
    assert float((pred == labels[~train]).float().mean()) > 0.5


@pytest.mark.skipif(not FSDD.is_dir(), reason="FSDD recordings not beside the repository")
def test_real_fsdd_split_convention() -> None:
    waves, labels, is_test = load_fsdd(FSDD, clip_samples=4000)
    speakers = len(list((FSDD / "recordings").glob("0_*_0.wav")))
    assert waves.shape == (len(labels), 4000)
    assert int(is_test.sum()) == speakers * 10 * 5  # indices 0-4 of each digit and speaker
    assert labels[is_test].bincount().tolist() == [speakers * 5] * 10
    peaks = waves.abs().amax(1)  # peak-normalised before cropping to 0.5 s
    assert float(peaks.max()) == pytest.approx(1.0) and float((peaks == 1.0).float().mean()) > 0.5
    data = load_av_digits(FSDD, limit_per_class=5)
    assert not data.synthetic and len(data.test.labels) == speakers * 50
    table, targets = _digit_table()
    assert torch.equal(targets[_image_ids(data.test.images, table)], data.test.labels)


def test_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"load_av_digits: expected `audio_dir` to be a folder of "
                                                 r"FSDD recordings .* which does not exist"):
        load_av_digits(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"got none in"):
        load_fsdd(tmp_path)
    with pytest.raises(ValueError, match=r"expected `test_pairings` to be a positive number"):
        load_av_digits(None, test_pairings=0)


# --- speaker-independent splits, the degraded setting, unreadable recordings ---------------------


def _recordings(folder: Path, speakers: tuple[str, ...], indices: range,
                digits: range = range(10)) -> Path:
    """A folder of FSDD-named recordings: symlinks to the real ones where they are on disk, else
    8 kHz WAV files of the synthetic audio (so these tests also run without FSDD)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{d}_{s}_{i}.wav" for s in speakers for d in digits for i in indices]
    if (FSDD / "recordings").is_dir():
        for name in names:
            (folder / name).symlink_to(FSDD / "recordings" / name)
        return folder
    import soundfile as sf

    waves, _ = synthesize_spoken_digits(len(speakers) * len(indices), clip_samples=4000, seed=5)
    for k, name in enumerate(sorted(names, key=lambda n: n[0])):  # by digit, as synthesised
        sf.write(str(folder / name), waves[k].numpy(), 8000, subtype="PCM_16")
    return folder


def _features(folder: Path) -> tuple[torch.Tensor, list[str]]:
    """Log-mel features of every recording in ``folder`` as load_av_digits makes them, in file
    order, and each one's speaker."""
    waves, _, _ = load_fsdd(folder)
    feats = log_mel_spectrogram(waves, 8000, n_fft=256, hop_length=128, n_mels=32, eps=1e-6)
    speakers = [p.name.split("_")[1] for p in sorted(folder.iterdir(), key=lambda p: p.name)]
    return feats, speakers


def _sources(audio: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """For each row of ``audio``, the index of the same recording among ``feats`` (equal up to
    float noise in the log of silent frames; other recordings are far away)."""
    dist = torch.cdist(audio.flatten(1), feats.flatten(1))  # (N, M)
    nearest = dist.topk(2, dim=1, largest=False).values  # (N, 2)
    assert float(nearest[:, 0].max()) < 1.0, "a clip is none of the recordings"
    assert float(nearest[:, 1].min()) > 10.0, "a clip matches two recordings"
    return dist.argmin(1)


def test_test_audio_dir_is_all_test_data_and_its_speakers_never_train(tmp_path: Path) -> None:
    train_dir = _recordings(tmp_path / "train", ("george", "jackson", "theo"), range(4))
    test_dir = _recordings(tmp_path / "test", ("theo",), range(4, 7))
    data = load_av_digits(train_dir, test_audio_dir=test_dir, seed=1)
    assert data.train_speakers == ("george", "jackson") and data.test_speakers == ("theo",)
    assert len(data.train.labels) == 80 and len(data.test.labels) == 30  # theo: not trained on
    feats, speakers = _features(train_dir)
    used = _sources(data.train.audio, feats)
    assert {speakers[i] for i in used.tolist()} == {"george", "jackson"}
    assert len(set(used.tolist())) == 80  # every other-speaker recording once
    test_feats, _ = _features(test_dir)
    torch.testing.assert_close(data.test.audio, test_feats)  # every test recording, in order
    assert data.test.labels.bincount().tolist() == [3] * 10


def test_speaker_split_holds_out_one_speaker(tmp_path: Path) -> None:
    folder = _recordings(tmp_path / "rec", ("george", "jackson", "theo"), range(3))
    data = load_av_digits(folder, test_speakers=["jackson"], test_pairings=2)
    assert data.train_speakers == ("george", "theo") and data.test_speakers == ("jackson",)
    feats, speakers = _features(folder)
    assert {speakers[i] for i in _sources(data.train.audio, feats).tolist()} == {"george", "theo"}
    assert {speakers[i] for i in _sources(data.test.audio, feats).tolist()} == {"jackson"}
    assert len(data.train.labels) == 60 and len(data.test.labels) == 2 * 30
    with pytest.raises(ValueError, match=r"load_av_digits: expected `test_speakers` among the "
                                         r"speakers of `audio_dir` \['george', 'jackson', "
                                         r"'theo'\], got \['bob'\]"):
        load_av_digits(folder, test_speakers=["bob"])
    with pytest.raises(ValueError, match=r"leave no speaker of `audio_dir` to train on"):
        load_av_digits(folder, test_speakers=["george", "jackson", "theo"])
    with pytest.raises(ValueError, match=r"need FSDD recordings in `audio_dir`"):
        load_av_digits(None, test_speakers=["theo"])
    with pytest.raises(ValueError, match=r"expected `test_audio_dir` or `test_speakers`, got both"):
        load_av_digits(folder, test_audio_dir=folder, test_speakers=["theo"])


def test_validation_holds_out_training_data_only(tmp_path: Path) -> None:
    folder = _recordings(tmp_path / "rec", ("theo",), range(12))
    val = load_av_digits(folder, validation=True, seed=2)
    normal = load_av_digits(folder, seed=2)
    feats, _ = _features(folder)
    index = torch.tensor([int(p.name.split("_")[2][:-4])
                          for p in sorted(folder.iterdir(), key=lambda p: p.name)])
    assert sorted(set(index[_sources(val.test.audio, feats)].tolist())) == [5, 6, 7, 8, 9]
    assert sorted(set(index[_sources(val.train.audio, feats)].tolist())) == [10, 11]
    table, _ = _digit_table()
    test_images = set(_image_ids(normal.test.images, table).tolist())
    val_images = set(_image_ids(val.test.images, table).tolist())
    val_train_images = set(_image_ids(val.train.images, table).tolist())
    assert not val_images & test_images and not val_images & val_train_images
    assert not val_train_images & test_images


def test_mix_noise_has_the_requested_snr(tmp_path: Path) -> None:
    waves, _, _ = load_fsdd(_recordings(tmp_path / "rec", ("george",), range(2)))
    for snr in (-5.0, 0.0, 12.5):
        noisy = mix_noise(waves, snr, generator=torch.Generator().manual_seed(0))
        noise = noisy - waves
        measured = 10 * torch.log10(waves.pow(2).mean(1) / noise.pow(2).mean(1))  # per clip
        torch.testing.assert_close(measured, torch.full_like(measured, snr), atol=1e-3, rtol=0)
        assert abs(float(noise.mean())) < 0.05 * float(noise.std())  # zero-mean
    again = mix_noise(waves, 0.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, mix_noise(waves, 0.0, generator=torch.Generator().manual_seed(0)))


def test_audio_snr_degrades_the_features_at_that_snr(tmp_path: Path) -> None:
    """Measured from the features alone: mel power of noisy minus clean is the noise's."""
    folder = _recordings(tmp_path / "rec", ("jackson",), range(3, 8))
    clean = load_av_digits(folder, validation=False, seed=4, test_pairings=1)
    for snr in (0.0, 10.0):
        noisy = load_av_digits(folder, seed=4, audio_snr=snr)
        assert torch.equal(noisy.train.labels, clean.train.labels)
        assert torch.equal(noisy.train.images, clean.train.images)  # images untouched
        p_clean = clean.train.audio.exp().sum()
        p_noise = noisy.train.audio.exp().sum() - p_clean
        measured = 10 * math.log10(float(p_clean / p_noise))
        assert measured == pytest.approx(snr, abs=1.0)
    a = load_av_digits(folder, seed=4, audio_snr=0.0).train.audio
    assert torch.equal(a, load_av_digits(folder, seed=4, audio_snr=0.0).train.audio)
    assert not torch.equal(a, load_av_digits(folder, seed=5, audio_snr=0.0).train.audio)
    with pytest.raises(ValueError, match=r"expected `audio_snr` to be a finite number of dB"):
        load_av_digits(folder, audio_snr=float("nan"))


def test_image_noise_adds_pixel_noise_of_that_std(tmp_path: Path) -> None:
    folder = _recordings(tmp_path / "rec", ("nicolas",), range(3, 9))
    clean = load_av_digits(folder, seed=3)
    noisy = load_av_digits(folder, seed=3, image_noise=0.1)
    torch.testing.assert_close(noisy.train.audio, clean.train.audio)  # audio untouched
    x, y = clean.train.images, noisy.train.images  # the same pairing, then the noise
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    mid = (x > 0.4) & (x < 0.6)  # mid-grey pixels: a 0.1 noise clips (almost) never
    assert float((y - x)[mid].std()) == pytest.approx(0.1, rel=0.1)
    zero = x == 0  # a black pixel becomes max(noise, 0): mean std / sqrt(2 pi)
    assert float(y[zero].mean()) == pytest.approx(0.1 / math.sqrt(2 * math.pi), rel=0.1)
    again = load_av_digits(folder, seed=3, image_noise=0.1).test.images
    assert torch.equal(again, noisy.test.images)  # the same seed, the same noise
    assert not torch.equal(load_av_digits(folder, seed=4, image_noise=0.1).test.images, again)
    # the function itself, larger noise: clipped at black, about std at mid-grey
    grey = corrupt_images(torch.full((50, 1, 8, 8), 0.5), 0.1,
                          generator=torch.Generator().manual_seed(0))
    assert float((grey - 0.5).std()) == pytest.approx(0.1, rel=0.05)
    black = corrupt_images(torch.zeros(50, 1, 8, 8), 0.4, generator=torch.Generator().manual_seed(0))
    assert float(black.mean()) == pytest.approx(0.4 / math.sqrt(2 * math.pi), rel=0.05)
    with pytest.raises(ValueError, match=r"expected `image_noise` to be a non-negative number"):
        load_av_digits(folder, image_noise=-0.1)


def test_unreadable_recordings_are_skipped_with_one_warning(tmp_path: Path) -> None:
    folder = _recordings(tmp_path / "rec", ("theo",), range(6))
    (folder / "3_theo_6.wav").write_bytes(b"not audio at all" * 64)
    (folder / "4_theo_6.wav").write_bytes(b"")
    with pytest.warns(RuntimeWarning, match=r"^load_fsdd: skipped 2 unreadable recording\(s\) "
                                            r"of 62 in .*, e\.g\. '3_theo_6\.wav' \(") as caught:
        _, labels, is_test = load_fsdd(folder)
    assert len(caught) == 1 and len(labels) == 60 and int(is_test.sum()) == 50
    with pytest.warns(RuntimeWarning, match=r"load_av_digits: skipped 2"):
        data = load_av_digits(folder)
    assert len(data.train.labels) == 10 and len(data.test.labels) == 50
    # a digit whose training recordings are all unreadable: one clear error
    (folder / "3_theo_5.wav").unlink()
    (folder / "3_theo_5.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.warns(RuntimeWarning), pytest.raises(
            ValueError, match=r"expected clips of every digit in the training split, got none "
                              r"of \[3\]"):
        load_av_digits(folder)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    for name in ("0_bob_0.wav", "1_bob_0.wav"):
        (garbage / name).write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match=r"load_fsdd: none of the 2 FSDD recordings in .* could "
                                         r"be read as audio, e\.g\. '0_bob_0\.wav'"):
        load_fsdd(garbage)
