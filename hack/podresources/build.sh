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

KUBELET_VERSION="v0.37.2" # keep in step with go.mod
CACHE="${KVSCHED_CACHE:-$HOME/.cache/kvsched}"
NICE="${KVSCHED_BUILD_NICE:-19}"
PROCS="${KVSCHED_BUILD_PROCS:-2}"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$CACHE/podresources-kubelet-$KUBELET_VERSION"
BIN="$ROOT/bin"
BINARY="$BIN/podresources-server"
STAMP="$BINARY.sources"

log() { printf 'podresources/build.sh: %s\n' "$*" >&2; }
die() {
    printf 'podresources/build.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

fail_with_log() {
    local what="$1" logfile="$2"
    {
        printf 'podresources/build.sh: ERROR: %s failed; last lines of %s:\n' "$what" "$logfile"
        tail -n 40 "$logfile" | sed 's/^/    /'
    } >&2
    exit 1
}

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

if [[ "${KVSCHED_FORCE_REBUILD:-0}" != 1 ]] && binary_ok; then
    log "cached: $BINARY"
    echo "$BINARY"
    exit 0
fi

if [[ "${KVSCHED_PODRES_NO_BUILD:-0}" == 1 ]]; then
    if [[ -x "$BINARY" ]]; then
        why="$BINARY was built from other sources than $HERE"
    else
        why="no binary at $BINARY"
    fi
    printf 'podresources/build.sh: ERROR: %s and KVSCHED_PODRES_NO_BUILD=1; run %s without it\n' \
        "$why" "$0" >&2
    exit 3
fi

command -v go >/dev/null 2>&1 || die "go is not on PATH; install Go >= 1.26 to build the PodResources test server"

mkdir -p "$ROOT"
# One build at a time per cache (parallel test workers may all call this script).
exec 9>"$ROOT/.build.lock"
if command -v flock >/dev/null 2>&1; then
    flock -n 9 || {
        log "another build holds $ROOT/.build.lock; waiting"
        flock 9
    }
    if [[ "${KVSCHED_FORCE_REBUILD:-0}" != 1 ]] && binary_ok; then
        log "built by another process: $BINARY"
        echo "$BINARY"
        exit 0
    fi
fi

export GOMODCACHE="$ROOT/gomod"
export GOCACHE="$ROOT/gocache"
export GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -buildvcs=false"
export GOMAXPROCS="$PROCS"
export CGO_ENABLED=0
export GOWORK=off
unset GOOS GOARCH

GO_VERSION="$(go env GOVERSION)"
NEED_GO="$(awk '$1 == "go" { print $2; exit }' "$HERE/go.mod")"
if [[ "$(printf '%s\n%s\n' "$NEED_GO" "${GO_VERSION#go}" | sort -V | head -n1)" != "$NEED_GO" ]]; then
    die "k8s.io/kubelet@$KUBELET_VERSION needs go $NEED_GO but $GO_VERSION is installed (GOTOOLCHAIN=local)"
fi

log "building podresources-server (k8s.io/kubelet $KUBELET_VERSION) with $GO_VERSION (GOMAXPROCS=$PROCS, nice $NICE) into $BIN"
mkdir -p "$BIN"
STAGE="$BINARY.partial.$$"
trap 'rm -f "$STAGE"' EXIT
LOGFILE="$ROOT/build.log"
if ! (cd "$HERE" && nice -n "$NICE" go build -p "$PROCS" -trimpath -ldflags "-s -w" \
    -o "$STAGE" .) >"$LOGFILE" 2>&1; then
    fail_with_log "go build hack/podresources (k8s.io/kubelet $KUBELET_VERSION)" "$LOGFILE"
fi
runs "$STAGE" || die "$STAGE does not run"

# Install atomically: binary first, then the stamp that vouches for it.
rm -f "$STAMP"
mv -f "$STAGE" "$BINARY"
trap - EXIT
echo "$SOURCES" >"$STAMP"
binary_ok || die "$BINARY does not run"
log "done: $BINARY"
echo "$BINARY"
