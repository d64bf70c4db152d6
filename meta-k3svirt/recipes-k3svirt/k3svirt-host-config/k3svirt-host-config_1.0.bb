SUMMARY = "k3svirt host settings: /dev/kvm permissions, hugepages, sysctls"
DESCRIPTION = "udev rule giving qemu access to /dev/kvm and vhost devices, and \
sysctls for hugepage-backed VM memory and Kubernetes networking."
HOMEPAGE = "https://k3svirt.invalid/"
LICENSE = "CLOSED"

SRC_URI = " \
    file://65-k3svirt-kvm.rules \
    file://60-k3svirt.conf.in \
"
S = "${UNPACKDIR}"

# Number of 2 MiB hugepages: the kernel command line reserves them at boot
# (k3svirt-efi.wks.in uses the same variable) and the sysctl re-asserts the
# value, so `sysctl --system` returns to it after a manual change.
K3SVIRT_HUGEPAGES ??= "512"

inherit allarch

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -D -m 0644 ${S}/65-k3svirt-kvm.rules ${D}${nonarch_base_libdir}/udev/rules.d/65-k3svirt-kvm.rules
    install -d ${D}${nonarch_libdir}/sysctl.d
    sed -e 's#@HUGEPAGES@#${K3SVIRT_HUGEPAGES}#g' ${S}/60-k3svirt.conf.in \
        > ${D}${nonarch_libdir}/sysctl.d/60-k3svirt.conf
    chmod 0644 ${D}${nonarch_libdir}/sysctl.d/60-k3svirt.conf
}

FILES:${PN} += "\
    ${nonarch_base_libdir}/udev/rules.d \
    ${nonarch_libdir}/sysctl.d \
"
