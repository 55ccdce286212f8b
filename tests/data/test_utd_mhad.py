"""UTD-MHAD loader on the real files in ../shared/data/utd-mhad."""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import pytest
import torch

from mmfuse.data import (
    TEST_SUBJECTS,
    TRAIN_SUBJECTS,
    UTDMHAD,
    UTDMHADError,
    collate_utd_mhad,
    skeleton_adjacency,
)
from mmfuse.data.utd_mhad import KNOWN_ABSENT

UTD = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "utd-mhad"


def _link_tree(tmp_path: Path, keys: list[tuple[int, int, int]]) -> Path:
    """A data folder of symbolic links to the real files of ``keys`` (nothing copied)."""
    for m in ("inertial", "skeleton", "depth"):
        (tmp_path / m).mkdir(parents=True, exist_ok=True)
        for a, s, t in keys:
            name = f"a{a}_s{s}_t{t}_{m}.mat"
            os.symlink(UTD / m / name, tmp_path / m / name)
    return tmp_path


def test_cross_subject_split_sizes_and_absent_sequences() -> None:
    train = UTDMHAD(UTD, subjects=TRAIN_SUBJECTS)
    test = UTDMHAD(UTD, subjects=TEST_SUBJECTS)
    assert (len(train), len(test)) == (431, 430)
    assert len(UTDMHAD(UTD)) == 861
    everything = set(train.index) | set(test.index)
    for key in KNOWN_ABSENT:
        a, s, t = key
        assert key not in everything
        assert not (UTD / "inertial" / f"a{a}_s{s}_t{t}_inertial.mat").exists()
    assert {s for _, s, _ in train.index} == {1, 3, 5, 7}


def test_sample_shapes_rates_and_labels() -> None:
    ds = UTDMHAD(UTD, subjects=[1], actions=[3, 22], depth_size=(60, 80))
    assert len(ds) == 8
    item = ds[0]
    assert (item["action"], item["subject"], item["trial"], item["label"]) == (3, 1, 1, 2)
    x, times = item["streams"], item["times"]
    ti, tk = x["inertial"].shape[0], x["skeleton"].shape[0]
    assert x["inertial"].shape == (ti, 6) and x["inertial"].dtype == torch.float32
    assert x["skeleton"].shape == (tk, 20, 3)
    assert x["depth"].shape == (tk, 60, 80)  # the same Kinect frames as the skeleton
    # 50 Hz inertial; Kinect frames spread over the same span ("span" time stamps).
    assert torch.allclose(times["inertial"][:3], torch.tensor([0.0, 0.02, 0.04], dtype=torch.float64))
    assert times["skeleton"][-1] == pytest.approx((ti / 50) * (tk - 1) / tk)
    assert torch.equal(times["skeleton"], times["depth"])
    # Physical units: gravity is about 1 g on the accelerometer; the body is metres from the
    # camera; depth in metres with zeros where nothing was read.
    assert 0.7 < float(x["inertial"][:, :3].norm(dim=1).median()) < 1.3
    assert 1.5 < float(x["skeleton"][:, 0, 2].mean()) < 4.5
    assert 1.0 < float(x["depth"][x["depth"] > 0].median()) < 5.0
    full = UTDMHAD(UTD, subjects=[1], actions=[3], modalities=["depth"])[0]
    assert full["streams"]["depth"].shape[1:] == (240, 320)
    assert torch.allclose(full["streams"]["depth"].reshape(tk, 60, 4, 80, 4).mean((2, 4)),
                          x["depth"], atol=1e-5)
    nominal = UTDMHAD(UTD, subjects=[1], actions=[3], modalities=["skeleton"],
                      kinect_times="nominal")[0]
    assert nominal["times"]["skeleton"][1] == pytest.approx(1 / 30)
    assert set(nominal["streams"]) == {"skeleton"}
    assert [it["label"] for it in ds] == [2] * 4 + [21] * 4


def _wrist_gyro_correlation(item: dict) -> float:
    """Correlation of the right wrist's speed (skeleton) with the gyroscope's magnitude
    sampled at the Kinect frame times."""
    wrist = item["streams"]["skeleton"][:, 10]  # (T, 3)
    speed = (wrist[1:] - wrist[:-1]).norm(dim=1).double()
    gyro = item["streams"]["inertial"][:, 3:].norm(dim=1).double()
    t_frames = item["times"]["skeleton"][1:]
    t_iner = item["times"]["inertial"]
    idx = torch.searchsorted(t_iner, t_frames).clamp(max=t_iner.numel() - 1)
    return float(torch.corrcoef(torch.stack([speed, gyro[idx]]))[0, 1])


