#!/usr/bin/env bash
# The test bed's one Kubernetes node, composed the way K3s's agent composes it: containerd (Debian)
# with runc and the CNI bridge/host-local/portmap plugins, kubelet and kube-proxy (iptables) built
# by controlplane.sh from k8s.io/kubernetes, and CoreDNS (built from its Go module) as a pod.
#
# Choices (see each function): cgroup v1 with the cgroupfs driver (these machines mount v1, no
# systemd); node IP $K3SVIRT_TESTBED_NODE_IP on the harness's own port-less bridge k3svirt0, with the pod and
# service CIDRs routed into it, so nothing addressed to the cluster can leave this machine; pods on
# bridge cni0 in 10.42.0.0/24, never masqueraded or forwarded off the machine. Everything lives in
# $K3SVIRT_STATE/node (containerd's root, state and socket too), so it clashes with nothing else.
#
# Extra node instances (K3SVIRT_NODE_INSTANCE=i, 1..99; 0 or unset = the one above): a second,
# third ... kubelet node on the same machine that clashes with nothing machine-wide. Each one lives
# in its own network namespace k3svirt-n<i> (its containerd and kubelet run there, entered with
# nsenter --net only: mounts and cgroups stay the host's), joined to this machine by a veth pair
# k3svn<i>h (10.41.<i>.1, this machine) <-> k3svn<i>n (10.41.<i>.2, the node IP). Inside the
# namespace the kubelet's ports, its iptables chains, the pod bridge cni0 and the pods' net sysctls
# are the instance's own; its pods get 10.42.<i>.0/24 (host-local IPAM, also written to the Node's
# spec.podCIDR: the test bed's controller-manager runs without nodeipam), routed from this machine
# into the namespace; its pod cgroups live under cgroupRoot /k3svirt-<node> (never /kubepods); its
# state under $K3SVIRT_STATE/node-<i>; its name is $K3SVIRT_NODE_INSTANCE_NAME, default
# <K3SVIRT_NODE_NAME>-n<i>. It talks to the API server at 10.41.<i>.1 (the API port's guard lets
# exactly k3svn<i>h in). Limits: no kube-proxy and no CoreDNS there (Services and cluster DNS work
# on the primary node only; pods reach each other, their node and this machine by IP), except the
# one Service every in-cluster client needs: 10.43.0.1:443, the API server (a DNAT rule of the
# instance's own, instance_network; the chart's operator and gateway run there); kubelet's
# machine-wide sysctls (vm.*, kernel.*) are saved and restored only by the first and last kubelet.
# stop ends the instance completely: processes, pod cgroups, mounts, the namespace, its routes and
# its Node object (a node removed from the cluster).
#
# usage: [K3SVIRT_NODE_INSTANCE=i] node.sh start|stop|status|name|socket|import-image OCI.tar
#   name: the node's name; socket: its containerd's socket (ctr -a SOCKET -n k8s.io ...)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

INSTANCE=${K3SVIRT_NODE_INSTANCE:-0}
[[ $INSTANCE =~ ^(0|[1-9][0-9]?)$ ]] || die "K3SVIRT_NODE_INSTANCE must be 0..99, not '$INSTANCE'"
POD_CIDR=10.42.0.0/16        # K3s's cluster CIDR
POD_RANGE=10.42.$INSTANCE.0/24   # this node's pod addresses (host-local IPAM)
SERVICE_CIDR=10.43.0.0/16
CLUSTER_DNS=10.43.0.10
API_SERVICE_IP=10.43.0.1     # the `kubernetes` Service (the first address of SERVICE_CIDR)
API_SERVICE_CHAIN=K3SVIRT-API-SERVICE
if [ "$INSTANCE" = 0 ]; then
  N="$K3SVIRT_STATE/node"
  NODE=$K3SVIRT_NODE_NAME
  NODE_IP=$K3SVIRT_TESTBED_NODE_IP
  NODE_IF=k3svirt0
  NETNS=
  CGROUP_ROOT=/              # pods under /kubepods
else
  N="$K3SVIRT_STATE/node-$INSTANCE"
  NODE=${K3SVIRT_NODE_INSTANCE_NAME:-$K3SVIRT_NODE_NAME-n$INSTANCE}
  NETNS=k3svirt-n$INSTANCE
  HOST_IF=k3svn${INSTANCE}h  # this machine's end of the veth pair
  HOST_IP=10.41.$INSTANCE.1
  NODE_IF=k3svn${INSTANCE}n  # the namespace's end
  NODE_IP=10.41.$INSTANCE.2
  CGROUP_ROOT=/k3svirt-$NODE
fi
SOCK="$N/containerd/containerd.sock"
CNI_BIN=/usr/lib/cni         # Debian's containernetworking-plugins
FORWARD_GUARD=K3SVIRT-NODE-FWD
VM_BRIDGE=virbr0             # libvirt's NAT network "default", where the test bed's VMs live
KUBECTL=(kubectl --kubeconfig "$K3SVIRT_STATE/kubeconfig")

# in_node COMMAND...: runs COMMAND in the node's network namespace (the host's for the primary node).
NS_EXEC=()
[ -z "$NETNS" ] || NS_EXEC=(nsenter --net="/run/netns/$NETNS" --)
in_node() { "${NS_EXEC[@]}" "$@"; }
# The node's pod cgroups (kubelet's cgroupRoot + kubepods), in the v1 hierarchies.
KUBEPODS=${CGROUP_ROOT%/}/kubepods

