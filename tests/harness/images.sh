#!/usr/bin/env bash
# Builds every container image the node needs locally, without any registry, with buildah from Debian:
#   localhost/k3svirt/debian-base:bookworm  mmdebstrap minbase rootfs (the base of the two below)
#   localhost/k3svirt/pause:3.10            our static pause program (tests/harness/images/pause)
#   localhost/k3svirt/http-echo:1.0         busybox httpd test application (tests/harness/images/http-echo)
#   localhost/k3svirt/node-test-busybox:1   busybox with its applets, the node tests' toolbox
#   localhost/k3svirt/coredns:<version>     CoreDNS built from its Go module (the node's cluster DNS)
#   localhost/k3svirt/operator:<version>    operator/Containerfile
#   localhost/k3svirt/gateway:<version>     rest-gateway/Containerfile
# Each image becomes an OCI archive in $K3SVIRT_CACHE/images named after a hash of its inputs
# (Containerfile, the files copied in, tool and package versions, the base's hash): an unchanged
# image is never rebuilt. Builds are reproducible: fixed timestamps (SOURCE_DATE_EPOCH).
#
# Usage: images.sh build [NAME...]       build what is missing (all, or the NAMEs and what they start
#                                        FROM), print "<reference> <archive>" lines
#        images.sh import <socket> [NAME...]  import the archives into containerd (namespace k8s.io)
#        images.sh list                  print "<reference> <archive> <bytes>" of the built archives
#        images.sh refs                  print the reference of every image (builds nothing)
#        images.sh prune                 delete archives of older inputs (other checkouts sharing
#                                        $K3SVIRT_CACHE rebuild theirs when they need them)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

IMAGES_SRC="$HARNESS_DIR/images"
ARCHIVES="$K3SVIRT_CACHE/images"
# buildah's storage is scratch space (the archives are the product), so it lives in this run's
# state, never in /var/lib/containers where it would outlive the test bed and mix with the host's.
BUILDAH_DIR="$K3SVIRT_STATE/buildah"
WORK="$K3SVIRT_STATE/image-build"
# Fixed file and config timestamps: 2025-01-01T00:00:00Z unless the caller sets SOURCE_DATE_EPOCH.
EPOCH=${SOURCE_DATE_EPOCH:-1735689600}
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
SECURITY_MIRROR=http://deb.debian.org/debian-security
BASE_REF=localhost/k3svirt/debian-base:$SUITE
COREDNS_VERSION=v1.15.0
COREDNS_BIN="$K3SVIRT_CACHE/coredns/$COREDNS_VERSION/coredns"
APP_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO_ROOT/operator/pyproject.toml")

# name reference: build order (the base before the images that start FROM it).
IMAGES=(
  "debian-base $BASE_REF"
  "pause localhost/k3svirt/pause:3.10"
  "http-echo localhost/k3svirt/http-echo:1.0"
  "busybox localhost/k3svirt/node-test-busybox:1"
  "coredns localhost/k3svirt/coredns:$COREDNS_VERSION"
  "operator localhost/k3svirt/operator:$APP_VERSION"
  "gateway localhost/k3svirt/gateway:$APP_VERSION"
)

# What mmdebstrap is asked for; part of the base's hash. The dpkg excludes make it as slim as
# debian:bookworm-slim (they stay in the rootfs, so later apt-get installs skip docs too); the
# merged-usr hook makes /bin etc. symlinks itself instead of installing usrmerge (and with it perl).
# shellcheck disable=SC2016  # the hook's $1 (the rootfs) is expanded by mmdebstrap, not here
MMDEBSTRAP_ARGS=(
  --variant=minbase --format=tar --aptopt='Acquire::Languages "none"'
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --dpkgopt='path-exclude=/usr/share/lintian/*'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/apt "$1"/var/log/dpkg.log "$1"/var/log/alternatives.log "$1"/var/cache/ldconfig/aux-cache'
)

bah() {
  buildah --root "$BUILDAH_DIR/root" --runroot "$BUILDAH_DIR/run" --storage-driver "$(storage_driver)" "$@"
}

# overlay is fast and shares layers, but cannot stack on an overlayfs (CI inside a container): vfs there.
storage_driver() {
  mkdir -p "$BUILDAH_DIR"
  case "$(stat -f -c %T "$BUILDAH_DIR")" in overlayfs) echo vfs ;; *) echo overlay ;; esac
}

pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo none; }

# files_of DIR...: the regular files a build copies from these repository dirs (the same filter as
# .containerignore), relative to the repository root, sorted.
files_of() {
  (cd "$REPO_ROOT" && find "$@" -type f \
    -not -path '*/__pycache__/*' -not -path '*.egg-info/*' -not -path '*/build/*' -not -path '*/tests/*' \
    -not -path '*/.pytest_cache/*' -not -path '*/.ruff_cache/*' | LC_ALL=C sort)
}

