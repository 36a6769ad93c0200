# Shared by up.sh and down.sh (sourced, not executed).
# shellcheck shell=bash
# shellcheck disable=SC2034  # STATE, HERE, CP_COMPONENTS are used by the scripts sourcing this

CP_USER="${USER:-$(id -un 2>/dev/null || echo user)}"
STATE="${KVSCHED_CP_DIR:-/tmp/kvsched-cp-$CP_USER}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Components in start order; down.sh stops them in reverse.
CP_COMPONENTS=(etcd kube-apiserver kube-scheduler)

cp_log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
cp_die() {
    printf '%s: ERROR: %s\n' "$(basename "$0")" "$*" >&2
    exit 1
}

# pid of a running component we started, or nothing. NAME is the pid file's name without
# .pid (etcd, kube-apiserver, kube-scheduler, kube-scheduler-<port> ...); the process must
# be the binary of that name (the part before any "-<digits>" suffix).
cp_pid() {
    local name="$1" pidfile="$STATE/$1.pid" pid comm binary
    binary="$(sed -E 's/-[0-9]+$//' <<<"$name")"
    [[ -f "$pidfile" ]] || return 1
    pid="$(cat "$pidfile" 2>/dev/null)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against pid reuse: the process must be the binary we started.
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || ps -p "$pid" -o comm= 2>/dev/null || true)"
    [[ "$comm" == "${binary:0:15}" ]] || return 1
    # A zombie (exited, not yet reaped) is not running.
    if [[ -r "/proc/$pid/stat" ]] && [[ "$(awk '{print $3}' "/proc/$pid/stat")" == Z ]]; then
        return 1
    fi
    echo "$pid"
}

# Stop one component by its pid file: TERM, wait up to $2 seconds, then KILL.
cp_stop() {
    local name="$1" grace="${2:-15}" pid i
    if pid="$(cp_pid "$name")"; then
        cp_log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            cp_pid "$name" >/dev/null || break
            sleep 0.1
        done
        if cp_pid "$name" >/dev/null; then
            cp_log "$name (pid $pid) ignored SIGTERM for ${grace}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                cp_pid "$name" >/dev/null || break
                sleep 0.1
            done
        fi
        cp_pid "$name" >/dev/null && cp_die "could not stop $name (pid $pid)"
        # It is dead; its parent (often init, after up.sh exited) reaps the zombie. Some
        # sandbox inits reap only every ~2s: wait a little so `pgrep` shows nothing after us.
        for ((i = 0; i < 50; i++)); do
            [[ -e "/proc/$pid" ]] || break
            sleep 0.1
        done
    fi
    rm -f "$STATE/$name.pid"
}

# A free TCP port on 127.0.0.1.
cp_free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
        return
    fi
    local p i
    for ((i = 0; i < 100; i++)); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    cp_die "no free port found"
}
