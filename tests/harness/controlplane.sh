#!/usr/bin/env bash
# The Kubernetes control plane of the test bed and of the local bring-up.
#
# K3s's own Go module is refused by the Go module proxy this project can reach (every version and
# pseudo-version of github.com/k3s-io/k3s answers 403), so K3s cannot be built from its module source
# here. This script runs the same server-side parts K3s embeds, built from their Go modules:
# upstream kube-apiserver and kube-controller-manager (k8s.io/kubernetes $KUBE_VERSION) on kine with
# SQLite (K3s's own datastore shim, github.com/k3s-io/kine $KINE_VERSION), on K3s's port 6443 and
# service CIDR. A `k3s` binary on PATH is used instead when there is one.
#
# usage: controlplane.sh start|stop|status|build|api-stop|api-start
# api-stop / api-start stop and start the kube-apiserver alone (kine and the controllers keep running):
# the "API server away" fault of the outage tests.
# Builds once into $K3SVIRT_CACHE (keyed by versions and go.sum); a second start reuses a running one.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

BIN=$KUBE_BIN
CP="$K3SVIRT_STATE/controlplane"
PORT=$KUBE_API_PORT
KUBECONFIG_OUT="$K3SVIRT_STATE/kubeconfig"

# Every Kubernetes binary the test bed runs, built in one `go build` from k8s.io/kubernetes.
KUBE_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl k3svirt-cri-sweep)

built() {
  local c
  for c in "${KUBE_CMDS[@]}" kine; do [ -x "$BIN/$c" ] || return 1; done
}

build() {
  built && return 0
  command -v go >/dev/null || die "Go is missing: install Go 1.26+ to build the control plane once"
  with_lock "$BIN.lock" build_locked
}

build_locked() {
  built && return 0  # another checkout finished the same build while we waited for the lock
  local tmp t0=$SECONDS
  tmp=$(mktemp -d "$BIN.tmp.XXXXXX")
  log "building ${KUBE_CMDS[*]} $KUBE_VERSION and kine $KINE_VERSION (once, ~15 min on 2 cores)"
  (cd "$KUBE_SRC" && go build -trimpath -ldflags "$KUBE_LDFLAGS" -o "$tmp/" "${KUBE_CMDS[@]/#/./cmd/}") \
    || die "building the Kubernetes binaries failed: see the Go errors above (module proxy unreachable? go env GOPROXY)"
  CGO_ENABLED=1 GOBIN="$tmp" go install "github.com/k3s-io/kine@$KINE_VERSION" \
    || die "building kine failed: it needs cgo (gcc) and the Go module proxy"
  rm -rf "$BIN" && mv -T "$tmp" "$BIN"
  log "Kubernetes binaries built in $((SECONDS - t0)) s"
}

