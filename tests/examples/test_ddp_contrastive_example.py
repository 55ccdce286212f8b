"""examples/ddp_contrastive.py launched with ``torchrun --nproc_per_node 2`` (gloo on CPU) trains
to the same losses and parameters as one process on the full batch, uneven last batches and an
empty rank included; with ``--grad-reduction sum`` DDP's averaging makes it differ."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "ddp_contrastive.py"
# 103 images in global batches of 51: ranks hold 26 + 25 rows twice, then 1 + 0 (an empty rank)
ARGS = ["--epochs", "2", "--train-size", "103", "--batch-size", "51"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(out: Path, *extra: str, processes: int = 1) -> dict:
    if processes == 1:
        cmd = [sys.executable, str(SCRIPT)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(SCRIPT)]
    proc = subprocess.run([*cmd, *ARGS, *extra, "--save", str(out)], capture_output=True,
                          text=True, env=_env(), timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "R@1" in proc.stdout
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _run(tmp_path_factory.mktemp("ddp") / "single.pt")


@pytest.mark.slow  # two process launches that import torch: ~10 s idle, minutes when loaded
def test_torchrun_two_processes_equal_one_process(single: dict, tmp_path: Path) -> None:
    ddp = _run(tmp_path / "ddp.pt", processes=2)
    assert ddp["world"] == 2 and single["world"] == 1
    losses, want = torch.tensor(ddp["losses"]), torch.tensor(single["losses"])
    assert len(losses) == len(want) == 6  # 3 batches x 2 epochs
    assert bool((want[:2] > 1.0).all()) and want[3] < want[0]  # it trains
    assert float(want[2]) == 0.0  # a batch of one pair: no negatives, no loss
    assert torch.allclose(losses, want, atol=1e-5, rtol=1e-5), (losses - want).abs().max()
    for name, value in single["state"].items():
        diff = (ddp["state"][name] - value).abs().max()
        assert torch.allclose(ddp["state"][name], value, atol=1e-5, rtol=1e-5), (name, diff)


@pytest.mark.slow
def test_without_the_switch_ddp_averaging_halves_the_gradient(single: dict,
                                                              tmp_path: Path) -> None:
    ddp = _run(tmp_path / "sum.pt", "--grad-reduction", "sum", processes=2)
    # the first step's loss is the same (same initial parameters), the training is not
    assert ddp["losses"][0] != pytest.approx(single["losses"][0], abs=1e-3)  # a rank's share
    worst = max(float((ddp["state"][k] - v).abs().max()) for k, v in single["state"].items())
    assert worst > 1e-3
