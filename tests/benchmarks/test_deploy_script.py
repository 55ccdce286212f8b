"""benchmarks/deploy.py end to end with --quick (tiny training), and its target arithmetic."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "deploy.py"


def _run(tmp_path: Path, *flags: str, timeout: int) -> tuple[str, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path),
                           *flags], capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads((tmp_path / "deploy.json").read_text())


def _check_rows(out: str, res: dict, names: list[str]) -> None:
    rows = res["rows"]
    assert list(rows) == names
    for name in names:
        assert re.search(rf"^\| {re.escape(name)} \| [\d,]+ \| [\d,]+ \| [\d.]+ \|", out, re.M), out
        r = rows[name]
        assert 0 < r["p50_ms"] <= r["p95_ms"] and r["ratio_to_eager"] > 0
        assert 0 <= r["accuracy"] <= 1
    eager = rows["float32 eager"]
    assert eager["ratio_to_eager"] == 1.0 and eager["nonzero"] <= eager["params"]
    q = rows["int8 dynamic"]
    assert q["params"] == eager["params"] and q["size_bytes"] < eager["size_bytes"]
    for pct in (30, 50, 70):
        r = rows[f"pruned {pct} %"]
        assert r["sparsity"] == pytest.approx(pct / 100, abs=0.005)
        assert r["size_bytes"] == eager["size_bytes"]  # dense storage
        assert r["gzip_bytes"] < eager["gzip_bytes"]
        assert r["nonzero"] < eager["nonzero"] * (1 - pct / 100) + 1000  # biases, norms kept
    assert res["targets"]["int8_size_ratio"] == pytest.approx(
        eager["size_bytes"] / q["size_bytes"])
    assert "int8: " in out and "smaller on disk" in out


def test_quick_run_without_compile_and_onnx(tmp_path: Path) -> None:
    out, res = _run(tmp_path, "--skip", "compile", "onnx", "--reps", "5", timeout=240)
    _check_rows(out, res, ["float32 eager", "int8 dynamic", "pruned 30 %", "pruned 50 %",
                           "pruned 70 %"])
    assert res["settings"]["quick"] and res["settings"]["reps"] == 5
    assert "latency_met" not in res["targets"]


@pytest.mark.slow  # torch.compile (inductor) and the ONNX export take minutes on a busy CPU
def test_quick_run_every_variant(tmp_path: Path) -> None:
    out, res = _run(tmp_path, "--reps", "5", "--finetune-epochs", "0", timeout=900)
    _check_rows(out, res, ["float32 eager", "torch.compile", "ONNX Runtime", "int8 dynamic",
                           "pruned 30 %", "pruned 50 %", "pruned 70 %"])
    rows = res["rows"]
    # compiled and ORT compute the same function: the same predictions on the test set
    assert rows["torch.compile"]["accuracy"] == pytest.approx(rows["float32 eager"]["accuracy"])
    assert rows["ONNX Runtime"]["accuracy"] == pytest.approx(rows["float32 eager"]["accuracy"])
    assert res["targets"]["best_latency_ratio"] == min(
        rows[n]["ratio_to_eager"] for n in ("torch.compile", "ONNX Runtime"))
    assert "best of compiled / ONNX Runtime at batch 1" in out


def test_targets_and_latency_helpers() -> None:
    spec = importlib.util.spec_from_file_location("deploy_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = {"float32 eager": {"size_bytes": 100, "accuracy": 0.90, "ratio_to_eager": 1.0},
            "int8 dynamic": {"size_bytes": 50, "accuracy": 0.89},
            "ONNX Runtime": {"ratio_to_eager": 0.6}, "torch.compile": {"ratio_to_eager": 0.4}}
    t = bench.targets(rows)
    assert t["int8_size_ratio"] == 2.0 and t["int8_met"]
    assert t["int8_accuracy_points_lost"] == pytest.approx(1.0)
    assert t["best_latency_ratio"] == 0.4 and t["latency_met"]
    rows["int8 dynamic"]["size_bytes"] = 51
    assert not bench.targets(rows)["int8_met"]
    calls: list[str] = []
    lat = bench.latency({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 4)
    assert calls[20:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # after warm-up: rotating
    assert lat["a"]["ratio_to_eager"] == 1.0 and set(lat["b"]) == {"p50_ms", "p95_ms",
                                                                   "ratio_to_eager"}
