#!/usr/bin/env bash
# Runs the whole test suite against the real test bed (libvirt + QEMU, the API server, the tiny
# guest), bringing it up first. Extra arguments go to pytest (e.g. -k vm, -x).
# The test bed is left running if it was running before, and stopped otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source-path=SCRIPTDIR source=../tests/harness/lib.sh
. tests/harness/lib.sh

was_up=$(bash tests/harness/controlplane.sh status 2>/dev/null || true)
# A running k3svirt-up stack would claim the tests' VMs and finalize their templates: it is stopped
# for the run and started again afterwards with the same settings (its VMs keep running meanwhile).
stack_was=$(bash tests/harness/stack.sh status)
if [ "$stack_was" = running ]; then
  log "stopping the local operator and gateway of k3svirt-up for the test run (restarted afterwards)"
  bash tests/harness/stack.sh stop
fi
cleanup() {
  if [ "$stack_was" = running ]; then
    bash tests/harness/stack.sh start || log "restarting the local stack failed: run bash scripts/k3svirt-up"
  fi
  case "$was_up" in "api: ready"*) ;; *) bash tests/harness/testbed.sh stop || true ;; esac
}
trap cleanup EXIT

t0=$SECONDS
env_lines=$(bash tests/harness/testbed.sh start)
while IFS='=' read -r k v; do export "$k=$v"; done <<<"$env_lines"
[ -f tests/yocto/deps.sh ] && bash tests/yocto/deps.sh
log "test bed ready in $((SECONDS - t0)) s ($K3SVIRT_DOMAIN_TYPE)"

.venv/bin/ruff check .
.venv/bin/ruff format --check .
shellcheck -x tests/harness/*.sh tests/chart/*.sh scripts/*.sh scripts/k3svirt-up scripts/k3svirt-down
.venv/bin/pytest "$@"