ctr_() { ctr -a "$SOCK" -n k8s.io "$@"; }

# --- images -----------------------------------------------------------------------------------------
# Built locally by images.sh (no registry can be reached), cached, imported into the node's containerd.

# import_image TAR: loads an OCI image archive into the node's containerd, where kubelet finds it.
import_image() {
  ctr_ images import "$1" >/dev/null || die "ctr could not import $1 into the node's containerd ($SOCK)"
}

# node_image NAME: builds (once, cached) and imports one of images.sh's images; prints its reference.
node_image() {
  local line
  line=$(bash "$HARNESS_DIR/images.sh" build "$1" | grep -v "^localhost/k3svirt/debian-base:" | tail -n1) \
    || die "building the $1 image failed (tests/harness/images.sh build $1)"
  import_image "${line#* }"
  echo "${line%% *}"
}

# --- checks -----------------------------------------------------------------------------------------

preflight() {
  need_root
  local b p owner
  for b in kubelet kube-proxy k3svirt-cri-sweep; do
    [ -x "$KUBE_BIN/$b" ] || die "$b is not built: run tests/harness/controlplane.sh build"
  done
  for b in containerd containerd-shim-runc-v2 runc ctr iptables conntrack; do
    command -v "$b" >/dev/null || die "$b is missing: run tests/harness/deps.sh (containerd, runc, conntrack)"
  done
  for p in bridge host-local portmap loopback; do
    [ -x "$CNI_BIN/$p" ] || die "CNI plugin $CNI_BIN/$p is missing: run tests/harness/deps.sh (containernetworking-plugins)"
  done
  [ -f "$PKI/ca.key" ] || die "the test bed's CA ($PKI/ca.key) is missing: start the control plane first (controlplane.sh start)"
  # kubelet 1.36 runs on cgroup v1 only when told to (failCgroupV1: false); it needs these controllers.
  for c in cpu cpuacct cpuset memory pids; do
    [ -d "/sys/fs/cgroup/$c" ] || [ -f /sys/fs/cgroup/cgroup.controllers ] \
      || die "cgroup controller '$c' is not mounted (/sys/fs/cgroup/$c): mount the cgroup v1 hierarchies or cgroup v2"
  done
  if [ -n "$NETNS" ]; then
    # An instance's ports live in its own namespace; the namespace and the veth are claimed by name.
    if [ ! -f "$N/started" ] && { [ -e "/run/netns/$NETNS" ] || ip link show "$HOST_IF" >/dev/null 2>&1; }; then
      die "node instance $INSTANCE (netns $NETNS, link $HOST_IF) belongs to another test bed: choose another K3SVIRT_NODE_INSTANCE"
    fi
    command -v nsenter >/dev/null || die "nsenter is missing (util-linux)"
    return 0
  fi
  # Ports of ours: kubelet (10250 on the node IP, healthz 10248), kube-proxy (metrics 10249, healthz 10256).
  pid_alive "$N/kubelet.pid" || for p in 10250 10248; do
    owner=$(port_owner "$p"); [ -z "$owner" ] || die "port $p (kubelet) is in use by '$owner': stop it"
  done
  pid_alive "$N/kube-proxy.pid" || for p in 10249 10256; do
    owner=$(port_owner "$p"); [ -z "$owner" ] || die "port $p (kube-proxy) is in use by '$owner': stop it"
  done
}

# --- network ----------------------------------------------------------------------------------------

# The node IP lives on a bridge without ports: an address of this machine that no cable reaches
# (kubelet refuses 127.0.0.1 as node IP). The pod and service CIDRs route into it, so a packet to a
# cluster address that no pod or kube-proxy rule claims is dropped here instead of going to eth0.
primary_network() {
  ip link show "$NODE_IF" >/dev/null 2>&1 || ip link add "$NODE_IF" type bridge \
    || die "cannot create the bridge $NODE_IF for the node IP: is the bridge module available (ip link add x type bridge)?"
  ip link set "$NODE_IF" up
  ip addr replace "$NODE_IP/32" dev "$NODE_IF"
  ip route replace "$POD_CIDR" dev "$NODE_IF"
  ip route replace "$SERVICE_CIDR" dev "$NODE_IF"
  # Pods talk to each other (on cni0) and to this machine, never through it to anywhere else. In
  # mangle, so it runs before every filter rule (kube-proxy and libvirt accept forwarded packets).
  # One exception: a pod's connection kube-proxy destination-NATed (a Service's ClusterIP or a
  # NodePort) to a VM on libvirt's NAT network, and its replies (docs/services.md); which VM ports
  # are open is the operator's chain in the filter table (vmfirewall.py). Nothing leaves the machine.
  local ipt=(iptables -w -t mangle)
  if ! { { "${ipt[@]}" -N "$FORWARD_GUARD" 2>/dev/null || "${ipt[@]}" -F "$FORWARD_GUARD"; } \
    && "${ipt[@]}" -A "$FORWARD_GUARD" -i cni0 -o cni0 -j RETURN \
    && "${ipt[@]}" -A "$FORWARD_GUARD" -i cni0 -o "$VM_BRIDGE" -m conntrack --ctstate DNAT -j RETURN \
    && "${ipt[@]}" -A "$FORWARD_GUARD" -i "$VM_BRIDGE" -o cni0 -m conntrack --ctstate DNAT -j RETURN \
    && "${ipt[@]}" -A "$FORWARD_GUARD" -i cni0 -j DROP \
    && "${ipt[@]}" -A "$FORWARD_GUARD" -o cni0 -j DROP \
    && { "${ipt[@]}" -C FORWARD -j "$FORWARD_GUARD" 2>/dev/null || "${ipt[@]}" -I FORWARD 1 -j "$FORWARD_GUARD"; }; }; then
    die "cannot add the iptables chain $FORWARD_GUARD that keeps pod traffic on this machine"
  fi
}

