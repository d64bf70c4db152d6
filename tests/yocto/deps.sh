#!/usr/bin/env bash
# Host packages needed by tests/yocto (kernel Kconfig check, shell lint).
# Idempotent: installs only what is missing; runs `apt-get update` and retries
# once if the first install fails (stale or empty package lists).
set -euo pipefail

packages=(
  linux-source   # Debian's kernel tree tarball under /usr/src, for the Kconfig check
  flex bison bc  # scripts/kconfig build
  libelf-dev libssl-dev
  gcc make xz-utils
  shellcheck
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "tests/yocto/deps.sh: all host packages present"
  exit 0
fi

echo "tests/yocto/deps.sh: installing ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
if ! "${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${missing[@]}"; then
  "${sudo_cmd[@]}" apt-get update
  "${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
fi
