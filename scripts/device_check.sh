#!/usr/bin/env bash
# One call on the GPU machine does it all: build the native libraries (all cores, sm_90),
# run the main job, the GPU tests and the benchmarks, and leave logs + JSON under $OUT.
#   OUT             output folder (default: ./device_out)
#   BNB_CUDA_ARCHS  default 90a-real (the H100/H200 of the device machine)
#   BENCH_ARGS      extra arguments for the benchmark scripts
#   PYTEST_ARGS     extra pytest arguments (e.g. "-k 4bit")
#   BENCHES         benchmark scripts to run (default: every benchmarks/bench_*.py except the CPU ones;
#                   "none" skips them; benchmarks/profile_*.py run when named here)
# Build, tests and every benchmark take about ten minutes on the H100, the device tool's limit per call: run
# BENCHES=none first, then (same machine, build kept) the benchmarks with PYTEST_ARGS="-k <matching nothing>".
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/device_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

{
  step "machine"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  nproc; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  nvcc --version | tail -2
  git log -1 --format='commit %H %ad' 2>/dev/null || echo "commit: (no git metadata)"

  step "build"
  cmake -S . -B build/device -G Ninja -DCMAKE_BUILD_TYPE=Release -DBNB_CUDA=ON \
    -DBNB_CUDA_ARCHS="${BNB_CUDA_ARCHS:-90a-real}" -DBNB_TESTS=OFF && cmake --build build/device -j "$(nproc)"
  ldd build/lib/libbitsandbytes_cuda.so || true
} > "$OUT/build.log" 2>&1 || { echo "BUILD FAILED"; tail -50 "$OUT/build.log"; exit 1; }
tail -3 "$OUT/build.log"

step "main job: python -m bitsandbytes"
PYTHONPATH=$PWD python3 -m bitsandbytes > "$OUT/main.log" 2>&1 || status=1
tail -25 "$OUT/main.log"

step "GPU tests"
# shellcheck disable=SC2086
eval "extra=(${PYTEST_ARGS:-})"  # keeps quoted arguments such as -k "a or b" whole
PYTHONPATH=$PWD timeout 330 python3 -m pytest tests/python -q -rfs --maxfail=40 -p no:cacheprovider "${extra[@]}" \
  > "$OUT/pytest.log" 2>&1 || status=1
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -40
tail -3 "$OUT/pytest.log"

step "benchmarks"
# One log for all benchmarks plus one JSON each: the device tool returns at most 8 files.
for bench in ${BENCHES:-benchmarks/bench_*.py}; do
  case "$bench" in *bench_cpu_*|none) continue ;; esac  # CPU figures are taken on the development machine
  name=$(basename "$bench" .py)
  # The GPU's state as each benchmark starts: rows bound by instruction issue follow the SM clock.
  echo "GPU before $name: $(nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw,clocks_event_reasons.active \
    --format=csv,noheader 2>/dev/null)" >> "$OUT/benchmarks.log"
  # shellcheck disable=SC2086
  PYTHONPATH=$PWD timeout 200 python3 "$bench" --out "$OUT/$name.json" ${BENCH_ARGS:-} > "$OUT/bench_one.log" 2>&1 || status=1
  tail -40 "$OUT/bench_one.log"
  cat "$OUT/bench_one.log" >> "$OUT/benchmarks.log"
done

rm -f "$OUT/bench_one.log"
# The device tool returns at most 8 files: fold the per-benchmark JSON into one.
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
parts = sorted(out.glob("bench_*.json")) + sorted(out.glob("profile_*.json"))
if parts:
    merged = {p.stem: json.loads(p.read_text()) for p in parts}
    (out / "benchmarks.json").write_text(json.dumps(merged, indent=1))
    for p in parts:
        p.unlink()
PY
step "GPU tests (summary again, so it ends the output)"
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -20
tail -2 "$OUT/pytest.log"
step "done: status $status"
exit $status