# An instance's namespace: the veth pair, the node IP inside, no default route (only this machine
# and the pods are reachable from there), the pod range routed in from this machine, and the same
# forward guard as the primary node's, inside the namespace: pods talk to each other and to this
# machine (the veth's far end), nothing else.
instance_network() {
  [ -e "/run/netns/$NETNS" ] || ip netns add "$NETNS" || die "cannot create the network namespace $NETNS"
  ip link show "$HOST_IF" >/dev/null 2>&1 || ip link add "$HOST_IF" type veth peer name "$NODE_IF" netns "$NETNS" \
    || die "cannot create the veth pair $HOST_IF/$NODE_IF"
  ip addr replace "$HOST_IP/30" dev "$HOST_IF"
  ip link set "$HOST_IF" up
  ip -n "$NETNS" link set lo up
  ip -n "$NETNS" addr replace "$NODE_IP/30" dev "$NODE_IF"
  ip -n "$NETNS" link set "$NODE_IF" up
  ip route replace "$POD_RANGE" via "$NODE_IP" dev "$HOST_IF" src "$HOST_IP"
  in_node sysctl -qw net.ipv4.ip_forward=1
  local ipt=(in_node iptables -w -t mangle)
  if ! { { "${ipt[@]}" -N "$FORWARD_GUARD" 2>/dev/null || "${ipt[@]}" -F "$FORWARD_GUARD"; } \
    && "${ipt[@]}" -A "$FORWARD_GUARD" -i cni0 -o cni0 -j RETURN \
    && "${ipt[@]}" -A "$FORWARD_GUARD" -i cni0 -o "$NODE_IF" -d "$HOST_IP" -j RETURN \
    && "${ipt[@]}" -A "$FORWARD_GUARD" -i "$NODE_IF" -o cni0 -s "$HOST_IP" -j RETURN \
    && "${ipt[@]}" -A "$FORWARD_GUARD" -j DROP \
    && { "${ipt[@]}" -C FORWARD -j "$FORWARD_GUARD" 2>/dev/null || "${ipt[@]}" -I FORWARD 1 -j "$FORWARD_GUARD"; }; }; then
    die "cannot add the iptables chain $FORWARD_GUARD in $NETNS"
  fi
  # The `kubernetes` Service for in-cluster clients (pods, the chart's operator and gateway): every
  # pod is told KUBERNETES_SERVICE_HOST=10.43.0.1:443, which kube-proxy would steer to the API server.
  # There is no kube-proxy here, so the namespace does that one rule itself: 10.43.0.1:443 ->
  # this machine's end of the veth, the API port (a name in the server's certificate stays
  # 10.43.0.1). Locally started connections (hostNetwork pods) need a route to it first.
  ip -n "$NETNS" route replace "$API_SERVICE_IP/32" dev "$NODE_IF" src "$NODE_IP"
  local nat=(in_node iptables -w -t nat) hook
  if ! { { "${nat[@]}" -N "$API_SERVICE_CHAIN" 2>/dev/null || "${nat[@]}" -F "$API_SERVICE_CHAIN"; } \
    && "${nat[@]}" -A "$API_SERVICE_CHAIN" -d "$API_SERVICE_IP/32" -p tcp --dport 443 \
         -j DNAT --to-destination "$HOST_IP:$KUBE_API_PORT"; }; then
    die "cannot add the iptables chain $API_SERVICE_CHAIN (the kubernetes Service) in $NETNS"
  fi
  for hook in PREROUTING OUTPUT; do
    "${nat[@]}" -C "$hook" -j "$API_SERVICE_CHAIN" 2>/dev/null || "${nat[@]}" -I "$hook" 1 -j "$API_SERVICE_CHAIN" \
      || die "cannot hook $API_SERVICE_CHAIN into nat $hook in $NETNS"
  done
  # The API port's guard (controlplane.sh) admits lo and cni0; this instance's kubelet and pods
  # come in on its veth.
  local api_guard="K3SVIRT-API-$KUBE_API_PORT"
  if iptables -w -L "$api_guard" -n >/dev/null 2>&1; then
    iptables -w -C "$api_guard" -i "$HOST_IF" -j RETURN 2>/dev/null || iptables -w -I "$api_guard" 1 -i "$HOST_IF" -j RETURN
  fi
}

