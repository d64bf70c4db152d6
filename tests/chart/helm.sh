#!/usr/bin/env bash
# Build (once) and print the path of a real `helm` binary, compiled from its Go module.
#
# No release tarball is downloaded: `go install helm.sh/helm/v3/cmd/helm@<version>` fetches the module
# and its dependencies through the Go module proxy and compiles them. The binary is cached under
# ~/.cache/k3svirt/helm-<version>/helm, so every later call just prints that path.
#
#   K3SVIRT_HELM_VERSION  the version to build (default below); falls back to the others listed if the
#                         proxy refuses it (the proxy here is a selective mirror: some versions 403).
#   K3SVIRT_CACHE         cache root (default ~/.cache/k3svirt)
#
# Prints the binary's path on stdout; progress and errors go to stderr. Exit 1 when nothing could be built.
set -euo pipefail

cache="${K3SVIRT_CACHE:-$HOME/.cache/k3svirt}"
wanted="${K3SVIRT_HELM_VERSION:-v3.22.0}"
# Tried in order after the wanted version: newest v3 first, then v4.
candidates=("$wanted" v3.21.4 v3.20.2 v3.19.5 v4.3.1)

log() { printf 'helm.sh: %s\n' "$*" >&2; }

for version in "${candidates[@]}"; do
    bin="$cache/helm-$version/helm"
    if [[ -x "$bin" ]]; then
        printf '%s\n' "$bin"
        exit 0
    fi
done

if ! command -v go >/dev/null 2>&1; then
    for gobin in /usr/local/go/bin/go /usr/lib/go/bin/go; do
        if [[ -x "$gobin" ]]; then PATH="$(dirname "$gobin"):$PATH"; break; fi
    done
fi
command -v go >/dev/null 2>&1 || { log "no Go toolchain on PATH: cannot build helm"; exit 1; }

for version in "${candidates[@]}"; do
    major="${version%%.*}"          # v3 or v4
    dest="$cache/helm-$version"
    tmp="$dest.tmp.$$"
    mkdir -p "$tmp"
    log "building helm $version from helm.sh/helm/$major (go install; a few minutes on 2 cores)"
    start=$SECONDS
    # Stamp the binary the way helm's Makefile does: its version, and the Kubernetes version it assumes
    # without a cluster (`helm template`, `helm lint`): 1.<client-go minor>, else helm says v1.20.
    ldflags="-s -w -X helm.sh/helm/$major/internal/version.version=$version"
    if gomod=$(GOFLAGS=-mod=mod go mod download -json "helm.sh/helm/$major@$version" 2>/dev/null \
               | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p') && [[ -f "$gomod" ]]; then
        kver=$(awk '$1 == "k8s.io/client-go" { sub(/^v/, "", $2); print $2; exit }' "$gomod")
        if [[ "$kver" =~ ^0\.([0-9]+)\. ]]; then
            kmajor=1 kminor="${BASH_REMATCH[1]}"
            for pkg in pkg/lint/rules pkg/chartutil pkg/chart/common internal/version; do
                ldflags+=" -X helm.sh/helm/$major/$pkg.k8sVersionMajor=$kmajor"
                ldflags+=" -X helm.sh/helm/$major/$pkg.k8sVersionMinor=$kminor"
            done
        fi
    fi
    if GOBIN="$tmp" GOFLAGS=-mod=mod CGO_ENABLED=0 \
        go install -ldflags "$ldflags" "helm.sh/helm/$major/cmd/helm@$version" >&2; then
        rm -rf "$dest"
        mv "$tmp" "$dest"
        log "built helm $version in $((SECONDS - start))s: $dest/helm"
        printf '%s\n' "$dest/helm"
        exit 0
    fi
    rm -rf "$tmp"
    log "helm $version could not be fetched or built; trying the next version"
done
log "no helm version could be built from the Go module proxy"
exit 1
