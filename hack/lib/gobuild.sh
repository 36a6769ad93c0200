# shellcheck shell=bash
# Shared pieces of the hack/*/build.sh scripts that build Go test binaries into a version-keyed
# cache outside the repository ($KVSCHED_CACHE, default ~/.cache/kvsched). Sourced, never run:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/../lib/gobuild.sh"
#   gb_init kwok/build.sh                  # log prefix; sets CACHE, NICE, PROCS
#
# Each script keeps its own version pins, cache layout, binary check and build commands; this file
# gives them the same CLI behaviour (stdout = the binary path only, logs on stderr, exit 3 when the
# script's *_NO_BUILD variable is set and nothing usable is cached, a loud failure with the tail of
# the build log otherwise). What it provides, in the order a script uses it:
#
#   log MSG / die MSG / fail_with_log WHAT LOGFILE    stderr messages prefixed with the script name
#   gb_exit_if_cached BINARY DESCRIBE CHECK...        print BINARY and exit 0 when CHECK... passes
#                                                     (unless KVSCHED_FORCE_REBUILD=1); DESCRIBE is
#                                                     a command whose output is logged after the
#                                                     path (or "" for none)
#   gb_exit_if_no_build VAR WHY [HINT]               with VAR=1: log "WHY and VAR=1; run $0HINT
#                                                     without it" and exit 3
#   gb_require_go WHAT MIN                            fail unless `go` is on PATH
#   gb_lock ROOT BINARY CHECK...                      one build at a time per ROOT (flock on
#                                                     ROOT/.build.lock); after waiting, print BINARY
#                                                     and exit 0 when another process built it
#   gb_go_env ROOT MOD CGO                            GOMODCACHE/GOCACHE under ROOT, GOTOOLCHAIN=local,
#                                                     GOFLAGS="-mod=MOD -buildvcs=false", GOMAXPROCS,
#                                                     CGO_ENABLED=CGO, GOWORK=off; sets GO_VERSION
#   gorun ARGS...                                     `go ARGS...` at nice $NICE
#   gb_mod_download MODULE@VERSION WORK LOG           `go mod download -json` in WORK (log to LOG);
#                                                     sets MOD_DIR to the module's source directory
#   gb_check_go_version GOMOD WHAT                    fail when GOMOD's `go` line needs a newer Go
#   gb_stage TARGET / gb_install TARGET               build into STAGE=TARGET.partial.$$ (removed on
#                                                     exit), then replace TARGET with it
#   gb_stage_dir WORK BIN_DIR                         empty WORK and an empty staging folder STAGE
#                                                     for BIN_DIR (then gb_install BIN_DIR)
#
# Environment (common to every script): KVSCHED_CACHE, KVSCHED_BUILD_NICE (default 19),
# KVSCHED_BUILD_PROCS (GOMAXPROCS and `go build -p`, default 2), KVSCHED_FORCE_REBUILD=1.

gb_init() {
    GB_NAME="$1"
    CACHE="${KVSCHED_CACHE:-$HOME/.cache/kvsched}"
    NICE="${KVSCHED_BUILD_NICE:-19}"
    PROCS="${KVSCHED_BUILD_PROCS:-2}"
}

log() { printf '%s: %s\n' "$GB_NAME" "$*" >&2; }
die() {
    printf '%s: ERROR: %s\n' "$GB_NAME" "$*" >&2
    exit 1
}

# Print the last lines of a build log and fail.
fail_with_log() {
    local what="$1" logfile="$2"
    {
        printf '%s: ERROR: %s failed; last lines of %s:\n' "$GB_NAME" "$what" "$logfile"
        tail -n 40 "$logfile" | sed 's/^/    /'
    } >&2
    exit 1
}

gb_exit_if_cached() {
    local binary="$1" describe="$2"
    shift 2
    if [[ "${KVSCHED_FORCE_REBUILD:-0}" != 1 ]] && "$@"; then
        if [[ -n "$describe" ]]; then
            log "cached: $binary ($("$describe" "$binary"))"
        else
            log "cached: $binary"
        fi
        echo "$binary"
        exit 0
    fi
}

gb_exit_if_no_build() {
    local var="$1" why="$2" hint="${3:-}"
    if [[ "${!var:-0}" == 1 ]]; then
        printf '%s: ERROR: %s and %s=1; run %s%s without it\n' "$GB_NAME" "$why" "$var" "$0" "$hint" >&2
        exit 3
    fi
}

gb_require_go() {
    local what="$1" min="$2"
    command -v go >/dev/null 2>&1 || die "go is not on PATH; install Go >= $min to build $what"
}

gb_lock() {
    local root="$1" binary="$2"
    shift 2
    mkdir -p "$root"
    # One build at a time per cache (parallel test workers may all call the script).
    exec 9>"$root/.build.lock"
    if command -v flock >/dev/null 2>&1; then
        flock -n 9 || {
            log "another build holds $root/.build.lock; waiting"
            flock 9
        }
        # Another process may have finished the build while we waited.
        if [[ "${KVSCHED_FORCE_REBUILD:-0}" != 1 ]] && "$@"; then
            log "built by another process: $binary"
            echo "$binary"
            exit 0
        fi
    fi
}

gb_go_env() {
    local root="$1" mod="$2" cgo="$3"
    export GOMODCACHE="$root/gomod"
    export GOCACHE="$root/gocache"
    export GOTOOLCHAIN=local
    export GOFLAGS="-mod=$mod -buildvcs=false"
    export GOMAXPROCS="$PROCS"
    export CGO_ENABLED="$cgo"
    export GOWORK=off
    unset GOOS GOARCH
    GO_VERSION="$(go env GOVERSION)"
}

gorun() { nice -n "$NICE" go "$@"; }

gb_mod_download() {
    local module="$1" work="$2" logfile="$3"
    log "downloading $module"
    if ! (cd "$work" && gorun mod download -json "$module") >"$work/download.json" 2>"$logfile"; then
        cat "$work/download.json" >>"$logfile" 2>/dev/null || true
        fail_with_log "go mod download $module" "$logfile"
    fi
    MOD_DIR="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' "$work/download.json" | head -n1)"
}

gb_check_go_version() {
    local gomod="$1" what="$2" need
    need="$(awk '$1 == "go" { print $2; exit }' "$gomod")"
    if [[ -n "$need" && "$(printf '%s\n%s\n' "$need" "${GO_VERSION#go}" | sort -V | head -n1)" != "$need" ]]; then
        die "$what needs go $need but $GO_VERSION is installed (GOTOOLCHAIN=local)"
    fi
}

gb_stage() {
    STAGE="$1.partial.$$"
    rm -rf "$STAGE"
    trap 'rm -rf "$STAGE"' EXIT
}

gb_install() {
    rm -rf "$1"
    mv "$STAGE" "$1"
    trap - EXIT
}

gb_stage_dir() {
    rm -rf "$1"
    mkdir -p "$1"
    gb_stage "$2"
    mkdir -p "$STAGE"
}
