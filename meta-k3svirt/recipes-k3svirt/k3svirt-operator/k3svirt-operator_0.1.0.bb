SUMMARY = "k3svirt node operator"
DESCRIPTION = "kopf operator reconciling VirtualMachine and PCIPassthrough \
objects into libvirt domains on this node (operator/ in the k3svirt repo)."
HOMEPAGE = "https://k3svirt.invalid/"
LICENSE = "CLOSED"

# operator/ of the k3svirt repository (k3svirt-source.inc).
K3SVIRT_SUBDIR = "operator"
require recipes-k3svirt/k3svirt-source.inc
SRC_URI += "file://k3svirt-operator.service \
    file://k3svirt-operator.default \
"

inherit python_setuptools_build_meta systemd

SYSTEMD_SERVICE:${PN} = "k3svirt-operator.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install:append() {
    install -D -m 0644 ${UNPACKDIR}/k3svirt-operator.service ${D}${systemd_system_unitdir}/k3svirt-operator.service
    install -D -m 0644 ${UNPACKDIR}/k3svirt-operator.default ${D}${sysconfdir}/default/k3svirt-operator
    sed -i -e 's#@LIBEXECDIR@#${libexecdir}#g' -e 's#@BINDIR@#${bindir}#g' \
        ${D}${systemd_system_unitdir}/k3svirt-operator.service
}

CONFFILES:${PN} += "${sysconfdir}/default/k3svirt-operator"

# Runtime deps from operator/pyproject.toml, mapped to OE package names.
# libvirt-python comes from meta-virtualization's libvirt recipe
# (PACKAGECONFIG "python", enabled in our libvirt bbappend); k3s and
# libvirtd are what the unit talks to; k3svirt-k3s-config ships the K3s
# config, our CRDs as auto-deploy manifests and k3svirt-wait-api.
# Tools the operator executes: qemu-img (qemu-common), genisoimage for
# cloud-init seed ISOs (cdrkit, meta-oe), modprobe for vfio-pci (kmod).
RDEPENDS:${PN} += "\
    genisoimage \
    k3s-server \
    k3svirt-k3s-config \
    kmod \
    libvirt-libvirtd \
    libvirt-python \
    python3-k3svirt-common \
    python3-kopf \
    python3-prometheus-client \
    python3-pyyaml \
    qemu-common \
"
