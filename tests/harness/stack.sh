#!/usr/bin/env bash
# The k3svirt processes of the local bring-up: the node operator and the REST gateway.
# usage: stack.sh start|stop|status
#   start   runs both in the background unless they run (needs the test bed's environment:
#           KUBECONFIG etc. as printed by testbed.sh start); remembers its settings in run/stack.env
#   stop    stops both, waiting for each to exit (SIGKILL after a bound)
#   status  prints "running" when both run, "stopped" otherwise
# scripts/k3svirt-up and k3svirt-down use it; scripts/test.sh stops a running stack for the test
# run (its operator would claim the tests' VMs) and starts it again afterwards with the same settings.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

RUN="$K3SVIRT_STATE/run"
SAVED="$RUN/stack.env"
mkdir -p "$RUN"

# start_bg NAME COMMAND...: runs COMMAND in the background unless NAME already runs.
start_bg() {
  local name=$1; shift
  if pid_alive "$RUN/$name.pid"; then log "$name already runs (pid $(cat "$RUN/$name.pid"))"; return 0; fi
  nohup "$@" >> "$RUN/$name.log" 2>&1 &
  echo $! > "$RUN/$name.pid"
}

start() {
  # Settings: the environment, else what the last start used.
  local k v
  if [ -f "$SAVED" ]; then
    while IFS='=' read -r k v; do [ -n "${!k:-}" ] || export "$k=$v"; done < "$SAVED"
  fi
  [ -n "${KUBECONFIG:-}" ] || die "no KUBECONFIG: run tests/harness/testbed.sh start first"
  local node=${K3SVIRT_NODE_NAME:-$(hostname)} port=${K3SVIRT_GATEWAY_PORT:-8080}
  local metrics=${K3SVIRT_METRICS_PORT:-9470} keys=${K3SVIRT_API_KEYS_FILE:-$K3SVIRT_STATE/gateway-api-keys}
  # The serial-console ticket key the gateway and the operator share (docs/console.md): made once.
  local console_key=${K3SVIRT_CONSOLE_KEY_FILE:-$K3SVIRT_STATE/console-key}
  if [ ! -s "$console_key" ]; then (umask 077 && openssl rand -hex 32 > "$console_key"); fi
  # ... and as the Secret `kubectl k3svirt console` reads it from (a cluster operator's credentials).
  if ! { kubectl --kubeconfig "$KUBECONFIG" create namespace k3svirt-system --dry-run=client -o yaml \
      | kubectl --kubeconfig "$KUBECONFIG" apply -f - >/dev/null \
    && kubectl --kubeconfig "$KUBECONFIG" -n k3svirt-system create secret generic k3svirt-console-key \
      --from-file=key="$console_key" --dry-run=client -o yaml | kubectl --kubeconfig "$KUBECONFIG" apply -f - >/dev/null; }; then
    log "the console key Secret k3svirt-system/k3svirt-console-key could not be written: kubectl k3svirt console will not work"
  fi
  cat > "$SAVED" <<ENV
KUBECONFIG=$KUBECONFIG
LIBVIRT_DEFAULT_URI=${LIBVIRT_DEFAULT_URI:-qemu:///system}
K3SVIRT_STORAGE_ROOT=${K3SVIRT_STORAGE_ROOT:-/var/lib/k3svirt}
K3SVIRT_NODE_NAME=$node
K3SVIRT_GATEWAY_PORT=$port
K3SVIRT_METRICS_PORT=$metrics
K3SVIRT_API_KEYS_FILE=$keys
K3SVIRT_CONSOLE_KEY_FILE=$console_key
ENV
  while IFS='=' read -r k v; do export "$k=$v"; done < "$SAVED"

  start_bg operator "$REPO_ROOT/.venv/bin/k3svirt-operator"
  wait_for 90 "the operator (node $node)" curl -fsS "http://127.0.0.1:$metrics/healthz" \
    || die "the operator did not start: see $RUN/operator.log"
  if ! pid_alive "$RUN/gateway.pid"; then
    local owner; owner=$(port_owner "$port")
    [ -z "$owner" ] || die "port $port is in use by '$owner': stop it or set K3SVIRT_GATEWAY_PORT"
  fi
  start_bg gateway "$REPO_ROOT/.venv/bin/k3svirt-gateway" --bind "127.0.0.1:$port"
  wait_for 60 "the gateway" curl -fsS "http://127.0.0.1:$port/healthz" \
    || die "the gateway did not start: see $RUN/gateway.log"
}

stop() {
  local name
  for name in gateway operator; do
    if pid_alive "$RUN/$name.pid"; then stop_pidfile "$RUN/$name.pid" 15 && log "$name stopped"; fi
    rm -f "$RUN/$name.pid"
  done
}

status() {
  if pid_alive "$RUN/operator.pid" && pid_alive "$RUN/gateway.pid"; then echo running; else echo stopped; fi
}

case "${1:-}" in
  start) start ;; stop) stop ;; status) status ;;
  *) die "usage: $0 start|stop|status" ;;
esac