# node_network: the node's network, then its CNI configuration (bridge cni0 in the node's namespace).
node_network() {
  if [ -n "$NETNS" ]; then instance_network; else primary_network; fi
  mkdir -p "$N/cni/net.d" "$N/cni/ipam"
  cat > "$N/cni/net.d/10-k3svirt.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "k3svirt",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "isDefaultGateway": true,
     "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_RANGE"}]], "dataDir": "$N/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
}

unnode_network() {
  if [ -n "$NETNS" ]; then
    # The namespace takes cni0, the veth pair, its iptables chains and the route with it.
    iptables -w -D "K3SVIRT-API-$KUBE_API_PORT" -i "$HOST_IF" -j RETURN 2>/dev/null || true
    [ ! -e "/run/netns/$NETNS" ] || ip netns del "$NETNS" || log "warning: cannot delete the network namespace $NETNS"
    ip link del "$HOST_IF" 2>/dev/null || true
    rm -rf "$N/cni/ipam"
    return 0
  fi
  local ipt=(iptables -w -t mangle)
  while "${ipt[@]}" -D FORWARD -j "$FORWARD_GUARD" 2>/dev/null; do :; done
  if "${ipt[@]}" -F "$FORWARD_GUARD" 2>/dev/null; then "${ipt[@]}" -X "$FORWARD_GUARD"; fi
  # The chain this node's operators kept for Services in front of VMs (vmfirewall.chain_name).
  local svc
  svc="K3SVIRT-SVC-$(printf %s "$NODE" | sha256sum | cut -c1-10)"
  while iptables -w -D FORWARD -j "$svc" 2>/dev/null; do :; done
  if iptables -w -F "$svc" 2>/dev/null; then iptables -w -X "$svc"; fi
  local dev
  for dev in cni0 "$NODE_IF"; do ip link del "$dev" 2>/dev/null || true; done
  rm -rf "$N/cni/ipam"
}

# --- containerd -------------------------------------------------------------------------------------

containerd_up() { ctr -a "$SOCK" version >/dev/null 2>&1; }

# shim_pids: containerd-shims serving our containerd (matched by its socket, which is ours alone).
shim_pids() { pgrep -f -- "containerd-shim-runc-v2 .*-address $SOCK( |$)" || true; }

start_containerd() {
  local c="$N/containerd"
  mkdir -p "$c/root"
  if pid_alive "$N/containerd.pid" && containerd_up; then return 0; fi
  # State is runtime-only: after a stop (or a reboot) nothing runs, so stale state goes. Containers
  # killed without a stop (their machine's processes ended, a kill -9) leave rootfs and shm mounts.
  [ -n "$(shim_pids)" ] || clear_stale_state "$c/state"
  clear_stale_netns
  mkdir -p "$c/state"
  # Lowering an oom_score_adj (kubelet asks -998 for sandboxes) needs CAP_SYS_RESOURCE, which root
  # lacks on some machines (these test machines): containerd then clamps to its own instead of
  # failing every pod with "failed to update /proc/self/oom_score_adj: Permission denied".
  local restrict_oom=false
  (( (0x$(awk '/^CapEff/ {print $2}' /proc/self/status) >> 24) & 1 )) || restrict_oom=true
  cat > "$c/config.toml" <<TOML
# containerd of the k3svirt test bed node: own root, state and socket (cannot meet another containerd).
version = 2
root = "$c/root"
state = "$c/state"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$c/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/k3svirt/pause:3.10"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  restrict_oom_score_adj = $restrict_oom
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$c/state/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$N/cni/net.d"
TOML
  # No registry is reachable, and no pull may send traffic off this machine: every registry request
  # goes to a proxy on a closed loopback port and fails at once ("proxyconnect ... refused").
  # Images come from import_image; localhost registries are never proxied.
  local closed=http://127.0.0.1:9
  env -u NO_PROXY -u no_proxy HTTPS_PROXY=$closed HTTP_PROXY=$closed https_proxy=$closed http_proxy=$closed \
    nohup "${NS_EXEC[@]}" containerd --config "$c/config.toml" > "$N/containerd.log" 2>&1 &
  echo $! > "$N/containerd.pid"
  wait_for 30 containerd containerd_up || die "containerd did not start: see $N/containerd.log"
}

# clear_stale_state DIR: DIR gone, with whatever dead containers left mounted in it; a mount busy
# elsewhere (another mount namespace) moves aside with its tree instead of failing the start.
clear_stale_state() {
  local old
  for old in "$1".stale.*; do   # earlier ones, once their mounts went
    [ ! -e "$old" ] || { unmount_under "$old"; rm -rf "$old" 2>/dev/null || true; }
  done
  [ -e "$1" ] || return 0
  unmount_under "$1"
  rm -rf "$1" 2>/dev/null && return 0
  local aside
  aside="$1.stale.$(date +%s)"
  mv -T "$1" "$aside" || die "cannot remove or move aside the stale $1 (mounts: findmnt -R $1)"
  log "warning: stale $1 still has busy mounts: moved to $aside"
  rm -rf "$aside" 2>/dev/null || true
}

