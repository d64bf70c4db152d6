SUMMARY = "Pod sandbox (pause) image for K3s, built from source"
DESCRIPTION = "k3svirt's static pause program (the test node's sandbox \
image, tests/harness/images/pause in the k3svirt repository) as an OCI \
archive in /var/lib/rancher/k3s/agent/images. K3s imports it at start and \
uses it as containerd's sandbox image (pause-image in k3svirt-k3s-config), \
so no pod needs a registry for its sandbox."
HOMEPAGE = "https://k3svirt.invalid/"
LICENSE = "CLOSED"

# tests/harness/images/pause/ of the k3svirt repository (k3svirt-source.inc):
# the same pause.c the test node's localhost/k3svirt/pause:3.10 is built from.
K3SVIRT_SUBDIR = "tests/harness/images/pause"
require recipes-k3svirt/k3svirt-source.inc

inherit k3svirt_oci_archive

K3SVIRT_OCI_REF = "localhost/k3svirt/pause:${PV}"
K3SVIRT_OCI_ENTRYPOINT = "/pause"
K3SVIRT_OCI_USER = "65535:65535"

# Never build inside the source (an externalsrc checkout in development).
B = "${WORKDIR}/build"

do_configure[noexec] = "1"

# A static binary (glibc's libc.a from the sysroot): the image holds
# nothing else, no libc to ship.
do_compile() {
    ${CC} ${CFLAGS} -static -Os -Wall -Wextra -Werror -o ${B}/pause ${S}/pause.c
    ${STRIP} ${B}/pause
    install -D -m 0755 ${B}/pause ${K3SVIRT_OCI_ROOTFS}/pause
}

do_install() {
    k3svirt_oci_install
}

# The image content depends only on the CPU architecture, not the machine.
COMPATIBLE_HOST = "x86_64.*-linux"
