"""``mmfuse bench utd-mhad``: the quick run end to end, the results schema, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmfuse.bench import utd_mhad
from mmfuse.bench._utd_prep import _time_warp, load_splits, make_batch
from mmfuse.cli import main

ROOT = Path(__file__).resolve().parents[2]
UTD = ROOT.parent / "shared" / "data" / "utd-mhad"


def _check_schema(res: dict, seeds: list[int]) -> None:
    assert res["protocol"].startswith("quick")
    assert res["seeds"] == seeds and isinstance(res["seconds"], float)
    acc = res["accuracy"]
    assert {"inertial", "skeleton", "depth", "data_level", "decision_product"} <= set(acc)
    for name, a in acc.items():
        assert 0.0 <= a["mean"] <= 1.0 and a["std"] >= 0.0, name
        assert set(a["absent"]) == {"inertial", "skeleton", "depth", "inertial+skeleton",
                                    "inertial+depth", "skeleton+depth"}
        for v in a["absent"].values():
            assert 0.0 <= v["mean"] <= 1.0 and v["std"] >= 0.0
    # A single-sensor model without its sensor knows nothing: chance level (one class).
    assert acc["inertial"]["absent"]["inertial"]["mean"] < 0.1
    # ...and is unchanged when another sensor is absent.
    assert acc["inertial"]["absent"]["depth"]["mean"] == acc["inertial"]["mean"]


@pytest.mark.slow
def test_quick_run_through_the_example_writes_results(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "utd_mhad.py"), "--quick", "--seeds", "0",
         "--out", str(tmp_path), "--threads", "1"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    _check_schema(res, [0])
    assert (tmp_path / "utd_mhad.png").stat().st_size > 10_000
    assert "| model | clean |" in proc.stdout
    # Three training epochs on one subject already learn something from each sensor.
    assert res["accuracy"]["inertial"]["mean"] > 0.1
    # Runs of other seeds (here: the same run twice) combine into one result.
    assert main(["bench", "utd-mhad", "--combine", str(tmp_path), str(tmp_path),
                 "--out", str(tmp_path / "both")]) == 0
    both = json.loads((tmp_path / "both" / "results.json").read_text())
    _check_schema(both, [0, 0])
    for name, a in res["accuracy"].items():
        assert both["accuracy"][name]["mean"] == pytest.approx(a["mean"])
        assert both["accuracy"][name]["std"] == 0.0
    assert sum(map(sum, both["confusion"])) == 2 * sum(map(sum, res["confusion"]))


def test_cli_names_a_missing_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(FileNotFoundError, match="UTDMHAD: no data folder at"):
        main(["bench", "utd-mhad", "--data-dir", str(tmp_path / "none"), "--quick"])
    with pytest.raises(SystemExit):
        main(["bench"])
    assert "utd-mhad" in capsys.readouterr().err


def test_run_seed_is_deterministic_and_every_model_reports_every_pattern() -> None:
    train, test = load_splits(UTD, (1,), (2,), workers=1, actions=(1, 2, 22))
    specs = utd_mhad.model_specs(quick=True)
    kw = {"quick": True, "epochs": 1, "head_epochs": 1, "views": 1, "log": lambda *_: None}
    a = utd_mhad.run_seed(train, test, 3, **kw)
    b = utd_mhad.run_seed(train, test, 3, **kw)
    assert list(a) == list(specs)
    for name in a:
        assert a[name]["predictions"] == b[name]["predictions"], name
        assert a[name]["absent"] == b[name]["absent"], name


def test_inputs_standardised_on_training_subjects_only() -> None:
    train, test = load_splits(UTD, (1,), (2,), workers=1, actions=(1, 22))
    m = train["mask"]["inertial"][..., None]
    x = train["x"]["inertial"]
    mean = (x * m).sum((0, 1)) / m.sum()
    assert torch.allclose(mean, torch.zeros(6), atol=1e-4)
    assert not torch.allclose((test["x"]["inertial"] * test["mask"]["inertial"][..., None])
                              .sum((0, 1)) / test["mask"]["inertial"].sum(), torch.zeros(6),
                              atol=1e-3)
    assert train["x"]["depth"].shape[1:] == (8, 2, 30, 40)
    assert train["x"]["skeleton"].shape[2:] == (20, 6)
    # Padded steps stay zero after standardisation.
    assert not x[~train["mask"]["inertial"]].any()


def test_time_warp_matches_a_loop_reference() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 9, 2, generator=g)
    lengths = torch.tensor([9, 5, 2])
    factors = torch.tensor([1.0, 1.5, 0.8], dtype=torch.float64)
    starts = torch.tensor([0.0, 0.2, 0.0], dtype=torch.float64)
    out, mask = _time_warp(x, lengths, factors, starts)
    for b in range(3):
        n = int(lengths[b])
        span = n * (1 - float(starts[b]))
        new = max(2, round(span * float(factors[b])))
        assert int(mask[b].sum()) == new
        for j in range(new):
            pos = min(n * float(starts[b]) + j * (span - 1) / (new - 1), n - 1)
            lo = int(pos)
            hi = min(lo + 1, n - 1)
            ref = x[b, lo] + (x[b, hi] - x[b, lo]) * (pos - lo)
            assert torch.allclose(out[b, j], ref, atol=1e-6)
        assert not out[b, new:].any()
    assert torch.equal(_time_warp(x, lengths, torch.ones(3, dtype=torch.float64),
                                  torch.zeros(3, dtype=torch.float64))[0][0], x[0])


def test_augmented_batches_keep_the_sensors_aligned() -> None:
    train, _ = load_splits(UTD, (1,), (2,), workers=1, actions=(5,))
    g = torch.Generator().manual_seed(0)
    batch = make_batch(train, torch.arange(4), ["inertial", "skeleton"], augment=True, generator=g)
    for m in ("inertial", "skeleton"):
        assert batch["x"][m].shape[:2] == batch["mask"][m].shape == batch["times"][m].shape
    # The same stretch for both streams of a sample: their spans agree to a frame.
    for b in range(4):
        ends = [float(batch["times"][m][b, int(batch["mask"][m][b].sum()) - 1])
                for m in ("inertial", "skeleton")]
        assert abs(ends[0] - ends[1]) < 0.15
