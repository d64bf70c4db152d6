#!/usr/bin/env bash
# The whole test bed in one call: packages, libvirt, the tiny guest, the KVM probe, the control
# plane, the node (containerd, kubelet, kube-proxy, CoreDNS) and our CRDs. Used by the test suite
# (tests/conftest.py), scripts/test.sh and scripts/k3svirt-up.
#
# usage: testbed.sh start   -> prints KEY=VALUE lines (KUBECONFIG, K3SVIRT_DOMAIN_TYPE, ...) on stdout
#        testbed.sh stop    -> stops what start started (daemons that already ran are left alone)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

STORAGE_ROOT=${K3SVIRT_STORAGE_ROOT:-/var/lib/k3svirt}

start() {
  bash "$HARNESS_DIR/deps.sh" >&2
  bash "$HARNESS_DIR/libvirt.sh" start >&2
  local guest accel
  guest=$("$REPO_ROOT/.venv/bin/python" "$HARNESS_DIR/tiny_guest.py" "$STORAGE_ROOT/guest") \
    || die "building the tiny guest failed"
  accel=$(K3SVIRT_STORAGE_ROOT=$STORAGE_ROOT "$REPO_ROOT/.venv/bin/python" -m k3svirt_operator.accel \
    --state-dir "$STORAGE_ROOT") || die "the KVM probe failed to run: is libvirtd up?"
  log "acceleration: $accel"
  bash "$HARNESS_DIR/controlplane.sh" start >&2
  # K3SVIRT_TESTBED_NODE=0 leaves the node out (no kubelet, containerd, kube-proxy, CoreDNS): for a
  # second checkout's test bed on a machine whose one node another test bed runs. Tests that need
  # the node then fail with its absence; CI and scripts/test.sh always run it.
  # K3SVIRT_TESTBED_NODE_INSTANCE=i (1..99) makes node instance i (node.sh: own netns, no kube-proxy
  # or CoreDNS) the test bed's node instead of the machine's primary one: a second checkout's test
  # bed with a kubelet of its own, on a machine whose primary node another test bed runs.
  local instance=${K3SVIRT_TESTBED_NODE_INSTANCE:-0} node_state="$K3SVIRT_STATE/node"
  if [ "${K3SVIRT_TESTBED_NODE:-1}" = 0 ]; then
    log "node left out (K3SVIRT_TESTBED_NODE=0)"
  elif [ "$instance" != 0 ]; then
    K3SVIRT_NODE_INSTANCE=$instance bash "$HARNESS_DIR/node.sh" start >&2
    K3SVIRT_NODE_NAME=$(K3SVIRT_NODE_INSTANCE=$instance bash "$HARNESS_DIR/node.sh" name)
    node_state="$K3SVIRT_STATE/node-$instance"
  else
    bash "$HARNESS_DIR/node.sh" start >&2
  fi
  kubectl --kubeconfig "$K3SVIRT_STATE/kubeconfig" apply -f "$REPO_ROOT/crds/" >/dev/null \
    || die "applying crds/ failed: run 'kubectl apply -f crds/' to see which CRD is refused"
  kubectl --kubeconfig "$K3SVIRT_STATE/kubeconfig" wait --for=condition=Established crd --all --timeout=60s >/dev/null
  cat <<ENV
KUBECONFIG=$K3SVIRT_STATE/kubeconfig
LIBVIRT_DEFAULT_URI=qemu:///system
K3SVIRT_STORAGE_ROOT=$STORAGE_ROOT
K3SVIRT_DOMAIN_TYPE=${accel%%$'\t'*}
K3SVIRT_GUEST_KERNEL=$(sed -n 1p <<<"$guest")
K3SVIRT_GUEST_INITRD=$(sed -n 2p <<<"$guest")
K3SVIRT_NODE_NAME=$K3SVIRT_NODE_NAME
K3SVIRT_TESTBED_NODE_IP=$K3SVIRT_TESTBED_NODE_IP
K3SVIRT_CONTAINERD_ADDRESS=$node_state/containerd/containerd.sock
ENV
}

stop() {
  [ "${K3SVIRT_TESTBED_NODE_INSTANCE:-0}" = 0 ] || K3SVIRT_NODE_INSTANCE=$K3SVIRT_TESTBED_NODE_INSTANCE bash "$HARNESS_DIR/node.sh" stop
  bash "$HARNESS_DIR/node.sh" stop
  bash "$HARNESS_DIR/controlplane.sh" stop
  bash "$HARNESS_DIR/libvirt.sh" stop
}

# One start at a time per state dir: two starts at once (k3svirt-up still coming up when the tests
# start, two terminals) would issue the control plane's certificates and run apt-get side by side.
# The second one waits, then finds everything up and only prints the environment. flock -o: the
# daemons the start leaves running must not inherit (and so keep holding) the lock.
start_serialized() {
  local lock="$K3SVIRT_STATE/testbed-start.lock"
  mkdir -p "$K3SVIRT_STATE"
  flock -n "$lock" true || log "another test bed start runs (k3svirt-up or a test run): waiting for it"
  exec flock -o "$lock" bash "$0" start-locked
}

case "${1:-}" in
  start) start_serialized ;; start-locked) start ;; stop) stop ;;
  *) die "usage: $0 start|stop" ;;
esac
