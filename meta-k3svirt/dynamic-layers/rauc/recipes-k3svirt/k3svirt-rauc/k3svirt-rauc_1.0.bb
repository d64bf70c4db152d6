SUMMARY = "k3svirt A/B updates with RAUC and systemd-boot"
DESCRIPTION = "RAUC custom bootloader backend for systemd-boot (try a new \
slot once, fall back automatically), a post-install handler that puts each \
slot's kernel on the ESP, a health-gated mark-good service and the watchdog \
settings that make a hung trial boot roll back."
HOMEPAGE = "https://k3svirt.invalid/"
LICENSE = "CLOSED"

SRC_URI = " \
    file://k3svirt-bootchooser \
    file://k3svirt-mark-good.service \
    file://watchdog.conf \
"
S = "${UNPACKDIR}"

inherit systemd features_check
REQUIRED_DISTRO_FEATURES = "systemd rauc"

SYSTEMD_SERVICE:${PN} = "k3svirt-mark-good.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -D -m 0755 ${S}/k3svirt-bootchooser ${D}${libexecdir}/k3svirt/k3svirt-bootchooser
    install -D -m 0644 ${S}/k3svirt-mark-good.service ${D}${systemd_system_unitdir}/k3svirt-mark-good.service
    install -D -m 0644 ${S}/watchdog.conf ${D}${nonarch_libdir}/systemd/system.conf.d/50-k3svirt-watchdog.conf
}

FILES:${PN} += "${libexecdir}/k3svirt ${nonarch_libdir}/systemd/system.conf.d"

# The slot's own kernel in /boot of its rootfs (copied to the ESP by the
# post-install handler); bootctl (systemd), blkid (util-linux).
RDEPENDS:${PN} += "k3svirt-k3s-config kernel-image-bzimage rauc systemd util-linux-blkid"
