#!/usr/bin/env bash
# Start a throwaway Kubernetes control plane on 127.0.0.1: etcd + kube-apiserver, and
# kube-scheduler when given a KubeSchedulerConfiguration file. No kubelet, no
# controller-manager: tests create Node objects themselves and use bare Pods.
#
#   hack/controlplane/up.sh [SCHEDULER_CONFIG]
#
# Idempotent: when etcd and the apiserver of this state dir are already up and ready it
# only (re)starts what is missing. Prints KEY=VALUE lines (also in $STATE/env) on stdout:
#   KVSCHED_CP_SERVER, KVSCHED_CP_TOKEN, KVSCHED_CP_CA, KVSCHED_CP_KUBECONFIG, ...
#
# Environment:
#   KVSCHED_CP_DIR              state dir (default /tmp/kvsched-cp-$USER): certs, token file,
#                               kubeconfig, etcd data, *.pid, *.log, env
#   KVSCHED_CP_BIN_DIR          dir with etcd, kube-apiserver, kube-scheduler
#                               (default: whatever hack/controlplane/build.sh prints)
#   KVSCHED_SCHEDULER_CONFIG    KubeSchedulerConfiguration path (same as the argument)
#   KVSCHED_CP_ETCD_PORT, KVSCHED_CP_ETCD_PEER_PORT, KVSCHED_CP_APISERVER_PORT,
#   KVSCHED_CP_SCHEDULER_PORT   ports (default: free ones)
#   KVSCHED_CP_TIMEOUT          seconds to wait for each component (default 120)
#   KVSCHED_CP_KEEP_DATA=1      keep the etcd data of a previous run (default: fresh cluster)
#   KVSCHED_CP_APISERVER_ARGS, KVSCHED_CP_SCHEDULER_ARGS   extra flags (word-split)
#   KVSCHED_CP_V                klog verbosity of apiserver/scheduler (default 1 / 2)
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SCHED_CONFIG="${1:-${KVSCHED_SCHEDULER_CONFIG:-}}"
TIMEOUT="${KVSCHED_CP_TIMEOUT:-120}"
SERVICE_CIDR="10.0.0.0/24"

mkdir -p "$STATE"
STATE="$(cd "$STATE" && pwd)"
CERTS="$STATE/certs"
TOKEN_FILE="$STATE/tokens.csv"
KUBECONFIG_FILE="$STATE/kubeconfig"
ENV_FILE="$STATE/env"

for tool in openssl curl; do
    command -v "$tool" >/dev/null 2>&1 || cp_die "$tool is required"
done

if [[ -n "$SCHED_CONFIG" ]]; then
    [[ -f "$SCHED_CONFIG" ]] || cp_die "scheduler config $SCHED_CONFIG does not exist"
    SCHED_CONFIG="$(cd "$(dirname "$SCHED_CONFIG")" && pwd)/$(basename "$SCHED_CONFIG")"
fi

# --- helpers ------------------------------------------------------------------------------
log_tail() {
    local name="$1"
    if [[ -f "$STATE/$name.log" ]]; then
        printf '  last lines of %s:\n' "$STATE/$name.log" >&2
        tail -n 30 "$STATE/$name.log" | sed 's/^/    /' >&2
    fi
}

fail_component() {
    printf 'up.sh: ERROR: %s\n' "$2" >&2
    log_tail "$1"
    exit 1
}

start_component() {
    local name="$1"
    shift
    : >"$STATE/$name.log"
    # setsid: own session, so a Ctrl-C in the caller's terminal does not reach it; in a
    # non-interactive script the child is no process-group leader, so setsid execs in place
    # and $! is the component's pid.
    setsid "$@" </dev/null >>"$STATE/$name.log" 2>&1 &
    echo $! >"$STATE/$name.pid"
    sleep 0.2
    cp_pid "$name" >/dev/null || fail_component "$name" "$name exited right after start"
}

# wait_for NAME URL PATTERN [curl args...]   (PATTERN: a glob the whole answer must match)
wait_for() {
    local name="$1" url="$2" expected="$3" deadline body
    shift 3
    deadline=$((SECONDS + TIMEOUT))
    while true; do
        body="$(curl -sS --max-time 5 "$@" "$url" 2>/dev/null || true)"
        # shellcheck disable=SC2053
        [[ "$body" == $expected ]] && return 0
        cp_pid "$name" >/dev/null || fail_component "$name" "$name died while starting (last answer from $url: ${body:-none})"
        ((SECONDS < deadline)) || fail_component "$name" "$name not ready after ${TIMEOUT}s at $url (last answer: ${body:-none})"
        sleep 0.3
    done
}

