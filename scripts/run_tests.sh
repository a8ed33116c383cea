#!/usr/bin/env bash
# The test command: build the native libraries in-tree (CPU always, CUDA when nvcc is found),
# run the C++ tests (ctest) and the Python tests (pytest). GPU tests skip without a GPU.
#   BNB_CUDA_ARCHS  architectures to compile for (default: 75 and 90 machine code, enough to
#                   catch build breaks; release builds cover sm_75..sm_120)
#   BNB_JOBS        parallel build jobs (default: all cores)
#   PYTEST_ARGS     extra pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."

jobs="${BNB_JOBS:-$(nproc)}"
archs="${BNB_CUDA_ARCHS:-75-real;90-real}"
build_dir="${BNB_BUILD_DIR:-build/dev}"

echo "== configure (${build_dir}, CUDA archs ${archs})"
cmake -S . -B "${build_dir}" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBNB_TESTS=ON \
  -DBNB_CUDA="${BNB_CUDA:-AUTO}" -DBNB_CUDA_ARCHS="${archs}"
echo "== build (${jobs} jobs)"
cmake --build "${build_dir}" -j "${jobs}"

echo "== C++ tests"
(cd "${build_dir}" && ctest --output-on-failure -j "${jobs}")

echo "== Python tests"
# shellcheck disable=SC2086
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python3 -m pytest tests/python -q -rs ${PYTEST_ARGS:-}
