#!/usr/bin/env bash
# Build etcd, kube-apiserver, kube-scheduler, kube-controller-manager and kubectl from Go modules
# into a version-keyed cache outside the repository, for the e2e tests (no Docker, no release
# tarballs needed).
#
#   hack/controlplane/build.sh            # prints the bin dir on stdout, logs on stderr
#
# Cache layout (all self-contained under $KVSCHED_CACHE, default ~/.cache/kvsched):
#   controlplane/k8s-<k8s>-etcd-<etcd>/bin/{etcd,kube-apiserver,kube-scheduler,
#                                          kube-controller-manager,kubectl}
#   controlplane/work/{k8s-<k8s>,etcd-<etcd>}/   throwaway wrapper Go modules + build logs
#   controlplane/gomod, controlplane/gocache     GOMODCACHE / GOCACHE used for the build
#
# A second run with the binaries present only runs each binary's --version (seconds). When a cache
# lacks some of them (e.g. one made before kube-controller-manager was added), only the missing
# ones are built and added to it; the binaries already there are left as they are.
#
# Environment:
#   KVSCHED_CACHE            cache root (default ~/.cache/kvsched)
#   KVSCHED_K8S_VERSION      k8s.io/kubernetes version (default below)
#   KVSCHED_ETCD_VERSION     go.etcd.io/etcd/server/v3 version (default below)
#   KVSCHED_BUILD_NICE       nice level for go commands (default 19)
#   KVSCHED_BUILD_PROCS      GOMAXPROCS and `go build -p` (default 2)
#   KVSCHED_FORCE_REBUILD=1  rebuild even when the binaries are present
#   KVSCHED_CP_NO_BUILD=1    never compile: print the cached bin dir or fail (exit 3)
#
# Why these versions: k8s v1.37.2 is the newest release on the module proxy and its go.mod
# says `go 1.26.0`, so it builds with the installed Go 1.26.x without a toolchain switch
# (GOTOOLCHAIN=local is forced here). etcd 3.6.x is the supported server line for it.
set -euo pipefail

K8S_VERSION="${KVSCHED_K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${KVSCHED_ETCD_VERSION:-v3.6.16}"
CACHE="${KVSCHED_CACHE:-$HOME/.cache/kvsched}"
NICE="${KVSCHED_BUILD_NICE:-19}"
PROCS="${KVSCHED_BUILD_PROCS:-2}"

