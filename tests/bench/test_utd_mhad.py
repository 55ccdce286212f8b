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


def _count(acc: float, n: int) -> int:
    """An accuracy as the number of correct test samples (float32 and float64 agree)."""
    return round(acc * n)


@pytest.mark.slow
def test_quick_robustness_run_agrees_with_the_benchmark(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    robust = ["attention+dropout", "decision_product"]
    proc = subprocess.run(
        [sys.executable, "-m", "mmfuse.cli", "bench", "utd-mhad", "--data-dir", str(UTD),
         "--quick", "--seeds", "0", "--threads", "1", "--models", *robust, "--robustness",
         "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    n = len(res["test_labels"])
    acc = res["accuracy"]
    # --models trains the named models and the single-sensor models they build on, only.
    assert list(acc) == ["inertial", "skeleton", "depth", *robust]
    assert list(res["robustness"]) == robust
    sensors = ["inertial", "skeleton", "depth"]
    for name in robust:
        rows = res["runs"][0][name]["robustness"]["rows"]
        kinds = [(r["kind"], r["perturbation"], r["modality"], r["severity"]) for r in rows]
        # clean, 6 absent subsets, per sensor noise 1.0 and dropout 0.5, per sensor
        # FGSM and PGD at budgets 0 and 0.1 (the quick grid).
        assert kinds[:7] == [("clean", "none", "-", None)] + [
            ("absent", "absent", p, None) for p in acc[name]["absent"]]
        assert len(rows) == 1 + 6 + 3 * 2 + 3 * 2 * 2
        clean = rows[0]["score"]
        # The end-to-end model scores what the benchmark's feature path scores: clean...
        assert _count(clean, n) == _count(acc[name]["mean"], n), name
        # ...and with every sensor subset absent.
        for r in rows[1:7]:
            assert _count(r["score"], n) == _count(acc[name]["absent"][r["modality"]]["mean"],
                                                   n), (name, r)
        for r in rows[1:]:
            assert r["drop"] == pytest.approx((clean - r["score"]) / clean)
        # An attack with a zero budget changes nothing.
        zero = [r for r in rows if r["kind"] == "adversarial" and r["severity"] == 0.0]
        assert len(zero) == 6 and all(r["score"] == clean for r in zero)
        assert {r["modality"] for r in rows[7:]} == set(sensors)
    # The product of experts with all but one sensor absent is that sensor's own model.
    prod = {r["modality"]: r["score"] for r in res["runs"][0]["decision_product"]["robustness"]
            ["rows"] if r["kind"] == "absent"}
    for m in sensors:
        others = "+".join(s for s in sensors if s != m)
        assert _count(prod[others], n) == _count(acc[m]["mean"], n), m
    assert (tmp_path / "robustness-decision_product.png").stat().st_size > 10_000
    assert "| absent | absent | inertial+skeleton |" in proc.stdout
    scales = res["robustness"][robust[0]]["scales"]
    assert set(scales) == set(sensors) and all(v > 0 for v in scales.values())
    assert ("sensor std units (over the padded test tensors, padding as zeros): " + ", ".join(
        f"{m} {scales[m]:.2f}" for m in sensors)) in proc.stdout
    # Combining runs (here the same run twice) keeps each row: the same mean, std 0.
    assert main(["bench", "utd-mhad", "--combine", str(tmp_path), str(tmp_path),
                 "--out", str(tmp_path / "both")]) == 0
    both = json.loads((tmp_path / "both" / "results.json").read_text())
    for name in robust:
        one = res["robustness"][name]["rows"]
        two = both["robustness"][name]["rows"]
        assert [r["modality"] for r in two] == [r["modality"] for r in one]
        for a, b in zip(one, two):
            assert b["score"]["mean"] == pytest.approx(a["score"]["mean"])
            assert b["score"]["std"] == 0.0
    assert (tmp_path / "both" / "robustness-attention-dropout.png").exists()


def test_model_selection_keeps_the_single_sensor_models() -> None:
    specs = utd_mhad.model_specs()
    kept = utd_mhad.select_models(specs, ["gated"])
    assert list(kept) == ["inertial", "skeleton", "depth", "gated"]
    assert utd_mhad.select_models(specs, None) == specs
    with pytest.raises(ValueError, match="unknown --models"):
        utd_mhad.select_models(specs, ["nope"])
    assert utd_mhad.robust_models(kept, None) == []
    assert utd_mhad.robust_models(utd_mhad.model_specs(quick=True), []) == [
        "attention+dropout", "decision_product"]
    # decision_learned's classifiers run without gradients: not end to end.
    with pytest.raises(ValueError, match="--robustness"):
        utd_mhad.robust_models(specs, ["decision_learned"])
    # a pair leaves a sensor out: its absent and attack rows would not exist
    with pytest.raises(ValueError, match=r"--robustness \['inertial\+skeleton'\]"):
        utd_mhad.robust_models(specs, ["inertial+skeleton"])
    # no default trains under these --models: nothing to evaluate is an error, not a no-op
    with pytest.raises(ValueError, match=r"--robustness \[\]"):
        utd_mhad.robust_models(kept, [])
    with pytest.raises(ValueError, match="at least one fusion"):
        utd_mhad.select_models(specs, ["inertial"])


def test_end_to_end_model_names_missing_inputs() -> None:
    from mmfuse.bench._utd_models import ProductHead, SingleModel
    from mmfuse.bench._utd_robust import EndToEnd
    from mmfuse.errors import ModalityError

    single = SingleModel("inertial")
    model = EndToEnd({"inertial": single.encoder},
                     ProductHead(["inertial"], {"inertial": single.head})).eval()
    x = torch.randn(2, 30, 6)
    mask = torch.ones(2, 30, dtype=torch.bool)
    with pytest.raises(ModalityError, match="mask:inertial"):
        model({"inertial": x}, None)
    with pytest.raises(ModalityError, match=r"^EndToEnd: expected the fusion's sensors to be "
                       r"those of `encoders` \['inertial'\], got \['skeleton'\]\.$"):
        EndToEnd({"inertial": single.encoder}, ProductHead(["skeleton"],
                                                           {"skeleton": single.head}))
    with pytest.raises(ModalityError, match=r"^ProductHead: expected one classifier per sensor "
                       r"of \['inertial', 'depth'\], got \['inertial'\]\.$"):
        ProductHead(["inertial", "depth"], {"inertial": single.head})
    # One expert: the product is that model's own distribution.
    single.eval()
    out = model({"inertial": x, "mask:inertial": mask}, None)
    ref = single({"x": {"inertial": x}, "mask": {"inertial": mask}}).log_softmax(-1)
    assert torch.allclose(out, ref, atol=1e-5)
