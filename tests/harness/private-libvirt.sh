#!/usr/bin/env bash
# A private virtlogd + libvirtd pair that a test may restart or kill without touching the shared
# libvirtd others use. They run in their own mount namespace, where a private directory stands in
# for every path a system libvirtd keeps state in (/run/libvirt, /var/lib/libvirt, /var/cache/libvirt,
# /var/log/libvirt, /etc/libvirt: a copy without networks or domains), so the two daemons never see
# each other's domains, sockets or pid files. No networks: VMs of a private libvirtd have no NICs.
# A hugetlbfs of 2 MiB pages, and one of 1 GiB pages where the kernel has that pool, are mounted
# inside the namespace, so its guests may use hugepages of either size.
#
# usage: private-libvirt.sh start DIR        -> prints the libvirt URI (qemu:///system?socket=...)
#        private-libvirt.sh restart DIR      -> stops libvirtd (guests keep running) and starts it again
#        private-libvirt.sh stop-libvirtd DIR | start-libvirtd DIR
#        private-libvirt.sh stop DIR         -> stops both daemons (guests of this libvirtd are killed first)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

DIR=${2:?usage: $0 start|stop|restart|start-libvirtd|stop-libvirtd DIR}
DIR=$(mkdir -p "$DIR" && cd "$DIR" && pwd)
SOCK="$DIR/run/libvirt-sock"
URI="qemu:///system?socket=$SOCK"
MOUNTS=(run:/run/libvirt lib:/var/lib/libvirt cache:/var/cache/libvirt log:/var/log/libvirt etc:/etc/libvirt)

prepare() {
  local m
  for m in "${MOUNTS[@]}"; do mkdir -p "$DIR/${m%%:*}"; done
  if [ ! -f "$DIR/etc/libvirtd.conf" ]; then
    cp -a /etc/libvirt/. "$DIR/etc/"
    # no networks (the shared daemon owns virbr0) and no domains of the shared daemon
    rm -rf "$DIR/etc/qemu" "$DIR/etc/storage"
    mkdir -p "$DIR/etc/qemu"
    # its own log (inside the namespace: $DIR/log/libvirtd.log), warnings and errors
    printf 'log_outputs="3:file:/var/log/libvirt/libvirtd.log"\n' >>"$DIR/etc/libvirtd.conf"
    # No cpuset controller for its guests: on this hybrid cgroup-v1 machine libvirt 9.0, reconnecting
    # after a restart, reads cgroup.threads from the v1 cpuset hierarchy, fails and kills the guest
    # (reason=daemon); with no controller at all its reconnect fails likewise ("At least one cgroup
    # controller is required"). The restart under test is the operator's concern, not libvirt's.
    printf 'cgroup_controllers = [ "cpu", "cpuacct", "memory", "devices", "blkio" ]\n' >>"$DIR/etc/qemu.conf"
  fi
  # hugetlbfs mounts of its own, inside the namespace only (the host keeps no mount): guests of this
  # libvirtd can be backed by hugepages (the shared libvirtd found no hugetlbfs at its start). libvirt
  # takes the mount whose page size the domain asks for, so each size has one.
  local mounts="\"$DIR/hugepages2M\""
  mkdir -p "$DIR/hugepages2M"
  if has_1g_pool; then
    mkdir -p "$DIR/hugepages1G"
    mounts+=", \"$DIR/hugepages1G\""
  fi
  sed -i '/^hugetlbfs_mount/d' "$DIR/etc/qemu.conf"
  printf 'hugetlbfs_mount = [%s]\n' "$mounts" >>"$DIR/etc/qemu.conf"
}

# The kernel offers 1 GiB pages (CPU flag pdpe1gb): only then does a pagesize=1G hugetlbfs mount.
has_1g_pool() { [ -d /sys/kernel/mm/hugepages/hugepages-1048576kB ]; }

# in_ns CMD...: run CMD inside the namespace (entered through virtlogd, which outlives libvirtd restarts)
in_ns() {
  local pid
  pid=$(cat "$DIR/virtlogd.pid")
  nsenter --mount="/proc/$pid/ns/mnt" -- "$@"
}

start_libvirtd() {
  pid_alive "$DIR/libvirtd.pid" && return 0
  rm -f "$SOCK"
  in_ns libvirtd -d -p "$DIR/libvirtd.pid"
  wait_for 60 "private libvirtd" virsh -c "$URI" version || die "the private libvirtd in $DIR does not answer: see $DIR/log/libvirtd.log"
}

stop_libvirtd() {
  stop_pidfile "$DIR/libvirtd.pid" 20
}

start() {
  need_root
  prepare
  if ! pid_alive "$DIR/virtlogd.pid"; then
    local binds="" m
    for m in "${MOUNTS[@]}"; do binds+="mount --bind '$DIR/${m%%:*}' '${m#*:}'; "; done
    binds+="mount -t hugetlbfs -o pagesize=2M k3svirt-hugepages '$DIR/hugepages2M'; "
    ! has_1g_pool || binds+="mount -t hugetlbfs -o pagesize=1G k3svirt-hugepages-1g '$DIR/hugepages1G'; "
    # the namespace lives as long as virtlogd does
    unshare --mount --propagation private -- bash -c "$binds virtlogd -d -p '$DIR/virtlogd.pid'"
    wait_for 30 "private virtlogd" test -S "$DIR/run/virtlogd-sock" || die "the private virtlogd in $DIR did not start"
  fi
  start_libvirtd
  echo "$URI"
}

stop() {
  if pid_alive "$DIR/libvirtd.pid"; then
    local d
    for d in $(virsh -c "$URI" list --name 2>/dev/null); do virsh -c "$URI" destroy "$d" >/dev/null 2>&1 || true; done
  fi
  stop_libvirtd
  stop_pidfile "$DIR/virtlogd.pid" 20
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop_libvirtd; start_libvirtd ;;
  start-libvirtd) start_libvirtd ;;
  stop-libvirtd) stop_libvirtd ;;
  *) die "usage: $0 start|stop|restart|start-libvirtd|stop-libvirtd DIR" ;;
esac
