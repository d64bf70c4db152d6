SUMMARY = "K3s single-node configuration and k3svirt auto-deploy manifests"
DESCRIPTION = "K3s config drop-in for a single-node k3svirt server, \
k3svirt's CRDs and namespace as K3s auto-deploy manifests (applied by the \
K3s deploy controller at every start, no network needed), optionally the \
K3s air-gap image tarball, and the k3svirt-wait-api helper."
HOMEPAGE = "https://k3svirt.invalid/"
LICENSE = "CLOSED"

# Sources live in the enclosing k3svirt repository (crds/), outside the
# layer on purpose; FILESEXTRAPATHS is how file:// URLs reach them.
# nooelint: oelint.vars.fileextrapaths,oelint.vars.outofcontext
FILESEXTRAPATHS:prepend := "${THISDIR}/files:${K3SVIRT_SRCDIR}:"
SRC_URI = " \
    file://config.yaml \
    file://k3svirt-namespace.yaml \
    file://k3svirt-wait-api \
    file://crds \
    ${@'file://${K3S_AIRGAP_IMAGES}' if d.getVar('K3S_AIRGAP_IMAGES') else ''} \
"
S = "${UNPACKDIR}"

# Air-gap images: K3s's system pods (pause, coredns, local-path-provisioner)
# need container images; without them the API, our CRDs and the host-side
# operator/gateway still work, but those pods stay in ImagePullBackOff until
# the box sees a registry. To ship them, put the tarball matching the k3s
# recipe's version (k3s-airgap-images-amd64.tar.zst from the K3s release) in
# a directory on FILESPATH, e.g. in local.conf:
#   FILESEXTRAPATHS:prepend:pn-k3svirt-k3s-config := "/srv/k3s-airgap:"
#   K3S_AIRGAP_IMAGES = "k3s-airgap-images-amd64.tar.zst"
K3S_AIRGAP_IMAGES ??= ""

K3S_SERVER_DIR = "${localstatedir}/lib/rancher/k3s/server"
K3S_AGENT_DIR = "${localstatedir}/lib/rancher/k3s/agent"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    # meta-virtualization's k3s package owns /etc/rancher/k3s/config.yaml;
    # K3s merges config.yaml.d/*.yaml over it in lexical order.
    install -D -m 0600 ${S}/config.yaml ${D}${sysconfdir}/rancher/k3s/config.yaml.d/50-k3svirt.yaml
    install -D -m 0755 ${S}/k3svirt-wait-api ${D}${libexecdir}/k3svirt/k3svirt-wait-api

    install -d -m 0700 ${D}${K3S_SERVER_DIR}/manifests
    install -m 0600 ${S}/k3svirt-namespace.yaml ${D}${K3S_SERVER_DIR}/manifests/k3svirt-00-namespace.yaml
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
        bbfatal "no CRDs found in ${K3SVIRT_SRCDIR}/crds: the image would boot without the k3svirt API"
    fi

    if [ -n "${K3S_AIRGAP_IMAGES}" ]; then
        install -D -m 0644 ${S}/${K3S_AIRGAP_IMAGES} ${D}${K3S_AGENT_DIR}/images/${K3S_AIRGAP_IMAGES}
    fi
}

FILES:${PN} += "\
    ${sysconfdir}/rancher \
    ${libexecdir}/k3svirt \
    ${localstatedir}/lib/rancher \
"
CONFFILES:${PN} += "${sysconfdir}/rancher/k3s/config.yaml.d/50-k3svirt.yaml"

RDEPENDS:${PN} += "k3s-server"
