# k3svirt host kernel: KVM + VFIO/VT-d + hugepages + CPU isolation +
# everything K3s needs.
#
# Two layers of configuration:
#  1. Features from the yocto-kernel-cache where one exists
#     (meta-virtualization adds cfg/kubernetes.scc for the "k3s" distro
#     feature and features/kvm/qemu-kvm-enable.scc for "kvm").
#  2. Our own feature, k3svirt/k3svirt.scc (a kmeta directory), for what the
#     cache does not cover for generic x86-64 BSPs (common-pc-64 and
#     qemux86-64 enable neither VFIO nor the Intel IOMMU) and an explicit
#     copy of every option K3s's check-config.sh wants.
#
# Order matters: kernel-yocto applies the BSP, then SRC_URI fragments, then
# KERNEL_FEATURES in order. Fragments in SRC_URI therefore LOSE to any cache
# feature (e.g. our VFAT_FS=m against cfg/fs/vfat.scc, KVM=y against
# qemu-kvm-enable.scc). Our feature is the last KERNEL_FEATURES entry, so
# it wins; do_k3svirt_configcheck below fails the build if any of our
# options still did not make it into .config. tests/yocto checks the same
# fragments against a real Kconfig offline.
#
# Everything is scoped to the k3svirt distro (":k3svirt" override), so
# adding this layer to another distro's build changes nothing (Yocto
# Project Compatible layer rule).

FILESEXTRAPATHS:prepend:k3svirt := "${THISDIR}/${PN}:"

SRC_URI:append:k3svirt = " file://k3svirt-kmeta;type=kmeta;destsuffix=k3svirt-kmeta"

# Cache features (netfilter.scc is already in OE-Core's default list);
# virtio drivers only matter inside QEMU (qemuall is in every QEMU
# machine's MACHINEOVERRIDES). k3svirt/k3svirt.scc last: see above.
KERNEL_FEATURES:append:k3svirt = " \
    features/kvm/qemu-kvm-enable.scc \
    features/netfilter/netfilter.scc \
    features/cgroups/cgroups.scc \
    features/overlayfs/overlayfs.scc \
    ${@bb.utils.contains('MACHINEOVERRIDES', 'qemuall', 'cfg/virtio.scc', '', d)} \
    k3svirt/k3svirt.scc \
"

# Fatal for our options, whatever KCONF_AUDIT_LEVEL/KMETA_AUDIT_WERROR say
# about the rest of the kernel-cache: every CONFIG_ line of our fragments
# must be in the final .config with exactly that value. (A task cannot take
# a distro override; the anonymous python below deletes it outside k3svirt.)
# nooelint: oelint.vars.noncoreoverride
python do_k3svirt_configcheck() {
    import glob, os, re
    frag_dir = os.path.join(d.getVar('UNPACKDIR'), 'k3svirt-kmeta', 'k3svirt')
    frags = sorted(glob.glob(os.path.join(frag_dir, '*.cfg')))
    if not frags:
        bb.fatal("k3svirt kernel fragments missing from %s" % frag_dir)
    opt_re = re.compile(r'^(CONFIG_\w+)=(.*)$')
    unset_re = re.compile(r'^# (CONFIG_\w+) is not set$')

    def parse(path):
        values = {}
        with open(path) as f:
            for line in f:
                line = line.strip()
                m = opt_re.match(line) or unset_re.match(line)
                if m:
                    values[m.group(1)] = m.group(2) if m.re is opt_re else 'n'
        return values

    final = parse(os.path.join(d.getVar('B'), '.config'))
    wrong = []
    for frag in frags:
        for opt, want in sorted(parse(frag).items()):
            got = final.get(opt, 'n')
            if got != want:
                wrong.append("%s: %s asks for %s, .config has %s" % (opt, os.path.basename(frag), want, got))
    if wrong:
        bb.fatal("k3svirt kernel options lost in the merge:\n  " + "\n  ".join(wrong))
}
do_k3svirt_configcheck[doc] = "Fail if an option of k3svirt's kernel fragments is not in the final .config"
do_k3svirt_configcheck[dirs] = "${B}"
addtask k3svirt_configcheck after do_kernel_configcheck before do_compile
# Only in k3svirt builds: other distros keep linux-yocto's task graph (and
# signatures) unchanged. Needs parse time, hence anonymous python.
# nooelint: oelint.task.noanonpython,oelint.vars.noncoreoverride
python () {
    if 'k3svirt' not in (d.getVar('DISTROOVERRIDES') or '').split(':'):
        bb.build.deltask('do_k3svirt_configcheck', d)
}

# Our own machine uses the kernel-cache's generic 64-bit PC BSP (as
# genericx86-64 does) on linux-yocto's default standard/base branch.
COMPATIBLE_MACHINE:n305 = "n305"
KMACHINE:n305 = "common-pc-64"

# Load at boot what is modular but always used on a k3svirt host
# (overlay and KVM are built in).
KERNEL_MODULE_AUTOLOAD:append:k3svirt = " vhost_net tun br_netfilter vfio_pci"