K8S_VERSION="v${K8S_VERSION#v}"
ETCD_VERSION="v${ETCD_VERSION#v}"
ROOT="$CACHE/controlplane"
KEY="k8s-${K8S_VERSION#v}-etcd-${ETCD_VERSION#v}"
BIN="$ROOT/$KEY/bin"
# kubectl is built too: the e2e tests apply manifests/ with `kubectl apply -k --server-side`;
# kube-controller-manager runs the Deployment/ReplicaSet/StatefulSet/GC controllers that the
# real-controller e2e tests (LeaderWorkerSet, Deployments) need.
BINARIES=(etcd kube-apiserver kube-scheduler kube-controller-manager kubectl)
K8S_COMMANDS=(kube-apiserver kube-scheduler kube-controller-manager kubectl)

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() {
    printf 'build.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

# Print the last lines of a build log and fail.
fail_with_log() {
    local what="$1" logfile="$2"
    {
        printf 'build.sh: ERROR: %s failed; last lines of %s:\n' "$what" "$logfile"
        tail -n 40 "$logfile" | sed 's/^/    /'
    } >&2
    exit 1
}

# kubectl has no --version flag; every other binary does.
version_of() {
    if [[ "$(basename "$1")" == kubectl ]]; then "$1" version --client; else "$1" --version; fi
}

binary_ok() {
    [[ -x "$1" ]] && version_of "$1" >/dev/null 2>&1
}

binaries_ok() {
    local dir="$1" b
    for b in "${BINARIES[@]}"; do
        binary_ok "$dir/$b" || return 1
    done
}

# The binaries to build: all of them with KVSCHED_FORCE_REBUILD=1, else those missing or broken.
missing_binaries() {
    local b
    for b in "${BINARIES[@]}"; do
        if [[ "${KVSCHED_FORCE_REBUILD:-0}" == 1 ]] || ! binary_ok "$BIN/$b"; then
            echo "$b"
        fi
    done
}

if [[ "${KVSCHED_FORCE_REBUILD:-0}" != 1 ]] && binaries_ok "$BIN"; then
    log "cached: $BIN ($("$BIN/kube-apiserver" --version 2>&1 | head -n1); $("$BIN/etcd" --version 2>&1 | head -n1))"
    echo "$BIN"
    exit 0
fi

if [[ "${KVSCHED_CP_NO_BUILD:-0}" == 1 ]]; then
    printf 'build.sh: ERROR: %s\n' "no usable $(missing_binaries | tr '\n' ' ')in $BIN and KVSCHED_CP_NO_BUILD=1; run $0 without it (it builds only what is missing)" >&2
    exit 3
fi

command -v go >/dev/null 2>&1 || die "go is not on PATH; install Go >= 1.26 to build the control plane"

K8S_MINOR="${K8S_VERSION#v1.}"            # 37.2
STAGING_VERSION="v0.${K8S_MINOR}"         # v0.37.2
K8S_MAJOR_MINOR="${K8S_MINOR%%.*}"        # 37
[[ "$K8S_VERSION" =~ ^v1\.[0-9]+\.[0-9]+$ ]] || die "KVSCHED_K8S_VERSION must look like v1.X.Y, got $K8S_VERSION"

mkdir -p "$ROOT"
# One build at a time per cache (parallel test workers may all call this script).
exec 9>"$ROOT/.build.lock"
if command -v flock >/dev/null 2>&1; then
    flock -n 9 || {
        log "another build holds $ROOT/.build.lock; waiting"
        flock 9
    }
    # Another process may have finished the build while we waited.
    if [[ "${KVSCHED_FORCE_REBUILD:-0}" != 1 ]] && binaries_ok "$BIN"; then
        log "built by another process: $BIN"
        echo "$BIN"
        exit 0
    fi
fi

export GOMODCACHE="$ROOT/gomod"
export GOCACHE="$ROOT/gocache"
export GOTOOLCHAIN=local
export GOFLAGS="-mod=mod -buildvcs=false"
export GOMAXPROCS="$PROCS"
export CGO_ENABLED=0
export GOWORK=off
unset GOOS GOARCH

gorun() { nice -n "$NICE" go "$@"; }

GO_VERSION="$(go env GOVERSION)"
mapfile -t TO_BUILD < <(missing_binaries)
wants() { printf '%s\n' "${TO_BUILD[@]}" | grep -qxF "$1"; }
log "building ${TO_BUILD[*]} ($KEY) with $GO_VERSION (GOMAXPROCS=$PROCS, nice $NICE) into $BIN"

WORK="$ROOT/work"
K8S_WORK="$WORK/k8s-${K8S_VERSION#v}"
ETCD_WORK="$WORK/etcd-${ETCD_VERSION#v}"
STAGE="$ROOT/$KEY/bin.partial.$$"
rm -rf "$K8S_WORK" "$ETCD_WORK" "$STAGE"
mkdir -p "$K8S_WORK" "$ETCD_WORK" "$STAGE"
trap 'rm -rf "$STAGE"' EXIT

# --- kube-apiserver, kube-scheduler, kube-controller-manager, kubectl --------------------------
NEED_K8S=0
for cmd in "${K8S_COMMANDS[@]}"; do wants "$cmd" && NEED_K8S=1; done
if ((NEED_K8S)); then
log "downloading k8s.io/kubernetes@$K8S_VERSION (large; first time takes minutes)"
if ! gorun mod download -json "k8s.io/kubernetes@$K8S_VERSION" >"$K8S_WORK/download.json" 2>"$K8S_WORK/download.log"; then
    cat "$K8S_WORK/download.json" >>"$K8S_WORK/download.log" 2>/dev/null || true
    fail_with_log "go mod download k8s.io/kubernetes@$K8S_VERSION" "$K8S_WORK/download.log"
fi
K8S_GOMOD="$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' "$K8S_WORK/download.json" | head -n1)"
[[ -f "$K8S_GOMOD" ]] || die "no GoMod file in 'go mod download -json' output (see $K8S_WORK/download.json)"

# Required Go version of the kubernetes module vs. ours: fail clearly instead of switching.
K8S_GO="$(awk '$1 == "go" { print $2; exit }' "$K8S_GOMOD")"
if [[ -n "$K8S_GO" ]]; then
    have="${GO_VERSION#go}"
    if [[ "$(printf '%s\n%s\n' "$K8S_GO" "$have" | sort -V | head -n1)" != "$K8S_GO" ]]; then
        die "k8s.io/kubernetes@$K8S_VERSION needs go $K8S_GO but $GO_VERSION is installed (GOTOOLCHAIN=local); pick an older KVSCHED_K8S_VERSION"
    fi
fi

# Every staging module that kubernetes replaces with ./staging/src/... and also requires:
# map it to the published v0.X.Y. (A few staging modules, e.g. sample-controller, are not
# required by kubernetes and are not published for every release: skip those.)
mapfile -t STAGING < <(
    awk '
        /^replace[[:space:]]*\(/ { inrep = 1; next }
        inrep && /^\)/ { inrep = 0; next }
        inrep && $2 == "=>" && $3 ~ /^\.\/staging\/src\// { print $1 }
        /^replace[[:space:]]+[^(]/ && $3 == "=>" && $4 ~ /^\.\/staging\/src\// { print $2 }
    ' "$K8S_GOMOD" | sort -u
)
mapfile -t REQUIRED < <(
    awk '
        /^require[[:space:]]*\(/ { inreq = 1; next }
        inreq && /^\)/ { inreq = 0; next }
        inreq && NF >= 2 { print $1 }
        /^require[[:space:]]+[^(]/ { print $2 }
    ' "$K8S_GOMOD" | sort -u
)
((${#STAGING[@]} > 10)) || die "found only ${#STAGING[@]} staging replace lines in $K8S_GOMOD; the go.mod layout changed?"

{
    echo "// Generated by kvsched hack/controlplane/build.sh; throwaway wrapper, never committed."
    echo "module kvsched.local/controlplane/k8s"
    echo
    echo "go $(awk '$1 == "go" { print $2; exit }' "$K8S_GOMOD")"
    godebug="$(awk '$1 == "godebug" && $2 != "(" { $1 = ""; sub(/^ /, ""); print; exit }' "$K8S_GOMOD")"
    [[ -n "$godebug" ]] && echo "godebug $godebug"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    n=0
    for m in "${STAGING[@]}"; do
        if printf '%s\n' "${REQUIRED[@]}" | grep -qxF "$m"; then
            printf '\t%s => %s %s\n' "$m" "$m" "$STAGING_VERSION"
            n=$((n + 1))
        fi
    done
    echo ")"
} >"$K8S_WORK/go.mod"
log "wrapper module $K8S_WORK/go.mod: ${#STAGING[@]} staging modules, $(grep -c ' => ' "$K8S_WORK/go.mod") replaced with $STAGING_VERSION"

LDPKG="k8s.io/component-base/version"
BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
LDFLAGS="-s -w"
LDFLAGS+=" -X $LDPKG.gitVersion=$K8S_VERSION -X $LDPKG.gitMajor=1 -X $LDPKG.gitMinor=$K8S_MAJOR_MINOR"
LDFLAGS+=" -X $LDPKG.gitTreeState=clean -X $LDPKG.buildDate=$BUILD_DATE"
LDFLAGS+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
LDFLAGS+=" -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$K8S_MAJOR_MINOR"

for cmd in "${K8S_COMMANDS[@]}"; do
    wants "$cmd" || continue
    log "compiling $cmd (several minutes on a small machine)"
    if ! (cd "$K8S_WORK" && gorun build -p "$PROCS" -trimpath -ldflags "$LDFLAGS" \
        -o "$STAGE/$cmd" "k8s.io/kubernetes/cmd/$cmd") >"$K8S_WORK/build-$cmd.log" 2>&1; then
        fail_with_log "go build k8s.io/kubernetes/cmd/$cmd@$K8S_VERSION" "$K8S_WORK/build-$cmd.log"
    fi
done
fi # NEED_K8S

# --- etcd ---------------------------------------------------------------------------------
if wants etcd; then
cat >"$ETCD_WORK/go.mod" <<EOF
// Generated by kvsched hack/controlplane/build.sh; throwaway wrapper, never committed.
module kvsched.local/controlplane/etcd

go $(go env GOVERSION | sed 's/^go//; s/^\([0-9]*\.[0-9]*\).*/\1.0/')

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
log "compiling etcd $ETCD_VERSION"
if ! (cd "$ETCD_WORK" && gorun build -p "$PROCS" -trimpath -ldflags "-s -w" \
    -o "$STAGE/etcd" go.etcd.io/etcd/server/v3) >"$ETCD_WORK/build-etcd.log" 2>&1; then
    fail_with_log "go build go.etcd.io/etcd/server/v3@$ETCD_VERSION" "$ETCD_WORK/build-etcd.log"
fi
fi # etcd

# --- check and install atomically ---------------------------------------------------------
for b in "${TO_BUILD[@]}"; do
    out="$(version_of "$STAGE/$b" 2>&1)" || die "$STAGE/$b version check failed: $out"
    log "$b: $(echo "$out" | head -n1)"
done
if ((${#TO_BUILD[@]} == ${#BINARIES[@]})); then
    rm -rf "$BIN"
    mv "$STAGE" "$BIN"
else
    # Add what was missing to the existing cache; each rename is atomic, and the binaries
    # already there (possibly running in other tests) are not touched.
    mkdir -p "$BIN"
    for b in "${TO_BUILD[@]}"; do
        mv -f "$STAGE/$b" "$BIN/$b"
    done
    rm -rf "$STAGE"
fi
trap - EXIT
binaries_ok "$BIN" || die "binaries in $BIN do not run"
log "done: $BIN"
echo "$BIN"
