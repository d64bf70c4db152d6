SUMMARY = "k3svirt host settings: /dev/kvm, hugetlbfs, sysctls, CPU affinity, /var growth"
DESCRIPTION = "udev rule giving qemu access to /dev/kvm and vhost devices, \
sysctls for Kubernetes networking, a 2 MiB hugetlbfs mount, systemd's CPU \
affinity for host services, the housekeeping CPUs for the operator and a \
systemd-repart rule growing /var."
HOMEPAGE = "https://k3svirt.invalid/"
LICENSE = "CLOSED"

SRC_URI = " \
    file://65-k3svirt-kvm.rules \
    file://60-k3svirt.conf \
    file://dev-hugepages2M.mount \
    file://50-var.conf \
    file://cpu-affinity.conf.in \
    file://k3svirt-cpus.in \
"
S = "${UNPACKDIR}"

# Host CPUs (conf/distro/k3svirt.conf): machine-specific, hence the
# package is too (not allarch).
K3SVIRT_CPUS_HOST ??= "6-7"
PACKAGE_ARCH = "${MACHINE_ARCH}"

inherit systemd features_check
REQUIRED_DISTRO_FEATURES = "systemd"

SYSTEMD_SERVICE:${PN} = "dev-hugepages2M.mount"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -D -m 0644 ${S}/65-k3svirt-kvm.rules ${D}${nonarch_base_libdir}/udev/rules.d/65-k3svirt-kvm.rules
    install -D -m 0644 ${S}/60-k3svirt.conf ${D}${nonarch_libdir}/sysctl.d/60-k3svirt.conf
    install -D -m 0644 ${S}/dev-hugepages2M.mount ${D}${systemd_system_unitdir}/dev-hugepages2M.mount
    install -D -m 0644 ${S}/50-var.conf ${D}${nonarch_libdir}/repart.d/50-var.conf
    install -d ${D}${nonarch_libdir}/systemd/system.conf.d
    sed -e 's#@K3SVIRT_CPUS_HOST@#${K3SVIRT_CPUS_HOST}#g' ${S}/cpu-affinity.conf.in \
        > ${D}${nonarch_libdir}/systemd/system.conf.d/60-k3svirt-cpu-affinity.conf
    chmod 0644 ${D}${nonarch_libdir}/systemd/system.conf.d/60-k3svirt-cpu-affinity.conf
    install -d ${D}${sysconfdir}/default
    sed -e 's#@K3SVIRT_CPUS_HOST@#${K3SVIRT_CPUS_HOST}#g' ${S}/k3svirt-cpus.in > ${D}${sysconfdir}/default/k3svirt-cpus
    chmod 0644 ${D}${sysconfdir}/default/k3svirt-cpus
}

FILES:${PN} += "\
    ${nonarch_base_libdir}/udev/rules.d \
    ${nonarch_libdir}/sysctl.d \
    ${nonarch_libdir}/repart.d \
    ${nonarch_libdir}/systemd/system.conf.d \
    ${systemd_system_unitdir} \
    ${sysconfdir}/default/k3svirt-cpus \
"

# systemd-repart (in the systemd package with the distro's PACKAGECONFIG
# "repart") runs 50-var.conf at boot.
RDEPENDS:${PN} += "systemd"
