#!/usr/bin/env bash
# Starts (or stops) virtlogd and libvirtd without systemd, and the libvirt NAT network "default".
# usage: libvirt.sh start|stop|status     A second start reuses daemons that already run.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

RUN=/run/libvirt
STARTED="$K3SVIRT_STATE/libvirt.started"   # lists daemons this script started, so stop leaves others alone

# running NAME: a live NAME process (zombies do not count: PID 1 here may never reap a stopped daemon,
# and a start that took the zombie for a running libvirtd would wait for an answer that never comes).
running() {
  local p
  for p in $(pgrep -x "$1"); do
    case "$(ps -o stat= -p "$p" 2>/dev/null)" in Z* | "") ;; *) return 0 ;; esac
  done
  return 1
}

start() {
  need_root
  command -v libvirtd >/dev/null || die "libvirtd is missing: run tests/harness/deps.sh (installs libvirt-daemon-system)"
  mkdir -p "$RUN"
  # libvirtd needs virtlogd first: QEMU's console and log go through it.
  for d in virtlogd libvirtd; do
    if running "$d"; then continue; fi
    "$d" -d || die "$d failed to start: see /var/log/libvirt/ and run '$d' in the foreground to read the error"
    echo "$d" >> "$STARTED"
  done
  wait_for 60 libvirtd virsh -c qemu:///system version || die "libvirtd does not answer on qemu:///system after 60 s: see /var/log/libvirt/libvirtd.log"
  local info
  info=$(virsh -c qemu:///system net-info default 2>/dev/null || true)
  if ! grep -q 'Active: *yes' <<<"$info"; then
    virsh -c qemu:///system net-start default >/dev/null 2>&1 \
      || log "warning: libvirt network 'default' did not start (dnsmasq/iptables missing?): NAT networking is off"
  fi
}

stop() {
  [ -f "$STARTED" ] || return 0
  # Stop in reverse order of start, only what this script started.
  # Each daemon is waited for, so a start straight after this stop finds none still exiting.
  tac "$STARTED" | while read -r d; do stop_named "$d" 20; done
  rm -f "$STARTED"
}

status() {
  for d in virtlogd libvirtd; do
    if running "$d"; then echo "$d: running"; else echo "$d: stopped"; fi
  done
}

case "${1:-}" in
  start) start ;; stop) stop ;; status) status ;;
  *) die "usage: $0 start|stop|status" ;;
esac
