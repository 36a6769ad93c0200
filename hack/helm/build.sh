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

# shellcheck source=../lib/gobuild.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/gobuild.sh"
gb_init helm/build.sh

VERSION="${KVSCHED_HELM_VERSION:-v4.3.2}"
VERSION="v${VERSION#v}"
MODULE="helm.sh/helm/v${VERSION:1:1}"

ROOT="$CACHE/helm-$VERSION"
BIN="$ROOT/bin"
BINARY="$BIN/helm"

# The binary is usable when it runs and says it is this version ("v4.3.2+g..." or "v4.3.2").
binary_ok() {
    local out
    [[ -x "$1" ]] || return 1
    out="$("$1" version --short 2>&1)" || return 1
    [[ "$out" == "$VERSION"* ]]
}

describe() { "$1" version --short 2>&1 | head -n1; }
gb_exit_if_cached "$BINARY" describe binary_ok "$BINARY"
gb_exit_if_no_build KVSCHED_HELM_NO_BUILD "no usable $BINARY" " (or make helm)"

gb_require_go "helm" 1.26
gb_lock "$ROOT" "$BINARY" binary_ok "$BINARY"
gb_go_env "$ROOT" readonly 0

WORK="$ROOT/work"
gb_stage_dir "$WORK" "$BIN"
LOG="$WORK/build.log"

gb_mod_download "$MODULE@$VERSION" "$WORK" "$LOG"
SRC="$MOD_DIR"
[[ -d "$SRC/cmd/helm" ]] || die "no cmd/helm in the downloaded module (see $WORK/download.json)"
gb_check_go_version "$SRC/go.mod" "$MODULE@$VERSION"

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

gb_install "$BIN"
log "done: $BINARY ($("$BINARY" version --short 2>&1 | head -n1))"
echo "$BINARY"
