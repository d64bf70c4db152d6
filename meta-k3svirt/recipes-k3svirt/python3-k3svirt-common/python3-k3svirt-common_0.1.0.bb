SUMMARY = "k3svirt API contract in Python"
DESCRIPTION = "CRD names, CRD schema loading/validation and template merge \
shared by the k3svirt operator and REST gateway (common/ in the k3svirt repo)."
HOMEPAGE = "https://k3svirt.invalid/"
# The k3svirt repository carries no licence file yet.
LICENSE = "CLOSED"

# common/ of the k3svirt repository (pinned git commit, or the checkout via
# externalsrc: k3svirt-source.inc). setup.py copies ../crds into the wheel.
K3SVIRT_SUBDIR = "common"
require recipes-k3svirt/k3svirt-source.inc

inherit python_setuptools_build_meta

RDEPENDS:${PN} += "\
    python3-jsonschema \
    python3-pyyaml \
    python3-websockets \
"
