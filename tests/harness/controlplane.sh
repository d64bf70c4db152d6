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
# usage: controlplane.sh start|stop|status|build
# Builds once into $K3SVIRT_CACHE (keyed by versions and go.sum); a second start reuses a running one.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

SRC="$HARNESS_DIR/controlplane"
# Stamped like upstream release builds, so `kubectl version` and Helm's kubeVersion checks work.
LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION \
  -X k8s.io/component-base/version.gitMajor=$(cut -d. -f1 <<<"${KUBE_VERSION#v}") \
  -X k8s.io/component-base/version.gitMinor=$(cut -d. -f2 <<<"$KUBE_VERSION") \
  -X k8s.io/component-base/version.gitTreeState=clean"
KEY=$( (cat "$SRC/go.mod" "$SRC/go.sum"; echo "$LDFLAGS") | sha256sum | cut -c1-12)
BIN="$K3SVIRT_CACHE/controlplane/$KUBE_VERSION-kine-$KINE_VERSION-$KEY"
CP="$K3SVIRT_STATE/controlplane"
PKI="$CP/pki"
PORT=${K3SVIRT_API_PORT:-6443}
KUBECONFIG_OUT="$K3SVIRT_STATE/kubeconfig"

built() { [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] && [ -x "$BIN/kine" ]; }

build() {
  built && return 0
  command -v go >/dev/null || die "Go is missing: install Go 1.26+ to build the control plane once"
  with_lock "$BIN.lock" build_locked
}

build_locked() {
  built && return 0  # another checkout finished the same build while we waited for the lock
  local tmp t0=$SECONDS
  tmp=$(mktemp -d "$BIN.tmp.XXXXXX")
  log "building kube-apiserver/kube-controller-manager $KUBE_VERSION and kine $KINE_VERSION (once, ~10 min on 2 cores)"
  (cd "$SRC" && go build -trimpath -ldflags "$LDFLAGS" -o "$tmp/" ./cmd/kube-apiserver ./cmd/kube-controller-manager) \
    || die "building the control plane failed: is the Go module proxy reachable (go env GOPROXY)?"
  CGO_ENABLED=1 GOBIN="$tmp" go install "github.com/k3s-io/kine@$KINE_VERSION" \
    || die "building kine failed: it needs cgo (gcc) and the Go module proxy"
  rm -rf "$BIN" && mv -T "$tmp" "$BIN"
  log "control plane built in $((SECONDS - t0)) s"
}

# pki writes a CA, the API server's serving cert, an admin client cert and the service-account keys.
pki() {
  [ -f "$PKI/admin.crt" ] && return 0
  mkdir -p "$PKI" && cd "$PKI"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=k3svirt-test-ca" \
    -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key -out apiserver.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:10.43.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n' > san.ext
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile san.ext -out apiserver.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=k3svirt-admin" -keyout admin.key -out admin.csr 2>/dev/null
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -out admin.crt 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  cd - >/dev/null
}

write_kubeconfig() {
  local out=$1
  cat > "$out" <<KC
apiVersion: v1
kind: Config
clusters:
- name: k3svirt
  cluster: {server: "https://127.0.0.1:$PORT", certificate-authority: "$PKI/ca.crt"}
users:
- name: admin
  user: {client-certificate: "$PKI/admin.crt", client-key: "$PKI/admin.key"}
contexts:
- name: k3svirt
  context: {cluster: k3svirt, user: admin}
current-context: k3svirt
KC
  chmod 600 "$out"
}

api_ready() { kubectl --kubeconfig "$KUBECONFIG_OUT" get --raw /readyz; }

start_k3s_binary() {
  local k3s_bin; k3s_bin=$(command -v k3s)
  log "using $k3s_bin ($("$k3s_bin" --version | head -n1))"
  nohup "$k3s_bin" server --disable-agent --https-listen-port "$PORT" --data-dir "$CP/k3s" \
    --write-kubeconfig "$KUBECONFIG_OUT" --write-kubeconfig-mode 600 > "$CP/k3s.log" 2>&1 &
  echo $! > "$CP/k3s.pid"
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
    pki
    write_kubeconfig "$KUBECONFIG_OUT"
    nohup "$BIN/kine" --endpoint "sqlite://$CP/state.db?_journal=WAL&cache=shared&_busy_timeout=30000" \
      --listen-address "unix://$CP/kine.sock" --metrics-bind-address 0 > "$CP/kine.log" 2>&1 &
    echo $! > "$CP/kine.pid"
    wait_for 30 kine test -S "$CP/kine.sock" || die "kine did not start: see $CP/kine.log"
    nohup "$BIN/kube-apiserver" \
      --etcd-servers "unix://$CP/kine.sock" --storage-backend etcd3 \
      --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$PORT" \
      --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
      --client-ca-file "$PKI/ca.crt" --authorization-mode RBAC --anonymous-auth=false \
      --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
      --service-account-issuer https://kubernetes.default.svc --service-cluster-ip-range 10.43.0.0/16 \
      --allow-privileged --profiling=false --v=0 > "$CP/kube-apiserver.log" 2>&1 &
    echo $! > "$CP/kube-apiserver.pid"
    write_kubeconfig "$CP/controller-manager.kubeconfig"
    nohup "$BIN/kube-controller-manager" --kubeconfig "$CP/controller-manager.kubeconfig" \
      --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
      --use-service-account-credentials --leader-elect=false --secure-port 0 \
      --controllers '*,-nodeipam,-nodelifecycle,-persistentvolume-binder,-attachdetach,-ttl' \
      --profiling=false --v=0 > "$CP/kube-controller-manager.log" 2>&1 &
    echo $! > "$CP/kube-controller-manager.pid"
  fi
  wait_for 120 "the API server on https://127.0.0.1:$PORT" api_ready \
    || die "the API server did not become ready in 120 s: see $CP/*.log"
}

stop() {
  # Reverse order of start; each one waits for its process to exit (SIGKILL after a bound).
  for p in k3s kube-controller-manager kube-apiserver kine; do
    stop_pidfile "$CP/$p.pid" 20
  done
}

status() {
  if api_ready >/dev/null 2>&1; then echo "api: ready ($KUBECONFIG_OUT)"; else echo "api: down"; fi
}

case "${1:-}" in
  start) start ;; stop) stop ;; status) status ;; build) build ;;
  *) die "usage: $0 start|stop|status|build" ;;
esac
