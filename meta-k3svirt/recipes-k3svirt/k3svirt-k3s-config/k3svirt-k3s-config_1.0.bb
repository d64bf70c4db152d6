SUMMARY = "K3s single-node configuration and k3svirt auto-deploy manifests"
DESCRIPTION = "K3s config drop-in for a single-node k3svirt server (CPU \
manager, housekeeping CPUs, disabled add-ons), k3svirt's CRDs, namespace and the \
gateway's least-privilege ServiceAccount as K3s auto-deploy manifests \
(applied by the K3s deploy controller at every start, no network needed), \
and the k3svirt-wait-api helper."
HOMEPAGE = "https://k3svirt.invalid/"
LICENSE = "CLOSED"

# crds/ of the k3svirt repository (k3svirt-source.inc); the rest is ours.
require recipes-k3svirt/k3svirt-source.inc
SRC_URI += "file://config.yaml.in \
    file://k3svirt-namespace.yaml \
    file://k3svirt-gateway-rbac.yaml \
    file://k3svirt-wait-api \
"

# The housekeeping CPUs (conf/distro/k3svirt.conf): the kubelet's
# reserved-cpus. Its static CPU manager with strict-cpu-reservation keeps
# every pod, whatever its QoS class, off them.
K3SVIRT_CPUS_HOST ??= "6-7"

# The sandbox image k3svirt-pause-image builds (its K3SVIRT_OCI_REF).
K3SVIRT_PAUSE_IMAGE ??= "localhost/k3svirt/pause:3.10"

K3S_SERVER_DIR = "${localstatedir}/lib/rancher/k3s/server"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    # meta-virtualization's k3s package owns /etc/rancher/k3s/config.yaml;
    # K3s merges config.yaml.d/*.yaml over it in lexical order.
    install -d ${D}${sysconfdir}/rancher/k3s/config.yaml.d
    sed -e 's#@K3SVIRT_CPUS_HOST@#${K3SVIRT_CPUS_HOST}#g' -e 's#@K3SVIRT_PAUSE_IMAGE@#${K3SVIRT_PAUSE_IMAGE}#g' \
        ${UNPACKDIR}/config.yaml.in \
        > ${D}${sysconfdir}/rancher/k3s/config.yaml.d/50-k3svirt.yaml
    chmod 0600 ${D}${sysconfdir}/rancher/k3s/config.yaml.d/50-k3svirt.yaml
    install -D -m 0755 ${UNPACKDIR}/k3svirt-wait-api ${D}${libexecdir}/k3svirt/k3svirt-wait-api

    install -d -m 0700 ${D}${K3S_SERVER_DIR}/manifests
    install -m 0600 ${UNPACKDIR}/k3svirt-namespace.yaml ${D}${K3S_SERVER_DIR}/manifests/k3svirt-00-namespace.yaml
    install -m 0600 ${UNPACKDIR}/k3svirt-gateway-rbac.yaml ${D}${K3S_SERVER_DIR}/manifests/k3svirt-20-gateway-rbac.yaml
    # The CRDs are the API contract (crds/ at the repo root): plain
    # manifests rather than a HelmChart, because a HelmChart needs the
    # helm-install job's image, i.e. a registry, on first boot.
    found=0
    for crd in ${S}/crds/*.yaml; do
        [ -e "$crd" ] || continue
        install -m 0600 "$crd" ${D}${K3S_SERVER_DIR}/manifests/k3svirt-10-crd-$(basename "$crd")
        found=1
    done
    if [ "$found" = 0 ]; then
        bbfatal "no CRDs found in ${S}/crds: the image would boot without the k3svirt API"
    fi
}

# The config depends on the machine's CPU layout (K3SVIRT_CPUS_HOST).
PACKAGE_ARCH = "${MACHINE_ARCH}"

FILES:${PN} += "\
    ${sysconfdir}/rancher \
    ${libexecdir}/k3svirt \
    ${localstatedir}/lib/rancher \
"
CONFFILES:${PN} += "${sysconfdir}/rancher/k3s/config.yaml.d/50-k3svirt.yaml"

# The only images the node needs at first boot, built here and imported by
# K3s from agent/images (config.yaml.in says why each add-on is off).
RDEPENDS:${PN} += "k3s-server k3svirt-coredns-image k3svirt-pause-image"
