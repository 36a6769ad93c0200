#!/usr/bin/env bash
# Build the LeaderWorkerSet controller manager (sigs.k8s.io/lws, cmd/main.go) from its Go module
# into a version-keyed cache outside the repository, with the manifests the e2e support needs
# from the same module version (CRDs, webhook configurations), for the e2e tests that run the
# real LWS controller (tests/support/controllers.py starts it).
#
#   hack/lws/build.sh             # prints the binary path on stdout, logs on stderr
#
# Cache layout (all self-contained under $KVSCHED_CACHE, default ~/.cache/kvsched):
#   lws-<version>/bin/lws-manager                 the binary (`--version` names <version>)
#   lws-<version>/bin/crd/*.yaml                  config/crd/bases of the module (2 CRDs in v0.9.0:
#                                                 leaderworkersets, disaggregatedsets)
#   lws-<version>/bin/webhook/{manifests,mutating-patch,validating-patch}.yaml
#                                                 config/webhook of the module (the patches add the
#                                                 pod webhooks' objectSelector)
#   lws-<version>/gomod, lws-<version>/gocache    GOMODCACHE / GOCACHE
#   lws-<version>/work/build.log                  the last build's output
#
# The build uses the module's own go.mod/go.sum (-mod=readonly), as the project's Makefile does
# (`go build -ldflags ... -o bin/manager cmd/main.go`).
#
# Environment:
#   KVSCHED_CACHE             cache root (default ~/.cache/kvsched)
#   KVSCHED_LWS_VERSION       sigs.k8s.io/lws version (default below)
#   KVSCHED_BUILD_NICE        nice level for go commands (default 19)
#   KVSCHED_BUILD_PROCS       GOMAXPROCS and `go build -p` (default 2)
#   KVSCHED_FORCE_REBUILD=1   rebuild even when the binary is present
#   KVSCHED_LWS_NO_BUILD=1    never compile: print the cached binary's path or fail (exit 3)
#
# Why v0.9.0: the module proxy serves its source (v0.10.0's zip is refused there); its go.mod
# says `go 1.26.0`, so it builds with the installed Go 1.26.x (GOTOOLCHAIN=local).
set -euo pipefail

# shellcheck source=../lib/gobuild.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/gobuild.sh"
gb_init lws/build.sh

VERSION="${KVSCHED_LWS_VERSION:-v0.9.0}"
VERSION="v${VERSION#v}"

ROOT="$CACHE/lws-$VERSION"
BIN="$ROOT/bin"
BINARY="$BIN/lws-manager"

# The binary is usable when it runs and says it is this version ("Version: v0.9.0"), and the
# manifests are beside it.
binary_ok() {
    local out
    [[ -x "$1" ]] || return 1
    out="$("$1" --version 2>&1)" || return 1
    [[ "$out" == *"Version: $VERSION"* ]] || return 1
    [[ -s "$(dirname "$1")/webhook/manifests.yaml" ]] || return 1
    compgen -G "$(dirname "$1")/crd/*.yaml" >/dev/null
}

describe() { "$1" --version 2>&1 | head -n1; }
gb_exit_if_cached "$BINARY" describe binary_ok "$BINARY"
gb_exit_if_no_build KVSCHED_LWS_NO_BUILD "no usable $BINARY" " (or make lws)"

gb_require_go "the LWS controller" 1.26
gb_lock "$ROOT" "$BINARY" binary_ok "$BINARY"
gb_go_env "$ROOT" readonly 0

WORK="$ROOT/work"
gb_stage_dir "$WORK" "$BIN"
LOG="$WORK/build.log"

gb_mod_download "sigs.k8s.io/lws@$VERSION" "$WORK" "$LOG"
SRC="$MOD_DIR"
[[ -f "$SRC/cmd/main.go" ]] || die "no cmd/main.go in the downloaded module (see $WORK/download.json)"
gb_check_go_version "$SRC/go.mod" "sigs.k8s.io/lws@$VERSION"

# Build in a writable copy (the module cache is read-only).
cp -R "$SRC" "$WORK/src"
chmod -R u+w "$WORK/src"

log "compiling the LWS manager $VERSION with $GO_VERSION (GOMAXPROCS=$PROCS, nice $NICE; minutes the first time)"
LDFLAGS="-s -w -X sigs.k8s.io/lws/pkg/version.GitVersion=$VERSION"
LDFLAGS+=" -X sigs.k8s.io/lws/pkg/version.BuildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
if ! (cd "$WORK/src" && gorun build -p "$PROCS" -trimpath -ldflags "$LDFLAGS" \
    -o "$STAGE/lws-manager" ./cmd) >>"$LOG" 2>&1; then
    fail_with_log "go build sigs.k8s.io/lws/cmd@$VERSION" "$LOG"
fi
mkdir -p "$STAGE/crd" "$STAGE/webhook"
cp "$SRC"/config/crd/bases/*.yaml "$STAGE/crd/"
for f in manifests.yaml mutating-patch.yaml validating-patch.yaml; do
    cp "$SRC/config/webhook/$f" "$STAGE/webhook/$f"
done
cp "$SRC/LICENSE" "$STAGE/LICENSE"
chmod -R u+w "$STAGE"
binary_ok "$STAGE/lws-manager" || die "$STAGE/lws-manager --version does not name $VERSION: $("$STAGE/lws-manager" --version 2>&1 | head -n3)"
rm -rf "$WORK/src"

gb_install "$BIN"
log "done: $BINARY ($("$BINARY" --version 2>&1 | head -n1))"
echo "$BINARY"