# inputs NAME: every input of the image, one per line; the cache key is its hash.
inputs() {
  echo "epoch $EPOCH buildah $(pkg_version buildah)"
  case $1 in
    debian-base)
      echo "mmdebstrap $(pkg_version mmdebstrap) $SUITE $MIRROR $SECURITY_MIRROR ${MMDEBSTRAP_ARGS[*]}"
      sha256sum "$IMAGES_SRC/debian-base/Containerfile" ;;
    pause)
      echo "gcc $(pkg_version gcc) libc6-dev $(pkg_version libc6-dev)"
      (cd "$IMAGES_SRC/pause" && sha256sum Containerfile pause.c) ;;
    http-echo)
      sha256sum /bin/busybox
      (cd "$IMAGES_SRC/http-echo" && sha256sum Containerfile run index.cgi && stat -c '%n %a' run index.cgi) ;;
    busybox)
      sha256sum /bin/busybox "$IMAGES_SRC/busybox/Containerfile" ;;
    coredns)
      echo "coredns $COREDNS_VERSION go $(go env GOVERSION 2>/dev/null)"
      sha256sum "$IMAGES_SRC/coredns/Containerfile" ;;
    operator | gateway)
      echo "base $(key debian-base)"
      local dir=operator; [ "$1" = gateway ] && dir=rest-gateway
      (cd "$REPO_ROOT" && sha256sum .containerignore && files_of crds common "$dir" | xargs -d '\n' sha256sum) ;;
  esac
}

key() { inputs "$1" | sha256sum | cut -c1-16; }
archive_of() { echo "$ARCHIVES/$1-$(key "$1").tar"; }
ref_of() {
  local entry
  for entry in "${IMAGES[@]}"; do [ "${entry%% *}" = "$1" ] && { echo "${entry#* }"; return; }; done
  die "unknown image $1"
}

# stage NAME CTX: fills the build context CTX; prints the Containerfile path (relative to CTX).
stage() {
  local name=$1 ctx=$2
  case $name in
    debian-base)
      cp "$IMAGES_SRC/debian-base/Containerfile" "$ctx/"
      log "building the Debian $SUITE rootfs with mmdebstrap (downloads ~30 MB from $MIRROR)"
      SOURCE_DATE_EPOCH=$EPOCH mmdebstrap --quiet "${MMDEBSTRAP_ARGS[@]}" "$SUITE" "$ctx/rootfs.tar" \
        "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY_MIRROR $SUITE-security main" \
        >"$WORK/mmdebstrap.log" 2>&1 || die "mmdebstrap failed (is $MIRROR reachable?): see $WORK/mmdebstrap.log"
      echo Containerfile ;;
    pause)
      cp "$IMAGES_SRC/pause/Containerfile" "$ctx/"
      gcc -static -Os -s -Wall -Wextra -Werror -o "$ctx/pause" "$IMAGES_SRC/pause/pause.c" \
        || die "compiling pause.c failed (gcc and libc6-dev come from tests/harness/deps.sh)"
      echo Containerfile ;;
    http-echo)
      cp -p "$IMAGES_SRC/http-echo/"{Containerfile,run,index.cgi} /bin/busybox "$ctx/"
      echo Containerfile ;;
    busybox)
      cp "$IMAGES_SRC/busybox/Containerfile" /bin/busybox "$ctx/"
      echo Containerfile ;;
    coredns)
      build_coredns
      cp "$IMAGES_SRC/coredns/Containerfile" "$COREDNS_BIN" "$ctx/"
      echo Containerfile ;;
    operator | gateway)
      local dir=operator; [ "$name" = gateway ] && dir=rest-gateway
      (cd "$REPO_ROOT" && cp .containerignore "$ctx/" && files_of crds common "$dir" | cpio -pdm --quiet "$ctx")
      echo "$dir/Containerfile" ;;
  esac
}

# build_coredns: the CoreDNS binary, built once from its Go module into the cache (static, no cgo).
build_coredns() {
  [ -x "$COREDNS_BIN" ] && return 0
  command -v go >/dev/null || die "Go is missing: install Go 1.26+ to build CoreDNS once"
  log "building CoreDNS $COREDNS_VERSION from its Go module (once, a few minutes)"
  local tmp
  mkdir -p "${COREDNS_BIN%/*/*}"
  tmp=$(mktemp -d "${COREDNS_BIN%/*}.tmp.XXXXXX")
  CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION" \
    || die "building CoreDNS failed: is the Go module proxy reachable?"
  rm -rf "${COREDNS_BIN%/*}" && mv -T "$tmp" "${COREDNS_BIN%/*}"
}

# ensure_base: the base image in buildah's storage (from its archive when the storage was wiped).
ensure_base() {
  bah inspect --type image "$BASE_REF" >/dev/null 2>&1 && return 0
  local id
  id=$(bah pull --quiet "oci-archive:$(archive_of debian-base)") || die "could not load $(archive_of debian-base)"
  bah tag "$id" "$BASE_REF"
}

