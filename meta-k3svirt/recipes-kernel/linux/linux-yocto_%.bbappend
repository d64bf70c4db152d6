# k3svirt host kernel: KVM + VFIO/VT-d + hugepages + everything K3s needs.
#
# Two layers of configuration:
#  1. KERNEL_FEATURES from the yocto-kernel-cache where a feature already
#     exists there (meta-virtualization adds cfg/kubernetes.scc for the "k3s"
#     distro feature and features/kvm/qemu-kvm-enable.scc for "kvm").
#  2. Our own fragments (k3svirt.scc) for what the cache does not cover for
#     generic x86-64 BSPs (common-pc-64, qemux86-64 enable neither VFIO nor
#     the Intel IOMMU): VFIO, VT-d, hugepages, and an explicit copy of every
#     option K3s's check-config.sh wants, so the kernel stays right even if a
#     cache feature changes underneath us. tests/yocto checks the fragments
#     against a real Kconfig.
#
# Everything is scoped to the k3svirt distro (":k3svirt" override), so
# adding this layer to another distro's build changes nothing (Yocto
# Project Compatible layer rule).

FILESEXTRAPATHS:prepend:k3svirt := "${THISDIR}/${PN}:"

SRC_URI:append:k3svirt = " \
    file://k3svirt.scc \
    file://k3svirt-kvm.cfg \
    file://k3svirt-iommu.cfg \
    file://k3svirt-hugepages.cfg \
    file://k3svirt-containers.cfg \
    file://k3svirt-boot.cfg \
"

# Only cache features known to exist in yocto-kernel-cache (netfilter.scc is
# already in OE-Core's default list); namespaces come from
# cfg/kubernetes.scc and k3svirt-containers.cfg. virtio drivers
# only matter inside QEMU (qemuall is in every QEMU machine's
# MACHINEOVERRIDES).
KERNEL_FEATURES:append:k3svirt = " \
    features/kvm/qemu-kvm-enable.scc \
    features/netfilter/netfilter.scc \
    features/cgroups/cgroups.scc \
    features/overlayfs/overlayfs.scc \
    ${@bb.utils.contains('MACHINEOVERRIDES', 'qemuall', 'cfg/virtio.scc', '', d)} \
"

# Our own machine uses the kernel-cache's generic 64-bit PC BSP (as
# genericx86-64 does) on linux-yocto's default standard/base branch.
COMPATIBLE_MACHINE:n305 = "n305"
KMACHINE:n305 = "common-pc-64"

# Load at boot what is modular but always used on a k3svirt host
# (overlay and KVM are built in).
KERNEL_MODULE_AUTOLOAD:append:k3svirt = " vhost_net tun br_netfilter vfio_pci"