# link_kubectl makes the kubectl we built the one on PATH (/usr/local/bin comes first) when there is
# none, or when the one there is older than 1.35: kubectl supports one minor version of skew only.
link_kubectl() {
  local link=/usr/local/bin/kubectl cur minor
  [ "$(readlink "$link" 2>/dev/null)" = "$BIN/kubectl" ] && return 0
  cur=$(command -v kubectl || true)
  # A link to an earlier build of ours is just updated; any other kubectl is kept when new enough.
  if [ -n "$cur" ] && [[ "$(readlink "$cur" 2>/dev/null)" != "$K3SVIRT_CACHE"/controlplane/* ]]; then
    minor=$("$cur" version --client -o json 2>/dev/null | sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p')
    [ "${minor:-0}" -ge 35 ] && return 0
    [ "$cur" != "$link" ] \
      || die "$link is kubectl 1.${minor:-?}, too old for $KUBE_VERSION: remove it (the test bed then links its own there)"
    log "kubectl: $cur is 1.${minor:-?}, outside $KUBE_VERSION's version skew: $link (first on PATH) takes over"
  fi
  ln -sfn "$BIN/kubectl" "$link" || die "cannot write $link: run as root, or put a kubectl >= 1.35 on PATH"
  log "kubectl: $link -> $BIN/kubectl ($KUBE_VERSION)"
}

# pki writes the CA, the service-account keys and the certificates of the control plane and its
# clients; certificates already issued are kept (a state dir from before the node gains the new ones).
pki() {
  mkdir -p "$PKI"
  if [ ! -f "$PKI/ca.crt" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=k3svirt-test-ca" \
      -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  fi
  [ -f "$PKI/sa.key" ] || { openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null \
    && openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null; }
  issue_cert apiserver "/CN=kube-apiserver" \
    "IP:127.0.0.1,IP:10.43.0.1,IP:$K3SVIRT_TESTBED_NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  issue_cert admin "/O=system:masters/CN=k3svirt-admin"
  # The API server's identity towards kubelet (logs, exec, port-forward, node proxy).
  issue_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  # Bound to its role by the API server's default RBAC (ClusterRoleBinding system:kube-scheduler).
  issue_cert scheduler "/CN=system:kube-scheduler"
}

# The API server listens on every address: pods reach it through the kubernetes Service, whose
# endpoint is the node IP (a loopback endpoint is refused). Only this machine (lo) and its pods
# (cni0) may connect: the port is dropped on every other interface (eth0, libvirt's guest bridge).
API_GUARD="K3SVIRT-API-$PORT"
guard_api() {
  if ! { { iptables -w -N "$API_GUARD" 2>/dev/null || iptables -w -F "$API_GUARD"; } \
    && iptables -w -A "$API_GUARD" -i lo -j RETURN && iptables -w -A "$API_GUARD" -i cni0 -j RETURN \
    && iptables -w -A "$API_GUARD" -j DROP \
    && { iptables -w -C INPUT -p tcp --dport "$PORT" -j "$API_GUARD" 2>/dev/null \
      || iptables -w -I INPUT 1 -p tcp --dport "$PORT" -j "$API_GUARD"; }; }; then
    die "cannot add the iptables rules that keep the API port local: run as root (iptables from deps.sh)"
  fi
}

unguard_api() {
  while iptables -w -D INPUT -p tcp --dport "$PORT" -j "$API_GUARD" 2>/dev/null; do :; done
  if iptables -w -F "$API_GUARD" 2>/dev/null; then iptables -w -X "$API_GUARD"; fi
}

api_ready() { kubectl --kubeconfig "$KUBECONFIG_OUT" get --raw /readyz; }

start_k3s_binary() {
  local k3s_bin; k3s_bin=$(command -v k3s)
  log "using $k3s_bin ($("$k3s_bin" --version | head -n1))"
  nohup "$k3s_bin" server --disable-agent --https-listen-port "$PORT" --data-dir "$CP/k3s" \
    --write-kubeconfig "$KUBECONFIG_OUT" --write-kubeconfig-mode 600 > "$CP/k3s.log" 2>&1 &
  echo $! > "$CP/k3s.pid"
}

start_apiserver() {
  nohup "$BIN/kube-apiserver" \
    --etcd-servers "unix://$CP/kine.sock" --storage-backend etcd3 \
    --bind-address 0.0.0.0 --advertise-address "$K3SVIRT_TESTBED_NODE_IP" --secure-port "$PORT" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" --authorization-mode Node,RBAC --anonymous-auth=false \
    --enable-admission-plugins NodeRestriction --kubelet-certificate-authority "$PKI/ca.crt" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP,ExternalIP,Hostname \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-account-issuer https://kubernetes.default.svc --service-cluster-ip-range 10.43.0.0/16 \
    --allow-privileged --profiling=false --v=0 >> "$CP/kube-apiserver.log" 2>&1 &
  echo $! > "$CP/kube-apiserver.pid"
}

start() {
  mkdir -p "$CP"
  if pid_alive "$CP/kube-apiserver.pid" || pid_alive "$CP/k3s.pid"; then
    wait_for 60 "the API server (already running)" api_ready || die "the running API server does not answer: run $0 stop"
    return 0
  fi
  local owner; owner=$(port_owner "$PORT")
  [ -z "$owner" ] || die "port $PORT is in use by '$owner': stop it or set K3SVIRT_API_PORT to a free port"
  if command -v k3s >/dev/null; then
    start_k3s_binary
  else
    build
    link_kubectl
    pki
    guard_api
    write_kubeconfig "$KUBECONFIG_OUT" admin
    nohup "$BIN/kine" --endpoint "sqlite://$CP/state.db?_journal=WAL&cache=shared&_busy_timeout=30000" \
      --listen-address "unix://$CP/kine.sock" --metrics-bind-address 0 > "$CP/kine.log" 2>&1 &
    echo $! > "$CP/kine.pid"
    wait_for 30 kine test -S "$CP/kine.sock" || die "kine did not start: see $CP/kine.log"
    start_apiserver
    write_kubeconfig "$CP/controller-manager.kubeconfig" admin
    nohup "$BIN/kube-controller-manager" --kubeconfig "$CP/controller-manager.kubeconfig" \
      --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
      --use-service-account-credentials --leader-elect=false --secure-port 0 \
      --controllers '*,-nodeipam' \
      --profiling=false --v=0 > "$CP/kube-controller-manager.log" 2>&1 &
    echo $! > "$CP/kube-controller-manager.pid"
    write_kubeconfig "$CP/scheduler.kubeconfig" scheduler
    nohup "$BIN/kube-scheduler" --kubeconfig "$CP/scheduler.kubeconfig" --leader-elect=false \
      --secure-port 0 --profiling=false --v=0 > "$CP/kube-scheduler.log" 2>&1 &
    echo $! > "$CP/kube-scheduler.pid"
  fi
  wait_for 120 "the API server on https://127.0.0.1:$PORT" api_ready \
    || die "the API server did not become ready in 120 s: see $CP/*.log"
}

stop() {
  # Reverse order of start; each one waits for its process to exit (SIGKILL after a bound).
  for p in k3s kube-scheduler kube-controller-manager kube-apiserver kine; do
    stop_pidfile "$CP/$p.pid" 20
  done
  unguard_api
}

api_stop() {
  [ -f "$CP/kube-apiserver.pid" ] || die "no kube-apiserver of this test bed to stop (a k3s binary runs it all?)"
  stop_pidfile "$CP/kube-apiserver.pid" 20
}

api_start() {
  pid_alive "$CP/kine.pid" || die "kine is not running: use $0 start"
  pid_alive "$CP/kube-apiserver.pid" || start_apiserver
  wait_for 120 "the API server on https://127.0.0.1:$PORT" api_ready \
    || die "the API server did not become ready in 120 s: see $CP/kube-apiserver.log"
}

status() {
  if api_ready >/dev/null 2>&1; then echo "api: ready ($KUBECONFIG_OUT)"; else echo "api: down"; fi
}

case "${1:-}" in
  start) start ;; stop) stop ;; status) status ;; build) build && link_kubectl ;;
  api-stop) api_stop ;; api-start) api_start ;;
  *) die "usage: $0 start|stop|status|build|api-stop|api-start" ;;
esac
