#!/usr/bin/env bash
# Run a command (default: a shell) in the k3svirt Yocto build container.
#
#   devenv/run.sh                                   # interactive shell
#   devenv/run.sh kas build meta-k3svirt/kas/k3svirt-qemux86-64.yml
#   devenv/run.sh kas shell meta-k3svirt/kas/k3svirt-n305.yml
#
# Works with docker or podman (K3SVIRT_ENGINE=docker|podman to choose;
# default: podman if present, else docker). The repository is mounted at
# /work/k3svirt; downloads and sstate live in named volumes shared by every
# container started by this script or by devenv/compose.yaml.
#
# Environment:
#   K3SVIRT_ENGINE        container engine (docker|podman)
#   K3SVIRT_IMAGE         image tag (default k3svirt-yocto:<Dockerfile hash>)
#   K3SVIRT_BUILD_DIR     kas work dir inside the repo (default build/<basename of the kas file>,
#                         or build/shell for a plain shell); build/ is git-ignored
#   K3SVIRT_SSTATE_VOLUME / K3SVIRT_DL_VOLUME   volume names (or host paths)
#   K3SVIRT_TAP=1         allow runqemu tap networking (NET_ADMIN, /dev/net/tun)
#   BB_NUMBER_THREADS, PARALLEL_MAKE, BB_HASHSERVE, SSTATE_MIRRORS   passed through when set
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

engine="${K3SVIRT_ENGINE:-}"
if [ -z "$engine" ]; then
  if command -v podman >/dev/null 2>&1; then
    engine=podman
  elif command -v docker >/dev/null 2>&1; then
    engine=docker
  else
    echo "run.sh: neither podman nor docker found" >&2
    exit 1
  fi
fi
case "$engine" in
  docker | podman) ;;
  *)
    echo "run.sh: K3SVIRT_ENGINE must be docker or podman, not '$engine'" >&2
    exit 1
    ;;
esac

uid="$(id -u)"
gid="$(id -g)"
dockerfile_hash="$(sha256sum "$here/Dockerfile" | cut -c1-12)"
image="${K3SVIRT_IMAGE:-k3svirt-yocto:$dockerfile_hash}"
sstate_vol="${K3SVIRT_SSTATE_VOLUME:-k3svirt-sstate-cache}"
dl_vol="${K3SVIRT_DL_VOLUME:-k3svirt-downloads}"

if ! "$engine" image inspect "$image" >/dev/null 2>&1; then
  echo "run.sh: building $image with $engine" >&2
  "$engine" build \
    --build-arg "BUILDER_UID=$uid" \
    --build-arg "BUILDER_GID=$gid" \
    -t "$image" -f "$here/Dockerfile" "$here"
fi

# Build directory: one per kas file, so qemux86-64 and n305 builds can run
# side by side while sharing the caches.
build_name="shell"
for arg in "$@"; do
  case "$arg" in
    *.yml | *.yaml)
      build_name="$(basename "${arg%%:*}")"
      build_name="${build_name%.*}"
      break
      ;;
  esac
done
build_dir="${K3SVIRT_BUILD_DIR:-build/$build_name}"
mkdir -p "$repo/$build_dir"

run_args=(
  --rm
  --hostname k3svirt-build
  -v "$repo:/work/k3svirt"
  -v "$sstate_vol:/cache/sstate-cache"
  -v "$dl_vol:/cache/downloads"
  -e "KAS_WORK_DIR=/work/k3svirt/$build_dir"
  -e "KAS_BUILD_DIR=/work/k3svirt/$build_dir/build"
  -e DL_DIR=/cache/downloads
  -e SSTATE_DIR=/cache/sstate-cache
  -w /work/k3svirt
)
# Pass through build tuning and a shared hash-equivalence server if set.
for var in BB_NUMBER_THREADS PARALLEL_MAKE BB_HASHSERVE SSTATE_MIRRORS; do
  if [ -n "${!var:-}" ]; then
    run_args+=(-e "$var=${!var}")
  fi
done
if [ -t 0 ] && [ -t 1 ]; then
  run_args+=(-it)
fi
if [ "$engine" = podman ]; then
  # Rootless podman: map the host user onto the same UID inside, so files
  # in the bind-mounted repo stay owned by the caller. :Z-less mounts: set
  # K3SVIRT_SELINUX_LABEL=1 on SELinux hosts.
  run_args+=(--userns=keep-id)
  if [ "${K3SVIRT_SELINUX_LABEL:-0}" = 1 ]; then
    run_args+=(--security-opt label=disable)
  fi
fi
# runqemu with KVM inside the container, when the host has it.
if [ -e /dev/kvm ]; then
  run_args+=(--device /dev/kvm)
fi
# runqemu's tap networking (sudo runqemu-ifup inside; the Dockerfile's
# sudoers entry): needs the tun device and CAP_NET_ADMIN in the container.
if [ "${K3SVIRT_TAP:-0}" = 1 ]; then
  run_args+=(--cap-add NET_ADMIN --device /dev/net/tun)
fi

if [ "$#" -eq 0 ]; then
  set -- bash
fi
exec "$engine" run "${run_args[@]}" "$image" "$@"
