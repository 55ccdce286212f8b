"""benchmarks/contrastive.py and benchmarks/contrastive_tiles.py end to end with --quick."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *flags: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "2",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", *flags],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _percent(cell: str) -> float:
    assert cell.endswith("%"), cell
    return float(cell[:-1])


def test_contrastive_quick_prints_paired_efficiency_for_the_chosen_formulations():
    out = _run("contrastive.py", "--no-memory", "--impls", "tiled", "open_clip")
    rows = [r.split("|")[1:-1] for r in out.splitlines() if re.match(r"^\| \d+ \|", r)]
    assert {r[1].strip() for r in rows} == {"tiled", "open_clip"}  # --impls leaves out seed
    assert len(rows) == 2 * 3  # three sizes
    for r in rows:
        cells = [c.strip() for c in r]
        assert float(cells[2]) > 0
        # the paired efficiency is a share of a measured matmul rate: positive, and no
        # formulation does these FLOPs several times faster than a large matmul
        assert 0 < _percent(cells[8]) < 300
        if cells[1] == "open_clip":
            assert cells[3] == "1.00x"


def test_contrastive_tiles_quick_reports_every_tile_and_the_exp2_error():
    out = _run("contrastive_tiles.py")
    found = re.search(r"max relative error of float32 exp2\(x log2 e\) ([\d.e+-]+), of float32 "
                      r"exp\(x\) ([\d.e+-]+)", out)
    assert found is not None, out[:500]
    err2, err = float(found.group(1)), float(found.group(2))
    # exp2 with log2 e folded in: the rounding of x log2 e, within a float32 logit's own
    # rounding at |x| = 40 (40 * 2**-24 relative on exp(x)); exp itself is correctly rounded
    assert err < err2 < 40 * 2**-24 and err < 1e-6
    tile_rows = re.findall(r"^\| (\d+) \| [\d.]+ \| .*\| ([\d.]+)% \|$", out, re.M)
    loss_rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| (\d+)% \|$", out, re.M)
    assert [t for t, _ in tile_rows] == ["128", "256"]
    assert all(0 < float(s) < 100 for _, s in tile_rows)
    assert [t for t, _, _ in loss_rows] == ["128", "256"]
