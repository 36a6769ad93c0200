#!/usr/bin/env bash
# Regenerate docs/benchmarks.md (and docs/img/*.png) from scratch: extender latency, placement
# quality on the reference trace (simulator), and the real kube-scheduler on the local control
# plane. Run on a quiet machine: each report records the machine it ran on.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p docs/img
"$PY" hack/bench_extender.py --nodes "${BENCH_NODES:-1000,5000}" \
  --iterations "${BENCH_ITERATIONS:-1000}" --warmup 50 --out "$tmp/extender.md"
"$PY" hack/bench_placement.py --out-md "$tmp/placement.md" --plots docs/img
hack/controlplane/build.sh >/dev/null
# Default, floor and kvsched profiles, GPU pods and the realistic mix, at 500 and 1,000 nodes
# (each size on its own control plane); kvsched-agents (on by default: kvsched with every
# NodeInventory reported by a node agent, GPU pods); --other-bind adds the bind setting not
# shipped.
"$PY" hack/bench_scheduler.py --nodes "${BENCH_SCHED_NODES:-500,1000}" \
  --pods "${BENCH_SCHED_PODS:-1000,2000}" --other-bind --out-md "$tmp/scheduler.md"
{
  cat "$tmp/extender.md"
  echo
  cat "$tmp/placement.md"
  echo
  cat "$tmp/scheduler.md"
} >docs/benchmarks.md
echo "wrote docs/benchmarks.md"
