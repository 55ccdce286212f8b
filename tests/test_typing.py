"""Module calls are typed: mypy sees what ``module(...)`` returns, flag by flag.

``nn.Module.__call__`` returns ``Any``; every public module types its call as its ``forward``
(``if TYPE_CHECKING: __call__ = forward``), and a ``return_*=`` flag that switches a tensor to a
NamedTuple carries ``typing.overload``s. One mypy run checks three snippets: calls whose types
must match (no errors), calls asserted with a wrong type (each must be reported, so the check
can fail) and the revealed call type of every public module class (none may be ``Any``).
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

import mmfuse

pytest.importorskip("mypy")

GOOD = '''
from typing import Any

import torch
from torch import Tensor
from typing_extensions import assert_type

from mmfuse.alignment import (
    AttentionOutput, CVAEHead, CVAEOutput, InfoNCELoss, ModalityGraphAttention,
    SpatioTemporalAttention,
)
from mmfuse.fusion import (
    AttentionFusion, AttentionFusionOutput, ConcatFusion, CrossAttentionFusion,
    CrossAttentionFusionOutput, DecisionFusion,
)

x = {"a": torch.randn(2, 3), "b": torch.randn(2, 4)}
fusion = AttentionFusion({"a": 3, "b": 4}, 5)
assert_type(fusion(x), Tensor)
assert_type(fusion(x, return_weights=False), Tensor)
assert_type(fusion(x, return_weights=True), AttentionFusionOutput)
assert_type(fusion(x, return_weights=True).weights, Tensor)
flag: bool = bool(torch.rand(()) > 0.5)
assert_type(fusion(x, return_weights=flag), Tensor | AttentionFusionOutput)
assert_type(ConcatFusion({"a": 3, "b": 4})(x), Tensor)
assert_type(DecisionFusion(["a", "b"], 3)({"a": torch.rand(2, 3), "b": torch.rand(2, 3)}),
            Tensor)

tokens = {"a": torch.randn(2, 5, 3), "b": torch.randn(2, 6, 4)}
cross = CrossAttentionFusion({"a": 3, "b": 4}, 8, num_heads=2, depth=1)
assert_type(cross(tokens), Tensor)
assert_type(cross(tokens, return_tokens=True), CrossAttentionFusionOutput)

st = SpatioTemporalAttention(8, num_heads=2)
video, text = torch.randn(1, 2, 3, 3, 8), torch.randn(1, 4, 8)
assert_type(st(video, text), Tensor)
assert_type(st(video, text, return_attention=True), AttentionOutput)
graph = ModalityGraphAttention(8, num_heads=2)
assert_type(graph(torch.randn(2, 3, 8)), Tensor)
assert_type(graph(torch.randn(2, 3, 8), return_attention=True), AttentionOutput)

assert_type(CVAEHead((4,), 3, 2)(torch.randn(2, 4), torch.randn(2, 3)), CVAEOutput)
assert_type(InfoNCELoss()(torch.randn(4, 8), torch.randn(4, 8)), Tensor)
'''

# Each line must be reported: a wrong assert_type, or an argument the signature refuses.
BAD = '''
import torch
from torch import Tensor
from typing_extensions import assert_type

from mmfuse.alignment import AttentionOutput, SpatioTemporalAttention
from mmfuse.fusion import AttentionFusion, AttentionFusionOutput

x = {"a": torch.randn(2, 3)}
fusion = AttentionFusion({"a": 3}, 5)
assert_type(fusion(x), AttentionFusionOutput)  # BAD
assert_type(fusion(x, return_weights=True), Tensor)  # BAD
fusion(x, return_weight=True)  # BAD
st = SpatioTemporalAttention(8, num_heads=2)
assert_type(st(torch.randn(1, 2, 3, 3, 8), torch.randn(1, 4, 8)), AttentionOutput)  # BAD
'''


def public_modules() -> dict[str, str]:
    """Every public ``nn.Module`` class of mmfuse: class name -> the module that defines it."""
    found: dict[str, str] = {}
    for info in pkgutil.walk_packages(mmfuse.__path__, "mmfuse."):
        if any(part.startswith("_") for part in info.name.split(".")) or ".bench" in info.name:
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional extra that is not installed
            continue
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if (inspect.isclass(obj) and issubclass(obj, nn.Module)
                    and obj.__module__.startswith("mmfuse")):
                found[obj.__name__] = obj.__module__
    return found


@pytest.fixture(scope="module")
def mypy_run(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, str]]:
    root = tmp_path_factory.mktemp("typing")
    # mypy's cache (torch's stubs take most of a cold run) kept in pytest's cache when enabled
    cache = getattr(request.config, "cache", None)
    cache_dir = cache.mkdir("mypy") if cache is not None else root / ".mypy_cache"
    (root / "good.py").write_text(GOOD)
    (root / "bad.py").write_text(BAD)
    classes = public_modules()
    reveal = [f"from {mod} import {name}\ndef call_{name}(m: {name}) -> None:\n"
              f"    reveal_type(m.__call__)" for name, mod in sorted(classes.items())]
    (root / "reveal.py").write_text("\n".join(reveal) + "\n")
    src = Path(mmfuse.__file__).parents[1]  # the mmfuse under test, not another install
    env = {**os.environ, "MYPYPATH": str(src)}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache_dir),
         "--python-version", "3.10", "--config-file", os.devnull, "--show-error-codes",
         "--no-error-summary", "good.py", "bad.py", "reveal.py"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )
    return root, proc.stdout + proc.stderr, classes


def _lines(output: str, file: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(f"{file}:")]


def test_calls_have_the_forward_types(mypy_run: tuple[Path, str, dict[str, str]]) -> None:
    _, output, _ = mypy_run
    assert _lines(output, "good.py") == [], output


def test_wrong_types_are_reported(mypy_run: tuple[Path, str, dict[str, str]]) -> None:
    _, output, _ = mypy_run
    want = [i for i, line in enumerate(BAD.splitlines(), 1) if line.endswith("# BAD")]
    errors = {int(m.group(1)) for line in _lines(output, "bad.py")
              if (m := re.match(r"bad\.py:(\d+): error:", line))}
    assert errors == set(want), output


def test_every_public_module_call_is_typed(
        mypy_run: tuple[Path, str, dict[str, str]]) -> None:
    _, output, classes = mypy_run
    assert len(classes) >= 30  # the walk found the library's modules
    revealed = {}
    names = sorted(classes)
    for line in _lines(output, "reveal.py"):
        m = re.match(r"reveal\.py:(\d+): note: Revealed type is \"(.*)\"", line)
        if m:
            revealed[names[(int(m.group(1)) - 1) // 3]] = m.group(2)
    assert set(revealed) == set(classes), output
    untyped = {n: t for n, t in revealed.items() if t == "def (*Any, **Any) -> Any"}
    assert not untyped, f"calls typed as nn.Module's (add `__call__ = forward`): {untyped}"