api_ready() {
    [[ -f "$ENV_FILE" ]] || return 1
    local server token
    server="$(sed -n 's/^KVSCHED_CP_SERVER=//p' "$ENV_FILE")"
    token="$(sed -n 's/^KVSCHED_CP_TOKEN=//p' "$ENV_FILE")"
    [[ -n "$server" && -n "$token" ]] || return 1
    [[ "$(curl -sS --max-time 5 --cacert "$CERTS/ca.crt" -H "Authorization: Bearer $token" \
        "$server/readyz" 2>/dev/null)" == ok ]]
}

write_env() {
    {
        echo "KVSCHED_CP_DIR=$STATE"
        echo "KVSCHED_CP_BIN_DIR=$BIN"
        echo "KVSCHED_CP_SERVER=https://127.0.0.1:$API_PORT"
        echo "KVSCHED_CP_TOKEN=$TOKEN"
        echo "KVSCHED_CP_CA=$CERTS/ca.crt"
        echo "KVSCHED_CP_KUBECONFIG=$KUBECONFIG_FILE"
        echo "KVSCHED_CP_ETCD=http://127.0.0.1:$ETCD_PORT"
        echo "KVSCHED_CP_ETCD_PORT=$ETCD_PORT"
        echo "KVSCHED_CP_APISERVER_PORT=$API_PORT"
        if [[ -n "${SCHED_PORT:-}" ]]; then
            echo "KVSCHED_CP_SCHEDULER_PORT=$SCHED_PORT"
            echo "KVSCHED_CP_SCHEDULER_CONFIG=$SCHED_CONFIG"
        fi
    } >"$ENV_FILE.tmp"
    mv "$ENV_FILE.tmp" "$ENV_FILE"
}

start_scheduler() {
    local extra=()
    SCHED_PORT="${KVSCHED_CP_SCHEDULER_PORT:-$(cp_free_port)}"
    # shellcheck disable=SC2206
    extra=(${KVSCHED_CP_SCHEDULER_ARGS:-})
    cp_log "starting kube-scheduler with $SCHED_CONFIG (healthz port $SCHED_PORT)"
    start_component kube-scheduler "$BIN/kube-scheduler" \
        --config="$SCHED_CONFIG" \
        --secure-port="$SCHED_PORT" \
        --bind-address=127.0.0.1 \
        --cert-dir="$STATE/scheduler-certs" \
        --v="${KVSCHED_CP_V:-2}" \
        "${extra[@]}"
    wait_for kube-scheduler "https://127.0.0.1:$SCHED_PORT/healthz" ok -k
}

# --- already up? --------------------------------------------------------------------------
if cp_pid etcd >/dev/null && cp_pid kube-apiserver >/dev/null && api_ready; then
    # shellcheck disable=SC1090
    source "$ENV_FILE"
    BIN="$KVSCHED_CP_BIN_DIR"
    API_PORT="$KVSCHED_CP_APISERVER_PORT"
    ETCD_PORT="$KVSCHED_CP_ETCD_PORT"
    TOKEN="$KVSCHED_CP_TOKEN"
    SCHED_PORT="${KVSCHED_CP_SCHEDULER_PORT:-}"
    cp_log "already running: $KVSCHED_CP_SERVER (state $STATE)"
    if [[ -n "$SCHED_CONFIG" ]]; then
        if cp_pid kube-scheduler >/dev/null && [[ "${KVSCHED_CP_SCHEDULER_CONFIG:-}" == "$SCHED_CONFIG" ]]; then
            cp_log "kube-scheduler already running with $SCHED_CONFIG"
        else
            cp_stop kube-scheduler
            start_scheduler
        fi
    else
        SCHED_PORT="${KVSCHED_CP_SCHEDULER_PORT:-}"
        SCHED_CONFIG="${KVSCHED_CP_SCHEDULER_CONFIG:-}"
        cp_pid kube-scheduler >/dev/null || SCHED_PORT=""
    fi
    write_env
    cat "$ENV_FILE"
    exit 0
fi

# --- fresh start --------------------------------------------------------------------------
# Whatever is left of an earlier run in this state dir (crashed, half started) goes first.
"$HERE/down.sh" >&2

if [[ -n "${KVSCHED_CP_BIN_DIR:-}" ]]; then
    BIN="$KVSCHED_CP_BIN_DIR"
else
    BIN="$("$HERE/build.sh" | tail -n 1)" || cp_die "hack/controlplane/build.sh failed (see above)"
fi
for b in etcd kube-apiserver kube-scheduler; do
    [[ -x "$BIN/$b" ]] || cp_die "$BIN/$b is missing; run hack/controlplane/build.sh"
done