# stale_netns: pod network namespaces (/run/netns/cni-*, nsfs mounts) no process is in that are older
# than 2 min (containerd pins a new one by its mount just before the pod's first process enters it).
stale_netns() {
  local live now target ns
  live=" $(for p in /proc/[0-9]*/ns/net; do readlink "$p" 2>/dev/null; done | sort -u | tr '\n' ' ')"
  now=$(date +%s)
  awk '{ for (i = 7; $i != "-"; i++); if ($(i + 1) == "nsfs" && $5 ~ "^/run/netns/cni-") print $4, $5 }' \
    /proc/self/mountinfo | while read -r ns target; do
    case "$live" in *" $ns "*) continue ;; esac
    [ $((now - $(stat -c %Y "$target" 2>/dev/null || echo "$now"))) -gt 120 ] && echo "$target"
  done | sort -u
}

# clear_stale_netns: what the pods of a node killed without a stop left in /run/netns goes. containerd
# otherwise fails those pods' status for ever ("remove netns: ... device or resource busy") and kubelet
# never replaces them. A bind of /run/netns onto itself made after they were mounted (ip netns add,
# e.g. a node instance) hides them from umount by path: it goes first when nothing live hangs off it
# (a non-lazy umount refuses otherwise; ip netns redoes the bind when it needs it).
clear_stale_netns() {
  local round target f now
  local -a stale
  for round in 1 2 3; do
    mapfile -t stale < <(stale_netns)
    [ "${#stale[@]}" -gt 0 ] || break
    for target in "${stale[@]}"; do umount "$target" 2>/dev/null || true; done
    mapfile -t stale < <(stale_netns)
    [ "${#stale[@]}" -gt 0 ] || break
    if [ "$round" = 3 ] || ! umount /run/netns 2>/dev/null; then
      log "warning: stale pod network namespaces stay mounted under a busy /run/netns: ${stale[*]}"
      break
    fi
  done
  now=$(date +%s)
  for f in /run/netns/cni-*; do   # names whose namespace is gone: no mount left on them
    [ -f "$f" ] && ! mountpoint -q "$f" && [ $((now - $(stat -c %Y "$f"))) -gt 120 ] && { rm -f "$f" 2>/dev/null || true; }
  done
  return 0
}

stop_containerd() {
  if pid_alive "$N/containerd.pid" && containerd_up; then
    # kubelet's way to end pods (containers, CNI DEL, netns), kubelet being stopped already.
    "$KUBE_BIN/k3svirt-cri-sweep" "unix://$SOCK" >> "$N/sweep.log" 2>&1 \
      || log "warning: some pod sandboxes did not stop cleanly: see $N/sweep.log"
    local t
    for t in $(ctr_ tasks ls -q 2>/dev/null); do   # anything started outside CRI
      ctr_ tasks kill -s SIGKILL "$t" 2>/dev/null || true
      ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true
    done
  fi
  stop_pidfile "$N/containerd.pid" 20
  local pids end
  pids=$(shim_pids)
  if [ -n "$pids" ]; then
    log "killing leftover containerd-shims (and their containers): $pids"
    # shellcheck disable=SC2086  # one pid per word
    for p in $pids; do kill -9 -- "-$p" 2>/dev/null || kill -9 "$p" 2>/dev/null || true; done
    end=$((SECONDS + 10))
    while [ -n "$(shim_pids)" ] && [ "$SECONDS" -lt "$end" ]; do sleep 0.2; done
    [ -z "$(shim_pids)" ] || die "containerd-shims $(shim_pids) survive SIGKILL: see ps -o pid,stat,args"
  fi
  # Containers of a killed shim live on in kubelet's pod cgroups (kubelet is the only one here).
  pids=$(pod_cgroup_pids)
  if [ -n "$pids" ]; then
    log "killing processes left in the pod cgroups: ${pids//$'\n'/ }"
    # shellcheck disable=SC2086  # one pid per word
    kill -9 $pids 2>/dev/null || true
  fi
}

# pod_cgroup_pids: every process in this node's pod cgroups.
pod_cgroup_pids() {
  [ -d "/sys/fs/cgroup/pids$KUBEPODS" ] || return 0
  find "/sys/fs/cgroup/pids$KUBEPODS" -name cgroup.procs -exec cat {} + 2>/dev/null || true
}

