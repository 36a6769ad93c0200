#!/usr/bin/env bash
# Build KWOK (sigs.k8s.io/kwok: fake kubelets driven by Stage configs) from its Go module into a
# version-keyed cache outside the repository, for the e2e tests that need pods to really go
# Running/Ready and terminate (tests/support/controllers.py starts it; the stages it plays are
# hack/kwok/stages/, copied from the module's kustomize/stage/).
#
#   hack/kwok/build.sh            # prints the binary path on stdout, logs on stderr
#
# Cache layout (all self-contained under $KVSCHED_CACHE, default ~/.cache/kvsched):
#   kwok-<version>/bin/kwok       the binary (`kwok --version` names <version>)
#   kwok-<version>/gomod          GOMODCACHE (the module's source: .../sigs.k8s.io/kwok@<version>)
#   kwok-<version>/gocache        GOCACHE
#   kwok-<version>/work/          a writable copy of the module source + build.log
#
# The build uses the module's own go.mod/go.sum (-mod=readonly: every download is checked
# against its go.sum), so the binary is what the release's `go build ./cmd/kwok` gives.
# A second run with the binary present and naming the version prints its path at once.
#
# Environment:
#   KVSCHED_CACHE             cache root (default ~/.cache/kvsched)
#   KVSCHED_KWOK_VERSION      sigs.k8s.io/kwok version (default below)
#   KVSCHED_BUILD_NICE        nice level for go commands (default 19)
#   KVSCHED_BUILD_PROCS       GOMAXPROCS and `go build -p` (default 2)
#   KVSCHED_FORCE_REBUILD=1   rebuild even when the binary is present
#   KVSCHED_KWOK_NO_BUILD=1   never compile: print the cached binary's path or fail (exit 3)
#
# Why v0.8.0: the newest release the module proxy serves, and its go.mod says `go 1.26.0`, so it
# builds with the installed Go 1.26.x (GOTOOLCHAIN=local is forced here).
set -euo pipefail

VERSION="${KVSCHED_KWOK_VERSION:-v0.8.0}"
VERSION="v${VERSION#v}"
CACHE="${KVSCHED_CACHE:-$HOME/.cache/kvsched}"
NICE="${KVSCHED_BUILD_NICE:-19}"
PROCS="${KVSCHED_BUILD_PROCS:-2}"

ROOT="$CACHE/kwok-$VERSION"
BIN="$ROOT/bin"
BINARY="$BIN/kwok"

log() { printf 'kwok/build.sh: %s\n' "$*" >&2; }
die() {
    printf 'kwok/build.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

fail_with_log() {
    local what="$1" logfile="$2"
    {
        printf 'kwok/build.sh: ERROR: %s failed; last lines of %s:\n' "$what" "$logfile"
        tail -n 40 "$logfile" | sed 's/^/    /'
    } >&2
    exit 1
}

# The binary is usable when it runs and says it is this version ("kwok version v0.8.0 ...").
binary_ok() {
    local out
    [[ -x "$1" ]] || return 1
    out="$("$1" --version 2>&1)" || return 1
    [[ "$out" == *"${VERSION#v}"* ]]
}

if [[ "${KVSCHED_FORCE_REBUILD:-0}" != 1 ]] && binary_ok "$BINARY"; then
    log "cached: $BINARY ($("$BINARY" --version 2>&1 | head -n1))"
    echo "$BINARY"
    exit 0
fi

if [[ "${KVSCHED_KWOK_NO_BUILD:-0}" == 1 ]]; then
    printf 'kwok/build.sh: ERROR: %s\n' "no usable $BINARY and KVSCHED_KWOK_NO_BUILD=1; run $0 (or make kwok) without it" >&2
    exit 3
fi

command -v go >/dev/null 2>&1 || die "go is not on PATH; install Go >= 1.26 to build kwok"

mkdir -p "$ROOT"
exec 9>"$ROOT/.build.lock"
if command -v flock >/dev/null 2>&1; then
    flock -n 9 || {
        log "another build holds $ROOT/.build.lock; waiting"
        flock 9
    }
    if [[ "${KVSCHED_FORCE_REBUILD:-0}" != 1 ]] && binary_ok "$BINARY"; then
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

gorun() { nice -n "$NICE" go "$@"; }

WORK="$ROOT/work"
STAGE="$BIN.partial.$$"
rm -rf "$WORK" "$STAGE"
mkdir -p "$WORK" "$STAGE"
trap 'rm -rf "$STAGE"' EXIT
LOG="$WORK/build.log"

log "downloading sigs.k8s.io/kwok@$VERSION"
if ! (cd "$WORK" && gorun mod download -json "sigs.k8s.io/kwok@$VERSION") >"$WORK/download.json" 2>"$LOG"; then
    cat "$WORK/download.json" >>"$LOG" 2>/dev/null || true
    fail_with_log "go mod download sigs.k8s.io/kwok@$VERSION" "$LOG"
fi
SRC="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' "$WORK/download.json" | head -n1)"
[[ -d "$SRC/cmd/kwok" ]] || die "no cmd/kwok in the downloaded module (see $WORK/download.json)"

MOD_GO="$(awk '$1 == "go" { print $2; exit }' "$SRC/go.mod")"
GO_VERSION="$(go env GOVERSION)"
if [[ -n "$MOD_GO" && "$(printf '%s\n%s\n' "$MOD_GO" "${GO_VERSION#go}" | sort -V | head -n1)" != "$MOD_GO" ]]; then
    die "sigs.k8s.io/kwok@$VERSION needs go $MOD_GO but $GO_VERSION is installed (GOTOOLCHAIN=local)"
fi

# Build in a writable copy (the module cache is read-only).
cp -R "$SRC" "$WORK/src"
chmod -R u+w "$WORK/src"

log "compiling kwok $VERSION with $GO_VERSION (GOMAXPROCS=$PROCS, nice $NICE; minutes the first time)"
LDFLAGS="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${VERSION#v}"
if ! (cd "$WORK/src" && gorun build -p "$PROCS" -trimpath -ldflags "$LDFLAGS" \
    -o "$STAGE/kwok" ./cmd/kwok) >>"$LOG" 2>&1; then
    fail_with_log "go build sigs.k8s.io/kwok/cmd/kwok@$VERSION" "$LOG"
fi
binary_ok "$STAGE/kwok" || die "$STAGE/kwok --version does not name $VERSION: $("$STAGE/kwok" --version 2>&1 | head -n3)"
rm -rf "$WORK/src"

rm -rf "$BIN"
mv "$STAGE" "$BIN"
trap - EXIT
log "done: $BINARY ($("$BINARY" --version 2>&1 | head -n1))"
echo "$BINARY"
