#!/bin/sh
# apt-install.sh PACKAGE...: installs Debian packages during an image build (operator/Containerfile,
# rest-gateway/Containerfile, both stages) and removes the apt/dpkg state that differs from build to
# build (package lists, logs, caches, *-old backups), so images stay small and their digests reproducible.
# The Containerfiles bind-mount this directory for the RUN, so the script itself never lands in an image.
set -eu
apt-get update
apt-get install -y --no-install-recommends "$@"
apt-get clean
rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log /var/log/alternatives.log \
  /var/cache/ldconfig/aux-cache /var/cache/debconf/*-old /var/lib/dpkg/*-old