build_one() {
  local name=$1 ref archive ctx file t0=$SECONDS
  ref=$(ref_of "$name")
  archive=$(archive_of "$name")
  if [ -f "$archive" ]; then echo "$ref $archive"; return 0; fi
  case $name in operator | gateway) ensure_base ;; esac
  ctx="$WORK/$name"
  rm -rf "$ctx" && mkdir -p "$ctx"
  file=$(stage "$name" "$ctx")
  local args=(--isolation chroot --pull=never --timestamp "$EPOCH" --build-arg "SOURCE_DATE_EPOCH=$EPOCH"
              --build-arg "BASE=$BASE_REF" -f "$ctx/$file" -t "$ref")
  # pip inside the build trusts what the host trusts ($PIP_CERT, else the system bundle): behind a
  # TLS-inspecting proxy (as here) pip's own certifi bundle would refuse PyPI. Not part of the key.
  local ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
  if [ -f "$ca" ]; then
    args+=(--volume "$ca:/run/k3svirt-pip-ca.pem:ro" --build-arg PIP_CERT=/run/k3svirt-pip-ca.pem)
  fi
  log "building $ref"
  bah bud --quiet "${args[@]}" "$ctx" >"$WORK/$name.log" 2>&1 || die "building $ref failed: see $WORK/$name.log"
  mkdir -p "$ARCHIVES"
  rm -f "$archive.tmp"
  bah push --quiet "$ref" "oci-archive:$archive.tmp:$ref" >>"$WORK/$name.log" 2>&1 \
    || die "writing $archive failed: see $WORK/$name.log"
  mv "$archive.tmp" "$archive"
  rm -rf "$ctx"
  # The storage keeps only the base (the next build starts FROM it); the archive is the image.
  [ "$ref" = "$BASE_REF" ] || bah rmi "$ref" >/dev/null
  log "$ref built in $((SECONDS - t0)) s ($(du -h "$archive" | cut -f1) archive)"
  echo "$ref $archive"
}

# wanted NAME [ASKED...]: true when NAME is asked for (no ASKED: every image), or is the base of one.
wanted() {
  local name=$1 a; shift
  [ $# -eq 0 ] && return 0
  for a in "$@"; do
    [ "$a" = "$name" ] && return 0
    case $a in operator | gateway) [ "$name" = debian-base ] && return 0 ;; esac
  done
  return 1
}

cmd_build() {
  command -v buildah >/dev/null || die "buildah is missing: run bash tests/harness/deps.sh"
  need_root
  mkdir -p "$WORK" "$ARCHIVES"
  # One builder at a time per cache: a second caller waits, then finds the archives.
  exec 9>"$ARCHIVES/.lock"
  flock 9
  local entry name
  for entry in "${IMAGES[@]}"; do
    name=${entry%% *}
    wanted "$name" "$@" || continue
    build_one "$name"
  done
  # A rebuilt base leaves its predecessor untagged: drop it.
  bah rmi --prune >/dev/null 2>&1 || true
}

cmd_list() {
  local entry name archive
  for entry in "${IMAGES[@]}"; do
    name=${entry%% *}
    archive=$(archive_of "$name")
    [ -f "$archive" ] && echo "${entry#* } $archive $(stat -c %s "$archive")"
  done
  return 0
}

cmd_prune() {
  local entry name keep f
  for entry in "${IMAGES[@]}"; do
    name=${entry%% *}
    keep=$(archive_of "$name")
    for f in "$ARCHIVES/$name"-????????????????.tar; do
      [ -f "$f" ] && [ "$f" != "$keep" ] && rm -f "$f" && log "removed $f"
    done
  done
  return 0
}

cmd_import() {
  local socket=${1:?usage: images.sh import <containerd-socket> [NAME...]} ref archive _size
  shift
  [ -S "$socket" ] || die "$socket is not a containerd socket"
  local only=()
  for name in "$@"; do only+=("$(ref_of "$name")"); done
  while read -r ref archive _size; do
    [ "$ref" = "$BASE_REF" ] && continue   # only a build input, never run by the node
    [ ${#only[@]} -eq 0 ] || [[ " ${only[*]} " == *" $ref "* ]] || continue
    ctr --address "$socket" -n k8s.io images import --snapshotter "${K3SVIRT_SNAPSHOTTER:-overlayfs}" "$archive" \
      >/dev/null || die "importing $archive into $socket failed"
    log "imported $ref"
  done < <(cmd_list)
}

case ${1:-} in
  build) shift; cmd_build "$@" ;;
  list) cmd_list ;;
  prune) cmd_prune ;;
  refs) for entry in "${IMAGES[@]}"; do echo "${entry#* }"; done ;;
  import) shift; cmd_import "$@" ;;
  *) die "usage: images.sh build [NAME...] | import <containerd-socket> [NAME...] | list | refs | prune" ;;
esac