def test_span_time_stamps_align_the_sensors_better_than_nominal_30_hz() -> None:
    kw = {"subjects": [1, 2], "actions": [5, 9, 12, 17], "modalities": ["inertial", "skeleton"]}
    span = UTDMHAD(UTD, **kw)
    nominal = UTDMHAD(UTD, kinect_times="nominal", **kw)
    c_span = torch.tensor([_wrist_gyro_correlation(span[i]) for i in range(len(span))])
    c_nom = torch.tensor([_wrist_gyro_correlation(nominal[i]) for i in range(len(span))])
    assert len(span) == 32
    assert float(c_span.median()) > 0.6
    assert float(c_span.median()) > float(c_nom.median()) + 0.1


def test_collate_pads_and_masks() -> None:
    ds = UTDMHAD(UTD, subjects=[2], actions=[1], depth_size=(30, 40), preload=True)
    items = [ds[i] for i in range(len(ds))]
    batch = collate_utd_mhad(items)
    lengths = {m: [it["streams"][m].shape[0] for it in items] for m in ds.modalities}
    for m in ds.modalities:
        mask = batch["masks"][m]
        assert mask.dtype == torch.bool and mask.sum(1).tolist() == lengths[m]
        assert batch["streams"][m].shape[:2] == (4, max(lengths[m]))
        for i, it in enumerate(items):
            n = lengths[m][i]
            assert torch.equal(batch["streams"][m][i, :n], it["streams"][m])
            assert not batch["streams"][m][i, n:].any()
        assert (batch["times"][m].diff(dim=1) >= 0).all()
    assert batch["label"].tolist() == [0] * 4 and batch["subject"].tolist() == [2] * 4
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_utd_mhad)
    assert [b["label"].shape[0] for b in loader] == [3, 1]
    with pytest.raises(ValueError, match="collate_utd_mhad: expected at least one sample"):
        collate_utd_mhad([])


def test_missing_and_corrupt_files_are_named(tmp_path: Path) -> None:
    root = _link_tree(tmp_path, [(1, 1, 1), (1, 1, 2)])
    with pytest.raises(FileNotFoundError, match=r"UTDMHAD: missing file '.*a1_s1_t3_inertial\.mat'"):
        UTDMHAD(root, subjects=[1], actions=[1])
    _link_tree(tmp_path, [(1, 1, 3), (1, 1, 4)])
    bad = root / "skeleton" / "a1_s1_t4_skeleton.mat"
    bad.unlink()
    bad.write_bytes(b"MATLAB 5.0 MAT-file, not really" + bytes(200))
    ds = UTDMHAD(root, subjects=[1], actions=[1], modalities=["skeleton"])
    assert ds[0]["streams"]["skeleton"].shape[1:] == (20, 3)
    with pytest.raises(UTDMHADError, match=r"UTDMHAD: cannot read '.*a1_s1_t4_skeleton\.mat': ") as err:
        ds[3]
    assert "\n" not in str(err.value)
    wrong = root / "inertial" / "a1_s1_t4_inertial.mat"
    wrong.unlink()
    import numpy as np
    import scipy.io

    scipy.io.savemat(wrong, {"d_iner": np.zeros((10, 5))})
    with pytest.raises(UTDMHADError, match=r"expected 'd_iner' of shape \(T, 6\) in .*, got shape \(10, 5\)"):
        UTDMHAD(root, subjects=[1], actions=[1], modalities=["inertial"])[3]
    with pytest.raises(FileNotFoundError, match="UTDMHAD: no data folder at"):
        UTDMHAD(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"modalities": ["rgb"]}, "unknown modality 'rgb'"),
        ({"modalities": "depth"}, "expected `modalities` to be a non-empty sequence"),
        ({"subjects": [9]}, r"expected `subjects` to hold ints in \[1, 8\], got 9"),
        ({"actions": [True]}, r"expected `actions` to hold ints in \[1, 27\], got True"),
        ({"depth_size": (0, 4)}, "expected `depth_size` to be"),
        ({"kinect_times": "30hz"}, "expected `kinect_times` to be 'span' or 'nominal'"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UTDMHAD(UTD, **kwargs)


def test_missing_scipy_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("scipy"):
            raise ImportError("No module named 'scipy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "scipy.io", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r'pip install "mmfuse\[data\]"'):
        UTDMHAD(UTD)


def test_skeleton_adjacency_is_the_body() -> None:
    adj = skeleton_adjacency()
    assert adj.shape == (20, 20) and torch.equal(adj, adj.T) and adj.diagonal().all()
    assert int(skeleton_adjacency(self_loops=False).sum()) == 2 * 19
    assert adj[0, 1] and adj[10, 11] and not adj[7, 11]  # head-neck; right wrist-hand
