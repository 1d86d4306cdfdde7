#!/usr/bin/env bash
# The one-shot device check (see benchmarks/gpu_check.py): wan22-ti2v-5b with random bf16 weights on
# one GPU, about 5-8 minutes on an H100/H200. Extra arguments go to gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exec "$PY" benchmarks/gpu_check.py "$@"
