#!/usr/bin/env bash
# Stop what hack/controlplane/up.sh started in this state dir (by pid file), in reverse
# order, and wait until it is gone. Idempotent; leaves certs and logs in place.
#
#   hack/controlplane/down.sh [--purge]     # --purge also removes the state dir
#
# Environment: KVSCHED_CP_DIR (default /tmp/kvsched-cp-$USER).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [[ ! -d "$STATE" ]]; then
    cp_log "nothing to stop ($STATE does not exist)"
    exit 0
fi

# Extra schedulers started by tests/support/controlplane.py write kube-scheduler-<port>.pid.
for pidfile in "$STATE"/kube-scheduler-*.pid; do
    [[ -e "$pidfile" ]] || continue
    name="$(basename "$pidfile" .pid)"
    cp_stop "$name" "${KVSCHED_CP_STOP_GRACE:-15}"
done
for ((i = ${#CP_COMPONENTS[@]} - 1; i >= 0; i--)); do
    cp_stop "${CP_COMPONENTS[i]}" "${KVSCHED_CP_STOP_GRACE:-15}"
done
rm -f "$STATE/env"

if [[ "${1:-}" == --purge ]]; then
    rm -rf "$STATE"
    cp_log "removed $STATE"
fi
cp_log "stopped (state $STATE)"