ETCD_PORT="${KVSCHED_CP_ETCD_PORT:-$(cp_free_port)}"
ETCD_PEER_PORT="${KVSCHED_CP_ETCD_PEER_PORT:-$(cp_free_port)}"
API_PORT="${KVSCHED_CP_APISERVER_PORT:-$(cp_free_port)}"
[[ "$ETCD_PORT" != "$ETCD_PEER_PORT" && "$ETCD_PORT" != "$API_PORT" && "$ETCD_PEER_PORT" != "$API_PORT" ]] ||
    cp_die "ports collide: etcd $ETCD_PORT, etcd peer $ETCD_PEER_PORT, apiserver $API_PORT"

# Certificates: a CA, a serving cert for 127.0.0.1/localhost, a service-account RSA key.
if [[ ! -s "$CERTS/server.crt" || ! -s "$CERTS/sa.pub" ]]; then
    cp_log "generating certificates in $CERTS"
    rm -rf "$CERTS"
    mkdir -p "$CERTS"
    cat >"$CERTS/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = kvsched-test
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
    (
        cd "$CERTS"
        openssl genrsa -out ca.key 2048
        openssl req -x509 -new -config openssl.cnf -extensions v3_ca -key ca.key -days 3650 \
            -subj "/CN=kvsched-test-ca" -out ca.crt
        openssl genrsa -out server.key 2048
        openssl req -new -config openssl.cnf -key server.key -subj "/CN=kube-apiserver" -out server.csr
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile openssl.cnf -extensions v3_server -out server.crt
        openssl genrsa -out sa.key 2048
        openssl rsa -in sa.key -pubout -out sa.pub
        chmod 600 ./*.key
    ) >"$STATE/openssl.log" 2>&1 || {
        cat "$STATE/openssl.log" >&2
        cp_die "openssl failed"
    }
fi

# Static admin token (system:masters) and a kubeconfig using it.
if [[ ! -s "$TOKEN_FILE" ]]; then
    TOKEN="$(openssl rand -hex 24)"
    printf '%s,kvsched-admin,kvsched-admin,"system:masters"\n' "$TOKEN" >"$TOKEN_FILE"
    chmod 600 "$TOKEN_FILE"
fi
TOKEN="$(head -n1 "$TOKEN_FILE" | cut -d, -f1)"
CA_DATA="$(base64 <"$CERTS/ca.crt" | tr -d '\n')"
cat >"$KUBECONFIG_FILE.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kvsched
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $CA_DATA
users:
- name: kvsched-admin
  user:
    token: $TOKEN
contexts:
- name: kvsched
  context:
    cluster: kvsched
    user: kvsched-admin
current-context: kvsched
EOF
chmod 600 "$KUBECONFIG_FILE.tmp"
mv "$KUBECONFIG_FILE.tmp" "$KUBECONFIG_FILE"

# etcd
[[ "${KVSCHED_CP_KEEP_DATA:-0}" == 1 ]] || rm -rf "$STATE/etcd-data"
cp_log "starting etcd on 127.0.0.1:$ETCD_PORT"
start_component etcd "$BIN/etcd" \
    --name=kvsched \
    --data-dir="$STATE/etcd-data" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="kvsched=http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster-state=new \
    --unsafe-no-fsync=true \
    --log-level=warn
wait_for etcd "http://127.0.0.1:$ETCD_PORT/health" '*"health":"true"*'

# kube-apiserver, with the flags envtest uses. Since ~1.35 the apiserver refuses a loopback
# --advertise-address with the default (lease) endpoint reconciler ("may not be in the
# loopback range"); k8s's own test server sets --endpoint-reconciler-type=none for that.
# shellcheck disable=SC2206
API_EXTRA=(${KVSCHED_CP_APISERVER_ARGS:-})
cp_log "starting kube-apiserver on https://127.0.0.1:$API_PORT"
start_component kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --secure-port="$API_PORT" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --endpoint-reconciler-type=none \
    --cert-dir="$CERTS" \
    --tls-cert-file="$CERTS/server.crt" \
    --tls-private-key-file="$CERTS/server.key" \
    --client-ca-file="$CERTS/ca.crt" \
    --token-auth-file="$TOKEN_FILE" \
    --authorization-mode=RBAC \
    --disable-admission-plugins=ServiceAccount,TaintNodesByCondition \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-key-file="$CERTS/sa.pub" \
    --service-account-signing-key-file="$CERTS/sa.key" \
    --service-account-issuer="https://127.0.0.1:$API_PORT" \
    --allow-privileged=true \
    --v="${KVSCHED_CP_V:-1}" \
    "${API_EXTRA[@]}"
wait_for kube-apiserver "https://127.0.0.1:$API_PORT/readyz" ok \
    --cacert "$CERTS/ca.crt" -H "Authorization: Bearer $TOKEN"
cp_log "kube-apiserver ready after ${SECONDS}s"

SCHED_PORT=""
if [[ -n "$SCHED_CONFIG" ]]; then
    start_scheduler
fi

write_env
cat "$ENV_FILE"
