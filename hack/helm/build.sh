#!/usr/bin/env bash
# Build Helm (helm.sh/helm/v4: the package manager whose chart lives in charts/kvsched/) from its
# Go module into a version-keyed cache outside the repository, for tests/unit/test_helm_chart.py
# (helm lint / helm template) and tests/e2e/test_helm.py (helm install against the test API server).
#
#   hack/helm/build.sh            # prints the binary path on stdout, logs on stderr
#
# Cache layout (all self-contained under $KVSCHED_CACHE, default ~/.cache/kvsched):
#   helm-<version>/bin/helm       the binary (`helm version --short` names <version>)
#   helm-<version>/gomod          GOMODCACHE (the module's source: .../helm.sh/helm/v4@<version>)
#   helm-<version>/gocache        GOCACHE
#   helm-<version>/work/          a writable copy of the module source + build.log
#
# The build uses the module's own go.mod/go.sum (-mod=readonly: every download is checked
# against its go.sum), so the binary is what the release's `go build ./cmd/helm` gives, with the
# version stamped in by -ldflags as the release Makefile does.
# A second run with the binary present and naming the version prints its path at once.
#
# Environment:
#   KVSCHED_CACHE             cache root (default ~/.cache/kvsched)
#   KVSCHED_HELM_VERSION      helm.sh/helm/v4 version (default below)
#   KVSCHED_BUILD_NICE        nice level for go commands (default 19)
#   KVSCHED_BUILD_PROCS       GOMAXPROCS and `go build -p` (default 2)
#   KVSCHED_FORCE_REBUILD=1   rebuild even when the binary is present
#   KVSCHED_HELM_NO_BUILD=1   never compile: print the cached binary's path or fail (exit 3)
#
# Why v4.3.2: the newest helm.sh/helm/v4 release the module proxy serves; it builds with the
# installed Go 1.26.x (GOTOOLCHAIN=local is forced here; the script checks the module's `go` line).
set -euo pipefail

VERSION="${KVSCHED_HELM_VERSION:-v4.3.2}"
VERSION="v${VERSION#v}"
CACHE="${KVSCHED_CACHE:-$HOME/.cache/kvsched}"
NICE="${KVSCHED_BUILD_NICE:-19}"
PROCS="${KVSCHED_BUILD_PROCS:-2}"
MODULE="helm.sh/helm/v${VERSION:1:1}"

ROOT="$CACHE/helm-$VERSION"
BIN="$ROOT/bin"
BINARY="$BIN/helm"

log() { printf 'helm/build.sh: %s\n' "$*" >&2; }
die() {
    printf 'helm/build.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

fail_with_log() {
    local what="$1" logfile="$2"
    {
        printf 'helm/build.sh: ERROR: %s failed; last lines of %s:\n' "$what" "$logfile"
        tail -n 40 "$logfile" | sed 's/^/    /'
    } >&2
    exit 1
}

# The binary is usable when it runs and says it is this version ("v4.3.2+g..." or "v4.3.2").
binary_ok() {
    local out
    [[ -x "$1" ]] || return 1
    out="$("$1" version --short 2>&1)" || return 1
    [[ "$out" == "$VERSION"* ]]
}

if [[ "${KVSCHED_FORCE_REBUILD:-0}" != 1 ]] && binary_ok "$BINARY"; then
    log "cached: $BINARY ($("$BINARY" version --short 2>&1 | head -n1))"
    echo "$BINARY"
    exit 0
fi

if [[ "${KVSCHED_HELM_NO_BUILD:-0}" == 1 ]]; then
    printf 'helm/build.sh: ERROR: %s\n' "no usable $BINARY and KVSCHED_HELM_NO_BUILD=1; run $0 (or make helm) without it" >&2
    exit 3
fi

command -v go >/dev/null 2>&1 || die "go is not on PATH; install Go >= 1.26 to build helm"

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

log "downloading $MODULE@$VERSION"
if ! (cd "$WORK" && gorun mod download -json "$MODULE@$VERSION") >"$WORK/download.json" 2>"$LOG"; then
    cat "$WORK/download.json" >>"$LOG" 2>/dev/null || true
    fail_with_log "go mod download $MODULE@$VERSION" "$LOG"
fi
SRC="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' "$WORK/download.json" | head -n1)"
[[ -d "$SRC/cmd/helm" ]] || die "no cmd/helm in the downloaded module (see $WORK/download.json)"

MOD_GO="$(awk '$1 == "go" { print $2; exit }' "$SRC/go.mod")"
GO_VERSION="$(go env GOVERSION)"
if [[ -n "$MOD_GO" && "$(printf '%s\n%s\n' "$MOD_GO" "${GO_VERSION#go}" | sort -V | head -n1)" != "$MOD_GO" ]]; then
    die "$MODULE@$VERSION needs go $MOD_GO but $GO_VERSION is installed (GOTOOLCHAIN=local)"
fi

# Build in a writable copy (the module cache is read-only).
cp -R "$SRC" "$WORK/src"
chmod -R u+w "$WORK/src"

log "compiling helm $VERSION with $GO_VERSION (GOMAXPROCS=$PROCS, nice $NICE; minutes the first time)"
# What the release Makefile stamps: the version (internal/version) and clean tree state.
LDFLAGS="-s -w -X $MODULE/internal/version.version=$VERSION -X $MODULE/internal/version.gitTreeState=clean"
if ! (cd "$WORK/src" && gorun build -p "$PROCS" -trimpath -ldflags "$LDFLAGS" \
    -o "$STAGE/helm" ./cmd/helm) >>"$LOG" 2>&1; then
    fail_with_log "go build $MODULE/cmd/helm@$VERSION" "$LOG"
fi
binary_ok "$STAGE/helm" || die "$STAGE/helm version --short does not name $VERSION: $("$STAGE/helm" version --short 2>&1 | head -n3)"
rm -rf "$WORK/src"

rm -rf "$BIN"
mv "$STAGE" "$BIN"
trap - EXIT
log "done: $BINARY ($("$BINARY" version --short 2>&1 | head -n1))"
echo "$BINARY"
