#!/usr/bin/env bash
# The prepared device run (docs/benchmarks.md, "The prepared device run"): on the device machine, install
# the wheels carried in .whl/ (tools/gpu_wheels.sh) next to its own torch, then run tools/gpu_check.py
# with the device's python3 and every argument given here (e.g. --out "$OUT").
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_check.sh: installing the carried wheels failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || true
exec "$PY" -m tools.gpu_check "$@"
