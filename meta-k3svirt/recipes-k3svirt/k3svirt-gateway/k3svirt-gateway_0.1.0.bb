SUMMARY = "k3svirt REST gateway"
DESCRIPTION = "Flask/gunicorn REST API over k3svirt's custom resources and \
K3s workloads (rest-gateway/ in the k3svirt repo)."
HOMEPAGE = "https://k3svirt.invalid/"
LICENSE = "CLOSED"

# Sources live in the enclosing k3svirt repository, outside the layer on
# purpose; FILESEXTRAPATHS is how file:// URLs reach them.
# nooelint: oelint.vars.fileextrapaths,oelint.vars.outofcontext
FILESEXTRAPATHS:prepend := "${K3SVIRT_SRCDIR}/rest-gateway:${THISDIR}/files:"
SRC_URI = " \
    file://pyproject.toml;subdir=rest-gateway \
    file://k3svirt_gateway;subdir=rest-gateway \
    file://k3svirt-gateway.service \
    file://k3svirt-gateway.default \
"
S = "${UNPACKDIR}/rest-gateway"

inherit python_setuptools_build_meta systemd useradd

# Unprivileged service user; it reads a copy of the K3s kubeconfig that the
# unit's privileged ExecStartPre puts in its RuntimeDirectory.
USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --no-create-home --home-dir /nonexistent \
                       --shell /sbin/nologin --user-group k3svirt-gw"

SYSTEMD_SERVICE:${PN} = "k3svirt-gateway.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install:append() {
    install -D -m 0644 ${UNPACKDIR}/k3svirt-gateway.service ${D}${systemd_system_unitdir}/k3svirt-gateway.service
    install -D -m 0644 ${UNPACKDIR}/k3svirt-gateway.default ${D}${sysconfdir}/default/k3svirt-gateway
    sed -i -e 's#@LIBEXECDIR@#${libexecdir}#g' -e 's#@BINDIR@#${bindir}#g' \
        ${D}${systemd_system_unitdir}/k3svirt-gateway.service
}

CONFFILES:${PN} += "${sysconfdir}/default/k3svirt-gateway"

# rest-gateway/pyproject.toml runtime deps. flask, gunicorn (meta-python)
# and jsonschema, pyyaml, urllib3 (oe-core) exist upstream.
RDEPENDS:${PN} += "\
    k3svirt-k3s-config \
    python3-flask \
    python3-gunicorn \
    python3-jsonschema \
    python3-k3svirt-common \
    python3-pyyaml \
    python3-urllib3 \
"
