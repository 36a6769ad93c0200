#!/usr/bin/env bash
# Build the test PodResources server (hack/podresources/main.go: the kubelet's own
# k8s.io/kubelet/pkg/apis/podresources/v1 server interface on a unix socket, answering from a
# JSON file) into a version-keyed cache outside the repository, for the agent's tests.
#
#   hack/podresources/build.sh            # prints the binary path on stdout, logs on stderr
#
# Cache layout (all self-contained under $KVSCHED_CACHE, default ~/.cache/kvsched):
#   podresources-kubelet-v0.37.2/bin/podresources-server          the binary
#   podresources-kubelet-v0.37.2/bin/podresources-server.sources  sha256 of the sources it was
#                                                                 built from (main.go, go.mod, go.sum)
#   podresources-kubelet-v0.37.2/gomod, .../gocache               GOMODCACHE / GOCACHE of the build
#   podresources-kubelet-v0.37.2/build.log                        the last build's output
#
# The module (go.mod, go.sum beside this script) pins k8s.io/kubelet v0.37.2 and the grpc it
# requires; the build runs with -mod=readonly, so every download is checked against go.sum.
# A second run with the binary present and built from the same sources prints its path at once.
#
# Environment:
#   KVSCHED_CACHE              cache root (default ~/.cache/kvsched)
#   KVSCHED_BUILD_NICE         nice level for go commands (default 19)
#   KVSCHED_BUILD_PROCS        GOMAXPROCS and `go build -p` (default 2)
#   KVSCHED_FORCE_REBUILD=1    rebuild even when the binary is present
#   KVSCHED_PODRES_NO_BUILD=1  never compile: print the cached binary's path or fail (exit 3)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib/gobuild.sh
source "$HERE/../lib/gobuild.sh"
gb_init podresources/build.sh

KUBELET_VERSION="v0.37.2" # keep in step with go.mod
ROOT="$CACHE/podresources-kubelet-$KUBELET_VERSION"
BIN="$ROOT/bin"
BINARY="$BIN/podresources-server"
STAMP="$BINARY.sources"

for f in main.go go.mod go.sum; do
    [[ -f "$HERE/$f" ]] || die "missing $HERE/$f"
done
grep -qE "^[[:space:]]*k8s.io/kubelet $KUBELET_VERSION\$" "$HERE/go.mod" ||
    die "$HERE/go.mod does not require k8s.io/kubelet $KUBELET_VERSION (this script's key)"

sources_hash() {
    (cd "$HERE" && cat main.go go.mod go.sum) | sha256sum | cut -d' ' -f1
}
SOURCES="$(sources_hash)"

# A built server prints its usage (naming -socket) for -h.
runs() {
    local usage
    usage="$("$1" -h 2>&1)" || true
    [[ "$usage" == *-socket* ]]
}

# The binary is usable when it is there, was built from these sources, and answers -h.
binary_ok() {
    [[ -x "$BINARY" && -f "$STAMP" && "$(cat "$STAMP")" == "$SOURCES" ]] || return 1
    runs "$BINARY"
}

gb_exit_if_cached "$BINARY" "" binary_ok

if [[ -x "$BINARY" ]]; then
    why="$BINARY was built from other sources than $HERE"
else
    why="no binary at $BINARY"
fi
gb_exit_if_no_build KVSCHED_PODRES_NO_BUILD "$why"

gb_require_go "the PodResources test server" 1.26
gb_lock "$ROOT" "$BINARY" binary_ok
gb_go_env "$ROOT" readonly 0
gb_check_go_version "$HERE/go.mod" "k8s.io/kubelet@$KUBELET_VERSION"

log "building podresources-server (k8s.io/kubelet $KUBELET_VERSION) with $GO_VERSION (GOMAXPROCS=$PROCS, nice $NICE) into $BIN"
mkdir -p "$BIN"
gb_stage "$BINARY"
LOGFILE="$ROOT/build.log"
if ! (cd "$HERE" && gorun build -p "$PROCS" -trimpath -ldflags "-s -w" \
    -o "$STAGE" .) >"$LOGFILE" 2>&1; then
    fail_with_log "go build hack/podresources (k8s.io/kubelet $KUBELET_VERSION)" "$LOGFILE"
fi
runs "$STAGE" || die "$STAGE does not run"

# Install atomically: binary first, then the stamp that vouches for it.
rm -f "$STAMP"
gb_install "$BINARY"
echo "$SOURCES" >"$STAMP"
binary_ok || die "$BINARY does not run"
log "done: $BINARY"
echo "$BINARY"
