#!/usr/bin/env bash
# Sets up (packages, Release build) and runs every test with CTest.
# Usage: scripts/test.sh [ctest arguments...]   e.g. scripts/test.sh -L text
set -euo pipefail

cd "$(dirname "$0")/.."
scripts/setup.sh build
cd build
# Tests run two at a time on two cores: OpenMP threads that spin while waiting would starve each
# other, so they sleep instead.
export OMP_WAIT_POLICY=passive
ctest --output-on-failure --parallel "$(nproc)" "$@"
