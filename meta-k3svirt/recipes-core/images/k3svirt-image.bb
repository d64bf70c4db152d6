SUMMARY = "k3svirt host image: KVM VMs (libvirt + operator) and K3s side by side"
DESCRIPTION = "Single-node K3s server with k3svirt's CRDs, the k3svirt node \
operator and REST gateway as host services, libvirt/qemu with KVM, VFIO and \
hugepages. Boots EFI (systemd-boot) from a .wic disk image under QEMU/OVMF \
or on bare metal."
LICENSE = "MIT"

inherit core-image

# No debug/dev/doc package groups in a product image.
IMAGE_FEATURES += "ssh-server-openssh"
IMAGE_FEATURES:remove = "dev-pkgs dbg-pkgs doc-pkgs staticdev-pkgs ptest-pkgs tools-debug tools-sdk"

IMAGE_INSTALL = " \
    packagegroup-core-boot \
    ${CORE_IMAGE_EXTRA_INSTALL} \
    \
    qemu-system-x86-64 \
    qemu-common \
    ovmf \
    libvirt \
    libvirt-libvirtd \
    libvirt-virsh \
    libvirt-python \
    \
    k3s \
    k3s-server \
    k3svirt-k3s-config \
    \
    k3svirt-operator \
    k3svirt-gateway \
    k3svirt-host-config \
    k3svirt-network-config \
    \
    kernel-modules \
    pciutils \
    iproute2 \
    nftables \
    e2fsprogs-resize2fs \
    ca-certificates \
"
# qemu-common carries qemu-img and qemu-nbd (OE-core's qemu splits only the
# per-architecture qemu-system-*/qemu-* binaries into their own packages).
# kernel-modules: K3s/kube-proxy load netfilter/IPVS modules on demand; the
# k3s recipe only RRECOMMENDS a handful of them.

# / is one of two fixed-size A/B slots (the wks file); /var gets its own
# partition for container images, K3s state and VM disks, grown to the disk
# at first boot. The rootfs budget is ~600 MB (docs/yocto.md, "Size"); a
# slot of 1.5 GiB leaves room for two releases' growth.
IMAGE_ROOTFS_EXTRA_SPACE = "0"
# The size budget (docs/yocto.md, "Size"): do_image fails when the rootfs
# (/ and the build-time content of /var: manifests, node image archives) grows
# past 600 MB (the value is in KiB).
IMAGE_ROOTFS_MAXSIZE = "614400"
K3SVIRT_ROOT_SLOT_SIZE ?= "1536M"
K3SVIRT_VAR_EXTRA_SPACE ?= "8G"
K3SVIRT_HUGEPAGES ??= "512"
K3SVIRT_HUGEPAGES_1G ??= "0"
K3SVIRT_CPU_ISOLATION_CMDLINE ??= ""

# IMAGE_FSTYPES is the machine's (n305.conf: wic.zst + wic.bmap) or the kas
# file's (qemux86-64: wic for runqemu); the image does not add to it, so no
# type is listed twice.
# Hard assignment: qemux86-64.conf sets WKS_FILE ?= "qemux86-directdisk.wks"
# (legacy BIOS), which would otherwise win; this image's partition layout
# and kernel command line are part of the product.
WKS_FILE = "k3svirt-efi.wks.in"
# runqemu boots the .wic with OVMF (`runqemu ... wic ovmf`).
EXTRA_IMAGEDEPENDS += "ovmf"

# Product default: no password logins. Provide SSH keys with
# K3SVIRT_ROOT_AUTHORIZED_KEYS (path to an authorized_keys file on the build
# host) or, for development only, add "allow-empty-password
# empty-root-password allow-root-login" to EXTRA_IMAGE_FEATURES (the qemu
# kas file does).
K3SVIRT_ROOT_AUTHORIZED_KEYS ??= ""
ROOTFS_POSTPROCESS_COMMAND += "k3svirt_install_authorized_keys"
k3svirt_install_authorized_keys() {
    if [ -n "${K3SVIRT_ROOT_AUTHORIZED_KEYS}" ]; then
        install -d -m 0700 ${IMAGE_ROOTFS}${ROOT_HOME}/.ssh
        install -m 0600 ${K3SVIRT_ROOT_AUTHORIZED_KEYS} ${IMAGE_ROOTFS}${ROOT_HOME}/.ssh/authorized_keys
    fi
}
k3svirt_install_authorized_keys[vardeps] += "K3SVIRT_ROOT_AUTHORIZED_KEYS"
# The file's content, not only its path, is part of do_rootfs's signature:
# editing authorized_keys rebuilds the rootfs.
do_rootfs[file-checksums] += "${@'%s:True' % d.getVar('K3SVIRT_ROOT_AUTHORIZED_KEYS') if d.getVar('K3SVIRT_ROOT_AUTHORIZED_KEYS') else ''}"

# Everything on this box is a service; boot to multi-user.
SYSTEMD_DEFAULT_TARGET = "multi-user.target"
