SUMMARY = "k3svirt REST gateway"
DESCRIPTION = "Flask/gunicorn REST API over k3svirt's custom resources and \
K3s workloads (rest-gateway/ in the k3svirt repo)."
HOMEPAGE = "https://k3svirt.invalid/"
LICENSE = "CLOSED"

# rest-gateway/ of the k3svirt repository (k3svirt-source.inc).
K3SVIRT_SUBDIR = "rest-gateway"
require recipes-k3svirt/k3svirt-source.inc
SRC_URI += "file://k3svirt-gateway.service \
    file://k3svirt-gateway.default \
    file://k3svirt-gateway-credentials \
    file://k3svirt-gateway-tls \
"

inherit python_setuptools_build_meta systemd useradd

# Unprivileged service user; it reads the kubeconfig with its own
# ServiceAccount token that the unit's privileged ExecStartPre
# (k3svirt-gateway-credentials) writes into its RuntimeDirectory.
USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --no-create-home --home-dir /nonexistent \
                       --shell /sbin/nologin --user-group k3svirt-gw"

SYSTEMD_SERVICE:${PN} = "k3svirt-gateway.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install:append() {
    install -D -m 0644 ${UNPACKDIR}/k3svirt-gateway.service ${D}${systemd_system_unitdir}/k3svirt-gateway.service
    install -D -m 0644 ${UNPACKDIR}/k3svirt-gateway.default ${D}${sysconfdir}/default/k3svirt-gateway
    install -D -m 0755 ${UNPACKDIR}/k3svirt-gateway-credentials ${D}${libexecdir}/k3svirt/k3svirt-gateway-credentials
    install -D -m 0755 ${UNPACKDIR}/k3svirt-gateway-tls ${D}${libexecdir}/k3svirt/k3svirt-gateway-tls
    sed -i -e 's#@LIBEXECDIR@#${libexecdir}#g' -e 's#@BINDIR@#${bindir}#g' \
        ${D}${systemd_system_unitdir}/k3svirt-gateway.service
}

CONFFILES:${PN} += "${sysconfdir}/default/k3svirt-gateway"
FILES:${PN} += "${libexecdir}/k3svirt/k3svirt-gateway-credentials ${libexecdir}/k3svirt/k3svirt-gateway-tls"

# rest-gateway/pyproject.toml runtime deps. flask, gunicorn (meta-python)
# and jsonschema, pyyaml, urllib3 (oe-core) exist upstream.
# coreutils: base64/install for k3svirt-gateway-credentials and -tls.
# openssl-bin: the openssl CLI k3svirt-gateway-tls creates the device's key
# and certificate with (on the box, at the first boot; never at build time).
RDEPENDS:${PN} += "\
    coreutils \
    k3svirt-k3s-config \
    openssl-bin \
    python3-flask \
    python3-gunicorn \
    python3-jsonschema \
    python3-k3svirt-common \
    python3-pyyaml \
    python3-urllib3 \
"
