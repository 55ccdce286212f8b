"""benchmarks/peers.py --quick: every row within the bound its test asserts, each bound still
the one written in that test, and every README peer-table row that names a peer package
measured by the script, and docs/peers.md's table of the same rows and bounds (so the figures,
the tests, the README and the docs cannot drift apart)."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "peers.py"
# distribution -> import name: the peer packages of the `compare` extra, and scikit-learn
PEERS = {"pytorch-metric-learning": "pytorch_metric_learning", "info-nce-pytorch": "info_nce",
         "torchmetrics": "torchmetrics", "scikit-learn": "sklearn", "librosa": "librosa",
         "diffusers": "diffusers"}


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("peers_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up
    spec.loader.exec_module(bench)
    return bench


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict]]:
    out = tmp_path_factory.mktemp("peers") / "peers.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=280)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: a row outside its bound
    return proc.stdout, json.loads(out.read_text())


def test_every_row_is_within_its_tests_bound(quick: tuple[str, list[dict]]) -> None:
    out, rows = quick
    printed = [line for line in out.splitlines() if line.startswith("| ")][1:]  # no header
    assert len(printed) == len(rows) > 0
    for line, row in zip(printed, rows):
        assert line.startswith(f"| {row['capability']} | {row['dist']}"), (line, row)
        if row["version"] is None:
            assert "not installed" in line
            continue
        kind, tol = row["bound"]
        measured = row["max_abs"] if kind == "abs" else row["max_rel"]
        assert row["cases"] > 0, row
        assert measured <= tol, f"{row['capability']} ({row['dtype']}): {measured:.3g} > {tol}"
        assert row["within"]
    assert "OUTSIDE" not in out


def _function_source(path: Path, name: str) -> str:
    """The test function with its decorators, and the module-level helpers it calls."""
    text = path.read_text()
    tree = ast.parse(text)
    lines = text.splitlines()
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert name in defs, f"{path.name} has no function {name}"

    def segment(node: ast.FunctionDef) -> str:
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        return "\n".join(lines[start - 1:node.end_lineno])

    called = {n.id for n in ast.walk(defs[name]) if isinstance(n, ast.Name)} & set(defs) - {name}
    return "\n".join([segment(defs[name]), *(segment(defs[c]) for c in sorted(called))])


def _spellings(tol: float) -> list[str]:
    mantissa, exponent = f"{tol:.0e}".split("e")
    return [f"{mantissa}e{int(exponent)}", f"{mantissa}e-0{-int(exponent)}", f"{tol:g}"]


def test_bounds_are_the_ones_the_tests_assert(quick: tuple[str, list[dict]]) -> None:
    _, rows = quick
    for row in rows:
        if row["version"] is None:
            continue
        file, _, function = row["test"].partition("::")
        path = ROOT / file
        assert PEERS[row["dist"]] in path.read_text(), f"{file} does not use {row['dist']}"
        # a function's bound is in its code; a file's, in its docstring (the stated tolerance)
        source = (_function_source(path, function) if function
                  else ast.get_docstring(ast.parse(path.read_text())) or "")
        kind, tol = row["bound"]
        found = any(re.search(rf"(?<![\d.e-]){re.escape(s)}(?![\d])", source)
                    for s in _spellings(tol))
        if not found and kind == "rel" and tol == 1e-6:  # pytest.approx's default
            found = "pytest.approx(" in source and "rel=" not in source
        assert found, f"{row['test']} no longer asserts {kind} {tol} ({row['capability']})"


def _readme_peer_rows() -> list[tuple[str, str]]:
    """(first word of the capability, peer distribution) for each README peer-table row whose
    "compared in" cell names a peer package (by its name or its import name)."""
    text = (ROOT / "README.md").read_text()
    head = re.search(r"^\| capability \| mmfuse \| peers that have it \| compared in \|$", text,
                     re.M)
    assert head, "README.md has no peer table"
    wanted = []
    for line in text[head.end():].lstrip("\n").splitlines()[1:]:  # past the --- line
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 4, line
        first = cells[0].split()[0].strip(":,")
        wanted += [(first, dist) for dist, module in PEERS.items()
                   if dist in cells[3] or module in cells[3]]
    return wanted


def test_readme_peer_rows_appear_in_the_output(quick: tuple[str, list[dict]]) -> None:
    _, rows = quick
    wanted = _readme_peer_rows()
    assert {dist for _, dist in wanted} >= {"pytorch-metric-learning", "info-nce-pytorch",
                                            "torchmetrics", "librosa", "diffusers"}
    for first, dist in wanted:
        assert any(r["dist"] == dist and (r["version"] is None or
                                          r["capability"].split()[0].strip(":,") == first)
                   for r in rows), f"README row '{first} ...' compared with {dist}: not measured"


def test_docs_table_has_every_row_with_its_bound(quick: tuple[str, list[dict]]) -> None:
    # docs/peers.md holds a full run's table: the same rows, peers and bounds as any run
    out, _ = quick
    printed = [line for line in out.splitlines() if line.startswith("| ")][1:]  # no header
    doc = [line for line in (ROOT / "docs" / "peers.md").read_text().splitlines()
           if line.startswith("| ")][1:]

    def key(line: str) -> tuple[str, ...]:  # capability, peer, dtype, bound
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        return cells[0], cells[1], cells[2], cells[6]

    assert [key(line) for line in doc] == [key(line) for line in printed]


def test_row_arithmetic_and_a_missing_peer() -> None:
    bench = _load()
    row = bench.Row("x", "torch", "f", "float64", ("rel", 0.1), "t", version="1")
    row.add([1.0, 2.0], [1.0, 2.5])
    row.add(3.0, 3.0)
    assert (row.max_abs, row.max_rel, row.cases) == (0.5, 0.2, 2)
    assert not row.within
    row.bound = ("abs", 0.5)
    assert row.within
    assert bench.fmt(2.46e-6) == "2.5e-6" and bench.fmt(0.0) == "0"

    def never(table: object, seeds: list[int], quick: bool) -> None:
        raise AssertionError("a missing package's comparisons must not run")

    bench.GROUPS = [("no-such-peer", "no_such_peer_module", never)]
    rows = bench.run(quick=True)
    assert [(r.dist, r.version) for r in rows] == [("no-such-peer", None)]
    assert "| no-such-peer: not installed |" in bench.markdown(rows)
