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

# shellcheck source=../lib/gobuild.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/gobuild.sh"
gb_init kwok/build.sh

VERSION="${KVSCHED_KWOK_VERSION:-v0.8.0}"
VERSION="v${VERSION#v}"

ROOT="$CACHE/kwok-$VERSION"
BIN="$ROOT/bin"
BINARY="$BIN/kwok"

# The binary is usable when it runs and says it is this version ("kwok version v0.8.0 ...").
binary_ok() {
    local out
    [[ -x "$1" ]] || return 1
    out="$("$1" --version 2>&1)" || return 1
    [[ "$out" == *"${VERSION#v}"* ]]
}

describe() { "$1" --version 2>&1 | head -n1; }
gb_exit_if_cached "$BINARY" describe binary_ok "$BINARY"
gb_exit_if_no_build KVSCHED_KWOK_NO_BUILD "no usable $BINARY" " (or make kwok)"

gb_require_go "kwok" 1.26
gb_lock "$ROOT" "$BINARY" binary_ok "$BINARY"
gb_go_env "$ROOT" readonly 0

WORK="$ROOT/work"
gb_stage_dir "$WORK" "$BIN"
LOG="$WORK/build.log"

gb_mod_download "sigs.k8s.io/kwok@$VERSION" "$WORK" "$LOG"
SRC="$MOD_DIR"
[[ -d "$SRC/cmd/kwok" ]] || die "no cmd/kwok in the downloaded module (see $WORK/download.json)"
gb_check_go_version "$SRC/go.mod" "sigs.k8s.io/kwok@$VERSION"

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

gb_install "$BIN"
log "done: $BINARY ($("$BINARY" --version 2>&1 | head -n1))"
echo "$BINARY"