# instance_cgroups make|remove: an instance's cgroupRoot in every v1 hierarchy (kubelet wants it to
# exist; cpuset children start empty, so it inherits its parent's CPUs and memory nodes), removed
# depth-first on stop once its processes are gone.
instance_cgroups() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [ -f "$h/cgroup.procs" ] || continue
    if [ "$1" = make ]; then
      case "$h" in */unified/) continue ;; esac   # kubelet makes its part of the v2 tree itself
      mkdir -p "$h${CGROUP_ROOT#/}"
      if [ -f "$h/cpuset.cpus" ]; then
        [ -n "$(cat "$h${CGROUP_ROOT#/}/cpuset.cpus")" ] || cat "$h/cpuset.cpus" > "$h${CGROUP_ROOT#/}/cpuset.cpus"
        [ -n "$(cat "$h${CGROUP_ROOT#/}/cpuset.mems")" ] || cat "$h/cpuset.mems" > "$h${CGROUP_ROOT#/}/cpuset.mems"
      fi
    elif [ -d "$h${CGROUP_ROOT#/}" ]; then
      find "$h${CGROUP_ROOT#/}" -depth -type d -exec rmdir {} + 2>/dev/null \
        || log "warning: cgroup $h${CGROUP_ROOT#/} is still in use"
    fi
  done
}

# unmount_under DIR: unmounts what kubelet and containerd left mounted below DIR (volumes, rootfs).
unmount_under() {
  local m
  # nothing mounted there (a kubelet that never started) is no failure: grep's 1 would end stop here
  findmnt -rn -o TARGET | { grep -F "$1/" || true; } | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "warning: cannot unmount $m"
  done
}

# --- kubelet and kube-proxy -------------------------------------------------------------------------

node_pki() {
  issue_cert "kubelet-$NODE" "/O=system:nodes/CN=system:node:$NODE"
  issue_cert "kubelet-serving-$NODE" "/CN=$NODE" "IP:$NODE_IP,DNS:$NODE"
  if [ -n "$NETNS" ]; then
    # From its namespace the instance reaches the API server at this machine's end of the veth.
    write_kubeconfig "$N/kubelet.kubeconfig" "kubelet-$NODE" "$HOST_IP"
  else
    write_kubeconfig "$N/kubelet.kubeconfig" "kubelet-$NODE"
    issue_cert kube-proxy "/CN=system:kube-proxy"
    write_kubeconfig "$N/kube-proxy.kubeconfig" kube-proxy
  fi
}

# K3SVIRT_NODE_CPU_MANAGER=static: the kubelet's static CPU manager as the product sets it for
# spec.cpu.dedicatedCores (docs/accounting.md, "Exclusive CPUs"; the image: meta-k3svirt's
# config.yaml.in). reservedSystemCPUs are the node's housekeeping CPUs, by default the top of the L2
# cluster holding the highest CPU (k3svirt_operator.cputopo housekeeping, K3SVIRT_NODE_HOUSEKEEPING_COUNT
# of them, default 1): the kubelet hands out exclusive CPUs from the lowest free one, so the lower
# clusters stay whole for cluster-sized requests. K3SVIRT_NODE_RESERVED_CPUS overrides the set,
# K3SVIRT_NODE_CPU_MANAGER_OPTIONS ("name=value,...") sets cpuManagerPolicyOptions.
cpu_manager_config() {
  case "${K3SVIRT_NODE_CPU_MANAGER:-none}" in
    none) return 0 ;;
    static) ;;
    *) die "K3SVIRT_NODE_CPU_MANAGER must be none or static, not '$K3SVIRT_NODE_CPU_MANAGER'" ;;
  esac
  local reserved=${K3SVIRT_NODE_RESERVED_CPUS:-} opt
  if [ -z "$reserved" ]; then
    reserved=$("$REPO_ROOT/.venv/bin/python" -m k3svirt_operator.cputopo housekeeping \
      "${K3SVIRT_NODE_HOUSEKEEPING_COUNT:-1}") || die "cannot read this machine's CPU topology (run tests/harness/deps.sh for .venv)"
  fi
  [[ $reserved =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] || die "reservedSystemCPUs '$reserved' is not a cpuset"
  printf 'cpuManagerPolicy: static\nreservedSystemCPUs: "%s"\n' "$reserved"
  if [ -n "${K3SVIRT_NODE_CPU_MANAGER_OPTIONS:-}" ]; then
    echo "cpuManagerPolicyOptions:"
    local IFS=,
    for opt in $K3SVIRT_NODE_CPU_MANAGER_OPTIONS; do
      [[ $opt =~ ^[a-z-]+=[a-z0-9]+$ ]] || die "K3SVIRT_NODE_CPU_MANAGER_OPTIONS: '$opt' is not name=value"
      printf '  %s: "%s"\n' "${opt%%=*}" "${opt#*=}"
    done
  fi
}

# cgroups: these machines mount cgroup v1 (hybrid), there is no systemd, so cgroupfs it is, with
# failCgroupV1: false (kubelet 1.36 refuses v1 otherwise). Pods go below /kubepods (per QoS class);
# libvirt's QEMU processes stay in libvirt's own /machine cgroups, which kubelet never touches.
start_kubelet() {
  pid_alive "$N/kubelet.pid" && return 0
  # The first kubelet of the machine saves the host's values, the last one restores them.
  [ -n "$(other_kubelets)" ] || save_sysctls
  local extra=
  if [ -n "$NETNS" ]; then
    instance_cgroups make
    # Two kubelets never share a pod cgroup tree.
    extra="cgroupRoot: $CGROUP_ROOT"
  fi
  mkdir -p "$N/kubelet" "$N/pod-logs"
  # A stopped node runs no pods: the CPU and memory managers' checkpoints describe nothing, and one
  # of another policy (K3SVIRT_NODE_KUBELET_CONFIG changed) would stop the kubelet from starting.
  rm -f "$N/kubelet/cpu_manager_state" "$N/kubelet/memory_manager_state"
  # Pods inherit no upstream nameserver: names resolve inside cluster.local (CoreDNS) only.
  printf '# k3svirt test bed: no upstream DNS server for pods\noptions ndots:5\n' > "$N/resolv.conf"
  cat > "$N/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-serving-$NODE.crt
tlsPrivateKeyFile: $PKI/kubelet-serving-$NODE.key
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
clusterDNS: [$CLUSTER_DNS]
clusterDomain: cluster.local
resolvConf: $N/resolv.conf
podLogsDir: $N/pod-logs
volumePluginDir: $N/kubelet/volume-plugins
imageGCHighThresholdPercent: 90
imageGCLowThresholdPercent: 80
evictionHard: {memory.available: 256Mi, nodefs.available: 5%, nodefs.inodesFree: 5%, imagefs.available: 5%}
maxPods: 110
serializeImagePulls: false
containerLogMaxSize: 10Mi
containerLogMaxFiles: 3
$extra
YAML
  cpu_manager_config >> "$N/kubelet.yaml"
  # K3SVIRT_NODE_KUBELET_CONFIG: a YAML fragment appended to the KubeletConfiguration (any other
  # kubelet setting a test needs).
  if [ -n "${K3SVIRT_NODE_KUBELET_CONFIG:-}" ]; then
    cat "$K3SVIRT_NODE_KUBELET_CONFIG" >> "$N/kubelet.yaml" || die "cannot read K3SVIRT_NODE_KUBELET_CONFIG=$K3SVIRT_NODE_KUBELET_CONFIG"
  fi
  # --containerd: kubelet's cAdvisor finds the pods' containers (and so their network figures in the
  # Summary API) only through containerd's socket; it defaults to /run/containerd, not ours (K3s
  # passes the same flag for its own socket).
  nohup "${NS_EXEC[@]}" "$KUBE_BIN/kubelet" --config "$N/kubelet.yaml" --kubeconfig "$N/kubelet.kubeconfig" \
    --root-dir "$N/kubelet" --node-ip "$NODE_IP" --hostname-override "$NODE" --containerd "$SOCK" \
    --v=0 > "$N/kubelet.log" 2>&1 &
  echo $! > "$N/kubelet.pid"
}

start_kube_proxy() {
  pid_alive "$N/kube-proxy.pid" && return 0
  cat > "$N/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $N/kube-proxy.kubeconfig}
hostnameOverride: $NODE
mode: iptables
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# NodePorts answer on this machine only: loopback and the node IP.
nodePortAddresses: [127.0.0.1/32, $NODE_IP/32]
iptables: {masqueradeAll: false, localhostNodePorts: true}
# Leave the host's conntrack table size and timeouts as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
  nohup "$KUBE_BIN/kube-proxy" --config "$N/kube-proxy.yaml" --v=0 > "$N/kube-proxy.log" 2>&1 &
  echo $! > "$N/kube-proxy.pid"
}

# node_ready [SINCE]: the node is Ready, as reported by a kubelet heartbeat at or after SINCE (epoch s).
node_ready() {
  local cond
  cond=$("${KUBECTL[@]}" get node "$NODE" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}' 2>/dev/null) \
    || return 1
  [ "${cond%% *}" = True ] && [ "$(date -d "${cond#* }" +%s)" -ge "${1:-0}" ]
}

# cluster_dns_answers: CoreDNS resolves the API's Service through the kube-dns Service (kube-proxy).
cluster_dns_answers() {
  busybox nslookup kubernetes.default.svc.cluster.local "$CLUSTER_DNS" 2>/dev/null | grep -q 'Address:.*10\.43\.0\.1$'
}

# Host settings kubelet and kube-proxy change (as on any K3s node): kubelet sets its kernel defaults
# (overcommit, panic on oops, key quotas), kube-proxy turns route_localnet on for NodePorts on
# 127.0.0.1. start saves them before either runs, stop puts them back: this machine is shared.
NODE_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet)

save_sysctls() {
  [ -f "$N/sysctl.orig" ] && return 0   # saved by an earlier start that was never stopped
  sysctl "${NODE_SYSCTLS[@]}" | tr -d ' ' > "$N/sysctl.orig.tmp" && mv "$N/sysctl.orig.tmp" "$N/sysctl.orig"
}

restore_sysctls() {
  [ -f "$N/sysctl.orig" ] || return 0
  # shellcheck disable=SC2046  # one key=value per word
  sysctl -qw $(cat "$N/sysctl.orig") && rm -f "$N/sysctl.orig"
}

# kubelet_iptables_cleanup: removes the chains kubelet keeps (its iptables canary and the guard that
# drops outside packets to 127.0.0.0/8, which goes with route_localnet, restored before).
kubelet_iptables_cleanup() {
  local ipt t
  for ipt in iptables ip6tables; do
    while "$ipt" -w -D INPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    while "$ipt" -w -D OUTPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    "$ipt" -w -F KUBE-FIREWALL 2>/dev/null && "$ipt" -w -X KUBE-FIREWALL
    for t in filter nat mangle; do
      "$ipt" -w -t "$t" -F KUBE-KUBELET-CANARY 2>/dev/null && "$ipt" -w -t "$t" -X KUBE-KUBELET-CANARY
    done
    "$ipt" -w -t mangle -F KUBE-IPTABLES-HINT 2>/dev/null && "$ipt" -w -t mangle -X KUBE-IPTABLES-HINT
  done
  return 0
}

# --- CoreDNS ----------------------------------------------------------------------------------------

# CoreDNS runs as a pod on the host network, bound to the node IP: the API server listens on this
# machine, and it answers for cluster.local only, forwarding nothing upstream.
start_coredns() {
  local image
  image=$(node_image coredns)
  sed -e "s|@IMAGE@|$image|" -e "s|@NODE_IP@|$NODE_IP|g" -e "s|@CLUSTER_DNS@|$CLUSTER_DNS|" \
    "$HARNESS_DIR/coredns.yaml" | "${KUBECTL[@]}" apply -f - >/dev/null || die "applying CoreDNS (coredns.yaml) failed"
}

# --- start / stop -----------------------------------------------------------------------------------

start() {
  preflight
  mkdir -p "$N"
  local t0=$SECONDS
  # The node's machine-wide parts (bridges, iptables chains, pod cgroups) belong to this state dir
  # from here on: only a stop with the same state dir removes them.
  touch "$N/started"
  node_network
  node_pki
  start_containerd
  node_image pause >/dev/null
  node_image http-echo >/dev/null   # the demo/test app (README, examples/, the gateway e2e tests)
  # A kubelet started now must report Ready itself (the node's status may be from a previous run);
  # a running one reports only on change (every 5 min otherwise), so its Ready stands.
  local since=0
  pid_alive "$N/kubelet.pid" || since=$(date +%s)
  start_kubelet
  wait_for 120 "node $NODE (kubelet)" node_ready "$since" \
    || die "node $NODE did not become Ready in 120 s: see $N/kubelet.log and $N/containerd.log"
  if [ -n "$NETNS" ]; then
    assign_pod_cidr
    log "node instance $INSTANCE: $NODE ($NODE_IP, pods $POD_RANGE, netns $NETNS) ready in $((SECONDS - t0)) s"
    return 0
  fi
  start_kube_proxy
  wait_for 60 kube-proxy curl -fsS http://127.0.0.1:10256/healthz || die "kube-proxy did not start: see $N/kube-proxy.log"
  start_coredns
  wait_for 120 "CoreDNS on $CLUSTER_DNS" cluster_dns_answers \
    || die "CoreDNS does not answer on $CLUSTER_DNS after 120 s: kubectl -n kube-system describe pod -l k8s-app=kube-dns"
  log "node $NODE ($NODE_IP) ready in $((SECONDS - t0)) s"
}

stop() {
  need_root
  [ -f "$N/started" ] || return 0   # not started from this state dir: nothing here is ours
  local t0=$SECONDS
  stop_pidfile "$N/kubelet.pid" 30     # first: nothing may restart the pods stopped below
  stop_pidfile "$N/kube-proxy.pid"
  stop_containerd
  if [ -n "$NETNS" ]; then
    # The instance leaves the cluster: its Node goes (the pod GC removes pods bound to it; operators
    # release what they held for it). Its iptables chains go with the namespace.
    "${KUBECTL[@]}" delete node "$NODE" --ignore-not-found --wait=false >/dev/null 2>&1 \
      || log "warning: could not delete the Node $NODE (API server down?)"
    instance_cgroups remove
  else
    # kube-proxy's rules go with it: they would steer traffic to pods that no longer run.
    if ! "$KUBE_BIN/kube-proxy" --cleanup > "$N/kube-proxy-cleanup.log" 2>&1; then
      log "warning: kube-proxy --cleanup failed: see $N/kube-proxy-cleanup.log"
    fi
    kubelet_iptables_cleanup
  fi
  [ -n "$(other_kubelets)" ] || restore_sysctls
  unmount_under "$N"
  unnode_network
  rm -f "$N/started"
  log "node stopped in $((SECONDS - t0)) s"
}

# other_kubelets: kubelets of other nodes (of this or another test bed) running on this machine.
other_kubelets() {
  local mine p
  mine=$(cat "$N/kubelet.pid" 2>/dev/null || true)
  for p in $(pgrep -x kubelet || true); do [ "$p" = "$mine" ] || echo "$p"; done
}

# assign_pod_cidr: writes the instance's pod range into its Node (spec.podCIDR is set once; the
# controller-manager's nodeipam is off in this test bed, so nobody else assigns it).
assign_pod_cidr() {
  local cur
  cur=$("${KUBECTL[@]}" get node "$NODE" -o jsonpath='{.spec.podCIDR}')
  if [ -z "$cur" ]; then
    "${KUBECTL[@]}" patch node "$NODE" --type merge \
      -p "{\"spec\":{\"podCIDR\":\"$POD_RANGE\",\"podCIDRs\":[\"$POD_RANGE\"]}}" >/dev/null \
      || die "cannot set spec.podCIDR of node $NODE"
  elif [ "$cur" != "$POD_RANGE" ]; then
    die "node $NODE already has podCIDR $cur, not $POD_RANGE: delete the Node (kubectl delete node $NODE)"
  fi
}

status() {
  local p
  for p in containerd kubelet kube-proxy; do
    if pid_alive "$N/$p.pid"; then echo "$p: running"; else echo "$p: stopped"; fi
  done
  if node_ready 0; then echo "node $NODE: Ready"; else echo "node $NODE: not ready"; fi
}

case "${1:-}" in
  start) start ;; stop) stop ;; status) status ;; name) echo "$NODE" ;; socket) echo "$SOCK" ;;
  import-image) [ -n "${2:-}" ] || die "usage: $0 import-image OCI.tar"; import_image "$2" ;;
  *) die "usage: $0 start|stop|status|name|socket|import-image OCI.tar" ;;
esac
