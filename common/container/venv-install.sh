#!/bin/sh
# venv-install.sh CONSTRAINTS SOURCE...: the build stage of both Containerfiles: a venv in /opt/k3svirt
# with our packages and their pinned dependencies (CONSTRAINTS), reproducibly: CFLAGS=-g0 (no debug
# info naming pip's random build dir in compiled modules), --no-compile, then compileall -f (replacing
# .pyc written by imports during the build) with hash-based invalidation and a fixed hash seed (set
# constants are written in hash order). PIP_CERT (optional build argument): a CA bundle for pip.
set -eu
[ -n "${PIP_CERT:-}" ] || unset PIP_CERT
export PIP_CONSTRAINT="$1" PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 CFLAGS=-g0
shift
python3 -m venv /opt/k3svirt
/opt/k3svirt/bin/pip install -q --no-compile "$@"
/opt/k3svirt/bin/pip uninstall -q -y pip setuptools
PYTHONHASHSEED=0 python3 -m compileall -q -f --invalidation-mode unchecked-hash /opt/k3svirt/lib
