"""load_av_digits: pairing by label, split hygiene, FSDD's split convention, synthetic fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmfuse.data import load_av_digits, load_fsdd, synthesize_spoken_digits
from mmfuse.functional import log_mel_spectrogram

FSDD = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fsdd"


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
    with pytest.raises(FileNotFoundError, match=r"load_fsdd: expected `audio_dir` to be a folder of "
                                                 r"FSDD recordings .* which does not exist"):
        load_av_digits(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"got none in"):
        load_fsdd(tmp_path)
    with pytest.raises(ValueError, match=r"expected `test_pairings` to be a positive number"):
        load_av_digits(None, test_pairings=0)
