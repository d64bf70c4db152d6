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
