SUMMARY = "k3svirt API contract in Python"
DESCRIPTION = "CRD names, CRD schema loading/validation and template merge \
shared by the k3svirt operator and REST gateway (common/ in the k3svirt repo)."
HOMEPAGE = "https://k3svirt.invalid/"
# The k3svirt repository carries no licence file yet.
LICENSE = "CLOSED"

# Built from the checkout this layer lives in (K3SVIRT_SRCDIR, layer.conf),
# never from a network fetch: the image always matches the tree it is built
# from. Only the package and its build metadata are copied, not tests.
# Sources live in the enclosing k3svirt repository, outside the layer on
# purpose; FILESEXTRAPATHS is how file:// URLs reach them.
# nooelint: oelint.vars.fileextrapaths,oelint.vars.outofcontext
FILESEXTRAPATHS:prepend := "${K3SVIRT_SRCDIR}/common:${K3SVIRT_SRCDIR}:"
SRC_URI = " \
    file://pyproject.toml;subdir=common \
    file://setup.py;subdir=common \
    file://k3svirt_common;subdir=common \
    file://crds \
"
S = "${UNPACKDIR}/common"

inherit python_setuptools_build_meta

RDEPENDS:${PN} += "\
    python3-jsonschema \
    python3-pyyaml \
"
