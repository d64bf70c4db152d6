SUMMARY = "K3s air-gap container images for an offline first boot"
DESCRIPTION = "The container images K3s itself needs (pause, coredns, \
local-path-provisioner, klipper-helm, busybox), as the release's air-gap \
tarball. K3s imports everything in /var/lib/rancher/k3s/agent/images/ when \
it starts, so its system pods run without a registry."
HOMEPAGE = "https://docs.k3s.io/installation/airgap"
# The tarball holds the images' own licences (Apache-2.0 for coredns,
# local-path-provisioner, pause, klipper; GPL-2.0 busybox).
LICENSE = "Apache-2.0 & GPL-2.0-only"
# The tarball carries no licence files of its own: OE-core's texts.
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10 \
                    file://${COMMON_LICENSE_DIR}/GPL-2.0-only;md5=801f80980d171dd6425610833a22dbe6"

# Must be the release of meta-virtualization's k3s recipe (PV v1.35.2+k3s1
# at the pinned commit): the images are the ones that release's embedded
# manifests name. The versioned RDEPENDS below makes a mismatch fail at
# do_rootfs instead of at first boot.
K3S_RELEASE = "v${PV}+k3s1"
K3S_RELEASE_NEXT = "v${PV}+k3s2"

SRC_URI = "https://github.com/k3s-io/k3s/releases/download/${@d.getVar('K3S_RELEASE').replace('+', '%2B')}/k3s-airgap-images-amd64.tar.zst;name=airgap;unpack=0;downloadfilename=k3s-airgap-images-amd64-${K3S_RELEASE}.tar.zst"
# From the release's sha256sum-amd64.txt. Set in kas/k3svirt-common.yml
# (K3S_AIRGAP_SHA256) next to the other pins; see do_fetch below.
K3S_AIRGAP_SHA256 ??= ""
SRC_URI[airgap.sha256sum] = "${K3S_AIRGAP_SHA256}"

# No unpinned download: refuse to fetch without the checksum (bitbake would
# only warn when BB_STRICT_CHECKSUM is relaxed).
python do_fetch:prepend() {
    if not d.getVar('K3S_AIRGAP_SHA256'):
        bb.fatal("K3S_AIRGAP_SHA256 is not set: take the sha256 of k3s-airgap-images-amd64.tar.zst "
                 "from https://github.com/k3s-io/k3s/releases/download/%s/sha256sum-amd64.txt and set it "
                 "in meta-k3svirt/kas/k3svirt-common.yml" % d.getVar('K3S_RELEASE').replace('+', '%2B'))
}

S = "${UNPACKDIR}"

# amd64 images only.
COMPATIBLE_HOST = "x86_64.*-linux"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

K3S_IMAGES_DIR = "${localstatedir}/lib/rancher/k3s/agent/images"

do_install() {
    install -D -m 0644 ${UNPACKDIR}/k3s-airgap-images-amd64-${K3S_RELEASE}.tar.zst \
        ${D}${K3S_IMAGES_DIR}/k3s-airgap-images-amd64.tar.zst
}

FILES:${PN} += "${K3S_IMAGES_DIR}"
# Container image layers: already-built foreign binaries, not ours to strip
# or QA as target code.
INHIBIT_PACKAGE_STRIP = "1"
INHIBIT_DEFAULT_DEPS = "1"

RDEPENDS:${PN} = "k3s (>= ${K3S_RELEASE}) k3s (<< ${K3S_RELEASE_NEXT})"
