#!/usr/bin/env bash
# Installs what the test bed and the local bring-up need: Debian packages and the Python venv.
# Idempotent: a second run installs nothing and takes about a second.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

APT_PACKAGES=(
  libvirt-daemon-system libvirt-daemon libvirt-clients           # libvirtd, virsh, virt-xml-validate
  libvirt-dev pkg-config                                         # libvirt-python's build
  qemu-system-x86 qemu-utils ovmf swtpm swtpm-tools              # QEMU/KVM, qemu-img, UEFI firmware, vTPM
  dnsmasq-base iptables iproute2 openssl                         # libvirt NAT network, ss, certificates
  linux-image-cloud-amd64 busybox-static cpio zstd               # the tiny test guest
  genisoimage pciutils                                           # cloud-init seed ISOs, PCI names (pci.ids)
  libxml2-utils                                                  # xmllint, which virt-xml-validate runs
  curl procps kmod psmisc                                        # health checks, pgrep/pkill, modprobe, fuser
  shellcheck shfmt gcc libc6-dev                                 # script lint + parsing, cgo for SQLite, the static pause
  buildah mmdebstrap                                             # local image builds (images.sh)
  e2fsprogs                                                      # the IOMMU test machine's image (mkfs.ext4 -d)
  containerd runc containernetworking-plugins                    # the node's container runtime and pod network
  conntrack                                                      # kube-proxy clears stale UDP/NAT entries
  openssh-client                                                 # kubectl k3svirt ssh
  linux-source flex bison bc libelf-dev libssl-dev make xz-utils # tests/yocto: the kernel Kconfig check
)
# What this machine must already have (the README's prerequisites); every other program the code,
# the tests and the scripts run comes from APT_PACKAGES, the .venv, or a build of ours in $K3SVIRT_CACHE.
PREREQUISITES=(python3 go git)

install_apt() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  need_root
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed: Debian's package mirror is not reachable"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install failed for: ${missing[*]}"
}

install_venv() {
  local venv="$REPO_ROOT/.venv" stamp
  stamp=$(cat "$REPO_ROOT"/{common,operator,rest-gateway}/pyproject.toml "$REPO_ROOT/requirements-dev.txt" | sha256sum | cut -c1-16)
  [ -f "$venv/.k3svirt-stamp" ] && [ "$(cat "$venv/.k3svirt-stamp")" = "$stamp" ] && return 0
  command -v python3 >/dev/null || die "python3 is missing: install Python 3.11 or newer"
  log "creating the Python environment in .venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" || die "python3 -m venv failed: install python3-venv"
  "$venv/bin/pip" install -q --upgrade pip >/dev/null
  "$venv/bin/pip" install -q -e "$REPO_ROOT/common" -e "$REPO_ROOT/operator" -e "$REPO_ROOT/rest-gateway" \
    -r "$REPO_ROOT/requirements-dev.txt" > "$K3SVIRT_STATE/pip.log" 2>&1 \
    || die "pip install failed (PyPI not reachable or a pin is wrong): see $K3SVIRT_STATE/pip.log"
  echo "$stamp" > "$venv/.k3svirt-stamp"
}

case "${1:-}" in
  --list-packages) printf '%s\n' "${APT_PACKAGES[@]}"; exit 0 ;;
  --list-prerequisites) printf '%s\n' "${PREREQUISITES[@]}"; exit 0 ;;
  "") ;;
  *) die "usage: $0 [--list-packages|--list-prerequisites]" ;;
esac

install_apt
install_venv
# kubectl is not checked here: controlplane.sh builds it with the other Kubernetes binaries.
command -v go >/dev/null || die "Go is missing: install Go 1.26 or newer (needed to build the Kubernetes binaries once)"
