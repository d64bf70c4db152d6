# shellcheck shell=bash
# Shared helpers for the test bed scripts: paths, versions, logging, clear failures.

K3SVIRT_STATE=${K3SVIRT_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/k3svirt}
K3SVIRT_CACHE=${K3SVIRT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/k3svirt}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HARNESS_DIR="$REPO_ROOT/tests/harness"

# Pinned control-plane versions (see tests/harness/README.md for why not K3s itself).
KUBE_VERSION=v1.36.3
KINE_VERSION=v0.17.5

export K3SVIRT_STATE K3SVIRT_CACHE REPO_ROOT HARNESS_DIR KUBE_VERSION KINE_VERSION
mkdir -p "$K3SVIRT_STATE" "$K3SVIRT_CACHE"

# The Kubernetes binaries (controlplane.sh builds them once): stamped like upstream release builds,
# so `kubectl version` and Helm's kubeVersion checks work; cached by versions, module and sources.
KUBE_SRC="$HARNESS_DIR/controlplane"
KUBE_LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION \
  -X k8s.io/component-base/version.gitMajor=$(cut -d. -f1 <<<"${KUBE_VERSION#v}") \
  -X k8s.io/component-base/version.gitMinor=$(cut -d. -f2 <<<"$KUBE_VERSION") \
  -X k8s.io/component-base/version.gitTreeState=clean"
KUBE_BIN="$K3SVIRT_CACHE/controlplane/$KUBE_VERSION-kine-$KINE_VERSION-$( (cat "$KUBE_SRC"/go.mod "$KUBE_SRC"/go.sum \
  "$KUBE_SRC"/cmd/*/*.go; echo "$KUBE_LDFLAGS") | sha256sum | cut -c1-12)"
# The one node of the test bed (scripts/k3svirt-up's operator uses the same name); Kubernetes node
# names are lower case.
K3SVIRT_NODE_NAME=${K3SVIRT_NODE_NAME:-$(hostname | tr '[:upper:]' '[:lower:]')}
KUBE_API_PORT=${K3SVIRT_API_PORT:-6443}
# The node's InternalIP: an address of the harness's own interface k3svirt0 (outside the pod and
# service CIDRs), so traffic to the node stays on this machine; never eth0's address.
# (not K3SVIRT_NODE_IP: that one is the operator's setting, and the test bed's operators keep 127.0.0.1)
K3SVIRT_TESTBED_NODE_IP=${K3SVIRT_TESTBED_NODE_IP:-10.41.0.1}
PKI="$K3SVIRT_STATE/controlplane/pki"   # the test bed's CA and every certificate it signed
export KUBE_BIN K3SVIRT_NODE_NAME K3SVIRT_TESTBED_NODE_IP KUBE_API_PORT

log() { printf '[k3svirt] %s\n' "$*" >&2; }

# die prints one line saying what is missing and how to fix it, then exits.
die() { printf '[k3svirt] ERROR: %s\n' "$*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "this step needs root (it installs packages and starts libvirtd): run it with sudo"
}

# pid_alive FILE: true when FILE names a running process.
pid_alive() {
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# stop_pidfile FILE [GRACE]: SIGTERM the process FILE names, wait up to GRACE seconds (default 15)
# for it to exit, then SIGKILL it and wait again. The pid file is removed only once the process is
# gone, so a live process never loses its pid file (a later start would collide with it).
stop_pidfile() {
  local file=$1 grace=${2:-15} pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" "$grace" || {
      log "$(basename "$file" .pid) (pid $pid) ignored SIGTERM for ${grace} s: sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$pid" 10 || die "pid $pid survived SIGKILL (stuck in the kernel?): see 'ps -o stat,wchan -p $pid'"
    }
  fi
  rm -f "$file"
}

# stop_named NAME [GRACE]: like stop_pidfile for daemons known by name (pgrep -x), e.g. libvirtd.
stop_named() {
  local name=$1 grace=${2:-15} pids p
  pids=$(pgrep -x "$name" || true)
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086  # one word per pid
  kill -TERM $pids 2>/dev/null || true
  for p in $pids; do
    wait_gone "$p" "$grace" || { log "$name (pid $p) ignored SIGTERM: sending SIGKILL"; kill -KILL "$p" 2>/dev/null || true; wait_gone "$p" 10 || true; }
  done
}

# wait_gone PID SECONDS: true once PID has exited (a zombie counts as exited).
wait_gone() {
  local pid=$1 end=$((SECONDS + $2)) state
  while kill -0 "$pid" 2>/dev/null; do
    state=$(ps -o stat= -p "$pid" 2>/dev/null || true)
    case "$state" in Z*) return 0 ;; esac
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.2
  done
}

# with_lock FILE COMMAND...: runs COMMAND holding an exclusive lock on FILE. Builds into the shared
# cache take it, so two checkouts (or CI and a bring-up) never build into the same directory at once.
with_lock() {
  local file=$1; shift
  mkdir -p "$(dirname "$file")"
  ( flock 9 && "$@" ) 9>"$file"
}

# port_owner PORT: prints the process listening on a TCP port, empty when free.
port_owner() {
  ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*users:(("\([^"]*\)".*/\1/p' | head -n1
}

# issue_cert NAME SUBJECT [SAN]: a key and a certificate signed by the test bed's CA, in $PKI.
# Kept while subject and SAN stay the same, so restarts keep identities.
issue_cert() {
  local name=$1 subj=$2 san=${3:-}
  [ -f "$PKI/$name.crt" ] && [ "$(cat "$PKI/$name.req" 2>/dev/null)" = "$subj $san" ] && return 0
  openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$PKI/$name.key" -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 3650 \
    ${san:+-extfile <(printf 'subjectAltName=%s\n' "$san")} -out "$PKI/$name.crt.tmp" 2>/dev/null \
    || die "signing the $name certificate failed: is $PKI/ca.key readable? (delete $PKI to start over)"
  mv "$PKI/$name.crt.tmp" "$PKI/$name.crt" && rm -f "$PKI/$name.csr"
  echo "$subj $san" > "$PKI/$name.req"
}

# write_kubeconfig OUT CERT [ADDRESS]: a kubeconfig for the local API server with the client
# certificate CERT, at 127.0.0.1 or ADDRESS (another address of this machine: the server's
# certificate is then checked for the name "kubernetes", which it carries).
write_kubeconfig() {
  local out=$1 cert=$2 server=127.0.0.1 sni=
  [ -z "${3:-}" ] || { server=$3; sni=", tls-server-name: kubernetes"; }
  cat > "$out.tmp" <<KC
apiVersion: v1
kind: Config
clusters:
- name: k3svirt
  cluster: {server: "https://$server:$KUBE_API_PORT", certificate-authority: "$PKI/ca.crt"$sni}
users:
- name: $cert
  user: {client-certificate: "$PKI/$cert.crt", client-key: "$PKI/$cert.key"}
contexts:
- name: k3svirt
  context: {cluster: k3svirt, user: $cert}
current-context: k3svirt
KC
  chmod 600 "$out.tmp" && mv "$out.tmp" "$out"
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.3
  done
  log "$what is up"
}
