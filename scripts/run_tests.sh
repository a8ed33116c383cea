#!/usr/bin/env bash
# The test command: build the native libraries in-tree (CPU always, CUDA when nvcc is found),
# run the C++ tests (ctest) and the Python tests (pytest). GPU tests skip without a GPU.
#   BNB_CUDA_ARCHS  architectures to compile for (default: 75 and 90a machine code, enough to
#                   catch build breaks, the Hopper-only kernels included; release builds cover
#                   sm_75..sm_120)
#   BNB_JOBS        parallel build jobs (default: all cores)
#   PYTEST_ARGS     extra pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."

# Prerequisites a fresh machine may lack: Python test packages, build tools, gtest for the C++ tests.
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q torch
python3 -c "import pytest, scipy, numpy" 2>/dev/null || python3 -m pip install -q pytest scipy numpy
command -v cmake >/dev/null || python3 -m pip install -q cmake
command -v ninja >/dev/null || python3 -m pip install -q ninja
cpp_tests=ON
if [ ! -e /usr/include/gtest/gtest.h ] && [ ! -e /usr/local/include/gtest/gtest.h ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgtest-dev >/dev/null
  else
    echo "note: gtest is not installed (apt-get install libgtest-dev): the C++ tests are skipped"
    cpp_tests=OFF
  fi
fi

jobs="${BNB_JOBS:-$(nproc)}"
archs="${BNB_CUDA_ARCHS:-75-real;90a-real}"
build_dir="${BNB_BUILD_DIR:-build/dev}"

echo "== configure (${build_dir}, CUDA archs ${archs})"
cmake -S . -B "${build_dir}" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBNB_TESTS="${cpp_tests}" \
  -DBNB_CUDA="${BNB_CUDA:-AUTO}" -DBNB_CUDA_ARCHS="${archs}"
echo "== build (${jobs} jobs)"
cmake --build "${build_dir}" -j "${jobs}"

if [ "${cpp_tests}" = ON ]; then
  echo "== C++ tests"
  (cd "${build_dir}" && ctest --output-on-failure -j "${jobs}")
fi

echo "== Python tests"
# shellcheck disable=SC2086
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python3 -m pytest tests/python -q -rs ${PYTEST_ARGS:-}
