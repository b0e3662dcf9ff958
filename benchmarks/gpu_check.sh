#!/usr/bin/env bash
# The GPU paths in under 10 minutes (benchmarks/gpu_check.py says what is checked); the CPU fallback without a GPU.
#   bash benchmarks/gpu_check.sh [--cpu] [--skip pipeline]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
exec timeout 590 "$PY" -m benchmarks.gpu_check "$@"
