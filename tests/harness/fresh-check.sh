#!/usr/bin/env bash
# Checks that the install step works from nothing on this machine's package lists, without
# touching this machine: the Debian packages of deps.sh resolve for a system that has none
# installed (apt-get simulation against an empty dpkg status), and the Python environment
# resolves from PyPI ignoring what the .venv already has (pip --dry-run --ignore-installed).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
: > "$work/status"
mapfile -t packages < <(bash "$HARNESS_DIR/deps.sh" --list-packages)
apt-get -s -q -o Dir::State::status="$work/status" install --no-install-recommends "${packages[@]}" \
  > "$work/apt.out" 2>&1 || { cat "$work/apt.out" >&2; die "the install step's Debian packages do not resolve from nothing"; }
echo "apt: from an empty system would install $(grep -c '^Inst ' "$work/apt.out") packages for ${#packages[@]} listed"

"$REPO_ROOT/.venv/bin/python" -m pip install -q --dry-run --ignore-installed --report "$work/pip.json" \
  -e "$REPO_ROOT/common" -e "$REPO_ROOT/operator" -e "$REPO_ROOT/rest-gateway" -r "$REPO_ROOT/requirements-dev.txt" \
  > "$work/pip.out" 2>&1 || { cat "$work/pip.out" >&2; die "the Python environment does not resolve from PyPI"; }
echo "pip: from nothing would install $("$REPO_ROOT/.venv/bin/python" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["install"]))' "$work/pip.json") distributions"
