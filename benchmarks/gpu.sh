#!/usr/bin/env bash
# The whole GPU check in one call, for the first machine with a CUDA device:
#
#   bash benchmarks/gpu.sh OUT_DIR            # run it (about 8 minutes at most)
#   bash benchmarks/gpu.sh --dry-run OUT_DIR  # on any machine: print and check the plan only
#
# Steps (each bounded by `timeout`, the total under 8 minutes): the CUDA tests (`pytest -m
# cuda`; a skipped test fails the step), the contrastive and attention benchmarks in float32
# and bfloat16, and the demo with --device cuda. Every step writes its output to OUT_DIR
# (tables as printed: contrastive-float32.md, attention-bfloat16.md, ...); summary.txt lists
# each step's exit status. The exit status is nonzero when any step failed.
# PYTHON selects the interpreter (default: python); run from anywhere inside the repository.
set -uo pipefail

DRY=0
OUT=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) echo "gpu.sh: unknown option $arg" >&2; exit 2 ;;
    *) if [[ -n "$OUT" ]]; then echo "gpu.sh: one output folder, got $OUT and $arg" >&2; exit 2; fi
       OUT="$arg" ;;
  esac
done
if [[ -z "$OUT" ]]; then
  echo "usage: bash benchmarks/gpu.sh [--dry-run] OUT_DIR" >&2
  exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT" || exit 2
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"

# name | time limit (s) | command; the limits add up to 450 s (7.5 minutes)
STEPS=(
  "cuda-tests|120|$PY -m pytest -m cuda -q -rs -p no:cacheprovider tests"
  "contrastive-float32|100|$PY benchmarks/contrastive.py --device cuda --dtype float32 --sizes 4096 16384 32768 131072 --repeats 5"
  "contrastive-bfloat16|100|$PY benchmarks/contrastive.py --device cuda --dtype bfloat16 --sizes 4096 16384 32768 131072 --repeats 5"
  "attention-float32|40|$PY benchmarks/attention.py --device cuda --dtype float32 --repeats 9"
  "attention-bfloat16|40|$PY benchmarks/attention.py --device cuda --dtype bfloat16 --repeats 9"
  "demo-cuda|50|$PY -m mmfuse demo --device cuda --quick --no-progress --out $OUT/demo"
)

check_plan() {
  # everything the run needs, checked without a GPU in one Python process: the scripts take
  # --device and --dtype, the CUDA tests are collected, the limits fit in 8 minutes
  local total=0
  for step in "${STEPS[@]}"; do total=$((total + $(cut -d'|' -f2 <<<"$step"))); done
  echo "time limits add up to ${total} s"
  if [[ "$total" -gt 480 ]]; then echo "the steps' limits exceed 8 minutes" >&2; return 1; fi
  "$PY" - <<'PYEOF'
import contextlib, io, runpy, sys
import pytest
from mmfuse.cli import main

def options(argv):
    out = io.StringIO()
    sys.argv = argv
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        runpy.run_path(argv[0], run_name="__main__")
    return out.getvalue()

bad = []
for script in ("benchmarks/contrastive.py", "benchmarks/attention.py"):
    text = options([script, "--help"])
    bad += [f"{script}: no {opt}" for opt in ("--device", "--dtype", "bfloat16") if opt not in text]
demo = io.StringIO()
with contextlib.redirect_stdout(demo), contextlib.suppress(SystemExit):
    main(["demo", "--help"])
if "--device" not in demo.getvalue():
    bad.append("mmfuse demo: no --device")
with contextlib.redirect_stdout(io.StringIO()) as out:
    pytest.main(["-m", "cuda", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"])
n = sum("::" in line for line in out.getvalue().splitlines())
print(f"cuda tests collected: {n}")
if n == 0:
    bad.append("no CUDA test collected")
for line in bad:
    print(line, file=sys.stderr)
sys.exit(1 if bad else 0)
PYEOF
}

echo "gpu.sh: output in $OUT"
if [[ "$DRY" == 1 ]]; then
  for step in "${STEPS[@]}"; do
    IFS='|' read -r name limit cmd <<<"$step"
    echo "plan: $name (limit ${limit} s): $cmd > $OUT/$name.md"
  done
  if check_plan; then echo "dry run: plan OK"; exit 0; fi
  echo "dry run: plan BROKEN" >&2
  exit 1
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu.sh: no CUDA device here (use --dry-run to check the plan)" >&2
  exit 1
fi
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"
: > "$OUT/summary.txt"
status=0
for step in "${STEPS[@]}"; do
  IFS='|' read -r name limit cmd <<<"$step"
  echo "== $name (limit ${limit} s): $cmd"
  start=$SECONDS
  # shellcheck disable=SC2086  # the command is split into words on purpose
  timeout --kill-after=10 "$limit" $cmd > "$OUT/$name.md" 2>&1
  rc=$?
  if [[ "$name" == cuda-tests && $rc == 0 ]] && grep -qE "[0-9]+ skipped" "$OUT/$name.md"; then
    echo "CUDA tests skipped on a CUDA machine:" >&2
    grep -E "SKIPPED|skipped" "$OUT/$name.md" >&2
    rc=3
  fi
  tail -n 3 "$OUT/$name.md"
  echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$OUT/summary.txt"
  [[ $rc == 0 ]] || status=1
done
exit $status
