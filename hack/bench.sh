#!/usr/bin/env bash
# Regenerate docs/benchmarks.md from scratch. Run on a quiet machine: the report records it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
"$VENV/bin/python" hack/bench_extender.py --nodes "${BENCH_NODES:-1000,5000}" \
  --iterations "${BENCH_ITERATIONS:-1000}" --warmup 50 --out docs/benchmarks.md
